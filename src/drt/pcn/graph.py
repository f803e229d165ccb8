"""The producer -> consumer channel graph of a model, for the PCN output transform (``narrow``).

The graph comes from torch.fx. A *channel space* is a set of tensors whose
channels must be sliced together: channel-wise ops (BN, activations, dropout, pooling, global mean)
keep a tensor in its space, flatten -> Linear maps channel c to features c*HW .. (c+1)*HW - 1, and
elementwise add / sub / mul (residual connections) merge spaces, which are then narrowed jointly
with scores averaged over their PCN readers (the ResNet rule). The network input and output,
concatenation, other reshapes and unknown ops block the spaces they touch; asking to narrow a
blocked space raises DrtError naming the layer. Supported: chains (MLP, LeNet, Conv-4/6, VGG) and
ResNets with projection or identity shortcuts (not the zero-padding "option A" shortcut).
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from drt.errors import DrtError
from drt.models import name_of
from drt.pcn.layers import PCNLayer, PCNLinear, ineligible_reason

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                 nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d,
                 nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_PASS_FUNCS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.mish, torch.sigmoid,
               torch.tanh, F.dropout, F.dropout1d, F.dropout2d, F.max_pool1d, F.max_pool2d, F.avg_pool1d,
               F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d,
               F.adaptive_max_pool2d}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
_REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}  # kept only if (N, C) is unchanged
_RESHAPE = {torch.flatten, torch.reshape, torch.squeeze, "flatten", "view", "reshape", "squeeze"}
_JOIN = {operator.add, operator.iadd, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
         "add", "add_", "sub", "mul", "mul_"}
_META = {"size", "dim", "numel", getattr}


@dataclass
class Space:
    """One channel space: the modules that produce, normalise and read it, and why it is blocked."""

    producers: list[str] = field(default_factory=list)
    bns: list[str] = field(default_factory=list)
    readers: list[tuple[str, int]] = field(default_factory=list)  # (module, input features per channel)
    blocked: list[str] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)
    flattens: list[tuple[fx.Node, int]] = field(default_factory=list)  # this space = flatten(parent)

    def extend(self, other: Space) -> None:
        for f in ("producers", "bns", "readers", "blocked", "flattens"):
            getattr(self, f).extend(getattr(other, f))
        self.channels |= other.channels


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PCNLayer) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, sample_shape: tuple[int, ...]) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        gm = fx.GraphModule(model, tracer.trace(model))
    except Exception as err:  # fx raises many types for untraceable code
        raise DrtError(f"output transform: torch.fx cannot trace {name_of(model)} "
                       f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); use output=False"
                       ) from None
    ref = next(iter(model.parameters()))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(2, *sample_shape, dtype=ref.dtype, device=ref.device))
    except Exception as err:  # e.g. a model whose input is not a float tensor (token ids)
        text = str(err).strip().splitlines()
        raise DrtError(f"output transform: cannot propagate a float input of shape {tuple(sample_shape)} through "
                       f"{name_of(model)} ({text[-1][:160] if text else type(err).__name__}); use output=False"
                       ) from None
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return gm


def _shape(n: Any) -> tuple[int, ...] | None:
    tm = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(tm.shape) if isinstance(tm, TensorMetadata) else None


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[str(node.target)]).__name__})"
    stack = list(node.meta.get("nn_module_stack", {}))
    where = f" in {stack[-1]!r}" if stack and stack[-1] else ""
    if node.op == "call_method":
        return f"method .{node.target}(){where}"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}{where}"


def channel_spaces(model: nn.Module, sample_shape: tuple[int, ...]) -> list[Space]:
    """The model's channel spaces (see module docstring), from an fx trace with shapes."""
    gm = _trace(model, sample_shape)
    modules = dict(gm.named_modules())
    parent: dict[fx.Node, fx.Node] = {}
    info: dict[fx.Node, Space] = defaultdict(Space)

    def find(n: fx.Node) -> fx.Node:
        parent.setdefault(n, n)
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def join(a: fx.Node, b: fx.Node) -> None:
        parent[find(a)] = find(b)

    def block(n: fx.Node, reason: str) -> None:
        info[n].blocked.append(reason)

    for node in gm.graph.nodes:
        shape, ins = _shape(node), [a for a in node.all_input_nodes if _shape(a) is not None]
        if node.op == "output":
            for a in ins:
                block(a, "reach the model output")
            continue
        if shape is None:  # non-tensor result: harmless metadata, or an op we cannot follow
            if node.target not in _META:
                for a in ins:
                    block(a, f"feed {_describe(node, modules)}")
            continue
        find(node)
        kind = _kind(node, modules, shape)
        if kind in ("layer", "bn", "pass", "flatten") and _shape(node.args[0] if node.args else None) is None:
            kind = _describe(node, modules) + " with its input passed by keyword"
        if len(shape) >= 2 and kind != "flatten":
            info[node].channels.add(shape[1])
        if node.op == "placeholder":
            block(node, "are the network input")
        elif kind == "layer":
            name = str(node.target)
            info[node].producers.append(name)
            info[node.args[0]].readers.append((name, 1))
        elif kind == "bn":
            join(node, node.args[0])
            info[node].bns.append(str(node.target))
        elif kind == "pass":
            join(node, node.args[0])
        elif kind == "join":
            for a in ins:
                join(node, a)
        elif kind == "flatten":
            src, shape = node.args[0], _shape(node.args[0])
            assert shape is not None  # ShapeProp ran: every tensor node has its shape
            info[node].flattens.append((src, math.prod(shape[2:])))
        else:
            for a in ins:
                block(a, f"go through {kind}")
            block(node, f"come from {kind}")
            if node.op == "call_module" and isinstance(modules[node.target], PCNLayer) and node.args:
                info[node.args[0]].readers.append((str(node.target), 1))  # so asking for it names the reason
    return _merge(info, find)


