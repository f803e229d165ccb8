"""What several sub-commands share: the one-line-error parser and the flags they have in common."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from drt.errors import DrtError
from drt.experiments.env import DEVICES
from drt.options import field_types


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line."""

    def error(self, message: str) -> NoReturn:
        raise DrtError(f"{message} (see `{self.prog} --help`)")


def results_dir_default() -> str:
    return os.environ.get("DRT_RESULTS_DIR", "results")


def add_results_dir(p: argparse.ArgumentParser, help: str | None = "where the store and runs live") -> None:
    p.add_argument("--results-dir", default=results_dir_default(), help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--results-dir, --device, --no-progress."""
    add_results_dir(p)
    add_device(p)
    add_no_progress(p)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per epoch instead)")
    p.add_argument("--quiet", action="store_true", help="neither progress bars nor per-epoch lines")


def progress(args: argparse.Namespace) -> bool:
    """Progress bars: on a terminal, unless --no-progress or --quiet."""
    return not args.no_progress and not getattr(args, "quiet", False) and sys.stderr.isatty()


def epoch_lines(args: argparse.Namespace) -> bool:
    """One line per epoch: where there are no progress bars, unless --quiet."""
    return not getattr(args, "quiet", False) and not progress(args)


def settings(args: argparse.Namespace, classes: Sequence[type]) -> dict[str, Any]:
    """The config settings given on the command line (flags of ``classes``' fields)."""
    return {k: getattr(args, k) for c in classes for k in field_types(c) if getattr(args, k, None) is not None}
