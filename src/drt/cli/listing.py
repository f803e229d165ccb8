"""``drt list models|datasets|methods|recipes|runs``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drt.cli.common import add_results_dir
from drt.errors import DrtError
from drt.experiments import registries
from drt.experiments.report import with_time_to_target
from drt.experiments.store import STORE_NAME, Store, flat_rows, to_csv
from drt.experiments.table import format_table, run_row


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
    store = Store(store_path)
    runs = store.runs()
    with_time_to_target(store, [r for r in runs if r["status"] == "done"])
    rows = flat_rows(runs)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        return to_csv(rows)
    done = [run_row(r) for r in rows if r["status"] != "failed"]
    failed = [{k: r.get(k, "") for k in ("id", "model", "dataset", "method", "seed", "error")}
              for r in rows if r["status"] == "failed"]
    text = format_table(done) if done else "(no finished or running runs)"
    return text + (f"\n\nfailed runs ({len(failed)}):\n" + format_table(failed) if failed else "")


def command(args: argparse.Namespace) -> int:
    text = runs_text(args.results_dir, args.format) if args.what == "runs" else registries.describe(args.what)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0
