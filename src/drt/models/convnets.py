"""Plain conv nets: Conv-4 / Conv-6 (Frankle & Carbin 2019) and the MNIST-1D CNN (Greydanus 2020)."""

from __future__ import annotations

from torch import nn

from drt.models.base import MODELS, SequentialNet, conv_out, pool2, too_small


def conv_fc_net(input_shape: tuple[int, ...], num_classes: int, blocks: int, width: int) -> nn.Module:
    """``blocks`` x (conv3x3, ReLU, conv3x3, ReLU, pool) with widths w, 2w, 4w, then fc256-fc256-fc."""
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = []
    relus: list[str] = []
    n = 0
    for b in range(blocks):
        for _ in range(2):
            n += 1
            layers += [(f"conv{n}", nn.Conv2d(c, width * 2**b, 3, padding=1)), (f"relu{n}", nn.ReLU())]
            relus.append(f"relu{n}")
            c = width * 2**b
        pool, h, w = pool2(h, w)
        layers.append((f"pool{b + 1}", pool))
    layers.append(("flatten", nn.Flatten()))
    for i, (fan_in, fan_out) in enumerate([(c * h * w, 256), (256, 256)], start=1):
        n += 1
        layers += [(f"fc{i}", nn.Linear(fan_in, fan_out)), (f"relu{n}", nn.ReLU())]
        relus.append(f"relu{n}")
    layers.append(("fc3", nn.Linear(256, num_classes)))
    return SequentialNet(layers, [relus])


@MODELS.register("conv4", help="Conv-4 (lottery ticket): 2x[conv,conv,pool] 64-128, fc256-fc256-fc",
                 inputs="image")
def conv4(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """Conv-4 of Frankle & Carbin 2019; ``width`` is the first convs' channels (later blocks 2x, 4x)."""
    return conv_fc_net(input_shape, num_classes, 2, width)


@MODELS.register("conv6", help="Conv-6 (lottery ticket): 3x[conv,conv,pool] 64-128-256, fc256-fc256-fc",
                 inputs="image")
def conv6(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """Conv-6 of Frankle & Carbin 2019; ``width`` is the first convs' channels (later blocks 2x, 4x)."""
    return conv_fc_net(input_shape, num_classes, 3, width)


@MODELS.register("conv1d", help="MNIST-1D CNN: 3x Conv1d(25 ch, stride 2)+ReLU, then Linear",
                 inputs="signal")
def conv1d(input_shape: tuple[int, ...], num_classes: int, *, width: int = 25) -> nn.Module:
    """The MNIST-1D paper's CNN (Greydanus 2020); ``width`` is the channels of every conv.

    Conv1d(C, w, 5, s2, p1) - ReLU - 2x [Conv1d(w, w, 3, s2, p1) - ReLU] - Flatten - Linear
    (on mnist1d's length 40: 40 -> 19 -> 10 -> 5, so Linear(125, classes) at w = 25).
    """
    c, length = input_shape
    if length < 3:
        raise too_small("conv1d", input_shape, "signals of length at least 3")
    specs = [(c, 5), (width, 3), (width, 3)]
    layers: list[tuple[str, nn.Module]] = []
    for i, (fan_in, kernel) in enumerate(specs, start=1):
        layers += [(f"conv{i}", nn.Conv1d(fan_in, width, kernel, stride=2, padding=1)),
                   (f"relu{i}", nn.ReLU())]
        length = conv_out(length, kernel, stride=2, padding=1)
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(width * length, num_classes))]
    return SequentialNet(layers, [[f"relu{i}" for i in range(1, len(specs) + 1)]])
