"""The Driver is the loop's own seam: a hand-written loop driving it trains exactly like `drt.train.train`."""

from __future__ import annotations

from functools import partial

import torch

from drt.data import TensorLoader
from drt.methods import Driver
from drt.methods.dense import Dense
from drt.methods.dst import DSTOptions, RigL
from drt.models import create
from drt.train import TrainConfig, lr_at, make_optimizer, train

CPU = torch.device("cpu")


def _model(digits):
    torch.manual_seed(3)
    return create("mlp", digits.input_shape, digits.num_classes, hidden=[32])


def by_hand(model, digits, cfg, method):
    """What a user writes around the Driver: batches, the LR per step, forward / backward / step, epoch ends."""
    loader = TensorLoader(digits.x_train, digits.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    scores = TensorLoader(digits.x_train, digits.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed + 1)
    drv = Driver(method, model, partial(make_optimizer, cfg), batches=lambda: iter(scores), epochs=cfg.epochs,
                 steps_per_epoch=len(loader), input_shape=tuple(digits.input_shape), num_classes=digits.num_classes,
                 weight_decay=cfg.weight_decay, seed=cfg.seed, amp=cfg.amp)
    for epoch in range(cfg.epochs):
        loader.set_epoch(epoch)
        for i, (x, y) in enumerate(loader):
            for g in drv.optimizer.param_groups:
                g["lr"] = lr_at(cfg, epoch + i / len(loader), 1 / len(loader))
            _, _, loss = drv.forward(x, y)
            drv.backward(loss)
            drv.step()
        drv.end_epoch()
    return drv


def test_a_loop_driving_the_driver_equals_drt_train(digits):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=5, amp=True)  # bfloat16 autocast on CPU
    options = DSTOptions(sparsity=0.8, delta_t=3)
    ours = train(_model(digits), digits, cfg, RigL(options), device=CPU).model
    drv = by_hand(_model(digits), digits, cfg, RigL(options))
    assert drv.state.step == 2 * drv.state.steps_per_epoch
    assert len(drv.method.updates) > 0  # drop/grow happened
    for (n, a), (_, b) in zip(ours.state_dict().items(), drv.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_driver_amp_and_its_state(digits):
    drv = Driver(Dense(), _model(digits), lambda g: torch.optim.SGD(g, lr=0.1), batches=None,
                 epochs=1, steps_per_epoch=100, input_shape=tuple(digits.input_shape), num_classes=10, amp=True)
    x, y = digits.x_train[:8], digits.y_train[:8]
    out, loss, total = drv.forward(x, y)
    assert out.dtype == torch.bfloat16 and loss.dtype == total.dtype == torch.float32
    assert drv.state.x is x and not drv.state.grad_scaling  # CPU: autocast, no gradient scaling
    assert "scaler" in drv.state_dict()
    plain = Driver(Dense(), _model(digits), lambda g: torch.optim.SGD(g, lr=0.1),
                   batches=None, epochs=1, steps_per_epoch=100, input_shape=tuple(digits.input_shape), num_classes=10)
    assert plain.forward(x, y)[0].dtype == torch.float32
    assert torch.equal(plain.loss(plain.model(x), y), plain.forward(x, y)[2])  # the README's path, same number
