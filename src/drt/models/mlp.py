"""Multi-layer perceptron (LeCun et al. 1998's 300-100 net; the lottery-ticket paper's LeNet-300-100)."""

from __future__ import annotations

import math

from torch import nn

from drt.models.base import MODELS, SequentialNet


@MODELS.register("mlp", help="MLP: flatten -> Linear/ReLU per hidden size -> Linear (default 300-100)",
                 inputs="any")
def mlp(input_shape: tuple[int, ...], num_classes: int, *, hidden: list[int] | None = None) -> nn.Module:
    """Flatten, then ``Linear -> ReLU`` per hidden size, then the classifier; ``hidden=[]`` is linear."""
    sizes = [300, 100] if hidden is None else list(hidden)
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    fan_in = math.prod(input_shape)
    for i, size in enumerate(sizes, start=1):
        layers += [(f"fc{i}", nn.Linear(fan_in, size)), (f"relu{i}", nn.ReLU())]
        fan_in = size
    layers.append((f"fc{len(sizes) + 1}", nn.Linear(fan_in, num_classes)))
    stages = [[f"relu{i}" for i in range(1, len(sizes) + 1)]] if sizes else []
    return SequentialNet(layers, stages)
