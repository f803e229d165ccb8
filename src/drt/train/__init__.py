"""The one training loop, its settings and checkpoints."""

from drt.train.config import TrainConfig, lr_at
from drt.train.loop import TrainResult, build_optimizer, evaluate, train

__all__ = ["TrainConfig", "TrainResult", "build_optimizer", "evaluate", "lr_at", "train"]
