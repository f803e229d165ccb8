"""``drt sweep``: a grid of runs from a YAML file, run one after another or by a few workers.

Each run is hash-named and resumable (``runner.run(..., resume=True)``): finished runs are
skipped, a run killed mid-way continues from its last checkpoint on the next call. The store's
claim keeps two processes on one results folder from training the same run at once.

    base: {dataset: digits, model: mlp, epochs: 5}     # settings common to all runs
    grid: {seed: [0, 1], lr: [0.1, 0.05]}               # every list is crossed with the others
    runs:                                               # optional: each crossed with the grid
      - {method: dense}
      - {method: rigl, sparsity: [0.9, 0.98]}
    workers: 2                                          # processes; torch threads = cores // workers
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from drt.errors import DrtError
from drt.experiments.config import SECTIONS, RunConfig, make_config, option_classes
from drt.options import field_types, is_tuple

TOP_KEYS = ("base", "grid", "runs", "workers")


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the planned runs (flat settings, one per distinct config) and workers."""

    path: Path
    settings: tuple[dict[str, Any], ...]
    configs: tuple[RunConfig, ...]
    workers: int


def _flat(mapping: Any, where: str, nested: bool = True) -> dict[str, Any]:
    """Flat settings from a mapping whose ``data:``/``model:``/``train:`` sections may nest them."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise DrtError(f"{where} must be a mapping of settings, got {type(mapping).__name__}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            if not nested or k not in SECTIONS:
                raise DrtError(f"{where}.{k}: only the sections {', '.join(SECTIONS)} may nest settings")
            items = _flat(v, f"{where}.{k}", nested=False).items()
        else:
            items = [(str(k).replace("-", "_"), v)]
        for key, value in items:
            if key in out:
                raise DrtError(f"{where}: setting {key!r} is given twice")
            out[key] = value
    return out


def tuple_keys() -> set[str]:
    """Settings holding a tuple (``hidden``, ``milestones``, ...): each alternative is a list or comma string."""
    return {k for cls in option_classes() for k, tp in field_types(cls).items() if is_tuple(tp)}


def _expand(choices: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Cartesian product of settings whose list values are alternatives (a scalar is one value).

    A tuple-valued setting (``hidden``, ``milestones``) is given per alternative as a nested
    list or a comma string: ``hidden: [[300, 100], "64"]``.
    """
    tuples = tuple_keys()
    for k, v in choices.items():
        if isinstance(v, list) and not v:
            raise DrtError(f"{where}: {k!r} has an empty list of values")
        if k in tuples and isinstance(v, list) and not all(isinstance(a, list | str) for a in v):
            raise DrtError(f"{where}: {k!r} takes a list per alternative: write [{v!r}] for one value, "
                           f"or [[a, b], [c]] for several")
    lists = {k: v if isinstance(v, list) else [v] for k, v in choices.items()}
    return [dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())]


