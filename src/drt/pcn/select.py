"""Which layers a PCN transform touches and how many components each keeps (k per layer)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from drt.analysis.cost import forward_flops
from drt.analysis.pca import (
    BudgetUnit,
    k_budget,
    k_explained,
    k_fixed,
    k_threshold,
    k_width_fraction,
    subspace_overlap,
)
from drt.errors import DrtError
from drt.pcn.layers import PCNLayer, ineligible_reason, weight_of
from drt.pcn.stats import PCNStats, eligible_layers, select_layers

Keep = str | int | float
BUDGET_UNITS = ("params", "flops")
KeepArg = Keep | Mapping[str, Keep]
Exclude = Iterable[str] | Callable[[str, nn.Module], bool]


def parse_keep(text: str) -> KeepArg:
    """A keep rule from its text (flags, YAML): ``all`` (k = d) | ``0.99`` (explained variance) |
    ``64`` (fixed k) | ``conv8=64,conv11=32,fc=0.9`` (per layer name or glob pattern)."""
    def one(v: str) -> Keep:
        v = v.strip()
        if v == "all":
            return v
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                raise DrtError(f"pcn keep rule {v!r} must be 'all', an int k or a variance fraction") from None

    def checked(v: Keep) -> Keep:
        if (isinstance(v, int) and v < 1) or (isinstance(v, float) and not 0 < v <= 1):
            raise DrtError(f"pcn keep rule {v!r}: an int k must be >= 1 and a variance fraction in (0, 1]")
        return v

    if "=" in text:
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise DrtError(f"pcn keep {text!r}: use name=rule pairs separated by commas")
        names = [k.strip() for k, _ in pairs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DrtError(f"pcn keep {text!r} names {twice[0]!r} twice")
        return {k.strip(): checked(one(v)) for k, v in pairs}
    return checked(one(text))


def k_for(rule: Keep, stats: PCNStats, name: str) -> int:
    """k for layer ``name`` under one rule: "all" (k = d), a float in (0, 1] (explained variance), an int."""
    d = stats.dim(name)
    if rule == "all":
        return d
    if isinstance(rule, bool) or not isinstance(rule, int | float):
        raise DrtError(f"layer {name!r}: keep must be 'all', an int k in [1, {d}] or a variance fraction "
                       f"in (0, 1]; got {rule!r}")
    if isinstance(rule, int):
        return k_fixed(rule, d, f"layer {name!r}")
    return k_explained(stats.eigvals(name), rule, f"layer {name!r}")


def _excluded(exclude: Exclude, model: nn.Module) -> set[str]:
    eligible, ineligible = eligible_layers(model)
    modules = {**eligible, **{n: model.get_submodule(n) for n in ineligible}}
    if callable(exclude):
        return {n for n, m in modules.items() if exclude(n, m)}
    pats = [exclude] if isinstance(exclude, str) else list(exclude)
    return set(select_layers(modules, pats, modules, "exclude")) if pats else set()


def plan_components(model: nn.Module, stats: PCNStats, keep: KeepArg = "all", *,
                    width_fraction: float | None = None, eig_threshold: float | None = None,
                    budget: int | float | None = None, budget_of: str = "params", min_fraction: float = 0.0,
                    exclude: Exclude = (), include_first: bool = False) -> dict[str, int]:
    """Layer name -> k for every layer to transform, in forward order.

    ``keep``: one rule for all layers with statistics, or a dict of name / glob pattern -> rule
    (only matching layers are transformed). ``width_fraction`` and ``eig_threshold`` cap k further
    (k = the smallest of all rules given). ``min_fraction``: a floor of ceil(min_fraction * d) for k
    set by a variance rule or a budget (not for an explicit int k; caps win over the floor). Layers
    sharing a basis (same input tensor) are transformed together with the smallest of their k.
    ``budget`` is a target, of trainable parameters (``budget_of="params"``) or of forward FLOPs per
    sample (``"flops"``): the model's total after the input transform (an int), or a fraction in (0, 1)
    of its current total. k is then allocated greedily by explained variance per unit of cost
    (``k_budget``) up to the budget, between the floor and the caps; the keep rule then only chooses
    the layers. The first layer is skipped unless ``include_first``.
    """
    if budget_of not in BUDGET_UNITS:
        raise DrtError(f"budget_of must be one of {', '.join(BUDGET_UNITS)}; got {budget_of!r}")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, int | float) or not 0 <= min_fraction <= 1:
        raise DrtError(f"min_fraction must be a number in [0, 1]; got {min_fraction!r}")
    modules = dict(model.named_modules())
    names = stats.layers
    for n in names:
        if n not in modules:
            raise DrtError(f"PCN statistics name layer {n!r}, which this model does not have")
    skip = _excluded(exclude, model)
    first = list(stats.first)
    if include_first and any(n not in names for n in stats.first):
        raise DrtError(f"include_first=True but no statistics for {', '.join(stats.first)}; "
                       "collect(..., exclude_first=False)")
    if not include_first:
        skip |= set(first)
    rules: dict[str, Keep] = {}
    if isinstance(keep, Mapping):
        for pat, rule in keep.items():
            hits = select_layers(dict.fromkeys([*names, *first]), [pat], modules, "keep")
            bad = [h for h in hits if h in first and (not include_first or h not in names)]
            if bad and pat not in bad:  # a pattern that also matches the input layer: skip that layer
                hits, bad = [h for h in hits if h not in bad], []
            if bad:
                raise DrtError(f"keep names layer {bad[0]!r}, which reads the network input; pass "
                               "include_first=True (and collect(..., exclude_first=False)) to transform it")
            rules.update({h: rule for h in hits if h not in skip})
        rules = {n: rules[n] for n in names if n in rules}
    else:
        rules = {n: keep for n in names if n not in skip}
    for n in rules:
        reason = ineligible_reason(modules[n])
        if reason is not None:
            raise DrtError(f"layer {n!r} cannot be PCN-transformed: {reason}")
    ks: dict[str, int] = {}
    caps: dict[str, int] = {}
    for n, rule in rules.items():
        d = stats.dim(n)
        cap = d
        if width_fraction is not None:
            cap = min(cap, k_width_fraction(d, width_fraction, f"layer {n!r}"))
        if eig_threshold is not None:
            cap = min(cap, k_threshold(stats.eigvals(n), eig_threshold, f"layer {n!r}"))
        k = k_for(rule, stats, n)  # validates the rule, also when a budget sets k
        if not isinstance(rule, int) or isinstance(rule, bool):
            k = max(k, floor_k(d, min_fraction))
        ks[n], caps[n] = min(k, cap), cap
    # layers reading the same tensor share one basis: transform them together, with one k
    group_k: dict[str, int] = {}
    for n, k in ks.items():
        group_k[stats.key(n)] = min(k, group_k.get(stats.key(n), k))
    ks = {n: group_k[stats.key(n)] for n in names
          if stats.key(n) in group_k and n not in skip and not isinstance(modules[n], PCNLayer)}
    if budget is not None:
        floors = {n: min(floor_k(stats.dim(n), min_fraction), caps[n]) for n in ks}
        ks = _apply_budget(model, stats, {n: caps[n] for n in ks}, floors, budget, budget_of)
    return ks


def floor_k(d: int, fraction: float) -> int:
    """The smallest k ``min_fraction`` allows for a layer of width d: ceil(fraction * d), at least 1."""
    return max(1, math.ceil(fraction * d - 1e-9))


def _flop_costs(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Forward FLOPs of one sample through ``module`` (Linear or conv) reading ``in_shape``: (dense, the
    factored layer's per component, the projection's per component)."""
    w = weight_of(module)
    out, d, taps = int(w.shape[0]), int(w.shape[1]), math.prod(w.shape[2:])
    if isinstance(module, nn.Linear):
        positions = math.prod(in_shape[:-1])
        return 2 * positions * d * out, 2 * positions * out, 2 * positions * d
    spatial = in_shape[1:]
    conv: Any = module
    pad = conv.padding
    if pad == "same":
        sizes = list(spatial)
        pad = (1,) * len(spatial)  # not a strided pointwise conv
    else:
        pad = (0,) * len(spatial) if pad == "valid" else tuple(pad)
        sizes = [(s + 2 * p - dl * (kk - 1) - 1) // st + 1 for s, p, dl, kk, st in
                 zip(spatial, pad, conv.dilation, conv.kernel_size, conv.stride, strict=True)]
    s_out, s_in = math.prod(sizes), math.prod(spatial)
    pointwise_strided = taps == 1 and all(p == 0 for p in pad) and s_out < s_in
    return 2 * s_out * out * d * taps, 2 * s_out * out * taps, 2 * d * (s_out if pointwise_strided else s_in)


