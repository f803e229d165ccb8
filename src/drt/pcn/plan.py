"""Execution plans of PCN layers, chosen by counted training FLOPs (``torch.utils.flop_counter``).

Each PCN layer runs *factored* (project to k, then the layer on k inputs) or *merged* (one layer with
W' V^T formed each step); both compute the same function with the same trainable W'. ``choose_plans_``
counts forward + backward FLOPs of every alternative on meta tensors of the layer's real input shape
and training batch, per group of layers sharing a basis (whose factored members share one projection),
and keeps the cheapest; a tie goes to merged (one kernel instead of two).

Counted FLOPs alone favour factored layers too often on a CPU, for two reasons the count corrects:
convolution kernels (oneDNN's blocked layouts) work on channels in blocks of 8 floats (AVX2; 16 on
AVX-512), so a factored convolution's k is counted rounded up to ``CHANNEL_BLOCK`` (at most d); and
the projection is one more kernel that runs far below peak on narrow maps, so a factored group is
charged ``PROJECTION_COST`` FLOPs per element of its z. Measured (``benchmarks/pcn_speed.py``):
ResNet-20's 16-channel layers keeping 10-12 components run merged (factored they were 1.2-1.6x
slower per layer at 0.67-0.8 of the FLOPs), while VGG-11's wide layers stay factored.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from drt.errors import DrtError
from drt.pcn.layers import EXEC_MODES, PCNLayer, PCNLinear, link_projections_, pcn_class

PLANS = ("auto", *EXEC_MODES)
CHANNEL_BLOCK = 8  # channels a CPU convolution kernel handles at once (AVX2 float32)
# FLOP-equivalents of one element of a factored group's projection z = V^T (x - mu), forward and backward:
# the extra kernel runs far below peak on narrow maps (measured per layer on this CPU: a 16-channel
# ResNet-20 layer keeping 11 components was 1.35x slower factored at 0.74x the FLOPs, i.e. ~750 FLOPs per
# element of z; on VGG-11's 128-512-channel layers the same charge is 1-5% of the layer)
PROJECTION_COST = 500


def blocked(k: int, d: int, block: int = CHANNEL_BLOCK) -> int:
    """``k`` channels as a convolution kernel pays for them: rounded up to ``block``, at most ``d``."""
    return min(d, -(-k // block) * block)


def layer_inputs(model: nn.Module, sample_shape: Sequence[int], names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The shape of one sample's input to each layer ``names`` (one forward of a zero sample, eval mode)."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(name: str):  # a pre-hook that returns nothing (a returned value would replace the input)
        def hook(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    handles = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    ref = next(iter(model.parameters()))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape, device=ref.device, dtype=ref.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise DrtError(f"PCN plan: layer {missing[0]!r} is not called in the model's forward pass")
    return shapes


def train_flops(layers: Sequence[PCNLayer], modes: Sequence[str], in_shape: tuple[int, ...], batch: int) -> int:
    """Counted FLOPs of one training step (forward + backward) of ``layers`` reading one input of
    ``(batch, *in_shape)`` in ``modes``; the factored ones share one projection, and a factored
    convolution's k is counted as the kernel pays for it (``blocked``)."""
    copies = []
    for layer, mode in zip(layers, modes, strict=True):
        spec = {**layer.spec(), "exec": mode}
        if mode == "factored" and not isinstance(layer, PCNLinear):
            spec["k"] = blocked(spec["k"], spec["d"])
        copies.append(pcn_class(spec["type"]).from_spec(spec, device="meta", dtype=torch.float32))
    link_projections_(nn.ModuleList(copies))
    x = torch.empty(batch, *in_shape, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        total = torch.stack([m(x).sum() for m in copies]).sum()
        total.backward()
    return int(counter.get_total_flops())


def plan_cost(layers: Sequence[PCNLayer], modes: Sequence[str], in_shape: tuple[int, ...], batch: int) -> int:
    """What ``auto`` minimises: ``train_flops`` plus, for a convolution group with a factored member,
    ``PROJECTION_COST`` per element of the shared projection z (Linear projections are plain GEMMs)."""
    flops = train_flops(layers, modes, in_shape, batch)
    if "factored" not in modes or isinstance(layers[0], PCNLinear):
        return flops
    return flops + PROJECTION_COST * batch * layers[0].k * math.prod(in_shape[1:])


def choose_plans_(model: nn.Module, sample_shape: Sequence[int], plan: str = "auto", batch: int = 128,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """Set every PCN layer's execution plan (in place) and link shared projections; returns name -> plan.

    ``plan``: "factored" or "merged" for all layers, or "auto": per basis group the combination of the
    lowest ``plan_cost`` at ``batch`` samples per step (ties: merged). ``input_shapes``: one
    sample's input shape per layer as the statistics saw it (channels are taken from the layer, which
    the output transform may have narrowed); layers missing there are measured by one forward pass.
    """
    if plan not in PLANS:
        raise DrtError(f"unknown PCN execution plan {plan!r}; valid: {', '.join(PLANS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DrtError(f"PCN plan: batch must be a positive int; got {batch!r}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PCNLayer)}
    if plan != "auto":
        for m in layers.values():
            m.exec_mode = plan
        link_projections_(model)
        return {n: plan for n in layers}
    known = input_shapes or {}
    missing = [n for n in layers if n not in known]
    shapes = layer_inputs(model, sample_shape, missing) if missing else {}
    for n in layers:
        if n in known:  # the layer's own input width: (d, *spatial) for convs, (..., d) for Linear
            s = known[n]
            shapes[n] = (*s[:-1], layers[n].d) if isinstance(layers[n], PCNLinear) else (layers[n].d, *s[1:])
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for n, m in layers.items():
        groups.setdefault((m.basis_key, shapes[n]), []).append(n)
    chosen: dict[str, str] = {}
    for (_, shape), names in groups.items():
        members = [layers[n] for n in names]
        options = sorted(itertools.product(("merged", "factored"), repeat=len(members)),
                         key=lambda c: c.count("factored"))  # stable min: fewer factored wins a tie
        best = min(options, key=lambda c: plan_cost(members, c, shape, batch))
        chosen.update(zip(names, best, strict=True))
    for n, mode in chosen.items():
        layers[n].exec_mode = mode
    link_projections_(model)
    return chosen


def plan_of(model: nn.Module) -> Mapping[str, str]:
    """Name -> execution plan of every PCN layer of ``model``."""
    return {n: m.exec_mode for n, m in model.named_modules() if isinstance(m, PCNLayer)}
