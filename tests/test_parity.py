"""Parity: drt's loop trains exactly like a plain PyTorch loop fed the same batches.

The plain loop below is what a user writes by hand (SGD over ``model.parameters()`` with weight decay,
the LR set per step from a cosine with linear warm-up, mean cross-entropy). Fed the batches of drt's
own loader (order and augmentation), it must reach the same weights as ``drt.train.train``; BN
running statistics included. benchmarks/parity.py makes the same comparison at full scale with the
plain loop's own data order and augmentation.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from drt.data import TensorLoader
from drt.methods.dense import Dense
from drt.models import create
from drt.train import TrainConfig, train


def plain_loop(model, loader, epochs, lr, momentum, nesterov, weight_decay, warmup_epochs):
    """The textbook loop: one SGD over every parameter, LR per step, no drt code but the batches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)
    steps = len(loader)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        model.train()
        for i, (x, y) in enumerate(loader):
            t = epoch + i / steps  # epochs done so far
            rate = lr * 0.5 * (1 + math.cos(math.pi * t / epochs))
            if t < warmup_epochs:
                rate *= min(1.0, (t + 1 / steps) / warmup_epochs)
            for g in opt.param_groups:
                g["lr"] = rate
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


@pytest.mark.parametrize("name, options", [("vgg11", {"width": 4}), ("resnet20", {"width": 4}),
                                           ("lenet5", {})])
def test_drt_loop_matches_a_plain_loop_step_for_step(digits, name, options):
    data = replace(digits, x_train=digits.x_train[:320], y_train=digits.y_train[:320], x_test=digits.x_test[:64],
                   y_test=digits.y_test[:64])  # 5 steps an epoch
    data = _resized(data, 16) if name == "lenet5" else data  # lenet5 needs >= 12x12 images
    shape = data.input_shape
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                      schedule="cosine", warmup_epochs=0.5, seed=7)
    torch.manual_seed(cfg.seed)
    model = create(name, shape, data.num_classes, **options)
    reference = create(name, shape, data.num_classes, **options)
    reference.load_state_dict(model.state_dict())
    start = {k: v.clone() for k, v in model.state_dict().items()}

    ours = train(model, data, cfg, Dense(), device=torch.device("cpu"), augment="crop-flip").model
    loader = TensorLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, augment="crop-flip",
                          seed=cfg.seed)
    theirs = plain_loop(reference, loader, cfg.epochs, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay,
                        cfg.warmup_epochs)
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), n  # bit for bit: the same arithmetic in the same order
    assert not torch.equal(ours.state_dict()[n], start[n])  # it trained


def _resized(data, size):
    def up(x):
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    return replace(data, x_train=up(data.x_train), x_test=up(data.x_test))
