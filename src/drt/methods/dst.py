"""Dynamic sparse training: SET, RigL, ITOP (here), GraNet and SNFS (own modules) as one drop/grow plug-in.

One class does the work (``DynamicSparse``): a random start mask at the layer densities, then every
ΔT optimizer steps a per-layer drop/grow update (``drt.sparse.drop_grow_``). The methods differ only
in pieces: the drop score (|θ|; SET per sign), the grow score (random for SET, the dense gradient of
the current batch for RigL and GraNet), the drop-fraction schedule, and GraNet's extra gradual
magnitude pruning.

Conventions (spec "sparse-and-frozen"): conv and linear weights are masked (biases and BN never);
the start mask draws the same random scores as ``--method random`` with the same seed (identical
on every rank); newly grown weights and their optimizer state start at 0, dropped-and-regrown ones
keep theirs. An update whose dense gradient is not finite (a step AMP's scaler skips) is skipped.
Deviations: SET updates only before t_end = 75% of training, as RigL's SET baseline (Mocanu et al.
update every epoch to the end: ``--t-end 1``); the loop always takes the optimizer step, so on an update step the drop
sees the weights after that step (RigL's reference skips the step); a ΔT that leaves no update
inside the run's window is clamped to half the window with a warning (see ``DynamicSparse.plan``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from drt.errors import DrtError
from drt.methods.base import METHODS, TrainState
from drt.methods.sparse_base import SparseMethod, SparseOptions
from drt.options import opt
from drt.sparse import (
    DropGroups,
    DropScore,
    ExplorationTracker,
    GrowCounts,
    MaskSet,
    by_sign,
    check_ranks_agree,
    cosine_drop_fraction,
    drop_grow_,
    grad_magnitude,
    magnitude_scores,
    masks_from_scores,
    prunable,
    random_scores,
    rigl_drop_fraction,
)
from drt.sparse.distributions import dense_names


@dataclass(frozen=True)
class DSTOptions(SparseOptions):
    title: ClassVar[str] = "dynamic sparse training"
    delta_t: int | None = opt(None, "optimizer steps between drop/grow updates ΔT (default: RigL 100, "
                                    "SET one epoch, GraNet 1000; clamped with a warning if none would fit)")
    alpha: float | None = opt(None, "drop fraction in (0, 1] (RigL α = 0.3, cosine-decayed to t_end; "
                                    "SET ζ = 0.3, constant; GraNet r = 0.5, cosine over all steps)")
    t_end: float | None = opt(None, "fraction of training steps in (0, 1]: RigL/SET update only before it "
                                    "(default 0.75); GraNet's gradual pruning ends there (t_f, default 0.5)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta_t is not None and self.delta_t < 1:
            raise DrtError(f"delta_t must be >= 1 optimizer step, got {self.delta_t}")
        if self.alpha is not None and not 0.0 < self.alpha <= 1.0:
            raise DrtError(f"alpha (drop fraction) must be in (0, 1], got {self.alpha}")
        if self.t_end is not None and not 0.0 < self.t_end <= 1.0:
            raise DrtError(f"t_end must be a fraction of training in (0, 1], got {self.t_end}")


@dataclass(frozen=True)
class Plan:
    """When a DST method acts, in optimizer steps (``state.step`` counts steps taken)."""

    delta_t: int  # ΔT after clamping
    end: int  # RigL/SET: T_end, no updates from this step on; GraNet: t_f before rounding to ΔT
    total: int  # optimizer steps of the whole run


class DynamicSparse(SparseMethod):
    """Drop/grow every ΔT steps; subclasses set the rule attributes and ``drop_fraction``."""

    Options = DSTOptions
    default_distribution = "erk"
    default_delta_t: int | None = 100  # None: one epoch
    default_alpha = 0.3
    default_t_end = 0.75
    drop_score: DropScore = staticmethod(magnitude_scores)  # the lowest active scores are dropped
    drop_groups: DropGroups | None = None  # groups of a tensor that drop their fractions separately
    rounding = "floor"
    grow_by_gradient = True  # False: random growth (SET)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.generator = torch.Generator()  # seeded at setup, identically on every rank
        self._tracker: ExplorationTracker | None = None
        self.updates: list[dict[str, Any]] = []  # one record per drop/grow update
        self._plan: Plan | None = None
        self._grow: dict[str, torch.Tensor] | None = None

    @property
    def tracker(self) -> ExplorationTracker:
        """Which weights were ever active (the exploration rate); set up with the mask."""
        if self._tracker is None:
            raise DrtError(f"{type(self).__name__} has no exploration tracker yet: its setup hook has not run")
        return self._tracker

    @tracker.setter
    def tracker(self, tracker: ExplorationTracker) -> None:
        self._tracker = tracker

    # --- settings -------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self.options.alpha if self.options.alpha is not None else self.default_alpha

    @property
    def t_end(self) -> float:
        return self.options.t_end if self.options.t_end is not None else self.default_t_end

    @property
    def start_sparsity(self) -> float:
        return self.options.sparsity

    def last_window_step(self, end: int) -> int:
        """The last step at which the windowed action may happen (RigL/SET: strictly before T_end)."""
        return end - 1

    def plan(self, state: TrainState) -> Plan:
        """ΔT and the window end in steps; cached. Warns (once per process) when ΔT is clamped.

        T_end = round(t_end * total steps) (at least 1). If a ΔT in steps exceeds the window, no update
        would happen: ΔT becomes max(1, window // 2) so that at least one (RigL: at α/2) does. Updates
        at epoch ends (SET, SNFS) are never moved into an epoch: a run too short for one has none.
        """
        if self._plan is None:
            total = state.total_steps
            end = max(1, math.floor(self.t_end * total + 0.5))
            per_epoch = not (self.options.delta_t or self.default_delta_t)
            dt = self.options.delta_t or self.default_delta_t or state.steps_per_epoch
            last = self.last_window_step(end)
            name = type(self).__name__
            if last < 1 or (per_epoch and dt > last):
                warnings.warn(f"{name}: the update window (t_end={self.t_end} of {total} steps) holds no "
                              f"{'epoch end' if per_epoch else 'step'}; the mask stays fixed", stacklevel=2)
            elif dt > last:
                warnings.warn(f"{name}: delta_t={dt} steps leaves no update within the first {last} of {total} "
                              f"steps (t_end={self.t_end}); using delta_t={max(1, last // 2)}", stacklevel=2)
                dt = max(1, last // 2)
            self._plan = Plan(dt, end, total)
        return self._plan

    def is_update(self, step: int, plan: Plan) -> bool:
        return step > 0 and step % plan.delta_t == 0 and step <= self.last_window_step(plan.end)

    def drop_fraction(self, step: int, plan: Plan) -> float:
        raise NotImplementedError

    def before_drop_grow(self, state: TrainState, step: int, plan: Plan,
                         weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Extra work on an update step before drop/grow (GraNet prunes here); returns record fields."""
        return {}

    # --- hooks ----------------------------------------------------------------------------
    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        """Random start mask at the layer densities (the scores ``--method random`` draws)."""
        o = self.options
        params = {n: p.detach().cpu() for n, p in prunable(state.model).items()}
        return masks_from_scores(random_scores(params, self.generator), self.start_sparsity, self.distribution,
                                 dense_first=o.dense_first, dense_last=o.dense_last, guard=o.guard)

    def setup(self, state: TrainState) -> None:
        self.generator = torch.Generator().manual_seed(state.seed + 17)
        self._plan, self._grow, self.updates = None, None, []
        super().setup(state)
        self.tracker = ExplorationTracker(self.mask)
        self.plan(state)

    def after_backward(self, state: TrainState) -> None:
        """Capture the dense gradient (before masking) on steps that will update; then mask grads."""
        if self.grow_by_gradient and self.is_update(state.step + 1, self.plan(state)):
            self._grow = grad_magnitude(self._weights(state))
        super().after_backward(state)

    def after_step(self, state: TrainState) -> None:
        super().after_step(state)
        plan = self.plan(state)
        if self.is_update(state.step, plan):
            self.update(state, state.step, plan)

    def epoch_end(self, state: TrainState) -> None:
        state.log.update(mask_sparsity=self.mask.sparsity(), exploration_rate=self.tracker.rate(),
                         dst_updates=len(self.updates))

    def update(self, state: TrainState, step: int, plan: Plan) -> None:
        """One drop/grow update of ``self.mask``, weights and optimizer state; appends to ``updates``."""
        grow = self.grow_scores()
        if grow is not None and not all(bool(torch.isfinite(g).all()) for g in grow.values()):
            warnings.warn(f"{type(self).__name__}: non-finite gradient at step {step}; update skipped",
                          stacklevel=2)  # e.g. a step AMP's scaler skips
            self.updates.append({"step": step, "skipped": "non-finite gradient"})
            return
        weights = self._weights(state)
        record: dict[str, Any] = {"step": step, **self.before_drop_grow(state, step, plan, weights)}
        fraction = self.drop_fraction(step, plan)
        active = {n: self.mask.kept(n) for n in self.mask}
        info = drop_grow_(weights, self.mask, fraction, grow, self.generator, state.optimizer,
                          drop_score=self.drop_score, drop_groups=self.drop_groups, rounding=self.rounding,
                          grow_counts=self.grow_counts(),
                          fixed=dense_names(list(self.mask), self.options.dense_first, self.options.dense_last))
        check_ranks_agree(self.mask, f"{type(self).__name__} update at step {step}")
        self.tracker.update(self.mask)
        record.update(fraction=fraction, active=active, dropped=info.dropped, new=info.new)
        self.updates.append(record)

    def grow_scores(self) -> dict[str, torch.Tensor] | None:
        """Scores for ``drop_grow_``'s growth: the dense gradient captured this step (None: random)."""
        if not self.grow_by_gradient:
            return None
        if self._grow is None:
            raise DrtError(f"{type(self).__name__} grows by the dense gradient: call after_backward "
                           "before after_step on every step")
        grow, self._grow = self._grow, None
        return grow

    def grow_counts(self) -> GrowCounts | None:
        """Per-layer regrowth counts for ``drop_grow_`` (None: each layer regrows what it dropped)."""
        return None

    def _weights(self, state: TrainState) -> dict[str, torch.Tensor]:
        params = dict(state.model.named_parameters())
        return {n: params[n] for n in self.mask}

    # --- reporting and checkpoints ------------------------------------------------------------
    def summary(self, state: TrainState) -> dict[str, Any]:
        out = super().summary(state)
        plan = self.plan(state)
        out.update(delta_t=plan.delta_t, update_end_step=plan.end, alpha=self.alpha, updates=len(self.updates),
                   updates_skipped=sum("skipped" in u for u in self.updates), exploration_rate=self.tracker.rate())
        for row in out["layers"]:
            row["explored"] = self.tracker.rate(row["name"])
            row["regrown_new"] = sum(u["new"][row["name"]] for u in self.updates if "new" in u)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tracker": self.tracker.state_dict(),
                "generator": self.generator.get_state(), "updates": json.dumps(self.updates)}

    def load_state_dict(self, state: dict[str, Any], model: torch.nn.Module) -> torch.nn.Module:
        model = super().load_state_dict(state, model)
        device = next(model.parameters()).device
        self.mask = self.mask.to(device)
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        self.tracker = ExplorationTracker(self.mask)
        self.tracker.load_state_dict(state["tracker"])
        self.updates = json.loads(state["updates"])
        self._plan, self._grow = None, None
        return model


