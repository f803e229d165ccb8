"""``drt sweep FILE``: a grid of runs from a YAML file (resumable; see ``drt.experiments.sweep``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from drt.cli.common import add_device, add_no_progress, add_results_dir, progress
from drt.errors import DrtError
from drt.experiments.sweep import describe, execute, stored_status
from drt.experiments.sweep_plan import load_sweep


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a grid of configurations from a YAML file (resumable)")
    p.add_argument("file", help="sweep YAML: grid: {key: [values]}, base: {settings}, runs: [{settings}], workers: N")
    add_results_dir(p)
    p.add_argument("--workers", type=int, help="worker processes (overrides the file's workers:)")
    add_device(p)
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and their status, run nothing")
    add_no_progress(p)
    return p


def command(args: argparse.Namespace) -> int:
    """Plan, report what is done, run the rest; exit 1 if any run failed."""
    sweep = load_sweep(args.file)
    if args.workers is not None and args.workers < 1:
        raise DrtError(f"--workers must be a positive integer, got {args.workers}")
    if args.dry_run:
        status = stored_status(args.results_dir)
        for cfg in sweep.configs:
            print(f"{status.get(cfg.run_id(), 'planned'):<8} {describe(cfg)}")
        print(f"{len(sweep.configs)} runs planned, {sum(status.get(c.run_id()) == 'done' for c in sweep.configs)}"
              " already done")
        return 0
    outcomes = execute(sweep, args.results_dir, workers=args.workers, device=args.device, progress=progress(args))
    failed = [run_id for run_id, o in outcomes.items() if o.startswith("FAILED")]
    busy = [run_id for run_id, o in outcomes.items() if o.startswith("in progress")]
    if busy:
        print(f"{len(busy)} run(s) are being trained by another process; run `drt sweep` again later to finish")
    if failed:
        print(f"drt: {len(failed)} of {len(outcomes)} run(s) failed ({', '.join(failed[:3])}"
              f"{', ...' if len(failed) > 3 else ''}); see `drt list runs --results-dir {args.results_dir}`",
              file=sys.stderr)
        return 1
    return 0
