"""Dynamic sparse training: one drop/grow update (SET, RigL = SET with a gradient grow score, GraNet, SNFS).

Every function is deterministic given its inputs and an explicit ``generator`` (identical on all
ranks if gradients were all-reduced first). Pitfalls (spec "sparse-and-frozen"): newly grown
weights and their optimizer state start at zero (3); RigL grows by the *dense* gradient, so take
``grad_magnitude`` before ``MaskSet.mask_grads_`` (5); each method's own schedule (6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from drt.errors import DrtError
from drt.sparse.distributions import global_topk
from drt.sparse.masks import MaskSet, zero_state_
from drt.sparse.scores import magnitude_scores

GrowCounts = Callable[[Mapping[str, int], Mapping[str, int]], Mapping[str, int]]
# the drop score of every masked tensor (name -> same shape); the lowest active scores are dropped
DropScore = Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]]
# one tensor's flat weights -> bool masks of groups that each drop their own fraction
DropGroups = Callable[[Tensor], Sequence[Tensor]]


@dataclass
class DropGrowInfo:
    """Per-layer counts of one update: dropped, grown, and grown weights that were inactive before."""

    dropped: dict[str, int] = field(default_factory=dict)
    grown: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)


def grad_magnitude(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """RigL grow score |dL/dtheta| from ``.grad`` (must be the dense gradient: before masking grads)."""
    missing = [n for n, p in weights.items() if p.grad is None]
    if missing:
        raise DrtError(f"gradient grow scores need .grad after backward; missing for {', '.join(missing)}")
    return {n: p.grad.detach().abs() for n, p in weights.items() if p.grad is not None}


def _ranked(score: Tensor, candidates: Tensor, k: int, descending: bool, tiebreak: Tensor | None) -> Tensor:
    """Flat bool mask of the k best ``candidates`` by ``score``; ties by ``tiebreak`` order, else index."""
    flat = score.detach().reshape(-1).double().cpu()
    cand = candidates.reshape(-1).cpu()
    fill = float("inf") if not descending else float("-inf")
    flat = torch.nan_to_num(flat, nan=fill).masked_fill(~cand, fill)  # NaN is never picked
    perm = tiebreak if tiebreak is not None else torch.arange(flat.numel())
    order = perm[torch.sort(flat[perm], descending=descending, stable=True).indices]
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[order[:k]] = True
    return out & cand


def by_sign(w: Tensor) -> tuple[Tensor, Tensor]:
    """SET's drop groups: non-negative and negative weights (exact zeros count as non-negative), so that
    with |θ| scores the fraction closest to zero of each sign is dropped (Mocanu et al. 2018)."""
    return w >= 0, w < 0


def _drop(score: Tensor, active: Tensor, fraction: float, rounding: str,
          groups: Sequence[Tensor]) -> tuple[Tensor, int]:
    """Per group, the ``rounding(fraction * n_active)`` lowest-scored active weights (ties: lower index)."""
    dropped, k_total = torch.zeros_like(active), 0
    for g in groups:
        cand = active & g.reshape(-1).cpu()
        raw = fraction * int(cand.sum())
        k = math.floor(raw) if rounding == "floor" else math.ceil(raw)
        dropped |= _ranked(score, cand, k, False, None)
        k_total += k
    return dropped, k_total


@torch.no_grad()
def drop_grow_(
    weights: Mapping[str, Tensor],
    masks: MaskSet,
    drop_fraction: float,
    grow_scores: Mapping[str, Tensor] | None,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    drop_score: DropScore = magnitude_scores,
    drop_groups: DropGroups | None = None,
    rounding: str = "floor",
    grow_counts: GrowCounts | None = None,
    fixed: Collection[str] = (),
) -> DropGrowInfo:
    """Per layer drop k active weights, then grow k among those inactive after the drop; in place.

    Drop: the k = floor (``rounding="ceil"``: GraNet, SNFS, ITOP) of ``drop_fraction * n_active``
    lowest ``drop_score(weights)`` (default |theta|, every DST method here), ties to the lower index;
    with ``drop_groups`` (SET: ``by_sign``) each group of a tensor drops its own k. A new drop rule is
    one score function. Grow: largest ``grow_scores`` (|dense grad| for RigL; ``None`` = uniform
    random from ``generator``, SET), ties broken by a random permutation from ``generator``.
    ``grow_counts(dropped, capacity)`` (SNFS's redistribution) sets how many each layer regrows
    instead, given the per-layer dropped counts and inactive weights after the drop; then a fully
    dense layer takes part too (it may lose weights to others). Layers named in ``fixed`` (dense by
    rule) are never touched; without ``grow_counts`` a fully dense layer cannot change either.
    Mutates ``weights``, ``masks`` and ``optimizer`` state: connections inactive before start at 0
    with zero state, dropped ones are zeroed, dropped-and-regrown ones keep value and state.
    Per-layer active counts are unchanged unless ``grow_counts`` moves them.
    Evci et al. 2020; Mocanu et al. 2018; Liu et al. 2021; Dettmers & Zettlemoyer 2019.
    """
    if not 0.0 <= drop_fraction <= 1.0:
        raise DrtError(f"drop fraction must be in [0, 1], got {drop_fraction}")
    if not callable(drop_score) or (drop_groups is not None and not callable(drop_groups)):
        raise DrtError(f"drop_score and drop_groups are functions (e.g. drt.sparse.magnitude_scores, by_sign); "
                       f"got {drop_score!r}, {drop_groups!r}")
    if rounding not in ("floor", "ceil"):
        raise DrtError(f"unknown rounding {rounding!r}; valid: floor, ceil")
    missing = [n for n in masks if n not in weights]
    if missing:
        raise DrtError(f"masked tensors without weights: {', '.join(missing)}")
    if grow_scores is not None:
        bad = [n for n in masks if n not in grow_scores or grow_scores[n].numel() != masks[n].numel()]
        if bad:
            raise DrtError(f"grow scores missing or of the wrong size for {', '.join(bad)}; "
                           f"need one score per weight of {', '.join(masks)}")
    info = DropGrowInfo()
    scores = drop_score({n: weights[n] for n in masks})
    after: dict[str, Tensor] = {}  # the active weights after the drop, per layer that takes part
    for name, old in masks.items():
        active = old.reshape(-1).cpu()
        if name in fixed or (int(active.sum()) == active.numel() and grow_counts is None):  # nothing can change
            info.dropped[name] = info.grown[name] = info.new[name] = 0
            continue
        groups = drop_groups(weights[name].detach().reshape(-1)) if drop_groups is not None else [active]
        dropped, k = _drop(scores[name].reshape(-1), active, drop_fraction, rounding, groups)
        after[name], info.dropped[name] = active & ~dropped, k
    counts = {n: info.dropped[n] for n in after}
    if grow_counts is not None:
        counts = dict(grow_counts(counts, {n: int((~a).sum()) for n, a in after.items()}))
        too_many = [n for n in after if not 0 <= counts.get(n, -1) <= int((~after[n]).sum())]
        if too_many:
            raise DrtError(f"grow counts outside [0, inactive weights] for {', '.join(too_many)}")
    for name, kept in after.items():
        old, w = masks[name], weights[name]
        if grow_scores is None:
            gs = torch.rand(w.numel(), generator=generator, device=generator.device).cpu()
        else:
            gs = grow_scores[name].reshape(-1)
        tiebreak = torch.randperm(w.numel(), generator=generator, device=generator.device).cpu()
        grown = _ranked(gs, ~kept, counts[name], True, tiebreak)
        new_mask = kept | grown
        fresh = grown & ~old.reshape(-1).cpu()
        reset = (fresh | ~new_mask).reshape(w.shape).to(w.device)
        w.masked_fill_(reset, 0)
        if optimizer is not None:
            zero_state_(optimizer, w, reset)
        masks[name] = new_mask.reshape(old.shape).to(old.device)
        info.grown[name], info.new[name] = int(grown.sum()), int(fresh.sum())
    return info


def redistribute(total: int, shares: Mapping[str, float], capacity: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` regrown weights over layers in proportion to ``shares``, at most ``capacity``
    each (water-filling: what a full layer cannot take goes to the others in proportion), integer
    counts by largest remainder summing exactly to min(total, sum of capacities). SNFS's momentum
    redistribution (Dettmers & Zettlemoyer 2019) with exact counts; zero shares split evenly."""
    bad = [n for n in shares if not (math.isfinite(shares[n]) and shares[n] >= 0) or capacity.get(n, -1) < 0]
    if bad or total < 0:
        raise DrtError(f"redistribute needs total >= 0, finite shares >= 0 and capacities >= 0; "
                       f"bad for {', '.join(bad) or f'total={total}'}")
    target = min(total, sum(capacity[n] for n in shares))
    quota = dict.fromkeys(shares, 0.0)
    open_, left = [n for n in shares if capacity[n] > 0], float(target)
    while open_:
        weight = sum(shares[n] for n in open_)
        q = {n: left * (shares[n] / weight if weight > 0 else 1 / len(open_)) for n in open_}
        full = [n for n in open_ if q[n] >= capacity[n]]
        if not full:
            quota.update(q)
            break
        for n in full:
            quota[n] = capacity[n]
            left -= capacity[n]
            open_.remove(n)
    counts = {n: min(math.floor(quota[n]), capacity[n]) for n in shares}
    room = sorted((n for n in shares if counts[n] < capacity[n]), key=lambda n: counts[n] - quota[n])
    for n in room[:target - sum(counts.values())]:
        counts[n] += 1
    return counts


def rigl_drop_fraction(step: int, alpha: float = 0.3, *, t_end: int) -> float:
    """RigL's alpha_t = alpha/2 * (1 + cos(pi t / T_end)) for t < T_end, 0 after (Evci et al. 2020)."""
    if not 0.0 < alpha <= 1.0 or t_end <= 0 or step < 0:
        raise DrtError(f"need 0 < alpha <= 1, t_end > 0, step >= 0; got alpha={alpha}, t_end={t_end}, "
                       f"step={step}")
    return 0.0 if step >= t_end else alpha / 2 * (1 + math.cos(math.pi * step / t_end))


def cosine_drop_fraction(step: int, rate: float = 0.5, *, t_total: int, floor: float = 0.005) -> float:
    """SNFS/ITOP/GraNet death rate: cosine from ``rate`` to ``floor`` over all ``t_total`` steps."""
    if not 0.0 < rate <= 1.0 or t_total <= 0 or step < 0:
        raise DrtError(f"need 0 < rate <= 1, t_total > 0, step >= 0; got rate={rate}, t_total={t_total}")
    t = min(step, t_total)
    return floor + (rate - floor) / 2 * (1 + math.cos(math.pi * t / t_total))


def granet_sparsity(step: int, s_i: float, s_f: float, t0: int, t_f: int) -> float:
    """GraNet's cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_f - t0))^3, clamped to [t0, t_f]."""
    if t_f <= t0 or not 0.0 <= s_i <= s_f < 1.0:
        raise DrtError(f"need t_f > t0 and 0 <= s_i <= s_f < 1; got t0={t0}, t_f={t_f}, s_i={s_i}, s_f={s_f}")
    frac = min(max((step - t0) / (t_f - t0), 0.0), 1.0)
    return s_f + (s_i - s_f) * (1.0 - frac) ** 3


@torch.no_grad()
def granet_prune_(weights: Mapping[str, Tensor], masks: MaskSet, sparsity: float,
                  optimizer: torch.optim.Optimizer | None = None, guard: bool = True) -> dict[str, int]:
    """Global magnitude pruning of the active weights down to ``sparsity`` (never grows); in place.

    Zeroes pruned weights and their optimizer state; returns pruned counts per layer. A no-op if
    the masks are already at least that sparse. Follow with ``drop_grow_(..., rounding="ceil")``.
    """
    if masks.sparsity() >= sparsity:
        return dict.fromkeys(masks, 0)
    scores = {n: weights[n].detach().abs().masked_fill(~masks[n].to(weights[n].device), float("-inf"))
              for n in masks}
    keep, _ = global_topk(scores, sparsity, guard=guard)
    pruned = {}
    for n, old in masks.items():
        new = keep[n].to(old.device) & old
        reset = (~new).to(weights[n].device)
        weights[n].masked_fill_(reset, 0)
        if optimizer is not None:
            zero_state_(optimizer, weights[n], reset)
        pruned[n] = int(old.sum()) - int(new.sum())
        masks[n] = new
    return pruned


class ExplorationTracker:
    """Fraction of masked weights ever active (ITOP's exploration rate; Liu et al. 2021)."""

    def __init__(self, masks: MaskSet) -> None:
        self.ever = {n: m.detach().cpu().clone() for n, m in masks.items()}

    def update(self, masks: MaskSet) -> None:
        """Add the currently active weights (call after each drop/grow)."""
        for n, m in masks.items():
            self.ever[n] |= m.detach().cpu()

    def rate(self, name: str | None = None) -> float:
        """Ever-active fraction for one tensor or overall."""
        tensors = [self.ever[name]] if name else list(self.ever.values())
        return sum(int(t.sum()) for t in tensors) / max(sum(t.numel() for t in tensors), 1)

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.clone() for n, t in self.ever.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if set(state) != set(self.ever):
            raise DrtError(f"exploration state is for tensors {', '.join(state)}, not {', '.join(self.ever)}")
        self.ever = {n: state[n].bool().cpu().clone() for n in self.ever}
