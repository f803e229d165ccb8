"""Drive a method's hooks from any training loop (ours, a plain PyTorch loop, or Lightning).

    drv = Driver(method, model, lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
                 batches=lambda: iter(loader), epochs=E, steps_per_epoch=len(loader),
                 input_shape=(1, 28, 28), num_classes=10)
    for epoch in range(E):
        for x, y in loader:
            out = drv.model(x)
            loss = drv.loss(out, y)       # task loss + regulariser terms
            drv.optimizer.zero_grad()
            loss.backward()
            drv.step()                    # after_backward, optimizer.step(), after_step
        drv.end_epoch()                   # PCN may swap drv.model and drv.optimizer here

``drt.train.train`` runs the same calls through ``forward`` (autocast and the loss) and ``backward``
(zeroed gradients, then the backward pass); with ``amp=True`` they autocast (bfloat16 on CPU,
float16 on CUDA) and, on CUDA, scale the loss with a ``GradScaler`` that ``step`` unscales before the
hooks and steps with. Under DDP pass ``wrap`` (e.g. ``lambda m: DistributedDataParallel(m)``) and
forward through ``drv.net``: hooks, masks and surgery act on ``drv.model`` (the unwrapped module),
and a model replaced by a hook is wrapped again on the next use of ``drv.net``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from drt.errors import DrtError, first_line
from drt.methods.base import Method, TrainState
from drt.models import name_of

MakeOptimizer = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` if ``enabled``: bfloat16 on CPU, float16 elsewhere."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Driver:
    """Owns the hook order; the caller owns the loop, the data and the optimizer settings."""

    def __init__(self, method: Method, model: nn.Module, make_optimizer: MakeOptimizer, *,
                 batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None,
                 epochs: int, steps_per_epoch: int, input_shape: tuple[int, ...], num_classes: int,
                 regularisers: Sequence[Method] = (), weight_decay: float = 0.0,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 seed: int = 0, device: torch.device | str | None = None, run_dir: Any = None,
                 setup: bool = True, wrap: Callable[[nn.Module], nn.Module] | None = None, amp: bool = False) -> None:
        for p in (method, *regularisers):
            if not isinstance(p, Method):
                raise DrtError(f"Driver takes method instances (e.g. methods.get('rigl')(Options())); got {p!r}")
        if not any(True for _ in model.parameters()):
            raise DrtError(f"{name_of(model)} has no parameters to train")
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DrtError(f"Driver: {name} must be a positive int; got {value!r}")
        self.method, self.plugins = method, [method, *regularisers]
        self.make_optimizer, self.weight_decay = make_optimizer, weight_decay
        self.wrap = wrap or (lambda m: m)
        self._net: tuple[nn.Module, nn.Module] | None = None  # (model, its wrapper)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.state = TrainState(model=model.to(device), optimizer=None, loss_fn=loss_fn, device=device,
                                input_shape=tuple(input_shape), num_classes=num_classes, epochs=epochs,
                                steps_per_epoch=steps_per_epoch, seed=seed, batches=batches, run_dir=run_dir)
        self.amp = amp
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        self.state.grad_scaling = self.scaler.is_enabled()
        if setup:
            self.setup()

    def setup(self) -> None:
        """The plug-ins' ``setup`` hooks (each may replace the model), then ``rebuild``."""
        for p in self.plugins:
            self.state.model = (p.setup(self.state) or self.state.model).to(self.state.device)
        self.rebuild()

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def net(self) -> nn.Module:
        """The module to forward through: ``wrap(model)``, re-wrapped whenever the model was replaced."""
        if self._net is None or self._net[0] is not self.state.model:
            self._net = (self.state.model, self.wrap(self.state.model))
        return self._net[1]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self.state.optimizer is None:
            raise DrtError("the Driver has no optimizer yet: call setup() or load_state_dict() first")
        return self.state.optimizer

    def rebuild(self) -> None:
        """A fresh optimizer over the method's parameter groups; hooks re-attached to the model."""
        groups = [g for g in self.method.param_groups(self.state.model, self.weight_decay) if g["params"]]
        self.state.optimizer = self.make_optimizer(groups)
        for p in self.plugins:
            p.attach(self.state)

    def extra_loss(self, output: torch.Tensor) -> torch.Tensor | None:
        """Sum of the plug-ins' extra loss terms for this forward pass (None if none)."""
        extra = None
        for p in self.plugins:
            term = p.extra_loss(self.state, output)
            if term is not None:
                extra = term if extra is None else extra + term
        return extra

    def with_extra(self, loss: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the plug-ins' extra terms for ``output`` (in ``loss``'s dtype)."""
        extra = self.extra_loss(output)
        return loss if extra is None else loss + extra.to(loss.dtype)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Task loss (float32) plus the extra terms."""
        return self.with_extra(self.state.loss_fn(output.float(), target), output)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's mixed precision (a no-op without ``amp``)."""
        return autocast(self.state.device, self.amp)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output, task loss, task loss + extra terms) of one training batch, kept in ``state.x``/``y``;
        the network and the task loss run under ``autocast``, the extra terms after it."""
        self.state.x, self.state.y = x, y
        with self.autocast():
            out = self.net(x)
            loss = self.state.loss_fn(out.float(), y)
        return out, loss, self.with_extra(loss, out)

    def backward(self, loss: torch.Tensor) -> None:
        """Zero the gradients, then backpropagate ``loss`` (scaled by the GradScaler when it is on)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def after_backward(self) -> None:
        for p in self.plugins:
            p.after_backward(self.state)

    def after_step(self) -> None:
        self.state.step += 1
        for p in self.plugins:
            p.after_step(self.state)

    def step(self) -> None:
        """after_backward hooks, ``optimizer.step()``, after_step hooks. With the GradScaler on, the
        gradients are unscaled first, and the scaler steps (skipping a non-finite step) and updates."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        self.after_backward()
        self.scaler.step(self.optimizer)  # optimizer.step() when the scaler is off
        self.scaler.update()
        self.after_step()

    def end_epoch(self, metrics: dict[str, Any] | None = None) -> bool:
        """Epoch-end hooks; returns True when a hook replaced the model (optimizer rebuilt)."""
        self.state.epoch += 1
        self.state.metrics = dict(metrics or {})
        changed = False
        for p in self.plugins:
            new = p.epoch_end(self.state)
            if new is not None:
                self.state.model = new.to(self.state.device)
                self.rebuild()
                changed = True
        return changed

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {"model": s.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "plugins": [p.state_dict() for p in self.plugins], "epoch": s.epoch, "step": s.step,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Restore plug-ins (which may rebuild the architecture), weights, optimizer, GradScaler and counters."""
        s = self.state
        try:
            for p, ps in zip(self.plugins, payload["plugins"], strict=True):
                s.model = p.load_state_dict(ps, s.model).to(s.device)
            s.model.load_state_dict(payload["model"])
            self.rebuild()
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # another model's or method's checkpoint
            raise DrtError(f"the checkpoint does not fit this run's model and method ({first_line(e)})") from None
        s.epoch, s.step = payload["epoch"], payload["step"]
        if "scaler" in payload:
            self.scaler.load_state_dict(payload["scaler"])
