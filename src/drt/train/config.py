"""Settings of the one training loop (optimizer, schedule, epochs, seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from drt.errors import DrtError
from drt.options import opt


@dataclass(frozen=True)
class TrainConfig:
    title: ClassVar[str] = "training"
    epochs: int = opt(10, "training epochs (a PCN transform or pruning keeps the same total)")
    batch_size: int = opt(128, "mini-batch size (per process under DDP)")
    optimizer: str = opt("sgd", "optimizer", ("sgd", "adam", "adamw"))
    lr: float = opt(0.1, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = opt(5e-4, "weight decay (L2 for sgd/adam, decoupled for adamw)")
    schedule: str = opt("cosine", "LR schedule over epochs", ("constant", "multistep", "cosine"))
    milestones: tuple[float, ...] | None = opt(
        None, "multistep: epochs at which LR is multiplied by gamma (default 50%% and 75%% of training)")
    gamma: float = opt(0.1, "multistep LR factor")
    warmup_epochs: float = opt(0.0, "linear LR warm-up length in epochs")
    seed: int = opt(0, "seed for initialisation, data order, augmentation and methods")
    amp: bool = opt(False, "mixed precision (bfloat16 autocast on CPU, float16 + grad scaling on CUDA)")
    eval_batch_size: int = opt(1000, "batch size for evaluation")
    eval_every: int = opt(1, "evaluate every N epochs (and always after the last epoch of each training schedule)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
            if getattr(self, name) <= 0:
                raise DrtError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise DrtError(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise DrtError("weight_decay must be >= 0 and momentum in [0, 1)")
        if not self.gamma > 0:
            raise DrtError(f"gamma must be > 0 (the multistep LR factor), got {self.gamma}")
        if self.milestones is not None and self.schedule != "multistep":
            raise DrtError(f"milestones apply to the multistep schedule, not {self.schedule!r}")
        if self.nesterov and self.optimizer != "sgd":
            raise DrtError(f"nesterov applies to sgd, not {self.optimizer}")
        stones = list(self.milestones or ())
        if stones and (stones != sorted(set(stones)) or stones[0] <= 0 or stones[-1] > self.epochs):
            raise DrtError(f"milestones must be increasing epochs in (0, epochs={self.epochs}], got {self.milestones}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise DrtError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


def lr_at(cfg: TrainConfig, t: float, step_len: float, length: int | None = None) -> float:
    """Learning rate for the step starting at ``t`` epochs (``step_len`` epochs long).

    A pure function of absolute epochs, so a rebuilt optimizer (after a PCN transform)
    or a resumed run continues the same schedule. ``length`` defaults to ``cfg.epochs``.
    """
    length = length or cfg.epochs
    if cfg.schedule == "cosine":
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t / length, 1.0)))
    elif cfg.schedule == "multistep":
        stones = cfg.milestones if cfg.milestones is not None else (0.5 * length, 0.75 * length)
        lr = cfg.lr * cfg.gamma ** sum(t >= m - 1e-9 for m in stones)
    else:
        lr = cfg.lr
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        lr *= min(1.0, (t + step_len) / cfg.warmup_epochs)
    return lr


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The configured optimizer over parameter groups (a method's groups leave frozen tensors out)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)
