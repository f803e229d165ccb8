"""Cost accounting: what a run trains, stores and costs (pure functions).

Counting rules (stated wherever numbers are shown):
- ``total``: every element of every ``nn.Parameter`` (BN affine included).
- ``masked``: parameter elements removed by a pruning mask (fixed at zero).
- ``frozen``: elements that are kept but never trained (``requires_grad=False`` parameters,
  entries outside a freezing mask) plus fixed non-parameter weights a module declares through
  ``drt_frozen_numel()`` (e.g. a PCN layer's basis V and mean μ). BN running statistics are not
  weights and are not counted.
- ``trainable``: the trained dimension d = total − masked − (frozen parameters).
- ``stored``: numbers needed to store the model = total − masked + declared frozen buffers (FreezeNet
  reports trainable + 1: its frozen weights are regenerated from the init seed).
FLOPs come from ``torch.utils.flop_counter`` (a multiply-add counts 2), forward, per sample (a batch of
2 minus a batch of 1, so per-batch work such as a PCN layer's bias folding is not charged per sample).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@runtime_checkable
class DeclaresFrozen(Protocol):
    """A module holding fixed non-parameter weights (a PCN layer's V and mu) that count as frozen."""

    def drt_frozen_numel(self) -> int: ...


def param_counts(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    trained: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """Total / trainable / frozen / masked / stored counts (see module docstring).

    ``masks``: name -> bool (True = kept); ``trained``: name -> bool (True = trained, rest frozen).
    """
    masks, trained = masks or {}, trained or {}
    total = masked = frozen = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        kept = int(masks[name].sum()) if name in masks else n
        masked += n - kept
        if not p.requires_grad:
            frozen += kept
        elif name in trained:
            keep = masks[name] if name in masks else torch.ones_like(trained[name])
            frozen += int((keep & ~trained[name].bool()).sum())
    extra = sum(int(m.drt_frozen_numel()) for m in model.modules() if isinstance(m, DeclaresFrozen))
    return {
        "total": total,
        "trainable": total - masked - frozen,
        "frozen": frozen + extra,
        "masked": masked,
        "stored": total - masked + extra,
    }


def _counted_pass(model: nn.Module, batch: int, input_shape: tuple[int, ...],
                  device: torch.device | str) -> tuple[int, dict[str, int]]:
    """(total FLOPs, per leaf module) of one eval-mode forward pass of ``batch`` zero inputs."""
    x = torch.zeros((batch, *input_shape), device=device, dtype=next(model.parameters()).dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    counts, root = counter.get_flop_counts(), type(model).__name__
    layers = {name: int(sum(counts[f"{root}.{name}"].values())) for name, m in model.named_modules()
              if name and not list(m.children()) and f"{root}.{name}" in counts}
    return int(counter.get_total_flops()), layers


def _count(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str) -> tuple[int, dict[str, int]]:
    """Per-sample (total, per leaf module) FLOPs: a batch of 2 minus a batch of 1, so that work done once
    per batch (a PCN layer folding its mean into the bias) is not counted as per-sample work."""
    was_training = model.training
    model.eval()
    try:
        one_total, one = _counted_pass(model, 1, input_shape, device)
        two_total, two = _counted_pass(model, 2, input_shape, device)
    finally:
        model.train(was_training)
    per_layer = {n: two[n] - one.get(n, 0) for n in two if two[n] - one.get(n, 0) > 0}
    return two_total - one_total, per_layer


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """Dense-equivalent forward FLOPs of one sample, counted by PyTorch's flop counter."""
    return _count(model, input_shape, device)[0]


def flop_counts(
    model: nn.Module, input_shape: tuple[int, ...], masks: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[int, int]:
    """(dense-equivalent, effective) forward FLOPs of one sample from one count; effective weights
    each masked layer's FLOPs by its weight density."""
    total, per_layer = _count(model, input_shape, device)
    if not masks:
        return total, total
    saved = 0.0
    for name, f in per_layer.items():
        mask = masks.get(f"{name}.weight")
        if mask is not None:
            saved += f * (1.0 - float(mask.float().mean()))
    return total, int(round(total - saved))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak since the run started on GPU, else this process's peak
    resident set size (a process-lifetime figure: a later run of one process reports at least the
    peaks of earlier ones)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
