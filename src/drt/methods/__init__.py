"""Training methods as plug-ins of the one loop (they decide *when*; mechanisms decide *how*)."""

from drt.methods import (  # noqa: F401  (registers)
    cka_sr,
    dense,
    dst,
    earlybird,
    freeze,
    granet,
    lottery,
    pcn,
    popup,
    prune_at_init,
    snfs,
    subspace,
    torch_prune,
    tp_channel,
)
from drt.methods.base import METHODS, REGULARISERS, Method, NoOptions, TrainState
from drt.methods.driver import Driver

__all__ = ["METHODS", "REGULARISERS", "Driver", "Method", "NoOptions", "TrainState"]
