"""Run one config: hash-named, resumable, recorded in the results store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from drt.data import load
from drt.errors import DrtError
from drt.experiments.config import RunConfig
from drt.experiments.env import environment, resolve_device
from drt.experiments.store import Store
from drt.methods import METHODS, REGULARISERS
from drt.models import create
from drt.train import train

STORE_NAME = "drt.sqlite"


def run(cfg: RunConfig, results_dir: str | Path = "results", *, device: str = "auto", force: bool = False,
        resume: bool = False, progress: bool = False, log=print) -> dict[str, Any]:
    """Train one configuration and record it; a finished config is a no-op unless ``force``.

    Returns the stored final metrics (with ``run_id`` and ``skipped``).
    """
    results_dir = Path(results_dir)
    store = Store(results_dir / STORE_NAME)
    run_id = cfg.run_id()
    if store.status(run_id) == "done" and not force:
        log(f"{cfg.label()}: already done (run {run_id}); use --force to re-run")
        return {**store.run(run_id)["metrics"], "run_id": run_id, "skipped": True}
    busy = store.claim(run_id)
    if busy:
        raise DrtError(f"run {run_id} ({cfg.label()}) is being trained by process {busy}; wait for it or stop it")
    dev = resolve_device(device)
    run_dir = results_dir / "runs" / run_id
    ckpt = run_dir / "checkpoint.pt"
    if resume and not ckpt.exists():
        log(f"{cfg.label()}: no checkpoint to resume from in {run_dir}; starting from scratch")
    data = load(cfg.data.dataset, data_dir=cfg.data.data_dir, data_root=cfg.data.data_root,
                val_size=cfg.data.val_size, subset=cfg.data.subset, image_size=cfg.data.image_size)
    torch.manual_seed(cfg.train.seed)
    model = create(cfg.model.model, tuple(data.input_shape), data.num_classes, **cfg.model.options())
    method = METHODS.get(cfg.method)(cfg.method_options)
    regs = [REGULARISERS.get(r)(o) for r, o in zip(cfg.reg, cfg.reg_options, strict=True)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if not (resume and ckpt.exists()):
        ckpt.unlink(missing_ok=True)
        store.start(run_id, cfg.label(), cfg.to_dict(), environment(dev))
    elif not store.mark_running(run_id):
        store.start(run_id, cfg.label(), cfg.to_dict(), environment(dev))
    augment = data.augment if cfg.data.augment == "auto" else cfg.data.augment
    try:
        result = train(model, data, cfg.train, method, regs, device=dev, augment=augment, checkpoint=ckpt,
                       resume=resume, on_epoch=lambda m: store.add_epoch(run_id, m), progress=progress)
    except DrtError as e:
        store.fail(run_id, str(e))
        raise
    except KeyboardInterrupt:
        store.fail(run_id, "interrupted")
        raise
    except Exception as e:  # record, then let the CLI report it
        store.fail(run_id, f"{type(e).__name__}: {e}")
        raise
    metrics = {**result.final, "run_id": run_id}
    torch.save(result.model.state_dict(), run_dir / "model.pt")
    (run_dir / "metrics.json").write_text(json.dumps({"final": metrics, "history": result.history}, indent=2))
    store.finish(run_id, metrics)
    return {**metrics, "skipped": False}
