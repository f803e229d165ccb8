"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as commonly used on MNIST / CIFAR."""

from __future__ import annotations

from torch import nn

from drt.models.base import MODELS, SequentialNet, conv_out, too_small


@MODELS.register("lenet5", help="LeNet-5: conv6@5x5-pool-conv16@5x5-pool-fc120-fc84-fc (ReLU)",
                 inputs="image")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5; the first conv is padded by 2 for inputs smaller than 32x32 (28x28 MNIST -> classic).

    Needs images of at least 12x12 (so the second pooling sees a 2x2 map).
    """
    c, h, w = input_shape
    pad = 2 if min(h, w) < 32 else 0
    # conv 5x5 (padded) -> pool 2 -> conv 5x5 -> pool 2, per spatial dimension
    sizes = [conv_out(conv_out(conv_out(s, 5, padding=pad), 2, 2), 5) // 2 for s in (h, w)]
    if min(sizes) < 1:
        raise too_small("lenet5", input_shape, "images of at least 12x12")
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(c, 6, 5, padding=pad)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * sizes[0] * sizes[1], 120)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, num_classes)),
    ]
    return SequentialNet(layers, [["relu1", "relu2", "relu3", "relu4"]])
