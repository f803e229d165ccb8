"""A JSON-able description of a PCN-transformed architecture, and rebuilding it from a fresh model.

Checkpoints after the transform (and compressed models loaded in plain PyTorch) are
``state_dict`` + ``pcn_spec``: ``rebuild(create(...), spec).load_state_dict(state)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from drt.errors import DrtError
from drt.pcn.layers import RESIZED, PCNLayer, link_projections_, pcn_class
from drt.pcn.transform import copy_without_hooks, set_module_

FORMAT = "drt.pcn/1"
SIZE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features")


def pcn_spec(model: nn.Module) -> dict[str, Any]:
    """Every PCN layer's constructor arguments and every module resized by the output transform.

    ``{"format", "layers": {name: {type, d, k, out, kernel_size, ...}}, "resized": {name: {type,
    attrs, tensors: {param/buffer: shape}}}}``; only plain ints, strings and lists (JSON-able).
    """
    layers = {n: m.spec() for n, m in model.named_modules() if isinstance(m, PCNLayer)}
    resized = {}
    for n, m in model.named_modules():
        if getattr(m, RESIZED, False) and not isinstance(m, PCNLayer):
            tensors = {k: list(t.shape) for k, t in [*m.named_parameters(recurse=False),
                                                    *m.named_buffers(recurse=False)] if t is not None}
            attrs = {a: int(getattr(m, a)) for a in SIZE_ATTRS if hasattr(m, a)}
            resized[n] = {"type": type(m).__name__, "attrs": attrs, "tensors": tensors}
    return {"format": FORMAT, "layers": layers, "resized": resized}


def _get(model: nn.Module, name: str, type_name: str | None = None) -> nn.Module:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise DrtError(f"PCN spec names module {name!r}, which the model does not have") from None
    if type_name is not None and type(m).__name__ != type_name:
        raise DrtError(f"PCN spec: module {name!r} is a {type(m).__name__}, spec says {type_name}")
    return m


def rebuild(template: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """A copy of ``template`` (the untransformed architecture) turned into the one ``spec`` describes.

    New tensors are zeros of the right shapes, ready for ``load_state_dict`` of a transformed model.
    """
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise DrtError(f"not a PCN spec (expected format {FORMAT!r})")
    model = copy_without_hooks(template)
    for name, s in spec["resized"].items():
        m = _get(model, name, s["type"])
        for a, v in s["attrs"].items():
            setattr(m, a, v)
        for t, shape in s["tensors"].items():
            old = getattr(m, t)
            new = torch.zeros(shape, dtype=old.dtype, device=old.device)
            setattr(m, t, nn.Parameter(new, old.requires_grad) if isinstance(old, nn.Parameter) else new)
        setattr(m, RESIZED, True)
    for name, s in spec["layers"].items():
        old = _get(model, name)
        ref = next(iter(old.parameters()), torch.zeros(()))
        set_module_(model, name, pcn_class(s["type"]).from_spec(s, device=ref.device, dtype=ref.dtype))
    return link_projections_(model)
