"""``drt list models|datasets|methods|recipes|runs``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drt.cli.common import add_results_dir
from drt.errors import DrtError
from drt.experiments import registries
from drt.experiments.store import STORE_NAME, Store, flat_rows, to_csv
from drt.experiments.table import format_table

RUN_COLUMNS = ["id", "status", "model", "dataset", "method", "seed", "test_acc", "params_trainable", "flops",
               "step_time"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("list", help="list models, datasets, methods, recipes or runs")
    p.add_argument("what", choices=("models", "datasets", "methods", "recipes", "runs"))
    add_results_dir(p, help=None)
    p.add_argument("--format", default="table", choices=("table", "csv", "json"), help="output format (runs)")
    p.add_argument("--output", help="write to this file instead of stdout")
    return p


def runs_text(results_dir: str, fmt: str) -> str:
    store_path = Path(results_dir) / STORE_NAME
    if not store_path.exists():
        raise DrtError(f"no results store at {store_path}; train something first or pass --results-dir")
    rows = flat_rows(Store(store_path).runs())
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        return to_csv(rows)
    return format_table([{c: r.get(c, "") for c in RUN_COLUMNS} for r in rows])


def command(args: argparse.Namespace) -> int:
    text = runs_text(args.results_dir, args.format) if args.what == "runs" else registries.describe(args.what)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0
