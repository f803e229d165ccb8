"""``drt demo``: the main job on the embedded mnist5k data set."""

from __future__ import annotations

import argparse
from typing import Any

from drt.cli.common import add_run_flags, progress
from drt.experiments.demo import demo


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="the main job on the embedded mnist5k data set")
    add_run_flags(p)
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    return p


def command(args: argparse.Namespace) -> int:
    demo(args.results_dir, device=args.device, epochs=args.epochs, progress=progress(args))
    return 0
