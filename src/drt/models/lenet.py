"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as commonly used on MNIST / CIFAR."""

from __future__ import annotations

from torch import nn

from drt.models.base import MODELS, SequentialNet, conv_out, too_small

CLASSIC = (6, 16, 120, 84)  # conv1, conv2 channels; fc1, fc2 units


def lenet_widths(width: int) -> tuple[int, int, int, int]:
    """Layer widths at ``width`` (fc1 units; classic 120): every layer scaled by width/120, rounded, >= 1."""
    return tuple(max(1, round(c * width / CLASSIC[2])) for c in CLASSIC)  # type: ignore[return-value]


@MODELS.register("lenet5", help="LeNet-5: conv6@5x5-pool-conv16@5x5-pool-fc120-fc84-fc (ReLU)",
                 inputs="image")
def lenet5(input_shape: tuple[int, ...], num_classes: int, *, width: int = 120) -> nn.Module:
    """LeNet-5; the first conv is padded by 2 for inputs smaller than 32x32 (28x28 MNIST -> classic).

    ``width`` scales every layer (fc1 has ``width`` units; the classic net is 120: 6, 16, 120, 84).
    Needs images of at least 12x12 (so the second pooling sees a 2x2 map).
    """
    c, h, w = input_shape
    c1, c2, f1, f2 = lenet_widths(width)
    pad = 2 if min(h, w) < 32 else 0
    # conv 5x5 (padded) -> pool 2 -> conv 5x5 -> pool 2, per spatial dimension
    sizes = [conv_out(conv_out(conv_out(s, 5, padding=pad), 2, 2), 5) // 2 for s in (h, w)]
    if min(sizes) < 1:
        raise too_small("lenet5", input_shape, "images of at least 12x12")
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(c, c1, 5, padding=pad)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(c1, c2, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(c2 * sizes[0] * sizes[1], f1)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(f1, f2)), ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(f2, num_classes)),
    ]
    return SequentialNet(layers, [["relu1", "relu2", "relu3", "relu4"]])
