"""Named training recipes: settings measured to train well, for ``drt train --recipe NAME``.

A recipe fills in settings before a ``--config`` file and the flags, so anything given explicitly
wins (``--recipe vgg11-cifar10 --epochs 30``). Each recipe says what it reached, on which data and
budget, and which benchmark measured it (``benchmarks/parity.py``, where a plain PyTorch loop trains
the same recipe beside drt).
"""

from __future__ import annotations

from typing import Any

from drt.registry import Registry

RECIPES: Registry[dict[str, Any]] = Registry("recipe")

# SGD + Nesterov, cosine per step, weight decay, per-sample crop (zero pad 4) + flip, batch 128.
_CIFAR = {"dataset": "cifar10", "epochs": 8, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
          "nesterov": True, "schedule": "cosine", "weight_decay": 5e-4, "augment": "crop-flip"}


def _recipe(name: str, help: str, measured: str, **settings: Any) -> None:
    RECIPES.register(name, help=help, measured=measured)(settings)


_recipe("vgg11-cifar10", "VGG-11-BN on CIFAR-10: the short SGD recipe with one epoch of linear warm-up",
        "70.19% test (2 seeds; a plain PyTorch loop 70.53%) on a 10,000-image subset, 8 epochs",
        **_CIFAR, model="vgg11", warmup_epochs=1)
_recipe("resnet20-cifar10", "ResNet-20 on CIFAR-10: the short SGD recipe (no warm-up needed)",
        "63.30% test (2 seeds; a plain PyTorch loop 62.76%) on a 10,000-image subset, 8 epochs",
        **_CIFAR, model="resnet20")
_recipe("lenet5-fashion-mnist", "LeNet-5 on Fashion-MNIST: SGD momentum 0.9, lr 0.05 cosine, no augmentation",
        "91.31% test (2 seeds; a plain PyTorch loop 91.02%) on the full training set, 15 epochs",
        dataset="fashion-mnist", model="lenet5", epochs=15, batch_size=128, optimizer="sgd", lr=0.05,
        momentum=0.9, nesterov=False, schedule="cosine", weight_decay=5e-4, augment="none")


def recipe(name: str) -> dict[str, Any]:
    """A copy of the named recipe's settings (an unknown name lists the valid ones)."""
    return dict(RECIPES.get(name))
