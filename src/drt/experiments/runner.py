"""Run one config: hash-named, resumable, recorded in the results store.

Under torchrun every rank calls ``run``; rank 0 alone touches the store and the run folder (the
other ranks learn its decisions and errors), every rank trains, rank 0 records the result.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from drt import dist
from drt.data import load
from drt.errors import DrtError
from drt.experiments.config import RunConfig
from drt.experiments.env import environment, resolve_device
from drt.experiments.store import STORE_NAME, Store, run_folder
from drt.io import save_atomic
from drt.methods import METHODS, REGULARISERS
from drt.models import create
from drt.train import train
from drt.train.distributed import local_device
from drt.train.learning import not_learning


class RunBusy(DrtError):
    """The run is being trained by another live process."""



def run_identity(cfg: RunConfig, world_size: int) -> str:
    """``cfg.run_id()``; with W > 1 processes a hash of it and W (the global batch is W x batch size)."""
    if world_size == 1:
        return cfg.run_id()
    return hashlib.sha256(f"{cfg.run_id()}:world{world_size}".encode()).hexdigest()[:16]


def run(cfg: RunConfig, results_dir: str | Path = "results", *, device: str = "auto", force: bool = False,
        resume: bool = False, progress: bool = False, log: Callable[[str], None] = print,
        epoch_lines: bool = False) -> dict[str, Any]:
    """Train one configuration and record it; a finished config is a no-op unless ``force``.

    ``epoch_lines``: ``log`` one line per epoch (loss, held-out accuracy, elapsed, ETA), for output
    that is not a terminal (where ``progress`` draws bars). Returns the stored final metrics (with
    ``run_id`` and ``skipped``). Under torchrun call it on
    every rank (after joining the process group); ``device`` names the kind, each rank takes its own.
    """
    ranks = dist.current()
    results_dir = Path(results_dir)
    run_id = run_identity(cfg, ranks.world_size)
    dev = local_device(resolve_device(device))
    run_dir = run_folder(results_dir, run_id)
    ckpt = run_dir / "checkpoint.pt"

    def claim() -> dict[str, Any] | None:  # rank 0 only: the store
        store = Store(results_dir / STORE_NAME)
        redo_done = force and store.status(run_id) == "done"
        busy = store.claim(run_id, cfg.label(), cfg.to_dict(), redo=force)
        if busy == "done":
            log(f"{cfg.label()}: already done (run {run_id}); use --force to re-run")
            row = store.run(run_id)
            assert row is not None  # the claim found it done
            return {**row["metrics"], "run_id": run_id, "skipped": True}
        if redo_done:  # a finished run's last checkpoint would "resume" to the old result
            ckpt.unlink(missing_ok=True)
        if busy:
            raise RunBusy(f"run {run_id} ({cfg.label()}) is being trained by process {busy}; wait for it or stop it")
        if resume and not ckpt.exists():
            log(f"{cfg.label()}: no checkpoint to resume from in {run_dir}; starting from scratch")
        return None

    def start() -> None:  # rank 0 only: the run folder and the store, once the run can be built
        store = Store(results_dir / STORE_NAME)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        env = {**environment(dev), "world_size": ranks.world_size}
        if not (resume and ckpt.exists()):
            ckpt.unlink(missing_ok=True)
            store.start(run_id, cfg.label(), cfg.to_dict(), env)
        elif not store.mark_running(run_id):
            store.start(run_id, cfg.label(), cfg.to_dict(), env)

    skipped = dist.on_main(claim)
    if skipped is not None:
        return skipped
    try:
        data = load(cfg.data.dataset, data_dir=cfg.data.data_dir, data_root=cfg.data.data_root,
                    val_size=cfg.data.val_size, subset=cfg.data.subset, image_size=cfg.data.image_size)
        torch.manual_seed(cfg.train.seed)
        model = create(cfg.model.model, tuple(data.input_shape), data.num_classes, **cfg.model.options())
        method = METHODS.get(cfg.method)(cfg.method_options)
        regs = [REGULARISERS.get(r)(o) for r, o in zip(cfg.reg, cfg.reg_options, strict=True)]
    except BaseException:  # e.g. a missing data path: leave no placeholder behind
        if ranks.is_main:  # no collective here: other ranks may not have failed
            Store(results_dir / STORE_NAME).release(run_id)
        raise
    started = False

    clock: dict[str, float] = {"t0": time.time(), "first": 0, "total": 0}

    def ready(epoch: int, epochs: int) -> None:  # the methods accepted their settings: now the run exists
        nonlocal started
        dist.on_main(start)
        started = True
        clock.update(t0=time.time(), first=epoch, total=epochs)
        if epoch and ranks.is_main:
            log(f"resuming run {run_id} ({cfg.label()}) at epoch {epoch}/{epochs}")

    store = Store(results_dir / STORE_NAME) if ranks.is_main else None
    warned = False

    def on_epoch(entry: dict[str, Any]) -> None:
        nonlocal warned
        if store is not None:
            store.add_epoch(run_id, entry)
        if epoch_lines and ranks.is_main:
            log(epoch_line(entry, int(clock["total"]), time.time() - clock["t0"], int(entry["epoch"] - clock["first"])))
        why = None if warned or not ranks.is_main else not_learning(entry, data.num_classes)
        if why:
            warnings.warn(why, stacklevel=2)
            warned = True

    augment = data.augment if cfg.data.augment == "auto" else cfg.data.augment
    try:
        result = train(model, data, cfg.train, method, regs, device=dev, augment=augment, checkpoint=ckpt,
                       resume=resume, on_epoch=on_epoch,
                       on_ready=ready, progress=progress)
    except BaseException as e:
        if store is not None and not started:  # refused at set-up (a bad setting): no row, no folder
            store.release(run_id)
        elif store is not None:  # a run that started and then failed is recorded with its reason
            store.fail(run_id, "interrupted" if isinstance(e, KeyboardInterrupt)
                       else str(e) if isinstance(e, DrtError) else f"{type(e).__name__}: {e}")
        raise
    metrics = {**result.final, "run_id": run_id}
    if store is not None:
        for entry in result.history:  # idempotent: also fills an epoch a kill left unrecorded before resume
            store.add_epoch(run_id, entry)
        save_atomic(run_dir / "model.pt", result.model.state_dict())
        (run_dir / "metrics.json").write_text(json.dumps({"final": metrics, "history": result.history}, indent=2))
        store.finish(run_id, metrics)
    return {**metrics, "skipped": False}


def epoch_line(entry: dict[str, Any], epochs: int, elapsed: float, done_here: int) -> str:
    """``epoch 3/8: train loss 1.234, test acc 56.78%, 1m 05s elapsed, ETA 1m 48s``."""
    def mmss(t: float) -> str:
        return f"{int(t // 60)}m {int(t % 60):02d}s"

    acc = f", test acc {100 * entry['test_acc']:.2f}%" if "test_acc" in entry else ""
    eta = elapsed / max(done_here, 1) * (epochs - entry["epoch"])
    return (f"epoch {entry['epoch']}/{epochs}: train loss {entry['train_loss']:.4f}{acc}, {mmss(elapsed)} elapsed, "
            f"ETA {mmss(eta)}")
