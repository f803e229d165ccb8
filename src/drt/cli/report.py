"""``drt report``: HTML + Markdown report of the finished runs in a results store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drt.cli.common import add_results_dir
from drt.experiments.report import parse_filters
from drt.experiments.report_render import write_report


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="HTML + Markdown report of the finished runs in a results store")
    add_results_dir(p)
    p.add_argument("--out", help="report folder (default: <results-dir>/report)")
    p.add_argument("--filter", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="only runs with these settings (e.g. dataset=cifar10 method=pcn); a repeated key means any of")
    return p


def command(args: argparse.Namespace) -> int:
    """Write report.html and report.md and say where they are."""
    out = Path(args.out) if args.out else Path(args.results_dir) / "report"
    html, md, n = write_report(args.results_dir, out, parse_filters(args.filter))
    print(f"report of {n} finished runs: {html} (self-contained, opens offline) and {md}")
    return 0