def plan(raw: Any, path: str | Path = "<sweep>") -> tuple[list[dict[str, Any]], int]:
    """(flat settings of every distinct run, workers) from a parsed sweep mapping; validates everything."""
    if not isinstance(raw, dict):
        raise DrtError(f"sweep file {path} must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(str(k) for k in raw if k not in TOP_KEYS)
    if unknown:
        raise DrtError(f"unknown key(s) {', '.join(unknown)} in sweep file {path}; valid: {', '.join(TOP_KEYS)}")
    base = _flat(raw.get("base"), "base")
    grid = _flat(raw.get("grid"), "grid")
    entries = raw.get("runs") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DrtError(f"sweep file {path}: `runs:` must be a list of mappings of settings")
    if not grid and not entries:
        raise DrtError(f"sweep file {path} has an empty grid: give `grid:` lists of values and/or `runs:`")
    workers = raw.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DrtError(f"sweep file {path}: workers must be a positive integer, got {workers!r}")
    points = _expand(grid, "grid")
    variants = [v for i, e in enumerate(entries) for v in _expand(_flat(e, f"runs[{i}]"), f"runs[{i}]")] or [{}]
    out, seen = [], set()
    for variant in variants:
        for point in points:
            values = {**base, **point, **variant}
            try:
                run_id = make_config(values).run_id()
            except DrtError as e:
                raise DrtError(f"sweep file {path}: {e}") from None
            if run_id not in seen:
                seen.add(run_id)
                out.append(values)
    return out, workers


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    if not path.is_file():
        raise DrtError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DrtError(f"sweep file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    settings, workers = plan(raw, path)
    return Sweep(path, tuple(settings), tuple(make_config(s) for s in settings), workers)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes sharing the machine's cores."""
    return max(1, (cores or usable_cores()) // workers)


def describe(cfg: RunConfig) -> str:
    """``<run id> <model>/<data set>/seed<n> <method and budget>`` for progress lines."""
    from drt.experiments.report import budget_label

    return f"{cfg.run_id()} {cfg.model.model}/{cfg.data.dataset}/seed{cfg.train.seed} {budget_label(cfg.to_dict())}"


def run_one(values: dict[str, Any], results_dir: str, device: str, progress: bool,
            in_worker: bool = False) -> tuple[str, str]:
    """Train one planned run under its lock; returns (run id, outcome line).

    In a worker process (``in_worker``) Ctrl-C ends the process, so it starts no further run.
    """
    from drt.experiments.runner import RunBusy, run

    cfg = make_config(values)
    try:
        m = run(cfg, results_dir, device=device, resume=True, progress=progress, log=lambda _: None)
    except RunBusy:
        return cfg.run_id(), "in progress in another process; not started"
    except Exception as e:  # recorded as failed by the runner; the sweep goes on
        return cfg.run_id(), f"FAILED: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    except KeyboardInterrupt:  # the runner recorded it as failed ("interrupted")
        if in_worker:
            os._exit(130)
        raise
    if m["skipped"]:
        return cfg.run_id(), "already done"
    return cfg.run_id(), f"test acc {m['test_acc']:.4f}, trainable {m['params_trainable']}, {m['train_time']:.1f} s"


def _init_worker(threads: int) -> None:
    """Worker process set-up: its share of the cores, and die with the sweep (Linux)."""
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed sweep leaves no orphan trainer


def execute(sweep: Sweep, results_dir: str | Path, *, workers: int | None = None, device: str = "auto",
            progress: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run every planned run not yet done; returns {run id: outcome}. Failures do not stop the sweep."""
    from drt.experiments.runner import STORE_NAME
    from drt.experiments.store import Store

    results_dir = Path(results_dir)
    workers = workers or sweep.workers
    store = Store(results_dir / STORE_NAME)
    status = {r["id"]: r["status"] for r in store.runs()}
    names = {c.run_id(): describe(c) for c in sweep.configs}
    todo = [s for s, c in zip(sweep.settings, sweep.configs, strict=True) if status.get(c.run_id()) != "done"]
    done = len(sweep.settings) - len(todo)
    workers = max(1, min(workers, len(todo)))
    threads = threads_per_worker(workers)
    log(f"sweep {sweep.path}: {len(sweep.settings)} runs planned, {done} already done, {len(todo)} to run"
        + (f" ({workers} workers x {threads} torch threads)" if workers > 1 else "")
        + f"; results in {results_dir / STORE_NAME}")
    outcomes: dict[str, str] = {}
    if workers == 1:
        for i, values in enumerate(todo, 1):
            run_id, outcome = run_one(values, str(results_dir), device, progress)
            outcomes[run_id] = outcome
            log(f"[{i}/{len(todo)}] {names[run_id]}: {outcome}")
        return outcomes
    ctx = get_context("spawn")  # fresh interpreters: no forked torch thread pools
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,))
    try:
        futures = [pool.submit(run_one, values, str(results_dir), device, False, True) for values in todo]
        for i, fut in enumerate(as_completed(futures), 1):
            run_id, outcome = fut.result()
            outcomes[run_id] = outcome
            log(f"[{i}/{len(todo)}] {names[run_id]}: {outcome}")
    except BrokenProcessPool:
        raise DrtError(f"a sweep worker process died ({len(outcomes)} of {len(todo)} runs finished); "
                       "run `drt sweep` again to continue") from None
    finally:  # on Ctrl-C start nothing new; interrupted runs record themselves as failed and resume next time
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``drt sweep`` on the CLI's sub-parsers."""
    from drt.experiments.env import DEVICES

    p = subparsers.add_parser("sweep", help="run a grid of configurations from a YAML file (resumable)")
    p.add_argument("file", help="sweep YAML: grid: {key: [values]}, base: {settings}, runs: [{settings}], workers: N")
    p.add_argument("--results-dir", default=os.environ.get("DRT_RESULTS_DIR", "results"),
                   help="where the store and runs live")
    p.add_argument("--workers", type=int, help="worker processes (overrides the file's workers:)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="compute device")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and their status, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """``drt sweep FILE``: plan, report what is done, run the rest; exit 1 if any run failed."""
    sweep = load_sweep(args.file)
    if args.workers is not None and args.workers < 1:
        raise DrtError(f"--workers must be a positive integer, got {args.workers}")
    if args.dry_run:
        from drt.experiments.runner import STORE_NAME
        from drt.experiments.store import Store

        db = Path(args.results_dir) / STORE_NAME
        status = {r["id"]: r["status"] for r in Store(db).runs()} if db.exists() else {}
        for cfg in sweep.configs:
            print(f"{status.get(cfg.run_id(), 'planned'):<8} {describe(cfg)}")
        print(f"{len(sweep.configs)} runs planned, {sum(status.get(c.run_id()) == 'done' for c in sweep.configs)}"
              " already done")
        return 0
    outcomes = execute(sweep, args.results_dir, workers=args.workers, device=args.device,
                       progress=not args.no_progress and sys.stderr.isatty())
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
