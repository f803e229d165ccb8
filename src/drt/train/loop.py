"""The one training loop. Methods plug in through hooks; this file must not grow per-method ifs.

``train`` drives a ``drt.methods.Driver`` — the object a plain-loop user drives by hand — through
the named steps of ``drt.train.run.Run``: set-up (or resume), then per epoch the training steps, the
held-out evaluation, the epoch-end hooks and the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drt.data import Dataset
from drt.methods.base import Method
from drt.methods.driver import autocast
from drt.train.config import TrainConfig, make_optimizer
from drt.train.evaluate import evaluate, final_metrics
from drt.train.run import Run, TrainResult

__all__ = ["Run", "TrainResult", "autocast", "evaluate", "final_metrics", "make_optimizer", "train"]


def train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    method: Method,
    regularisers: Sequence[Method] = (),
    *,
    device: torch.device,
    augment: str = "none",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_ready: Callable[[int, int], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.epochs`` epochs, calling the plug-ins' hooks.

    Checkpoints after every epoch (atomically) to ``checkpoint``; with ``resume`` continues
    from it to the same result as an uninterrupted run. Raises ``DrtError`` on a NaN/Inf loss
    (the last good checkpoint is kept).

    Under torch.distributed (call it on every rank): each rank trains on its chunk of every global
    batch of ``world_size × cfg.batch_size`` through DDP; rank 0's weights and checkpoint are
    shared with every rank at the start; only rank 0 writes files; metrics are global.
    ``on_ready(epoch, epochs)`` is called once the methods are set up (their settings checked against
    the model) or the checkpoint loaded, before the first step, with the epochs done and to do: the
    runner registers a run only then.
    """
    run = Run.start(model, data, cfg, method, regularisers, device=device, augment=augment,
                    checkpoint=Path(checkpoint) if checkpoint else None, resume=resume)
    if on_ready is not None:
        on_ready(run.drv.state.epoch, run.total_epochs)
    while run.drv.state.epoch < run.total_epochs:
        entry = run.train_epoch(progress)
        run.evaluation(entry)
        run.end_epoch(entry)
        run.save()
        if on_epoch is not None:
            on_epoch(entry)
    return run.result()
