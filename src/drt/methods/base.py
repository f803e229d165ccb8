"""The plug-in seam: hooks the training loop calls. A method overrides only what it needs.

The same objects drive our loop (``drt.train.train``) or a plain PyTorch loop::

    method.setup(state)                      # before training
    for x, y in batches:
        loss = loss_fn(model(x), y) + method.extra_loss(state)   # may be None
        loss.backward(); method.after_backward(state)
        opt.step(); method.after_step(state)
    new = method.epoch_end(state)           # a new model, or None
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drt.errors import DrtError
from drt.registry import Registry


@dataclass(frozen=True)
class NoOptions:
    """A method without settings."""


@dataclass
class TrainState:
    """What hooks may read (and, where documented, replace) during training.

    ``model`` and ``optimizer`` are replaced by the loop when a hook returns a new model.
    ``batches`` yields fresh ``(x, y)`` training batches (un-augmented) for scoring.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    input_shape: tuple[int, ...]
    num_classes: int
    epochs: int
    steps_per_epoch: int
    seed: int
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None
    run_dir: Path | None = None  # where a method may keep artefacts (e.g. each IMP round's mask)
    epoch: int = 0
    step: int = 0  # global optimizer steps taken
    x: torch.Tensor | None = None  # the current batch (inputs, targets) during a step
    y: torch.Tensor | None = None
    log: dict[str, Any] = field(default_factory=dict)  # method metrics for this epoch
    metrics: dict[str, Any] = field(default_factory=dict)  # this epoch's evaluation, for epoch_end hooks
    grad_scaling: bool = False  # AMP's GradScaler is on: gradients outside the optimizer stay scaled

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def training_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fresh pass over the un-augmented training batches (scores, PCN statistics)."""
        if self.batches is None:
            raise DrtError("this method reads training batches (scores, statistics); give the Driver batches=...")
        return self.batches()


class Method:
    """Base plug-in. ``Options`` is a frozen dataclass of the method's settings (CLI flags)."""

    Options: type = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    # --- hooks, in the order the loop calls them -------------------------------------------
    def setup(self, state: TrainState) -> nn.Module | None:
        """Before the first epoch (e.g. score masks). May return a replacement model."""

    def attach(self, state: TrainState) -> None:
        """Called whenever ``state.model`` is (re)built: register forward hooks here."""

    def extra_loss(self, state: TrainState, output: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term for this step (regularisers), or None."""

    def after_backward(self, state: TrainState) -> None:
        """After ``loss.backward()``, before the optimizer step (e.g. mask gradients)."""

    def after_step(self, state: TrainState) -> None:
        """After ``optimizer.step()`` (e.g. re-apply masks, drop/grow every ΔT steps)."""

    def epoch_end(self, state: TrainState) -> nn.Module | None:
        """After each epoch's training. Returning a new model makes the loop rebuild the
        optimizer for it (the LR schedule continues at absolute epochs)."""

    # --- schedule -------------------------------------------------------------------------
    def total_epochs(self, epochs: int) -> int:
        """Epochs the loop runs for a configured ``epochs`` (IMP: one schedule per round)."""
        return epochs

    def schedule_position(self, t: float, epochs: int) -> tuple[float, int]:
        """(position, length) in epochs of the LR schedule at absolute epoch ``t``."""
        return t, epochs

    # --- optimizer, accounting and checkpoints --------------------------------------------
    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer: every trainable parameter, with weight decay."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def masks(self) -> dict[str, torch.Tensor]:
        """Pruning masks (name -> bool, True = kept) for the cost accounting."""
        return {}

    def frozen_masks(self) -> dict[str, torch.Tensor]:
        """Freezing masks (name -> bool, True = trained) for the cost accounting."""
        return {}

    def summary(self, state: TrainState) -> dict[str, Any]:
        """Method-specific final metrics (achieved sparsity, guard firings, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Tensors/primitives only (checkpoints load with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        """Restore from a checkpoint; may return a rebuilt model architecture (PCN)."""
        return model


METHODS: Registry[type[Method]] = Registry("method")
REGULARISERS: Registry[type[Method]] = Registry("regulariser")
