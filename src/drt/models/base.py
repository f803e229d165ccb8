"""Shared pieces of the model zoo: the registry, a named layer chain, shape helpers and init."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from drt.errors import DrtError
from drt.registry import Registry

MODELS: Registry = Registry("model")

SHORTCUTS = ("conv", "pad")


class SequentialNet(nn.Sequential):
    """A chain of named layers (``conv1``, ``relu1``, ``pool1``, ...) with its CKA-SR feature stages.

    ``drt_stages`` lists, per stage, the qualified names of the modules whose outputs are the
    feature maps used by CKA-SR (Ni et al. 2023): all hidden ReLUs for plain nets, the ReLUs
    between two pooling layers for VGG.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], stages: list[list[str]]) -> None:
        super().__init__(OrderedDict(layers))
        self.drt_stages = stages


def shape_str(shape: Sequence[int]) -> str:
    """Format a sample shape as ``(3, 32, 32)`` (also for one-element shapes)."""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def too_small(model: str, shape: Sequence[int], needs: str) -> DrtError:
    """The one-line error for an input that is too small for ``model``."""
    return DrtError(f"model {model!r} needs {needs}; data set gives {shape_str(shape)}")


def pool2(h: int, w: int) -> tuple[nn.MaxPool2d, int, int]:
    """A 2x2/2 max-pool for an (h, w) map and its output size.

    Plain ``MaxPool2d(2)`` on even maps (the standard CIFAR architectures stay exact);
    ``ceil_mode=True`` on odd maps, so a 7x7 map becomes 4x4 and a 1x1 map stays 1x1.
    """
    pool = nn.MaxPool2d(2) if h % 2 == 0 and w % 2 == 0 else nn.MaxPool2d(2, ceil_mode=True)
    return pool, math.ceil(h / 2), math.ceil(w / 2)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def init_weights_(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, relu) convs with zero bias, BN weight 1 / bias 0; in place.

    Linear layers keep PyTorch's default init (as in torchvision's ResNet). He et al. 2015. A model
    with ``drt_own_init = True`` (the transformers) keeps the init it gave itself.
    """
    if getattr(model, "drt_own_init", False):
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def check_option(model: str, name: str, value: Any) -> Any:
    """Validate one model option and return it normalised; raise a one-line DrtError if invalid."""
    if name == "width":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DrtError(f"model {model!r}: option 'width' must be a positive int; got {value!r}")
        return value
    if name in ("depth", "heads", "patch"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DrtError(f"model {model!r}: option {name!r} must be a positive int; got {value!r}")
        return value
    if name == "mlp_ratio":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise DrtError(f"model {model!r}: option 'mlp_ratio' must be a positive number; got {value!r}")
        return float(value)
    if name == "hidden":
        ok = isinstance(value, Sequence) and not isinstance(value, str)
        if not ok or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in value):
            raise DrtError(f"model {model!r}: option 'hidden' must be a list of positive ints; got {value!r}")
        return list(value)
    if name == "shortcut":
        if value not in SHORTCUTS:
            raise DrtError(f"model {model!r}: option 'shortcut' must be one of {', '.join(SHORTCUTS)}; "
                           f"got {value!r}")
        return value
    return value
