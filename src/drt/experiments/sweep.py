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

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from drt.errors import DrtError
from drt.experiments.config import RunConfig, make_config
from drt.experiments.report import budget_label
from drt.experiments.runner import RunBusy, run
from drt.experiments.store import STORE_NAME, Store
from drt.experiments.sweep_plan import Sweep


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes sharing the machine's cores."""
    return max(1, (cores or usable_cores()) // workers)


def describe(cfg: RunConfig) -> str:
    """``<run id> <model>/<data set>/seed<n> <method and budget>`` for progress lines."""
    return f"{cfg.run_id()} {cfg.model.model}/{cfg.data.dataset}/seed{cfg.train.seed} {budget_label(cfg.to_dict())}"


def run_one(values: dict[str, Any], results_dir: str, device: str, progress: bool,
            in_worker: bool = False) -> tuple[str, str]:
    """Train one planned run under its lock; returns (run id, outcome line).

    In a worker process (``in_worker``) Ctrl-C ends the process, so it starts no further run.
    """
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
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed sweep leaves no orphan trainer


def execute(sweep: Sweep, results_dir: str | Path, *, workers: int | None = None, device: str = "auto",
            progress: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Run every planned run not yet done; returns {run id: outcome}. Failures do not stop the sweep."""
    results_dir = Path(results_dir)
    workers = workers or sweep.workers
    status = {r["id"]: r["status"] for r in Store(results_dir / STORE_NAME).runs()}
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


def stored_status(results_dir: str | Path) -> dict[str, str]:
    """Run id -> status of the runs in ``results_dir``'s store (empty if there is none yet; none is created)."""
    db = Path(results_dir) / STORE_NAME
    return {r["id"]: r["status"] for r in Store(db).runs()} if db.exists() else {}