def _kind(node: fx.Node, modules: Mapping[str, nn.Module], shape: tuple[int, ...]) -> str:
    """layer | bn | pass | join | flatten, or a description of an unsupported op."""
    desc = _describe(node, modules)
    src = _shape(node.args[0]) if node.args else None
    target: Any = node.target
    if node.op == "call_module":
        m = modules[target]
        if isinstance(m, PCNLayer) or (isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
                                       and ineligible_reason(m) is None):
            linear = isinstance(m, nn.Linear | PCNLinear)
            return desc + " on a tensor that is not 2-D" if linear and (len(shape) != 2 or len(src or ())
                                                                        != 2) else "layer"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "bn"
        if isinstance(m, _PASS_MODULES):
            return "pass"
        target = torch.flatten if isinstance(m, nn.Flatten) else None
    elif node.op not in ("call_function", "call_method"):
        return desc
    if target in _PASS_FUNCS or (node.op == "call_method" and target in _PASS_METHODS):
        return "pass"
    if target in _JOIN:
        ins = [_shape(a) for a in node.all_input_nodes if _shape(a) is not None]
        return "join" if all(s == shape for s in ins) else desc + " with broadcasting"
    if src is not None and target in _REDUCE and len(src) >= 3 and shape[:2] == src[:2] \
            and _spatial_only(node, len(src)):
        return "pass"
    if src is not None and target in _RESHAPE and len(src) >= 2 and len(shape) == 2 and shape[0] == src[0]:
        return "pass" if shape == src else "flatten"
    return desc


def _spatial_only(node: fx.Node, rank: int) -> bool:
    """Whether a mean/sum/amax node reduces only dims >= 2 (not the batch or the channels)."""
    args = node.args[1:]  # torch.mean(x, dim) and x.mean(dim) alike
    dim = node.kwargs.get("dim", args[0] if args else None)
    if dim is None or not isinstance(dim, int | list | tuple):
        return False  # all dims, or something we cannot read
    dims = [dim] if isinstance(dim, int) else list(dim)
    return all(isinstance(d, int) and d % rank >= 2 for d in dims)


def _merge(info: Mapping[fx.Node, Space], find: Any) -> list[Space]:
    """Group per-node records by space; fold each flattened space into its parent."""
    spaces: dict[fx.Node, Space] = defaultdict(Space)
    for node, sp in info.items():
        spaces[find(node)].extend(sp)
    for root in [r for r, sp in spaces.items() if sp.flattens]:
        sp = spaces.pop(root)
        parents = {find(src) for src, _ in sp.flattens}
        factors = {f for _, f in sp.flattens}
        for p in parents:
            target = spaces[p]
            target.blocked.extend(sp.blocked)
            if len(parents) > 1 or len(factors) > 1 or sp.producers or sp.bns:
                target.blocked.append("are flattened and mixed with other tensors")
            target.readers.extend((name, next(iter(factors))) for name, _ in sp.readers)
    for sp in spaces.values():
        if len(sp.channels) > 1:
            sp.blocked.append(f"meet tensors with other channel counts {sorted(sp.channels)}")
    def roles(sp: Space) -> set[tuple[str, str]]:
        return {*(("out", n) for n in sp.producers), *(("bn", n) for n in sp.bns),
                *(("in", n) for n, _ in sp.readers)}

    counts: dict[tuple[str, str], int] = defaultdict(int)
    for sp in spaces.values():
        for role in roles(sp):
            counts[role] += 1
    for sp in spaces.values():
        shared = sorted(n for role, n in roles(sp) if counts[(role, n)] > 1)
        if shared:
            sp.blocked.append(f"touch module {shared[0]!r}, which is called on more than one tensor")
        if not sp.producers and not sp.blocked:
            sp.blocked.append("have no producing layer")
    return list(spaces.values())
