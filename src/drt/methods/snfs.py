"""Sparse momentum, SNFS (Dettmers & Zettlemoyer 2019), on the DST machinery of ``dst``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from drt.errors import DrtError
from drt.methods.base import METHODS, TrainState
from drt.methods.dst import WholeRunCosine
from drt.sparse import GrowCounts, redistribute


def momentum_coefficient(optimizer: torch.optim.Optimizer | None) -> float:
    """The optimizer's own momentum (SGD ``momentum``, Adam's beta1), else SNFS's default 0.9."""
    group = optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else {}
    mu = group.get("momentum") or group.get("betas", (0.0,))[0]
    return float(mu) if mu else 0.9


@METHODS.register("snfs", help="Sparse momentum (SNFS): each epoch drop the smallest |θ| (rate 0.5, cosine), "
                               "regrow by dense |momentum|, redistributed over layers by their mean "
                               "|momentum| (Dettmers & Zettlemoyer 2019)")
class SNFS(WholeRunCosine):
    """SNFS as in the reference code (``sparse_learning``): at every epoch end but the last, per layer
    drop ⌈p_t·n_active⌉ smallest |θ| (p_t cosine from 0.5 to 0.005 over all steps); the total
    dropped is regrown across layers in proportion to each layer's mean |momentum| over its active
    weights (taken before the drop), and within a layer at the inactive weights of largest |momentum|.

    The momentum is of the *dense* gradient, m ← μ·m + ∇θ L at every weight (the reference reads
    the optimizer's buffer, which its unmasked gradients keep dense); drt keeps optimizer state
    zero at masked weights, so the method keeps this buffer itself (μ from the optimizer, else 0.9;
    one dense tensor per masked layer; the loss gradient only, without weight decay; under Adam
    too, where the reference uses Adam's normalised m / (√v + ε)). Deviations: regrowth counts are
    exact integers summing to the number dropped (largest remainder; a layer may fill up and then
    keeps taking part, losing weights to others) where the reference caps a layer at 0.99 of its
    free weights and carries rounding errors to the next update; with the guard (default) a layer
    the split would empty keeps one weight (reported in ``guard_fired``); regrown weights start at
    0 with zero optimizer state, as in every drt DST method. Uniform start densities, as the reference.
    """

    default_delta_t = None  # one epoch
    default_distribution = "uniform"  # the reference's start: one density for every layer
    grow_by_gradient = False  # grows by momentum instead

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.momentum: dict[str, torch.Tensor] = {}

    def setup(self, state: TrainState) -> None:
        super().setup(state)
        self.momentum = {n: torch.zeros_like(p) for n, p in self._weights(state).items()}

    def after_backward(self, state: TrainState) -> None:
        """Accumulate the dense gradient's momentum (before masking); a non-finite step is left out."""
        weights = self._weights(state)
        grads = {n: p.grad for n, p in weights.items() if p.grad is not None}
        missing = [n for n in weights if n not in grads]
        if missing:
            raise DrtError(f"SNFS needs .grad after backward; missing for {', '.join(missing)}")
        if all(bool(torch.isfinite(g).all()) for g in grads.values()):
            mu = momentum_coefficient(state.optimizer)
            for n, g in grads.items():
                self.momentum[n].mul_(mu).add_(g)
        super().after_backward(state)

    def grow_scores(self) -> dict[str, torch.Tensor]:
        return {n: m.abs() for n, m in self.momentum.items()}

    def grow_counts(self) -> GrowCounts:
        """Shares: mean |momentum| over each layer's active weights before the drop. With the guard, a
        layer the split would leave empty gets one weight from the layer regrowing the most."""
        shares = {}
        for n, m in self.momentum.items():
            active = self.mask[n].to(m.device)
            shares[n] = float(m.abs()[active].mean()) if bool(active.any()) else 0.0

        def counts(dropped: Mapping[str, int], capacity: Mapping[str, int]) -> dict[str, int]:
            out = redistribute(sum(dropped.values()), {n: shares[n] for n in dropped}, capacity)

            def kept(k: str) -> int:
                return self.mask.numel(k) - capacity[k] + out[k]

            for n in dropped:
                donors = [k for k in out if out[k] > 0 and kept(k) > 1]
                if self.options.guard and kept(n) == 0 and donors:
                    out[max(donors, key=out.__getitem__)] -= 1
                    out[n] += 1
                    fired = self.info.setdefault("guard_fired", [])
                    fired.extend([] if n in fired else [n])
            return out

        return counts

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "momentum": {n: m.clone() for n, m in self.momentum.items()}}

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> torch.nn.Module:
        model = super().load_state_dict(state, model)
        params = dict(model.named_parameters())
        self.momentum = {n: m.to(params[n].device).clone() for n, m in state["momentum"].items()}
        return model
