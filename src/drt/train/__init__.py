"""The one training loop, its settings and checkpoints."""

from drt.train.config import TrainConfig, lr_at
from drt.train.loop import TrainResult, evaluate, make_optimizer, train

__all__ = ["TrainConfig", "TrainResult", "make_optimizer", "evaluate", "lr_at", "train"]
