"""Pruning at initialisation: one mask chosen before training, fixed afterwards (survey §PaI).

random / magnitude / SNIP / GraSP score once; SynFlow, Iter-SNIP and FORCE prune iteratively
with an exponential schedule. Scores are pure functions in ``drt.sparse.scores``; the data-driven ones
average their raw gradient over ranks (``reduce=drt.dist.mean_``), so every rank scores the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from drt import dist
from drt.errors import DrtError
from drt.methods.base import METHODS, TrainState
from drt.methods.shared import ScoreBatches
from drt.methods.sparse_base import SparseMethod, SparseOptions, class_balanced_batch, score_batches
from drt.options import opt
from drt.sparse import (
    MaskSet,
    force,
    grasp_scores,
    iterative_snip,
    magnitude_scores,
    masks_from_scores,
    prunable,
    random_scores,
    snip_scores,
    synflow_prune,
)


@dataclass(frozen=True)
class ScoredOptions(ScoreBatches, SparseOptions):
    """The sparse settings and ``score_batches`` (SNIP; the iterative methods)."""


@dataclass(frozen=True)
class GraspOptions(SparseOptions):
    title: ClassVar[str] = "GraSP"
    grasp_temperature: float = opt(200.0, "GraSP logit temperature T")
    grasp_per_class: int = opt(10, "GraSP samples per class")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.grasp_temperature > 0 or self.grasp_per_class < 1:
            raise DrtError(f"GraSP needs grasp_temperature > 0 and grasp_per_class >= 1, got "
                           f"{self.grasp_temperature} and {self.grasp_per_class}")


def _check_rounds(rounds: int | None) -> None:
    if rounds is not None and rounds < 1:
        raise DrtError(f"prune_rounds must be >= 1, got {rounds}")


@dataclass(frozen=True)
class IterativeOptions(ScoredOptions):
    title: ClassVar[str] = "iterative pruning at initialisation"
    prune_rounds: int | None = opt(None, "iterative pruning rounds (SynFlow 100, Iter-SNIP/FORCE 60)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rounds(self.prune_rounds)


class OneShot(SparseMethod):
    """Score once, then keep the top scores at the chosen distribution."""

    def scores(self, state: TrainState, names: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        o = self.options
        scores = self.scores(state, list(prunable(state.model)))
        return masks_from_scores(scores, o.sparsity, self.distribution, dense_first=o.dense_first,
                                 dense_last=o.dense_last, guard=o.guard)


@METHODS.register("random", help="random mask at the layer densities (default ERK), exact counts")
class RandomPrune(OneShot):
    default_distribution = "erk"

    def scores(self, state: TrainState, names: list[str]) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(state.seed + 17)
        return random_scores({n: p.detach().cpu() for n, p in prunable(state.model).items()}, g)


@METHODS.register("magnitude", help="keep the largest |θ₀| (global)")
class MagnitudePrune(OneShot):
    def scores(self, state: TrainState, names: list[str]) -> dict[str, torch.Tensor]:
        return magnitude_scores(prunable(state.model))


@METHODS.register("snip", help="SNIP: keep the largest |g ⊙ θ| on a batch (Lee et al. 2019)")
class SNIP(OneShot):
    Options = ScoredOptions

    def scores(self, state: TrainState, names: list[str]) -> dict[str, torch.Tensor]:
        batches = score_batches(state, self.options.score_batches)
        return snip_scores(state.model, state.loss_fn, batches, names, reduce=dist.mean_)  # global-batch gradient


@METHODS.register("grasp", help="GraSP: remove the largest -θ ⊙ Hg, T = 200 (Wang et al. 2020)")
class GraSP(OneShot):
    Options = GraspOptions

    def scores(self, state: TrainState, names: list[str]) -> dict[str, torch.Tensor]:
        batch = class_balanced_batch(state, self.options.grasp_per_class)
        return grasp_scores(state.model, state.loss_fn, batch, names, T=self.options.grasp_temperature,
                            reduce=dist.mean_)


class Iterative(SparseMethod):
    Options = IterativeOptions
    rounds = 60

    def check(self) -> None:
        name = type(self).__name__
        if self.options.distribution not in (None, "global"):
            raise DrtError(f"{name} prunes with one global threshold; --distribution must be global")
        if self.options.dense_first or self.options.dense_last:
            raise DrtError(f"{name} prunes every layer under one global threshold; --dense-first/--dense-last "
                           "are not supported (use a one-shot method such as snip or magnitude)")


@METHODS.register("synflow", help="SynFlow: data-free iterative conservation scores, 100 rounds (Tanaka et al. 2020)")
class SynFlow(Iterative):
    rounds = 100

    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        self.check()
        o = self.options
        if o.score_batches != 1:
            raise DrtError("synflow is data-free (all-ones input); --score-batches does not apply")
        masks, info = synflow_prune(state.model, state.input_shape, o.sparsity, rounds=o.prune_rounds or self.rounds,
                                    guard=o.guard)
        return masks, info


@METHODS.register("iter-snip", help="Iterative SNIP: SNIP re-scored on an exponential schedule (de Jorge 2021)")
class IterSNIP(Iterative):
    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        self.check()
        o = self.options
        return iterative_snip(state.model, state.loss_fn, score_batches(state, o.score_batches), o.sparsity,
                              steps=o.prune_rounds or self.rounds, guard=o.guard, reduce=dist.mean_)


@METHODS.register("force", help="FORCE: iterative SNIP through the mask; pruned weights may return (de Jorge 2021)")
class FORCE(Iterative):
    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        self.check()
        o = self.options
        return force(state.model, state.loss_fn, score_batches(state, o.score_batches), o.sparsity,
                     steps=o.prune_rounds or self.rounds, guard=o.guard, reduce=dist.mean_)
