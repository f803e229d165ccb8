"""Streaming activation statistics, PCA, rules for choosing k, and subspace overlap (pure maths).

PCA of a layer's input as in Principal Component Networks (Waleffe & Rekatsinas 2020, 2024):
centred, covariance divided by N-1, float64 eigen-decomposition sorted descending, no whitening.
Conv inputs (N, C, *spatial) contribute one observation per sample and position: (N*H*W, C).

Rules for k: ``k_fixed``, ``k_threshold`` (eigenvalue >= X) and ``k_width_fraction`` are the
paper's; ``k_explained`` (cumulative explained variance) and ``k_budget`` (global parameter
budget) are this library's additions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from drt.errors import DrtError

_F64 = torch.float64


def as_observations(x: Tensor, *, channels_last: bool, pool_to: int | None = None) -> Tensor:
    """A layer input as an (observations, variables) matrix.

    ``channels_last``: Linear layout (..., d) -> (prod(...), d). Otherwise conv layout
    (N, C, *spatial) -> (N * prod(spatial), C), after average-pooling each spatial dimension
    larger than ``pool_to`` down to ``pool_to`` (memory bound used by the reference on ImageNet).
    """
    if channels_last:
        return x.reshape(-1, x.shape[-1])
    if x.dim() < 3:
        raise DrtError(f"conv input must be (N, C, *spatial); got shape {tuple(x.shape)}")
    if pool_to is not None and any(s > pool_to for s in x.shape[2:]):
        size: Any = tuple(min(s, pool_to) for s in x.shape[2:])  # one size per spatial dimension
        x = F.adaptive_avg_pool1d(x, size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, size)
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class RunningMoments:
    """Count, sum and sum of outer products of d-dimensional observations, in float64.

    The raw sums (``count``, ``total``, ``outer``) are plain tensors so distributed ranks can
    all-reduce them (``tensors()``); ``add_``/``+`` merges two accumulators exactly.
    """

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = dim
        self.count = torch.zeros((), dtype=_F64, device=device)
        self.total = torch.zeros(dim, dtype=_F64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=_F64, device=device)

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` (n, d) as observations; mutates self."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise DrtError(f"observations must be (n, {self.dim}); got shape {tuple(x.shape)}")
        x = x.detach().to(device=self.total.device, dtype=_F64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def add_(self, other: RunningMoments) -> RunningMoments:
        """Merge ``other``'s observations into self (in place) and return self."""
        if other.dim != self.dim:
            raise DrtError(f"cannot merge moments of dimension {other.dim} into dimension {self.dim}")
        self.count += other.count.to(self.count.device)
        self.total += other.total.to(self.total.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    def __add__(self, other: RunningMoments) -> RunningMoments:
        return RunningMoments.from_state_dict(self.state_dict()).add_(other)

    def tensors(self) -> list[Tensor]:
        """The raw sums, e.g. to ``torch.distributed.all_reduce`` each in place."""
        return [self.count, self.total, self.outer]

    @property
    def n(self) -> int:
        return int(self.count.item())

    def mean(self) -> Tensor:
        """Mean (d,) in float64; needs at least one observation."""
        if self.n < 1:
            raise DrtError("no observations accumulated; need at least 2")
        return self.total / self.count

    def cov(self) -> Tensor:
        """Centred covariance (d, d) divided by N - 1, float64, symmetrised."""
        if self.n < 2:
            raise DrtError(f"covariance needs at least 2 observations; got {self.n}")
        mu = self.mean()
        c = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return (c + c.T) / 2

    def eig(self) -> tuple[Tensor, Tensor]:
        """Eigenvalues (d,) descending (tiny negatives clipped to 0) and eigenvectors (d, d) as columns.

        Each eigenvector's sign is fixed so that its largest-magnitude entry is positive.
        """
        vals, vecs = torch.linalg.eigh(self.cov())
        vals, vecs = vals.flip(0).clamp_min(0.0), vecs.flip(1)
        top = vecs.abs().argmax(0)
        signs = torch.sign(vecs[top, torch.arange(self.dim, device=vecs.device)])
        return vals, vecs * torch.where(signs == 0, torch.ones_like(signs), signs)

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count.clone(), "total": self.total.clone(), "outer": self.outer.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> RunningMoments:
        m = cls(int(state["total"].shape[0]), device=state["total"].device)
        m.count, m.total, m.outer = (state[k].clone().to(_F64) for k in ("count", "total", "outer"))
        return m


def explained_variance(eigvals: Tensor) -> Tensor:
    """Cumulative explained-variance ratio of descending eigenvalues (all ones if total variance is 0)."""
    vals = eigvals.to(_F64).clamp_min(0.0)
    total = vals.sum()
    if total <= 0:
        return torch.ones_like(vals)
    return vals.cumsum(0) / total


def k_fixed(k: int, d: int, layer: str = "layer") -> int:
    """Validate a fixed number of components k for a layer of width d (paper rule)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise DrtError(f"{layer}: number of components k must be an int in [1, {d}]; got {k!r}")
    return k


def _fraction(value: float, what: str, layer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise DrtError(f"{layer}: {what} must be a number in (0, 1]; got {value!r}")
    return float(value)


def k_explained(eigvals: Tensor, fraction: float, layer: str = "layer") -> int:
    """Smallest k whose top-k eigenvalues explain ``fraction`` of the variance (at least 1)."""
    fraction = _fraction(fraction, "explained-variance fraction", layer)
    ratio = explained_variance(eigvals)
    k = int((ratio < fraction - 1e-12).sum().item()) + 1
    return min(max(k, 1), eigvals.numel())


def k_threshold(eigvals: Tensor, threshold: float, layer: str = "layer") -> int:
    """Number of eigenvalues >= ``threshold`` (at least 1) (paper rule)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold >= 0:
        raise DrtError(f"{layer}: eigenvalue threshold must be a number >= 0; got {threshold!r}")
    return max(int((eigvals >= threshold).sum().item()), 1)


def k_width_fraction(d: int, fraction: float, layer: str = "layer") -> int:
    """ceil(fraction * d) components (at least 1) (paper rule)."""
    fraction = _fraction(fraction, "width fraction", layer)
    return min(max(math.ceil(fraction * d - 1e-9), 1), d)


@dataclass(frozen=True)
class BudgetUnit:
    """One basis for ``k_budget``: its eigenvalues, cost per component (trainable parameters or FLOPs),
    max k and min k."""

    eigvals: Tensor
    cost: int
    cap: int
    floor: int = 1


def k_budget(units: Mapping[str, BudgetUnit], budget: int) -> dict[str, int]:
    """Split ``budget`` (sum of k * cost) over bases; every basis gets at least its floor (default 1).

    Greedy: starting from k = floor everywhere, repeatedly add the component with the largest
    explained-variance gain per unit of cost, (lambda_j / sum(lambda)) / cost, while it fits and
    up to each unit's cap; components with zero eigenvalue are never added. Since a unit's gains
    decrease with j, this takes a prefix of each spectrum. Raises DrtError if the floors do not fit.
    """
    minimum = sum(u.cost * u.floor for u in units.values())
    if budget < minimum:
        raise DrtError(f"budget {budget} is below the minimum {minimum} (the smallest k per layer)")
    ks = {name: u.floor for name, u in units.items()}
    gains: list[tuple[float, str]] = []
    for name, u in units.items():
        vals = u.eigvals.to(_F64).clamp_min(0.0)
        total = float(vals.sum())
        if total > 0:
            gains += [(float(v) / total / u.cost, name) for v in vals[u.floor : u.cap] if v > 0]
    left = budget - minimum
    for _gain, name in sorted(gains, key=lambda g: -g[0]):
        if units[name].cost <= left:
            ks[name] += 1
            left -= units[name].cost
    return ks


def subspace_overlap(va: Tensor, vb: Tensor) -> float:
    """||Va^T Vb||_F^2 / k for orthonormal bases (d, k); 1 = same subspace, k/d ~ random.

    With different numbers of columns, k is the smaller one.
    """
    if va.dim() != 2 or vb.dim() != 2 or va.shape[0] != vb.shape[0]:
        raise DrtError(f"bases must be (d, k) with the same d; got {tuple(va.shape)} and {tuple(vb.shape)}")
    k = min(va.shape[1], vb.shape[1])
    return float((va.to(_F64).T @ vb.to(device=va.device, dtype=_F64)).pow(2).sum() / k)
