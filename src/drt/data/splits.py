"""Seeded stratified splits, subset/validation sizes and per-channel normalisation (pure functions)."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from drt.errors import DrtError

# Fixed split seeds, independent of any run seed: a data set's carved test split never changes, and
# `load(seed=s)` draws its train subset and validation split from the streams (s, SUBSET) / (s, VAL).
TEST_SPLIT_SEED = 0
SUBSET_STREAM = 1
VAL_STREAM = 2


def stratified_split(y: np.ndarray, n_take: int, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of labels ``y`` into (taken, rest), ``len(taken) == n_take``, class proportions kept.

    Deterministic in ``seed`` (an int or list of ints for ``numpy.random.SeedSequence``). Each class
    contributes ``~n_take * n_c / N`` samples (exactly equal counts for a balanced data set); both parts
    come back in a seeded random order.
    """
    n = len(y)
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n} samples")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    order = rng.permutation(n)
    y_perm = np.asarray(y)[order]
    rank = np.empty(n, dtype=np.float64)  # position of each sample within its class, in `order`
    counts = {}
    for c in np.unique(y_perm):
        where = np.flatnonzero(y_perm == c)
        rank[where] = np.arange(len(where))
        counts[c] = len(where)
    class_size = np.array([counts[c] for c in y_perm], dtype=np.float64)
    key = (rank + 0.5) / class_size  # fractional position within the class: interleaves proportionally
    priority = np.lexsort((np.arange(n), key))  # ties broken by the random order
    taken = order[priority[:n_take]]
    rest_mask = np.ones(n, dtype=bool)
    rest_mask[priority[:n_take]] = False
    return taken, order[rest_mask]


def count_from(size: float | int, n: int, what: str) -> int:
    """Resolve ``size`` of ``n`` samples (a fraction in [0, 1) or a whole count); ``what`` names it."""
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise DrtError(f"{what} must be a fraction in [0, 1) or a count, got {size!r}")
    if isinstance(size, numbers.Integral) or (size >= 1 and float(size).is_integer()):
        count = int(size)
    elif 0 <= size < 1:
        count = 0 if size == 0 else max(1, round(float(size) * n))
    else:
        raise DrtError(f"{what} must be a fraction in [0, 1) or a whole count, got {size}")
    if not 0 <= count < n:
        raise DrtError(f"{what}={size} gives {count} samples; it must be at least 0 and less than {n}")
    return count


def to_float(x: np.ndarray) -> torch.Tensor:
    """A float32 tensor copy of ``x``; uint8 pixels are scaled to [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32, copy=True)
    return t.div_(255.0) if x.dtype == np.uint8 else t


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of ``x`` (N, C, ...), population std; a zero std is reported as 1."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    std = var.sqrt().clamp_min(1e-12)
    std = torch.where(var > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def normalise_(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalise ``x`` (N, C, ...) in place per channel: ``(x - mean) / std``; returns ``x``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=x.dtype).view(shape)
    s = torch.tensor(std, dtype=x.dtype).view(shape)
    return x.sub_(m).div_(s)
