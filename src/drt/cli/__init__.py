"""The ``drt`` command: one module per sub-command, each with ``add_parser(sub)`` and ``command(args)``.

``main`` turns a user's mistake (a ``DrtError``, an unusable output path) into one ``drt: error:`` line
and exit status 2, and every warning raised while a command runs into one ``drt: warning:`` line (no
source file, no code line).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, TextIO

from drt.cli import analyze, demo, listing, report, sweep, train
from drt.cli.common import Parser
from drt.errors import DrtError
from drt.train.distributed import launched, lost_peer

COMMANDS = {"train": train, "list": listing, "demo": demo, "sweep": sweep, "report": report, "analyze": analyze}

__all__ = ["COMMANDS", "Parser", "main", "make_parser"]


def make_parser() -> Parser:
    parser = Parser(prog="drt", description="Dimensionality-reduced training for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command line: the message's first line, said once."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"drt: warning: {text}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # each distinct warning once per place, as Python does by default
        warnings.showwarning = show_warning
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        args: Any = make_parser().parse_args(argv)
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
    except RuntimeError as e:  # under torchrun: another process of the job died (the launcher names it)
        why = lost_peer(e) if launched() else None
        if why is None:
            raise
        print(f"drt: error (rank {os.environ.get('RANK', '0')}): lost another process of this job ({why})",
              file=sys.stderr)
        return 2
