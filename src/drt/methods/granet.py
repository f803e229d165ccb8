"""GraNet (Liu et al. 2021): gradual magnitude pruning plus drop/regrow, on the DST machinery of ``dst``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from drt.errors import DrtError
from drt.methods.base import METHODS, TrainState
from drt.methods.dst import DSTOptions, DynamicSparse, Plan
from drt.options import opt
from drt.sparse import MaskSet, check_sparsity, cosine_drop_fraction, granet_prune_, granet_sparsity, kept_total
from drt.sparse.distributions import dense_names


@dataclass(frozen=True)
class GraNetOptions(DSTOptions):
    title: ClassVar[str] = "GraNet"
    granet_initial: float = opt(0.0, "GraNet initial sparsity s_i: 0 = dense-to-sparse (all-ones start), "
                                     "e.g. 0.5 = from a random mask at --distribution (default ERK)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.granet_initial, int | float) and 0.0 <= self.granet_initial < self.sparsity):
            raise DrtError(f"granet_initial must be in [0, sparsity={self.sparsity}), got {self.granet_initial}")


@METHODS.register("granet", help="GraNet: cubic gradual global magnitude pruning to t_f = 50% of training, "
                                 "plus drop/regrow by gradient (Liu et al. 2021)")
class GraNet(DynamicSparse):
    """GraNet (official code's rules): every ΔT steps until t_f, global magnitude pruning of the
    active weights to s_t = s_f + (s_i - s_f)(1 - t/t_f)^3 (t0 = 0; t_f rounded down to a multiple
    of ΔT, as the reference's integer iteration counts do, so s_f is reached by t_f), then per layer
    drop ⌈r_t·n_active⌉ smallest |θ| and regrow as many by dense |gradient|. Drop/regrow continues
    every ΔT to the end of training, r_t cosine from r = 0.5 to 0.005 over all steps. Layers named
    by ``--dense-first``/``--dense-last`` are never pruned; the target counts over all layers.
    """

    Options = GraNetOptions
    default_delta_t = 1000
    default_alpha = 0.5
    default_t_end = 0.5
    rounding = "ceil"

    @property
    def start_sparsity(self) -> float:
        return self.options.granet_initial

    def last_window_step(self, end: int) -> int:
        return end

    def is_update(self, step: int, plan: Plan) -> bool:
        return step > 0 and step % plan.delta_t == 0

    def drop_fraction(self, step: int, plan: Plan) -> float:
        return cosine_drop_fraction(step, self.alpha, t_total=plan.total)

    def prune_end(self, plan: Plan) -> int:
        """The effective t_f: the last pruning step, a multiple of ΔT."""
        return plan.delta_t * (plan.end // plan.delta_t)

    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        masks, info = super().choose(state)
        o, names = self.options, list(masks)
        dense = dense_names(names, o.dense_first, o.dense_last)
        budget = kept_total(masks.numel(), o.sparsity) - sum(masks.numel(n) for n in dense)
        if budget < (len(names) - len(dense) if o.guard else 1):
            raise DrtError(f"granet cannot reach sparsity {o.sparsity}: dense layers {', '.join(dense)} "
                           "leave too few weights for the others")
        info["targets"] = {n: (1.0 if n in dense else None) for n in names}  # global pruning
        return masks, info

    def before_drop_grow(self, state: TrainState, step: int, plan: Plan,
                         weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        end = self.prune_end(plan)
        if step > end:
            return {}
        o = self.options
        target = granet_sparsity(step, o.granet_initial, o.sparsity, 0, end)
        dense = set(dense_names(list(self.mask), o.dense_first, o.dense_last))
        rest = MaskSet({n: m for n, m in self.mask.items() if n not in dense})
        keep = kept_total(self.mask.numel(), target) - sum(self.mask.numel(n) for n in dense)
        pruned = granet_prune_(weights, rest, check_sparsity(1.0 - keep / rest.numel()), state.optimizer,
                               guard=o.guard)
        for n, m in rest.items():
            self.mask[n] = m
        return {"target_sparsity": target, "pruned": pruned}

    def summary(self, state: TrainState) -> dict[str, Any]:
        out = super().summary(state)
        out.update(distribution="global", start_distribution=self.distribution, granet_initial=self.start_sparsity,
                   prune_end_step=self.prune_end(self.plan(state)))
        if self.start_sparsity == 0.0:  # every weight was active at the dense start
            out["exploration_note"] = "dense start: the exploration rate is 1 by definition"
        return out
