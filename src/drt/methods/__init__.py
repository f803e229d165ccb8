"""Training methods as plug-ins of the one loop (they decide *when*; mechanisms decide *how*)."""

from drt.methods import cka_sr, dense, dst, earlybird, freeze, lottery, pcn, peers, prune_at_init  # noqa: F401  (registers)
from drt.methods.base import METHODS, REGULARISERS, Method, NoOptions, TrainState
from drt.methods.driver import Driver

__all__ = ["METHODS", "REGULARISERS", "Driver", "Method", "NoOptions", "TrainState"]
