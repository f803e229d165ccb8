"""Model zoo: ``MODELS`` registry and ``create(name, input_shape, num_classes, **options)``.

Registry metadata: ``help`` (one line) and ``inputs`` ("any" | "image" (C, H, W) | "signal" (C, L)).
Every model has ``drt_stages``: per stage, the module names whose outputs CKA-SR compares.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from drt.errors import DrtError
from drt.models import convnets, lenet, mlp, resnet, vgg, vit  # noqa: F401  (register the models)
from drt.models.base import MODELS, check_option, init_weights_, shape_str

__all__ = ["MODELS", "create", "model_options"]

_KIND_RANK = {"image": (3, "images (C, H, W)"), "signal": (2, "1-D signals (C, L)")}


def model_options(name: str) -> dict[str, Any]:
    """The options a registered model takes, with their defaults."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def create(name: str, input_shape: Sequence[int], num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` outputs, freshly initialised.

    Init uses the global torch RNG, so it is deterministic given ``torch.manual_seed``.
    Raises DrtError for an unknown name or option, a bad option value, or an input shape the model
    cannot take.
    """
    builder = MODELS.get(name)
    takes = model_options(name)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        valid = ", ".join(takes) if takes else "none"
        raise DrtError(f"model {name!r} does not take option(s) {', '.join(unknown)}; it takes: {valid}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise DrtError(f"model {name!r}: input shape must be positive ints, e.g. (3, 32, 32); got {shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DrtError(f"model {name!r}: num_classes must be a positive int; got {num_classes!r}")
    kind = MODELS.meta(name).get("inputs", "any")
    if kind in _KIND_RANK and len(shape) != _KIND_RANK[kind][0]:
        raise DrtError(f"model {name!r} needs {_KIND_RANK[kind][1]}; data set gives {shape_str(shape)}")
    checked = {k: check_option(name, k, v) for k, v in options.items()}
    model = init_weights_(builder(shape, num_classes, **checked))
    object.__setattr__(model, "drt_name", name)  # what messages call it (the registry name, not the Python class)
    return model


def name_of(model: nn.Module) -> str:
    """The model's name for messages: its registry name if ``create`` built it, else its class."""
    return str(getattr(model, "drt_name", type(model).__name__))
