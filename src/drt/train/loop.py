"""The one training loop. Methods plug in through hooks; this file must not grow per-method ifs."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from drt import dist
from drt.analysis.cost import flop_counts, param_counts, peak_memory_mb
from drt.data import Dataset, TensorLoader
from drt.data.loader import rank_bounds
from drt.errors import DrtError
from drt.io import save_atomic
from drt.methods.base import Method, TrainState
from drt.methods.driver import Driver
from drt.train.checkpoint import load_checkpoint
from drt.train.config import TrainConfig, lr_at
from drt.train.distributed import wrapper


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, Any]


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The configured optimizer over parameter groups (a method's groups leave frozen tensors out)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
             amp: bool = False, *, sharded: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a held-out split, in eval mode.

    ``sharded``: under torch.distributed each rank scores its slice and the sums are all-reduced
    (call it on every rank; every rank gets the same numbers).
    """
    ranks = dist.current() if sharded else dist.Ranks()
    lo, hi = rank_bounds(len(x), ranks.rank, ranks.world_size)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for i in range(lo, hi, batch_size):
        xb, yb = x[i:min(i + batch_size, hi)].to(device), y[i:min(i + batch_size, hi)].to(device)
        with autocast(device, amp):
            out = model(xb)
        loss_sum += float(F.cross_entropy(out.float(), yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    if sharded:
        loss_sum, correct = dist.all_reduce_sum(loss_sum, correct)
    return loss_sum / len(x), correct / len(x)


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
    on_ready: Callable[[], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.epochs`` epochs, calling the plug-ins' hooks.

    Checkpoints after every epoch (atomically) to ``checkpoint``; with ``resume`` continues
    from it to the same result as an uninterrupted run. Raises ``DrtError`` on a NaN/Inf loss
    (the last good checkpoint is kept).

    Under torch.distributed (call it on every rank): each rank trains on its chunk of every global
    batch of ``world_size × cfg.batch_size`` through DDP; rank 0's weights and checkpoint are
    shared with every rank at the start; only rank 0 writes files; metrics are global.
    ``on_ready`` is called once the methods are set up (their settings checked against the model),
    before the first step: the runner registers a run only then.
    """
    ranks = dist.current()
    shard: dict[str, Any] = {"rank": ranks.rank, "world_size": ranks.world_size, "drop_last": ranks.world_size > 1}
    loader = TensorLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, augment=augment,
                          seed=cfg.seed, device=device, **shard)
    score_loader = TensorLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed + 1,
                                device=device, **shard)
    ckpt = Path(checkpoint) if checkpoint else None
    resuming = dist.on_main(lambda: resume and ckpt is not None and ckpt.exists())
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
                 seed=cfg.seed, device=device, run_dir=ckpt.parent if ckpt and ranks.is_main else None,
                 setup=not resuming, wrap=wrapper(device))
    state = drv.state
    setup_time = time.perf_counter() - t_setup  # pruning-at-init scoring, FreezeNet, ... (0 work on resume)
    if on_ready is not None:
        on_ready()
    total_epochs = method.total_epochs(cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    state.grad_scaling = scaler.is_enabled()
    history: list[dict[str, Any]] = []
    if resuming:
        assert ckpt is not None  # resuming needs one
        payload = dist.on_main(lambda: load_checkpoint(ckpt))  # every rank: rank 0's file
        if not 0 < payload["epoch"] <= total_epochs:
            raise DrtError(f"checkpoint {ckpt} is at epoch {payload['epoch']}, outside this run's "
                           f"{total_epochs} epochs; it belongs to another run")
        drv.load_state_dict(payload)
        scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"])
        history = list(payload["history"])
        setup_time = float(payload.get("setup_time", 0.0))

    while state.epoch < total_epochs:
        epoch = state.epoch
        drv.net.train()
        state.log = {}
        loader.set_epoch(epoch)
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}", leave=False,
                   disable=not (progress and ranks.is_main))
        for i, (x, y) in enumerate(bar):
            t, length = method.schedule_position(epoch + i / len(loader), cfg.epochs)
            lr = lr_at(cfg, t, 1 / len(loader), length)
            for g in drv.optimizer.param_groups:
                g["lr"] = lr
            state.x, state.y = x, y
            with autocast(device, cfg.amp):
                out = drv.net(x)
                loss = state.loss_fn(out.float(), y)
            extra = drv.extra_loss(out)
            total = loss if extra is None else loss + extra.to(loss.dtype)
            if not torch.isfinite(total):
                kept = f"; last good checkpoint kept at {ckpt}" if ckpt and ckpt.exists() else ""
                raise DrtError(f"loss became {float(total.detach())} at epoch {epoch + 1}, step {i + 1} "
                               f"(lr {lr:.3g}){kept}")
            drv.optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if scaler.is_enabled():
                scaler.unscale_(drv.optimizer)
            drv.after_backward()
            scaler.step(drv.optimizer)
            scaler.update()
            drv.after_step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
        train_time = time.perf_counter() - t0
        total_loss, total_correct, total_seen = dist.all_reduce_sum(loss_sum, correct, seen)
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss / total_seen,
                                 "train_acc": total_correct / total_seen, "train_time": train_time,
                                 "step_time": train_time / len(loader), "images_per_s": total_seen / train_time}
        dist.broadcast_(state.model, buffers_only=True)  # BN running stats: rank 0's everywhere
        kept = f"; last good checkpoint kept at {ckpt}" if ckpt and ckpt.exists() else ""
        if not all(bool(torch.isfinite(t).all()) for t in state.model.state_dict().values() if t.is_floating_point()):
            raise DrtError(f"weights became non-finite in epoch {epoch + 1} (lr {lr:.3g}){kept}")
        done = epoch + 1
        t_eval = time.perf_counter()
        if done % cfg.eval_every == 0 or done % cfg.epochs == 0 or done == total_epochs:  # and every IMP round's end
            entry["test_loss"], entry["test_acc"] = evaluate(state.model, data.x_test, data.y_test,
                                                             cfg.eval_batch_size, device, cfg.amp, sharded=True)
            if data.x_val is not None and data.y_val is not None:
                entry["val_loss"], entry["val_acc"] = evaluate(state.model, data.x_val, data.y_val,
                                                               cfg.eval_batch_size, device, cfg.amp, sharded=True)
            if not all(math.isfinite(entry[k]) for k in ("test_loss", "val_loss") if k in entry):
                raise DrtError(f"the model diverged: test loss {entry['test_loss']} after epoch {epoch + 1} "
                               f"(lr {lr:.3g}){kept}")
        t1 = time.perf_counter()
        entry["eval_time"] = t1 - t_eval  # held-out evaluation: not training time
        if drv.end_epoch(entry):  # PCN statistics + transform, IMP pruning, Early-Bird, ...
            entry["rebuilt"] = True  # a new architecture: later steps cost differently
        entry["method_time"] = time.perf_counter() - t1
        # training wall-clock so far (setup, steps, statistics, transforms; evaluation excluded)
        entry["wall_clock"] = setup_time + sum(h["train_time"] + h.get("method_time", 0.0) for h in history) \
            + train_time + entry["method_time"]
        entry.update(state.log)
        history.append(entry)
        if ckpt is not None and ranks.is_main:
            save_atomic(ckpt, {**drv.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
                               "history": history, "setup_time": setup_time})
        if on_epoch is not None:
            on_epoch(entry)
    final = final_metrics(state, method, history, device)
    final["method_time"] = setup_time + sum(h.get("method_time", 0.0) for h in history)
    final["train_time"] += final["method_time"]
    final["eval_time"] = sum(h.get("eval_time", 0.0) for h in history)
    return TrainResult(state.model, history, final)


def final_metrics(state: TrainState, method: Method, history: list[dict[str, Any]],
                  device: torch.device) -> dict[str, Any]:
    """Final-epoch accuracy plus the cost accounting of the trained model."""
    last = history[-1]
    masks = method.masks()
    counts = param_counts(state.model, masks, method.frozen_masks())
    out = {k: last[k] for k in ("test_acc", "test_loss", "train_loss", "train_acc", "val_acc") if k in last}
    out.update({f"params_{k}": v for k, v in counts.items()})
    out["flops"], out["flops_effective"] = flop_counts(state.model, state.input_shape, masks, device)
    last_rebuild = max((i for i, h in enumerate(history) if h.get("rebuilt")), default=-1)
    # the first epoch includes warm-up; after a PCN transform / channel prune only the new model counts
    steady = history[last_rebuild + 1:] if 0 <= last_rebuild < len(history) - 1 else history[1:] or history
    out["step_time"] = sum(h["step_time"] for h in steady) / len(steady)
    out["images_per_s"] = sum(h["images_per_s"] for h in steady) / len(steady)
    out["train_time"] = sum(h["train_time"] for h in history)
    out["peak_memory_mb"] = peak_memory_mb(device)
    out.update(method.summary(state))
    return out
