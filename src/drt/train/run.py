"""The steps of one training run (``drt.train.train`` calls them in order), driving a ``Driver``.

``Run.start`` sets up (loaders, the Driver and so the methods' setup hooks, or a checkpoint's state);
each epoch is ``train_epoch`` (one ``train_step`` per batch: forward, backward and step through the
Driver, AMP included), ``evaluation``, ``end_epoch`` (hooks, timings, history) and ``save``; ``result``
gives the final metrics. The Driver is the object a plain-loop user drives by hand, so both run the
same hook and AMP code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from drt import dist
from drt.data import Dataset, TensorLoader
from drt.errors import DrtError
from drt.io import save_atomic
from drt.methods.base import Method
from drt.methods.driver import Driver
from drt.train.checkpoint import load_checkpoint
from drt.train.config import TrainConfig, lr_at, make_optimizer
from drt.train.distributed import wrapper
from drt.train.evaluate import evaluate, final_metrics


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, Any]


@dataclass
class Run:
    """One training run in progress: the Driver, the data, the per-epoch history and the timings."""

    cfg: TrainConfig
    data: Dataset
    drv: Driver
    loader: TensorLoader
    ckpt: Path | None
    setup_time: float  # pruning-at-init scoring, FreezeNet, ... (0 work on resume)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_epochs(self) -> int:
        return self.drv.method.total_epochs(self.cfg.epochs)

    @classmethod
    def start(cls, model: nn.Module, data: Dataset, cfg: TrainConfig, method: Method,
              regularisers: Sequence[Method], *, device: torch.device, augment: str, checkpoint: Path | None,
              resume: bool) -> Run:
        """Set-up: loaders, one starting point on every rank, the Driver (the methods' setup hooks), or
        the checkpoint's state when resuming."""
        ranks = dist.current()
        shard: dict[str, Any] = {"rank": ranks.rank, "world_size": ranks.world_size, "drop_last": ranks.world_size > 1}
        loader = TensorLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, augment=augment,
                              seed=cfg.seed, device=device, **shard)
        score_loader = TensorLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed + 1,
                                    device=device, **shard)
        resuming = dist.on_main(lambda: resume and checkpoint is not None and checkpoint.exists())
        dist.broadcast_(model.to(device))  # one starting point on every rank, before masks are chosen
        if len(loader) == 0:
            raise DrtError(f"{len(data.x_train)} training samples make no full global batch of "
                           f"{ranks.world_size} x {cfg.batch_size}; use a smaller --batch-size or fewer processes")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t_setup = time.perf_counter()
        drv = Driver(method, model, partial(make_optimizer, cfg), batches=lambda: iter(score_loader),
                     epochs=cfg.epochs, steps_per_epoch=len(loader), input_shape=tuple(data.input_shape),
                     num_classes=data.num_classes, regularisers=regularisers, weight_decay=cfg.weight_decay,
                     seed=cfg.seed, device=device, run_dir=checkpoint.parent if checkpoint and ranks.is_main else None,
                     setup=not resuming, wrap=wrapper(device), amp=cfg.amp)
        run = cls(cfg, data, drv, loader, checkpoint, time.perf_counter() - t_setup)
        if resuming:
            run.resume()
        return run

    def resume(self) -> None:
        """Continue from the checkpoint: weights, optimizer, plug-ins, GradScaler, RNG, history, set-up time."""
        ckpt = self.ckpt
        assert ckpt is not None  # resuming needs one
        payload = dist.on_main(lambda: load_checkpoint(ckpt))  # every rank: rank 0's file
        if not 0 < payload["epoch"] <= self.total_epochs:
            raise DrtError(f"checkpoint {ckpt} is at epoch {payload['epoch']}, outside this run's "
                           f"{self.total_epochs} epochs; it belongs to another run")
        self.drv.load_state_dict(payload)
        torch.set_rng_state(payload["rng"])
        self.history = list(payload["history"])
        self.setup_time = float(payload.get("setup_time", 0.0))

    def kept(self) -> str:
        """What an error message says about the last good checkpoint."""
        return f"; last good checkpoint kept at {self.ckpt}" if self.ckpt and self.ckpt.exists() else ""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step at learning rate ``lr`` through the Driver; (output, task loss)."""
        drv = self.drv
        for g in drv.optimizer.param_groups:
            g["lr"] = lr
        out, loss, total = drv.forward(x, y)
        if not torch.isfinite(total):
            raise DrtError(f"loss became {float(total.detach())} at {where} (lr {lr:.3g}){self.kept()}")
        drv.backward(total)
        drv.step()
        return out, loss

    def train_epoch(self, progress: bool) -> dict[str, Any]:
        """The steps of one epoch; its entry with lr, train loss / accuracy and timings."""
        cfg, drv, loader, state = self.cfg, self.drv, self.loader, self.drv.state
        epoch, ranks = state.epoch, dist.current()
        drv.net.train()
        state.log = {}
        loader.set_epoch(epoch)
        loss_sum, correct, seen = torch.zeros((), device=state.device), torch.zeros((), device=state.device), 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.total_epochs}", leave=False,
                   disable=not (progress and ranks.is_main))
        for i, (x, y) in enumerate(bar):
            t, length = drv.method.schedule_position(epoch + i / len(loader), cfg.epochs)
            lr = lr_at(cfg, t, 1 / len(loader), length)
            out, loss = self.train_step(x, y, lr, f"epoch {epoch + 1}, step {i + 1}")
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
        train_time = time.perf_counter() - t0
        total_loss, total_correct, total_seen = dist.all_reduce_sum(loss_sum, correct, seen)
        dist.broadcast_(state.model, buffers_only=True)  # BN running stats: rank 0's everywhere
        if not all(bool(torch.isfinite(t).all()) for t in state.model.state_dict().values() if t.is_floating_point()):
            raise DrtError(f"weights became non-finite in epoch {epoch + 1} (lr {lr:.3g}){self.kept()}")
        return {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss / total_seen,
                "train_acc": total_correct / total_seen, "train_time": train_time,
                "step_time": train_time / len(loader), "images_per_s": total_seen / train_time}

    def evaluation(self, entry: dict[str, Any]) -> None:
        """Held-out test (and validation) loss and accuracy when due — every ``eval_every`` epochs and at
        the end of every training schedule (each IMP round's) — and ``eval_time`` (not training time)."""
        cfg, data, done = self.cfg, self.data, entry["epoch"]
        model, device = self.drv.model, self.drv.state.device
        t_eval = time.perf_counter()
        if done % cfg.eval_every == 0 or done % cfg.epochs == 0 or done == self.total_epochs:
            entry["test_loss"], entry["test_acc"] = evaluate(model, data.x_test, data.y_test, cfg.eval_batch_size,
                                                             device, cfg.amp, sharded=True)
            if data.x_val is not None and data.y_val is not None:
                entry["val_loss"], entry["val_acc"] = evaluate(model, data.x_val, data.y_val, cfg.eval_batch_size,
                                                               device, cfg.amp, sharded=True)
            if not all(math.isfinite(entry[k]) for k in ("test_loss", "val_loss") if k in entry):
                raise DrtError(f"the model diverged: test loss {entry['test_loss']} after epoch {done} "
                               f"(lr {entry['lr']:.3g}){self.kept()}")
        entry["eval_time"] = time.perf_counter() - t_eval

    def end_epoch(self, entry: dict[str, Any]) -> None:
        """The epoch-end hooks (PCN statistics + transform, IMP pruning, Early-Bird, ...), their
        ``method_time``, the training ``wall_clock`` so far, the methods' log; appended to the history."""
        t1 = time.perf_counter()
        if self.drv.end_epoch(entry):
            entry["rebuilt"] = True  # a new architecture: later steps cost differently
        entry["method_time"] = time.perf_counter() - t1
        # training wall-clock so far (setup, steps, statistics, transforms; evaluation excluded)
        entry["wall_clock"] = self.setup_time + sum(h["train_time"] + h.get("method_time", 0.0)
                                                    for h in self.history) + entry["train_time"] + entry["method_time"]
        entry.update(self.drv.state.log)
        self.history.append(entry)

    def save(self) -> None:
        """The checkpoint after an epoch (rank 0, atomically): the Driver's state, RNG, history, set-up time."""
        if self.ckpt is not None and dist.current().is_main:
            save_atomic(self.ckpt, {**self.drv.state_dict(), "rng": torch.get_rng_state(), "history": self.history,
                                    "setup_time": self.setup_time})

    def result(self) -> TrainResult:
        """The trained model, its history and final metrics (method and evaluation time accounted)."""
        state, history = self.drv.state, self.history
        final = final_metrics(state, self.drv.method, history, state.device)
        final["method_time"] = self.setup_time + sum(h.get("method_time", 0.0) for h in history)
        final["train_time"] += final["method_time"]
        final["eval_time"] = sum(h.get("eval_time", 0.0) for h in history)
        return TrainResult(state.model, history, final)
