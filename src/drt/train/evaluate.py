"""Measurements of a trained model: held-out loss and accuracy, and the final cost accounting."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drt import dist
from drt.analysis.cost import flop_counts, param_counts, peak_memory_mb
from drt.data.loader import rank_bounds
from drt.methods.base import Method, TrainState
from drt.methods.driver import autocast


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
