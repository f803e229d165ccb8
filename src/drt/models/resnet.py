"""ResNets (He et al. 2016): CIFAR ResNet-20/32/44/56/110 (depth 6n+2) and ImageNet-style ResNet-18.

Names follow torchvision (``conv1, bn1, layer1.0.conv1, ..., fc``); every block's residual branch is
called ``shortcut`` (also in ResNet-18, where torchvision says ``downsample``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from drt.models.base import MODELS


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_lo = (out_channels - in_channels) // 2
        self.pad_hi = out_channels - in_channels - self.pad_lo

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_lo}, {self.pad_hi})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C', ceil(H/s), ceil(W/s))
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; output is ReLU(branch + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Sequential()  # identity
        if stride != 1 or in_channels != out_channels:
            if shortcut == "pad":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, one ``layer{i}`` of BasicBlocks per stage (first block strides 2 after stage 1), pool, fc.

    ``drt_stages`` holds the block names per stage (``layer1.0``, ...), whose outputs CKA-SR compares.
    """

    def __init__(self, in_channels: int, num_classes: int, blocks: list[int], width: int,
                 shortcut: str = "conv", imagenet_stem: bool = False) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet_stem else None
        c = width
        self.drt_stages: list[list[str]] = []
        for i, n in enumerate(blocks):
            out = width * 2**i
            strides = [2 if i > 0 else 1] + [1] * (n - 1)
            layer = nn.Sequential(*[BasicBlock(c if j == 0 else out, out, s, shortcut)
                                    for j, s in enumerate(strides)])
            self.add_module(f"layer{i + 1}", layer)
            self.drt_stages.append([f"layer{i + 1}.{j}" for j in range(n)])
            c = out
        self.layer_names = tuple(f"layer{i + 1}" for i in range(len(blocks)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, w, H, W) on CIFAR
        if self.maxpool is not None:
            x = self.maxpool(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))


def cifar_resnet(depth: int, input_shape: tuple[int, ...], num_classes: int, width: int,
                 shortcut: str) -> ResNet:
    """CIFAR ResNet-``depth`` (6n+2): 3 stages of n blocks with widths w, 2w, 4w."""
    n = (depth - 2) // 6
    return ResNet(input_shape[0], num_classes, [n, n, n], width, shortcut)


_HELP = "CIFAR ResNet-{} (3 stages of BasicBlocks, widths w,2w,4w; default w=16)"


@MODELS.register("resnet20", help=_HELP.format(20), inputs="image")
def resnet20(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
             shortcut: str = "conv") -> nn.Module:
    """ResNet-20; ``shortcut`` "conv" = 1x1 conv + BN projection, "pad" = zero-padding identity (option A)."""
    return cifar_resnet(20, input_shape, num_classes, width, shortcut)


@MODELS.register("resnet32", help=_HELP.format(32), inputs="image")
def resnet32(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
             shortcut: str = "conv") -> nn.Module:
    """ResNet-32; options as for ``resnet20``."""
    return cifar_resnet(32, input_shape, num_classes, width, shortcut)


@MODELS.register("resnet44", help=_HELP.format(44), inputs="image")
def resnet44(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
             shortcut: str = "conv") -> nn.Module:
    """ResNet-44; options as for ``resnet20``."""
    return cifar_resnet(44, input_shape, num_classes, width, shortcut)


@MODELS.register("resnet56", help=_HELP.format(56), inputs="image")
def resnet56(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
             shortcut: str = "conv") -> nn.Module:
    """ResNet-56; options as for ``resnet20``."""
    return cifar_resnet(56, input_shape, num_classes, width, shortcut)


@MODELS.register("resnet110", help=_HELP.format(110), inputs="image")
def resnet110(input_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
              shortcut: str = "conv") -> nn.Module:
    """ResNet-110; options as for ``resnet20``."""
    return cifar_resnet(110, input_shape, num_classes, width, shortcut)


@MODELS.register("resnet18", help="ImageNet-style ResNet-18 (7x7/2 stem, maxpool, 4 stages 64..512)",
                 inputs="image")
def resnet18(input_shape: tuple[int, ...], num_classes: int, *, width: int = 64) -> nn.Module:
    """ResNet-18 as torchvision's (11,689,512 params at 1000 classes); ``width`` is the stem's channels."""
    return ResNet(input_shape[0], num_classes, [2, 2, 2, 2], width, "conv", imagenet_stem=True)
