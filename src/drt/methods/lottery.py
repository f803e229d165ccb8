"""Lottery tickets: iterative magnitude pruning (Frankle & Carbin 2019); Early-Bird lives in ``earlybird``.

IMP (``imp``): round 0 trains dense; after each round the smallest-|θ| p of the *remaining* conv and
linear weights are pruned globally (biases and BN never), survivors are reset and the next round
trains one full ``--epochs`` schedule with a fresh optimizer. Round r ends at sparsity
1 − (1 − p)ʳ (exact counts, ``drt.sparse.kept_total``); the last round lands exactly on the target.
Rewinding: ``init`` resets survivors (and BN buffers) to θ₀; ``k`` (an integer) to θ_k, the state
after k optimizer steps of round 0, and later rounds replay the LR schedule from step k's position
(the round still runs full epochs, the loop's unit, so its last k steps stay at the schedule's
final LR: 0 for cosine); ``lr`` keeps the trained weights and replays the whole LR schedule.
Data order is a function of the absolute epoch. Each round's mask and trained weights are saved
as ``imp_round_<r>.pt`` in ``state.run_dir``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from drt.errors import DrtError
from drt.io import save_atomic
from drt.methods.base import METHODS, TrainState
from drt.methods.shared import LayerRules, Sparsity
from drt.methods.sparse_base import SparseMethod
from drt.options import opt
from drt.sparse import MaskSet, check_sparsity, magnitude_scores, masks_from_scores, prunable

TOL = 1e-9


def _reach(rate: float, rounds: int) -> float:
    return 1.0 - (1.0 - rate) ** rounds


def _rounds_needed(sparsity: float, rate: float) -> int:
    """The fewest rounds at ``rate`` whose sparsity 1 - (1 - rate)^n reaches ``sparsity``."""
    n = max(0, math.ceil(math.log1p(-sparsity) / math.log1p(-rate) - 1e-9))
    while n > 0 and _reach(rate, n - 1) >= sparsity - TOL:  # float slack around the closed form
        n -= 1
    while _reach(rate, n) < sparsity - TOL:
        n += 1
    return n


def imp_schedule(sparsity: float, rounds: int | None = None, rate: float | None = None
                 ) -> tuple[int, float, list[float]]:
    """(rounds n, per-round rate p, sparsity after rounds 1..n), the last exactly ``sparsity``.

    Default p = 0.2 and the fewest rounds that reach the target; ``rounds`` alone gives
    p = 1 − (1 − s)^(1/n) (a deviation for small budgets). DrtError if both are given and they
    cannot reach the target, or reach it before the last round.
    """
    s = check_sparsity(sparsity)
    if rounds is not None and rounds < 1:
        raise DrtError(f"imp_rounds must be >= 1, got {rounds}")
    if rate is not None and not 0.0 < rate < 1.0:
        raise DrtError(f"imp_rate must be in (0, 1), got {rate}")
    if s == 0.0:
        if rounds is not None:
            raise DrtError("sparsity 0 needs no pruning rounds; drop --imp-rounds or raise --sparsity")
        return 0, rate or 0.2, []
    if rate is None:
        rate = 1.0 - (1.0 - s) ** (1.0 / rounds) if rounds is not None else 0.2
    needed = _rounds_needed(s, rate)
    if needed > 1000:
        raise DrtError(f"imp_rate {rate} needs {needed} rounds to reach sparsity {s}; raise --imp-rate")
    if rounds is None:
        rounds = needed
    elif rounds < needed:
        raise DrtError(f"imp_rounds {rounds} at imp_rate {rate} reach sparsity {_reach(rate, rounds):.4f}, "
                       f"not {s}; use imp_rounds >= {needed} or imp_rate >= {1 - (1 - s) ** (1 / rounds):.4f}")
    elif rounds > needed:
        raise DrtError(f"imp_rounds {rounds} at imp_rate {rate} reach sparsity {s} after {needed} rounds; "
                       f"use imp_rounds {needed} or drop --imp-rate")
    return rounds, rate, [min(_reach(rate, r), s) for r in range(1, rounds)] + [s]


def parse_rewind(value: str) -> str | int:
    """``init`` | ``lr`` | a non-negative iteration count k (DrtError otherwise)."""
    if value in ("init", "lr"):
        return value
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0:
        raise DrtError(f"rewind must be init, lr or a number of iterations >= 0, got {value!r}")
    return k


@dataclass(frozen=True)
class IMPOptions(LayerRules, Sparsity):
    """sparsity, dense_first, dense_last, guard (shared) and IMP's own rounds, rate and rewind point."""

    title: ClassVar[str] = "IMP (lottery tickets)"
    imp_rounds: int | None = opt(None, "pruning rounds (default: fewest at imp_rate that reach the target)")
    imp_rate: float | None = opt(None, "fraction of the remaining weights pruned per round (default 0.2, or "
                                       "1-(1-s)^(1/rounds) if only imp_rounds is given)")
    rewind: str = opt("init", "reset survivors to: init (θ₀), k (θ after k iterations of round 0), "
                              "or lr (keep weights, replay the LR schedule)")

    def __post_init__(self) -> None:
        super().__post_init__()
        imp_schedule(self.sparsity, self.imp_rounds, self.imp_rate)
        _ = self.rewind_to  # parsed once, here, then cached

    @cached_property
    def rewind_to(self) -> str | int:
        """``rewind`` parsed: "init", "lr" or an iteration count k."""
        return parse_rewind(self.rewind)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _epoch_metric(state: TrainState, key: str) -> float | None:
    """A metric of the epoch just evaluated, if the loop exposes it (``state.metrics``) or a plug-in logged it."""
    metrics = getattr(state, "metrics", None) or {}
    return metrics.get(key, state.log.get(key))


