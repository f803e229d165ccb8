"""CIFAR VGG-11/13/16/19 (Simonyan & Zisserman 2015) with BN, global average pooling and one Linear."""

from __future__ import annotations

from torch import nn

from drt.models.base import MODELS, SequentialNet, pool2

# channels in multiples of the base width; "M" ends a block with a 2x2 max-pool
_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    13: (1, 1, "M", 2, 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"),
    16: (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"),
    19: (1, 1, "M", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"),
}


def vgg(depth: int, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """VGG-``depth``: blocks of conv3x3(no bias)-BN-ReLU, each max-pooled; global avg pool; Linear(8w, C).

    Layers are named conv1..convN, bn1..bnN, relu1..reluN, pool1..pool5, avgpool, flatten, fc; each
    block's ReLUs are one CKA-SR stage. Odd maps pool with ceil_mode (works on 8x8 and 28x28 inputs).
    """
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = []
    stages: list[list[str]] = [[]]
    n = 0
    for v in _CONFIGS[depth]:
        if v == "M":
            pool, h, w = pool2(h, w)
            layers.append((f"pool{len(stages)}", pool))
            stages.append([])
            continue
        n += 1
        out = int(v) * width
        layers += [(f"conv{n}", nn.Conv2d(c, out, 3, padding=1, bias=False)),
                   (f"bn{n}", nn.BatchNorm2d(out)), (f"relu{n}", nn.ReLU())]
        stages[-1].append(f"relu{n}")
        c = out
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(c, num_classes))]
    return SequentialNet(layers, stages[:-1])


@MODELS.register("vgg11", help="CIFAR VGG-11 (BN, global avg pool, one Linear)", inputs="image")
def vgg11(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """VGG-11; ``width`` is the first block's channels (later blocks 2x, 4x, 8x, 8x)."""
    return vgg(11, input_shape, num_classes, width)


@MODELS.register("vgg13", help="CIFAR VGG-13 (BN, global avg pool, one Linear)", inputs="image")
def vgg13(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """VGG-13; ``width`` is the first block's channels (later blocks 2x, 4x, 8x, 8x)."""
    return vgg(13, input_shape, num_classes, width)


@MODELS.register("vgg16", help="CIFAR VGG-16 (BN, global avg pool, one Linear; the PCN reference)",
                 inputs="image")
def vgg16(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """VGG-16 as in the PCN reference (14,715,594 conv+linear weights on CIFAR-10 at width 64)."""
    return vgg(16, input_shape, num_classes, width)


@MODELS.register("vgg19", help="CIFAR VGG-19 (BN, global avg pool, one Linear)", inputs="image")
def vgg19(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """VGG-19; ``width`` is the first block's channels (later blocks 2x, 4x, 8x, 8x)."""
    return vgg(19, input_shape, num_classes, width)
