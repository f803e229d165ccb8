"""The ``drt`` command: one module per sub-command, each with ``add_parser(sub)`` and ``command(args)``.

``main`` turns a user's mistake (a ``DrtError``, an unusable output path) into one ``drt: error:`` line
and exit status 2.
"""

from __future__ import annotations

import os
import sys

from drt.cli import analyze, demo, listing, report, sweep, train
from drt.cli.common import Parser
from drt.errors import DrtError

COMMANDS = {"train": train, "list": listing, "demo": demo, "sweep": sweep, "report": report, "analyze": analyze}

__all__ = ["COMMANDS", "Parser", "main", "make_parser"]


def make_parser() -> Parser:
    parser = Parser(prog="drt", description="Dimensionality-reduced training for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return COMMANDS[args.command].command(args)
    except DrtError as e:
        rank = os.environ.get("RANK", "0")  # set by torchrun
        print(f"drt: error{f' (rank {rank})' if rank != '0' else ''}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that is a file, a directory, or not writable
        where = f": {e.filename}" if e.filename else ""
        print(f"drt: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drt: interrupted", file=sys.stderr)
        return 130