@METHODS.register("set", help="SET: drop the weights closest to 0 (ζ = 0.3) each epoch, regrow at random "
                              "(Mocanu et al. 2018)")
class SET(DynamicSparse):
    """SET. ERK start by default (the paper: ER with ε = 20 on MLPs; ``--distribution er``)."""

    default_delta_t = None
    drop_groups = staticmethod(by_sign)  # the weights closest to 0 among the positive and among the negative
    grow_by_gradient = False

    def drop_fraction(self, step: int, plan: Plan) -> float:
        return self.alpha


@METHODS.register("rigl", help="RigL: drop smallest |θ|, regrow by dense |gradient|, α = 0.3 cosine to "
                               "75% of training, ΔT = 100 (Evci et al. 2020)")
class RigL(DynamicSparse):
    """RigL = SET with a gradient grow score, magnitude drop and α_t = α/2·(1 + cos(π t / T_end))."""

    def drop_fraction(self, step: int, plan: Plan) -> float:
        return rigl_drop_fraction(step, self.alpha, t_end=plan.end)


class WholeRunCosine(DynamicSparse):
    """The ``sparse_learning`` schedule (SNFS, ITOP): updates to the end of training, per layer
    ⌈p_t·n_active⌉ dropped, p_t cosine from α = 0.5 to 0.005 over all steps."""

    default_alpha = 0.5
    default_t_end = 1.0
    rounding = "ceil"

    def drop_fraction(self, step: int, plan: Plan) -> float:
        return cosine_drop_fraction(step, self.alpha, t_total=plan.total)


@dataclass(frozen=True)
class ITOPOptions(DSTOptions):
    title: ClassVar[str] = "ITOP"
    itop_grow: str = opt("gradient", "ITOP growth: gradient (RigL-ITOP, dense |gradient|) or random (SET-ITOP)",
                         ("gradient", "random"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.itop_grow not in ("gradient", "random"):
            raise DrtError(f"itop_grow must be gradient or random, got {self.itop_grow!r}")


@METHODS.register("itop", help="In-Time Over-Parameterization: RigL (or SET) with ΔT = 1500 and drop rate 0.5 "
                               "cosine over all of training, exploring most weights (Liu et al. 2021)")
class ITOP(WholeRunCosine):
    """ITOP as its reference code runs it (``--update_frequency 1500 --death magnitude --redistribution
    none``, ERK start): magnitude drop, growth by dense |gradient| or at random, every ΔT steps to the end.
    The exploration rate (fraction of weights ever active) is in every DST run's summary."""

    Options = ITOPOptions
    default_delta_t = 1500

    @property
    def grow_by_gradient(self) -> bool:  # type: ignore[override]
        return self.options.itop_grow == "gradient"