def _apply_budget(model: nn.Module, stats: PCNStats, caps: dict[str, int], floors: dict[str, int],
                  budget: int | float, budget_of: str) -> dict[str, int]:
    modules = dict(model.named_modules())
    if budget_of == "params":
        current = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        current = forward_flops(model, stats.sample_shape, next(model.parameters()).device)
    what = "trainable parameters" if budget_of == "params" else "forward FLOPs per sample"
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0 or (
            isinstance(budget, float) and budget >= 1):
        raise DrtError(f"budget must be a positive int ({what}) or a float in (0, 1) (fraction of the "
                       f"{current} {what}); got {budget!r}")
    target = int(budget * current) if isinstance(budget, float) else budget
    fixed = current
    units: dict[str, dict[str, Any]] = {}
    for n in caps:
        m = modules[n]
        u = units.setdefault(stats.key(n), {"cost": 0, "cap": caps[n], "floor": floors[n], "name": n, "proj": 0})
        if budget_of == "params":
            w = m.weight
            out, taps = w.shape[0], math.prod(w.shape[2:])
            fixed += out - w.numel() - (m.bias.numel() if m.bias is not None else 0)  # a PCN layer has a bias
            u["cost"] += out * taps
        else:
            dense, per_k, proj = _flop_costs(m, tuple(stats.input_shapes[n]))
            fixed -= dense
            u["cost"] += per_k
            u["proj"] = max(u["proj"], proj)  # factored readers of one basis share one projection
    for u in units.values():
        u["cost"] += u["proj"]
    minimum = fixed + sum(u["cost"] * u["floor"] for u in units.values())
    if target < minimum:
        raise DrtError(f"budget of {target} {what} is below the minimum {minimum} "
                       "(the smallest k per transformed layer); raise it or transform fewer layers")
    alloc = k_budget({key: BudgetUnit(stats.eigvals(u["name"]), u["cost"], u["cap"], u["floor"])
                      for key, u in units.items()}, target - fixed)
    return {n: alloc[stats.key(n)] for n in caps}


def subspace_overlaps(prev: PCNStats, cur: PCNStats, keep: Keep | Mapping[str, int] = 0.99) -> dict[str, float]:
    """Per basis: ||V_prev^T V_cur||_F^2 / k between two collections (e.g. consecutive epochs).

    k per basis comes from ``keep`` applied to ``cur`` (same rule for both), or from a mapping of
    layer name -> k (e.g. ``plan_components``' plan; other layers are skipped). Values near 1 mean
    the principal subspace has settled (a signal for choosing the transform epoch automatically).
    """
    out = {}
    for name in cur.layers:
        key = cur.key(name)
        if key != name or key not in prev.keys or (isinstance(keep, Mapping) and name not in keep):
            continue
        k = keep[name] if isinstance(keep, Mapping) else k_for(keep, cur, name)
        out[name] = subspace_overlap(prev.eig(name)[1][:, :k], cur.eig(name)[1][:, :k])
    return out
