"""Per-layer densities (uniform / ER / ERK), exact integer counts, and global or per-layer top-k masks.

"Achieved sparsity" is the overall sparsity over the given (prunable) tensors: kept counts are
rounded so the total is exactly round((1 - s) * N) (spec "sparse-and-frozen", pitfall 7), and
every layer keeps at least one weight unless the caller disables the guard (pitfall 1).
Tie-breaking is deterministic (earlier tensor, then lower flat index wins) so ranks agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from drt.errors import DrtError
from drt.sparse.masks import MaskSet

KINDS = ("uniform", "er", "erk")
DISTRIBUTIONS = ("global", *KINDS)


def check_sparsity(sparsity: float) -> float:
    """Validate 0 <= sparsity < 1 (DrtError otherwise)."""
    if not (isinstance(sparsity, int | float) and 0.0 <= sparsity < 1.0):
        raise DrtError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def kept_total(numel: int, sparsity: float) -> int:
    """round((1 - s) * N), halves rounded up: the exact overall number of kept weights."""
    return math.floor((1.0 - check_sparsity(sparsity)) * numel + 0.5)


def dense_names(
    names: Sequence[str], dense_first: bool = False, dense_last: bool = False, dense: Iterable[str] = ()
) -> list[str]:
    """Names kept fully dense: ``dense`` plus the first / last tensor in the given order."""
    dense = list(dense)
    unknown = [n for n in dense if n not in names]
    if unknown:
        raise DrtError(f"dense layers not among the prunable tensors: {', '.join(unknown)}")
    out = set(dense) | ({names[0]} if dense_first and names else set()) | (
        {names[-1]} if dense_last and names else set())
    return [n for n in names if n in out]


def _raw_er(shape: Sequence[int], kind: str) -> float:
    """ERK: sum(shape) / prod(shape); ER: (n_out + n_in) / (n_out * n_in) ignoring kernel dims."""
    dims = list(shape) if kind == "erk" or len(shape) < 2 else list(shape[:2])
    return sum(dims) / math.prod(dims)


def layer_densities(
    shapes: Mapping[str, Sequence[int]],
    sparsity: float,
    kind: str = "uniform",
    dense_first: bool = False,
    dense_last: bool = False,
    dense: Iterable[str] = (),
) -> dict[str, float]:
    """Per-layer densities whose numel-weighted total is exactly 1 - sparsity.

    uniform: one density for every non-dense layer (RigL keeps the first layer dense with
    ``dense_first``; RigL then leaves the others at ``sparsity``, here they are re-solved so the
    overall target holds). er / erk (Evci et al. 2020, RigL ``sparse_utils.get_sparsities``):
    density_l = eps * raw_l, eps solved for the target; while the largest-raw layer exceeds 1 it is
    made dense and eps re-solved. Raises DrtError if the target is unreachable.
    """
    if kind not in KINDS:
        raise DrtError(f"unknown layer distribution {kind!r}; valid: {', '.join(KINDS)}")
    sparsity = check_sparsity(sparsity)
    names = list(shapes)
    if not names:
        raise DrtError("no tensors to prune (the model has no prunable conv or linear weights)")
    numel = {n: math.prod(shapes[n]) for n in names}
    total = sum(numel.values())
    dense_set = set(dense_names(names, dense_first, dense_last, dense))
    if sparsity == 0.0:
        return dict.fromkeys(names, 1.0)
    budget = (1.0 - sparsity) * total
    raw = {n: (1.0 if kind == "uniform" else _raw_er(shapes[n], kind)) for n in names}
    while True:
        sparse = [n for n in names if n not in dense_set]
        rhs = budget - sum(numel[n] for n in dense_set)
        if not sparse or rhs < 0:
            raise DrtError(
                f"{kind} cannot reach sparsity {sparsity}: dense/saturated layers "
                f"{', '.join(n for n in names if n in dense_set)} already exceed the kept budget"
            )
        eps = rhs / sum(raw[n] * numel[n] for n in sparse)
        top = max(raw[n] for n in sparse)
        if eps * top <= 1.0 + 1e-12:
            break
        if kind == "uniform":
            raise DrtError(
                f"uniform cannot reach sparsity {sparsity}: with dense layers "
                f"{', '.join(n for n in names if n in dense_set)} the others would need density {eps:.4f} > 1"
            )
        dense_set |= {n for n in sparse if raw[n] == top}
    return {n: 1.0 if n in dense_set else min(1.0, eps * raw[n]) for n in names}


def layer_counts(
    numels: Mapping[str, int], densities: Mapping[str, float], sparsity: float, guard: bool = True
) -> dict[str, int]:
    """Integer kept counts: total exactly round((1-s)N) (largest remainder), 0/1 <= count <= numel.

    With ``guard`` every layer keeps >= 1 weight: the weights a guarded layer gains are taken from
    the layers rounded furthest above their quota (fully dense layers last).
    """
    names = list(numels)
    total = kept_total(sum(numels.values()), sparsity)
    quota = {n: min(max(densities[n], 0.0), 1.0) * numels[n] for n in names}
    counts = {n: min(math.floor(quota[n] + 1e-9), numels[n]) for n in names}
    rest = total - sum(counts.values())
    open_ = [n for n in names if counts[n] < numels[n]]
    if rest < 0 or rest > len(open_):
        raise DrtError(f"layer densities sum to {sum(quota.values()):.1f} kept weights, "
                       f"not the {total} required by sparsity {sparsity}")
    by_frac = sorted(open_, key=lambda n: (-(quota[n] - counts[n]), names.index(n)))
    for n in by_frac[:rest]:
        counts[n] += 1
    if guard:
        if total < len(names):
            raise DrtError(f"sparsity {sparsity} keeps {total} weights, fewer than the {len(names)} layers")
        for n in [n for n in names if counts[n] == 0]:
            donors = [d for d in names if counts[d] > 1]
            donor = min(donors, key=lambda d: (densities[d] >= 1.0, quota[d] - counts[d], -counts[d]))
            counts[donor] -= 1
            counts[n] = 1
    return counts


def _flat(scores: Mapping[str, Tensor]) -> tuple[Tensor, list[str], list[int]]:
    names = list(scores)
    if not names:
        raise DrtError("no tensors to prune (empty score dict)")
    flat = torch.cat([scores[n].detach().reshape(-1).double().cpu() for n in names])
    if torch.isnan(flat).any():
        raise DrtError("scores contain NaN; cannot rank weights")
    return flat, names, [scores[n].numel() for n in names]


def _topk_mask(score: Tensor, k: int) -> Tensor:
    """Bool mask of the k highest entries; ties go to the lower flat index (stable sort)."""
    flat = score.detach().reshape(-1).double().cpu()
    if torch.isnan(flat).any():
        raise DrtError("scores contain NaN; cannot rank weights")
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(score.shape)


def global_topk(
    scores: Mapping[str, Tensor], sparsity: float, guard: bool = True, keep: int | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """One threshold over all tensors: keep exactly round((1-s)N) (or ``keep``) highest scores.

    With ``guard`` each tensor keeps at least its best weight; to keep the total exact the globally
    weakest kept weights of tensors with more than one are removed. Returns (masks on CPU,
    names where the guard fired). Ties: earlier tensor / lower index wins.
    """
    flat, names, sizes = _flat(scores)
    k = kept_total(flat.numel(), sparsity) if keep is None else keep
    order = torch.sort(flat, descending=True, stable=True).indices
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order[:k]] = True
    fired: list[str] = []
    if guard:
        if k < len(names):
            raise DrtError(f"sparsity {sparsity} keeps {k} weights, fewer than the {len(names)} tensors")
        per = torch.bincount(owner[chosen], minlength=len(names))
        empty = [i for i in range(len(names)) if per[i] == 0]
        if empty:
            fired = [names[i] for i in empty]
            order_owner = owner[order]
            for i in empty:  # best weight of the empty tensor
                chosen[order[int(torch.nonzero(order_owner == i)[0])]] = True
                per[i] = 1
            removed, pos = 0, k - 1
            while removed < len(empty):  # drop the weakest surplus, walking up from the threshold
                j = int(order[pos])
                o = int(owner[j])
                if chosen[j] and per[o] > 1:
                    chosen[j] = False
                    per[o] -= 1
                    removed += 1
                pos -= 1
    out, start = {}, 0
    for n, size in zip(names, sizes, strict=True):
        out[n] = chosen[start:start + size].reshape(scores[n].shape)
        start += size
    return out, fired


def masks_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float,
    distribution: str = "global",
    *,
    dense_first: bool = False,
    dense_last: bool = False,
    dense: Iterable[str] = (),
    guard: bool = True,
) -> tuple[MaskSet, dict]:
    """Keep the highest scores: one global threshold, or per-layer top-k at uniform/ER/ERK counts.

    Layers named dense (or first/last) are kept whole; the rest share the exact overall budget.
    Returns (MaskSet on the scores' device, info with per-layer target/achieved and guard firings).
    """
    if distribution not in DISTRIBUTIONS:
        raise DrtError(f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    names = list(scores)
    if not names:
        raise DrtError("no tensors to prune (the model has no prunable conv or linear weights)")
    numels = {n: scores[n].numel() for n in names}
    total = sum(numels.values())
    dense_list = dense_names(names, dense_first, dense_last, dense)
    if distribution == "global":
        rest = {n: scores[n] for n in names if n not in dense_list}
        keep = kept_total(total, sparsity) - sum(numels[n] for n in dense_list)
        if keep < 0 or not rest:
            raise DrtError(f"global cannot reach sparsity {sparsity}: dense layers "
                           f"{', '.join(dense_list)} already exceed the kept budget")
        masks, fired = global_topk(rest, sparsity, guard=guard, keep=keep)
        masks.update({n: torch.ones(scores[n].shape, dtype=torch.bool) for n in dense_list})
        targets: dict[str, float | None] = {n: (1.0 if n in dense_list else None) for n in names}
    else:
        shapes = {n: tuple(scores[n].shape) for n in names}
        dens = layer_densities(shapes, sparsity, distribution, dense=dense_list)
        counts = layer_counts(numels, dens, sparsity, guard=guard)
        unguarded = layer_counts(numels, dens, sparsity, guard=False) if guard else counts
        masks = {n: _topk_mask(scores[n], counts[n]) for n in names}
        fired = [n for n in names if unguarded[n] == 0 < counts[n]]
        targets = dict(dens)
    device = next(iter(scores.values())).device if scores else torch.device("cpu")
    ms = MaskSet({n: masks[n].to(device) for n in names})
    return ms, mask_info(ms, distribution, sparsity, targets, fired)


def mask_info(masks: MaskSet, distribution: str, sparsity: float,
              targets: Mapping[str, float | None] | None = None, guard_fired: Iterable[str] = ()) -> dict:
    """Target vs achieved densities per layer and overall, and where the collapse guard fired."""
    return {
        "distribution": distribution,
        "target_sparsity": sparsity,
        "achieved_sparsity": masks.sparsity(),
        "targets": dict(targets) if targets is not None else dict.fromkeys(masks),
        "achieved": {n: masks.density(n) for n in masks},
        "guard_fired": list(guard_fired),
    }
