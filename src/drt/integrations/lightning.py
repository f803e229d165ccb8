"""Any drt method and regulariser inside a Lightning ``Trainer``: ``DrtCallback`` (``pip install lightning``).

What the LightningModule must do (README "Lightning"):

- hold the network drt acts on as an attribute, ``self.model`` by default (``attr=`` to change);
- add ``self.drt.extra_loss(output)`` to the loss in ``training_step`` (the callback sets
  ``pl_module.drt``; it is 0 without regularisers, and a regulariser never asked raises DrtError);
- build the optimizer in ``configure_optimizers`` from ``self.model``'s parameters: it is re-run
  (``trainer.strategy.setup_optimizers``) when a method replaces the network (PCN's transform) or
  wants a fresh optimizer (an IMP round). LR schedulers are re-created with it and so restart.

Hook map: ``setup`` (masks, frozen weights) and ``attach`` at ``on_train_start`` (the optimizer and
the training data exist there); ``after_backward`` at ``on_after_backward`` (under DDP the gradient
is already averaged); ``after_step`` at ``on_train_batch_end`` when ``trainer.global_step`` advanced,
i.e. after ``optimizer.step()``; ``epoch_end`` at ``on_train_epoch_end`` with ``trainer.callback_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drt.errors import DrtError
from drt.methods.base import Method
from drt.methods.driver import Driver

try:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as e:  # an optional dependency
    raise ImportError("drt.integrations.lightning needs the `lightning` package: pip install lightning") from e

Batches = Callable[[], Iterator[tuple[Tensor, Tensor]]]


def _on_device(loader: Iterable[Any], device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in loader:
        x, y = batch[0], batch[1]
        yield x.to(device), y.to(device)


def _loader(trainer: pl.Trainer) -> Iterable[Any]:
    if trainer.train_dataloader is None:
        raise DrtError("DrtCallback needs the trainer's training loader (or batches=...)")
    return trainer.train_dataloader


class DrtCallback(pl.Callback):
    """Apply ``method`` (and ``regularisers``, e.g. CKA-SR) to ``pl_module.<attr>`` during ``fit``.

    ``batches``: un-augmented ``(x, y)`` batches for scores and PCN statistics (default: the
    trainer's training loader, moved to the module's device). ``epochs``: the method's epoch
    budget (default ``max_epochs``; IMP: epochs per round, with ``max_epochs = (rounds + 1) * epochs``).
    """

    def __init__(self, method: Method, regularisers: Sequence[Method] = (), *, attr: str = "model",
                 batches: Batches | None = None, epochs: int | None = None, seed: int = 0,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> None:
        self.method, self.regularisers = method, list(regularisers)
        self.attr, self.batches, self.epochs, self.seed, self.loss_fn = attr, batches, epochs, seed, loss_fn
        self.driver: Driver | None = None
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._started, self._steps, self._asked = False, 0, False
        plugins = [method, *self.regularisers]
        self._wants_extra = any(type(p).extra_loss is not Method.extra_loss for p in plugins)

    @property
    def _drv(self) -> Driver:
        if self.driver is None:
            raise DrtError("DrtCallback: training has not started (the Driver is built at on_train_start)")
        return self.driver

    # --- what the LightningModule calls --------------------------------------------------------
    def extra_loss(self, output: Tensor) -> Tensor:
        """The plug-ins' extra loss terms for this forward pass (0 if none): add it to the loss."""
        self._asked = True
        extra = self.driver.extra_loss(output) if self.driver is not None else None
        return extra if extra is not None else output.new_zeros(())

    def summary(self) -> dict[str, Any]:
        """The method's final metrics (achieved sparsity, PCN k per layer, ...)."""
        return self.method.summary(self.driver.state) if self.driver is not None else {}

    # --- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.drt = self  # type: ignore[assignment]  # a plain attribute; nn.Module types them as tensors

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, self.attr, None)
        if not isinstance(net, nn.Module):
            raise DrtError(f"DrtCallback acts on pl_module.{self.attr}, which {type(pl_module).__name__} lacks; "
                           "hold the network there or pass attr=NAME")
        if len(trainer.optimizers) != 1:
            raise DrtError(f"DrtCallback needs exactly one optimizer, got {len(trainer.optimizers)}")
        epochs = self.epochs or trainer.max_epochs
        if not epochs or epochs < 1 or not math.isfinite(trainer.num_training_batches):
            raise DrtError("DrtCallback needs a known schedule: Trainer(max_epochs=E) (or epochs=E) and a sized "
                           "training loader")
        device = pl_module.device
        batches = self.batches or (lambda: _on_device(_loader(trainer), device))
        x, _ = next(iter(batches()))
        with torch.no_grad():
            was = net.training
            out = net.eval()(x[:2])
            classes = int(out.shape[1]) if out.dim() > 1 else 1  # the class count only matters to some scores
            net.train(was)
        self._trainer, self._module, self._started = trainer, pl_module, False
        steps = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        self.driver = Driver(self.method, net, self._optimizer, batches=batches, epochs=epochs,
                             steps_per_epoch=steps, input_shape=tuple(x.shape[1:]), num_classes=classes,
                             regularisers=self.regularisers, loss_fn=self.loss_fn, seed=self.seed, device=device,
                             setup=False)
        self.driver.setup()
        self._started, self._steps = True, trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drv.state.log = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._drv.state.x, self._drv.state.y = batch[0], batch[1]
        self._asked = False

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._wants_extra and not self._asked:
            raise DrtError("a drt regulariser is active but training_step never added its term: use "
                           "loss = task_loss + self.drt.extra_loss(output)")

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drv.after_backward()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > self._steps:  # an optimizer step happened (not only an accumulation)
            self._steps = trainer.global_step
            self._drv.after_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        self._drv.end_epoch(metrics)
        logged = {f"drt/{k}": float(v) for k, v in self._drv.state.log.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)}
        if logged:
            pl_module.log_dict(logged)

    # --- the optimizer the Driver asks for ------------------------------------------------------
    def _optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """Lightning's optimizer: re-created from ``configure_optimizers`` for a new network or a new round."""
        trainer, pl_module, model = self._trainer, self._module, self._drv.state.model
        assert trainer is not None and pl_module is not None  # set at on_train_start, before the Driver
        replaced = getattr(pl_module, self.attr) is not model
        if replaced:
            setattr(pl_module, self.attr, model)
            if isinstance(trainer.strategy, DDPStrategy):  # new parameters: wrap the module again
                trainer.strategy.model = pl_module
                trainer.strategy.configure_ddp()
        if replaced or self._started:
            trainer.strategy.setup_optimizers(trainer)
        return trainer.optimizers[0]
