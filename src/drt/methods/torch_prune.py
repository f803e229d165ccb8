"""The mask peer: PyTorch's own ``torch.nn.utils.prune`` run through our loop.

``torch-prune``: global L1 mask at initialisation (no layer-collapse guard: a layer left with no
weights is reported in ``collapsed``), trained through PyTorch's ``weight = weight_orig * weight_mask``
re-parametrisation, made permanent after the last epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.methods.shared import Sparsity
from drt.sparse import prunable


@dataclass(frozen=True)
class TorchPruneOptions(Sparsity):
    """``sparsity`` alone (no guard, one global L1 threshold)."""


@METHODS.register("torch-prune", help="torch.nn.utils.prune: global L1 magnitude mask at init, trained through "
                                      "PyTorch's weight_orig * weight_mask re-parametrisation")
class TorchPrune(Method):
    """The mask lives in each layer's ``weight_mask`` buffer until the last epoch, then ``prune.remove``."""

    Options = TorchPruneOptions

    def __init__(self, options: TorchPruneOptions | None = None) -> None:
        super().__init__(options)
        self.kept: dict[str, torch.Tensor] = {}  # layer name -> bool mask of its weight (True = kept)
        self.final = False

    def setup(self, state: TrainState) -> None:
        names = [n.rpartition(".")[0] for n in prunable(state.model)]
        if not names:
            raise DrtError("torch-prune: model has no conv or linear weights to prune")
        params = [(state.model.get_submodule(n), "weight") for n in names]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=self.options.sparsity)
        self.kept = self.read(state.model)

    @staticmethod
    def read(model: nn.Module) -> dict[str, torch.Tensor]:
        """Each re-parametrised layer's ``weight_mask`` buffer as a bool tensor."""
        return {n: m.weight_mask.detach().bool().cpu() for n, m in model.named_modules() if hasattr(m, "weight_mask")}

    def epoch_end(self, state: TrainState) -> nn.Module | None:
        if state.epoch < state.epochs or self.final:
            return None
        self.kept = self.read(state.model)
        for n in self.kept:  # weight = weight_orig * weight_mask becomes a plain parameter again
            prune.remove(state.model.get_submodule(n), "weight")
        self.final = True
        return state.model  # new parameter objects: the loop rebuilds the optimizer

    def masks(self) -> dict[str, torch.Tensor]:
        leaf = "weight" if self.final else "weight_orig"
        return {f"{n}.{leaf}": m for n, m in self.kept.items()}

    def summary(self, state: TrainState) -> dict[str, Any]:
        numel = sum(m.numel() for m in self.kept.values())
        kept = sum(int(m.sum()) for m in self.kept.values())
        return {"sparsity_target": self.options.sparsity, "sparsity_achieved": 1 - kept / numel,
                "prunable_params": numel, "collapsed": [f"{n}.weight" for n, m in self.kept.items() if not m.any()],
                "layers": [{"name": f"{n}.weight", "numel": m.numel(), "kept": int(m.sum()), "target": None,
                            "achieved": int(m.sum()) / m.numel()} for n, m in self.kept.items()]}

    def state_dict(self) -> dict[str, Any]:
        return {"kept": dict(self.kept), "final": self.final}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        """Re-attach the re-parametrisation to the fresh ``model``, so weight_orig and weight_mask load."""
        self.kept, self.final = dict(state["kept"]), bool(state["final"])
        if not self.final:
            for n in self.kept:
                prune.identity(model.get_submodule(n), "weight")
        return model