@METHODS.register("imp", help="iterative magnitude pruning, 20% of the rest per round, rewind init|k|lr "
                              "(Frankle & Carbin 2019)")
class IMP(SparseMethod):
    Options = IMPOptions

    def __init__(self, options: IMPOptions | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.rounds, self.rate, self.targets = imp_schedule(o.sparsity, o.imp_rounds, o.imp_rate)
        self.rewind = o.rewind_to
        self.steps_per_epoch: int | None = None
        self.round = 0
        self.theta0: dict[str, Tensor] = {}
        self.theta_k: dict[str, Tensor] = {}
        self.history: list[dict[str, Any]] = []

    def total_epochs(self, epochs: int) -> int:
        return (self.rounds + 1) * epochs

    def schedule_position(self, t: float, epochs: int) -> tuple[float, int]:
        """Round r replays the schedule: the same float as round 0's ``epoch + i / steps`` (+ k steps)."""
        r = min(int(t // epochs), self.rounds)
        spe = self.steps_per_epoch
        if spe is None:  # outside our loop before setup: no step grid known
            return t - r * epochs, epochs
        step = round((t - r * epochs) * spe) + (self.rewind if r > 0 and isinstance(self.rewind, int) else 0)
        if step >= epochs * spe:
            return float(epochs), epochs
        return step // spe + (step % spe) / spe, epochs

    def choose(self, state: TrainState) -> tuple[MaskSet, dict[str, Any]]:
        return MaskSet.ones(prunable(state.model)), {}

    def setup(self, state: TrainState) -> None:
        if isinstance(self.rewind, int) and self.rewind > state.epochs * state.steps_per_epoch:
            raise DrtError(f"rewind {self.rewind} is beyond round 0's {state.epochs * state.steps_per_epoch} "
                           "iterations; use a smaller k, init or lr")
        self.steps_per_epoch = state.steps_per_epoch
        super().setup(state)
        if self.targets:  # the last round's rule on θ₀: an unreachable budget fails now, not rounds later
            o = self.options
            masks_from_scores(magnitude_scores(prunable(state.model)), self.targets[-1], "global",
                              dense_first=o.dense_first, dense_last=o.dense_last, guard=o.guard)
        self.theta0 = _snapshot(state.model)

    def after_step(self, state: TrainState) -> None:
        super().after_step(state)
        if isinstance(self.rewind, int) and self.rewind > 0 and not self.theta_k and state.step == self.rewind:
            self.theta_k = _snapshot(state.model)

    def epoch_end(self, state: TrainState) -> nn.Module | None:
        r = (state.epoch - 1) // state.epochs
        state.log.update(imp_round=r, imp_sparsity=self.mask.sparsity())
        if state.epoch % state.epochs:
            return None
        self._end_round(state, r)
        if r >= self.rounds:
            return None
        self._prune_and_reset(state, r + 1)
        return state.model  # same object: the loop rebuilds the optimizer (fresh state)

    def _end_round(self, state: TrainState, r: int) -> None:
        """Record round ``r`` and keep its mask and trained weights in ``imp_round_<r>.pt``."""
        self.history.append({"round": r, "sparsity_target": self.targets[r - 1] if r else 0.0,
                             "sparsity": self.mask.sparsity(), "end_epoch": state.epoch,
                             "test_acc": _epoch_metric(state, "test_acc")})
        if state.run_dir is not None:
            save_atomic(state.run_dir / f"imp_round_{r}.pt",
                            {"round": r, "sparsity": self.mask.sparsity(), "mask": self.mask.state_dict(),
                             "model": {k: v.cpu() for k, v in _snapshot(state.model).items()}})

    @torch.no_grad()
    def _prune_and_reset(self, state: TrainState, r: int) -> None:
        """Prune to the sparsity of round ``r`` by |θ| among survivors, then rewind the survivors."""
        o = self.options
        scores = {n: s.masked_fill(~self.mask[n].to(s.device), -1.0)
                  for n, s in magnitude_scores(prunable(state.model)).items()}
        mask, info = masks_from_scores(scores, self.targets[r - 1], "global", dense_first=o.dense_first,
                                       dense_last=o.dense_last, guard=o.guard)
        if self.rewind != "lr":
            state.model.load_state_dict(self.theta_k if self.rewind not in ("init", 0) else self.theta0)
        info["guard_fired"] = sorted(set(self.info.get("guard_fired", [])) | set(info.get("guard_fired", [])))
        self.set_mask(state, mask, info)  # guard firings accumulate over the rounds
        self.round = r

    def summary(self, state: TrainState) -> dict[str, Any]:
        rows = self.mask.report()
        return {
            "sparsity_target": self.options.sparsity, "sparsity_achieved": self.mask.sparsity(),
            "imp_rounds": self.rounds, "imp_rate": self.rate, "rewind": self.options.rewind,
            "rounds": list(self.history), "guard_fired": list(self.info.get("guard_fired", [])),
            "prunable_params": self.mask.numel(), "sparsity_counts": "conv and linear weights (no bias, no BN)",
            "layers": [{k: r[k] for k in ("name", "numel", "kept", "achieved")} for r in rows[:-1]],
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "theta0": self.theta0, "theta_k": self.theta_k, "round": self.round,
                "steps_per_epoch": self.steps_per_epoch, "history": json.dumps(self.history)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        super().load_state_dict(state, model)
        device = next(model.parameters()).device
        self.mask = self.mask.to(device)
        self.theta0 = {k: v.to(device) for k, v in state["theta0"].items()}
        self.theta_k = {k: v.to(device) for k, v in state["theta_k"].items()}
        self.round, self.steps_per_epoch = state["round"], state["steps_per_epoch"]
        self.history = json.loads(state["history"])
        return model
