"""Shared plumbing of mask-based methods: choose a mask, keep weights, grads and optimizer state masked.

A subclass implements ``choose(state) -> (MaskSet, info)`` (pruning at init) and/or changes
``self.mask`` later (dynamic sparse training, IMP). The mask covers conv and linear weights
(biases and BN are never masked) and is applied in place, never inferred from values.

Under torch.distributed every rank must hold the same mask: gradient-based scores computed in
``choose`` average the raw gradients over ranks (``reduce=drt.dist.mean_``) before any |.|, random
draws use generators seeded identically on every rank, and each new mask is compared across ranks by
its checksum (``drt.sparse.check_ranks_agree``), failing loudly if they diverge.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from drt.errors import DrtError
from drt.methods.base import Method, TrainState
from drt.methods.shared import Distribution, LayerRules, Sparsity
from drt.sparse import MaskSet, check_ranks_agree, prunable


@dataclass(frozen=True)
class SparseOptions(LayerRules, Distribution, Sparsity):
    """sparsity, distribution, dense_first, dense_last, guard (declared in ``drt.methods.shared``)."""


class SparseMethod(Method):
    """Masks weights from ``setup`` on; subclasses decide the mask."""

    Options: type = SparseOptions
    default_distribution = "global"

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._mask: MaskSet | None = None
        self.info: dict[str, Any] = {}

    @property
    def mask(self) -> MaskSet:
        """The current mask (name -> bool, True = kept); DrtError before ``setup`` chose one."""
        if self._mask is None:
            raise DrtError(f"{type(self).__name__} has no mask yet: its setup hook has not run")
        return self._mask

    @mask.setter
    def mask(self, mask: MaskSet) -> None:
        self._mask = mask

    @property
    def distribution(self) -> str:
        return self.options.distribution or self.default_distribution

    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        raise NotImplementedError

    def set_mask(self, state: TrainState, mask: MaskSet, info: dict[str, Any]) -> None:
        """Adopt ``mask`` and zero the masked weights (and optimizer state, if any) now."""
        self.mask, self.info = mask.to(state.device), info
        check_ranks_agree(self.mask, f"{type(self).__name__} at step {state.step}")
        self.mask.apply_(state.model, state.optimizer)

    def setup(self, state: TrainState) -> None:
        if not prunable(state.model):
            raise DrtError(f"{type(self).__name__}: model has no conv or linear weights to prune")
        self.set_mask(state, *self.choose(state))

    def after_backward(self, state: TrainState) -> None:
        self.mask.mask_grads_(state.model)

    def after_step(self, state: TrainState) -> None:
        self.mask.apply_(state.model, state.optimizer)

    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._mask) if self._mask is not None else {}

    def summary(self, state: TrainState) -> dict[str, Any]:
        info = self.info
        rows = self.mask.report(info.get("targets"), 1 - self.options.sparsity, info.get("guard_fired", ()))
        return {
            "sparsity_target": self.options.sparsity,
            "sparsity_achieved": self.mask.sparsity(),
            "distribution": self.distribution,
            "guard_fired": list(info.get("guard_fired", [])),
            "prunable_params": self.mask.numel(),
            "layers": [{k: r[k] for k in ("name", "numel", "kept", "target", "achieved")} for r in rows[:-1]],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self._mask.state_dict() if self._mask is not None else {}, "info": json.dumps(self.info)}

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> torch.nn.Module:
        device = next(model.parameters()).device
        self._mask = MaskSet(state["masks"]).to(device) if state["masks"] else None
        self.info = json.loads(state["info"])
        return model


def score_batches(state: TrainState, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` un-augmented training batches (the same on every run with this seed)."""
    out = list(itertools.islice(state.training_batches(), n))
    if len(out) < n:
        raise DrtError(f"score_batches {n} asks for more batches than the training data has ({len(out)})")
    return out


def class_balanced_batch(state: TrainState, per_class: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch with ``per_class`` samples of every class (GraSP's sampling)."""
    xs, ys, have = [], [], torch.zeros(state.num_classes, dtype=torch.long)
    for x, y in state.training_batches():
        for c in range(state.num_classes):
            need = per_class - int(have[c])
            if need > 0:
                idx = (y == c).nonzero().flatten()[:need]
                xs.append(x[idx])
                ys.append(y[idx])
                have[c] += len(idx)
        if bool((have >= per_class).all()):
            break
    short = [c for c in range(state.num_classes) if have[c] < per_class]
    if short:
        warnings.warn(f"GraSP batch: classes {short} have fewer than {per_class} training samples", stacklevel=2)
    return [(torch.cat(xs), torch.cat(ys))]
