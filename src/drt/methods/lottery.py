"""Lottery tickets: iterative magnitude pruning (Frankle & Carbin 2019) and Early-Bird tickets (You et al. 2020).

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

Early-Bird (``earlybird``): network-slimming L1 on BN γ; at each epoch end the channel mask keeps
the largest |γ| globally at ``--eb-ratio`` pruned (exact count, every BN keeps >= 1 channel; the EB
code keeps |γ| > a threshold instead); the ticket is drawn once the newest of the last 5 masks is
within normalised Hamming distance 0.1 of each earlier one (EB's ``cal_dist``), or at
``--eb-max-epoch``. Pruned channels are masked, not removed: their conv output filter (and bias)
and BN γ, β are held at zero; the L1 penalty stops at the ticket and training continues.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.methods.sparse_base import SparseMethod, check_ranks_agree
from drt.options import opt
from drt.sparse import MaskSet, check_sparsity, global_topk, magnitude_scores, masks_from_scores, prunable

TOL = 1e-9


def _reach(rate: float, rounds: int) -> float:
    return 1.0 - (1.0 - rate) ** rounds


def _rounds_needed(sparsity: float, rate: float) -> int:
    n = 0
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
class IMPOptions:
    sparsity: float = opt(0.9, "target sparsity over conv and linear weights (biases and BN never pruned)")
    imp_rounds: int | None = opt(None, "pruning rounds (default: fewest at imp_rate that reach the target)")
    imp_rate: float | None = opt(None, "fraction of the remaining weights pruned per round (default 0.2, or "
                                       "1-(1-s)^(1/rounds) if only imp_rounds is given)")
    rewind: str = opt("init", "reset survivors to: init (θ₀), k (θ after k iterations of round 0), "
                              "or lr (keep weights, replay the LR schedule)")
    dense_first: bool = opt(False, "keep the first prunable layer dense")
    dense_last: bool = opt(False, "keep the last prunable layer (the classifier) dense")
    guard: bool = opt(True, "layer-collapse guard: every prunable layer keeps >= 1 weight")

    def __post_init__(self) -> None:
        imp_schedule(self.sparsity, self.imp_rounds, self.imp_rate)
        parse_rewind(self.rewind)


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
        self.rewind = parse_rewind(o.rewind)
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
            state.run_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"round": r, "sparsity": self.mask.sparsity(), "mask": self.mask.state_dict(),
                        "model": {k: v.cpu() for k, v in _snapshot(state.model).items()}},
                       state.run_dir / f"imp_round_{r}.pt")

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
        self.set_mask(state, mask, info)
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


# --- Early-Bird -----------------------------------------------------------------------------

def hamming_distances(masks: Sequence[Tensor]) -> list[float]:
    """Normalised Hamming distance of the newest mask to each earlier one (EB code's ``cal_dist``)."""
    new = masks[-1].reshape(-1)
    return [float((new != m.reshape(-1)).sum()) / new.numel() for m in masks[:-1]]


def ticket_drawn(masks: Sequence[Tensor], window: int = 5, threshold: float = 0.1) -> bool:
    """True once ``window`` masks exist and the newest is within ``threshold`` of the other window-1."""
    return len(masks) >= window and all(d <= threshold for d in hamming_distances(masks[-window:]))


def channel_masks(gammas: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Per BN layer, bool keep-masks of the channels with the largest |γ| (global, exact count)."""
    masks, _ = global_topk({n: g.detach().abs() for n, g in gammas.items()}, ratio, guard=True)
    return masks


@torch.no_grad()
def bn_producers(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str | None]:
    """BN module name -> the conv/linear module whose output it normalises (None if another op).

    Found by one eval-mode forward pass of zeros, matching tensors by identity.
    """
    outputs: dict[int, tuple[str, Tensor]] = {}
    found: dict[str, str | None] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, _ConvNd | nn.Linear):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=name: outputs.__setitem__(id(o), (n, o))))
        elif isinstance(m, _BatchNorm) and m.affine:
            found[name] = None
            hooks.append(m.register_forward_pre_hook(
                lambda mod, i, n=name: found.__setitem__(n, outputs.get(id(i[0]), (None,))[0])))
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros((2, *input_shape), device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    out: dict[str, str | None] = {}
    for bn, prod in found.items():
        size = getattr(modules[prod], "out_channels", getattr(modules[prod], "out_features", 0)) if prod else 0
        out[bn] = prod if prod and size == modules[bn].num_features else None
    return out


@dataclass(frozen=True)
class EarlyBirdOptions:
    eb_ratio: float = opt(0.5, "fraction of BN channels pruned (EB: 0.3 / 0.5 / 0.7)")
    eb_l1: float = opt(1e-4, "L1 penalty λ on BN γ before the ticket (λ·sign(γ) added to the gradient)")
    eb_threshold: float = opt(0.1, "draw the ticket when all mask distances are <= this")
    eb_window: int = opt(5, "number of recent epoch masks compared")
    eb_max_epoch: int | None = opt(None, "draw the ticket at this epoch at the latest (default: half of training)")

    def __post_init__(self) -> None:
        if not 0.0 < self.eb_ratio < 1.0:
            raise DrtError(f"eb_ratio must be in (0, 1), got {self.eb_ratio}")
        if self.eb_l1 < 0 or not 0.0 <= self.eb_threshold <= 1.0:
            raise DrtError("eb_l1 must be >= 0 and eb_threshold in [0, 1]")
        if self.eb_window < 2:
            raise DrtError(f"eb_window must be >= 2, got {self.eb_window}")
        if self.eb_max_epoch is not None and self.eb_max_epoch < 1:
            raise DrtError(f"eb_max_epoch must be >= 1, got {self.eb_max_epoch}")


@METHODS.register("earlybird", help="Early-Bird tickets: BN-γ channel pruning drawn early by mask distance "
                                    "(You et al. 2020)")
class EarlyBird(Method):
    Options = EarlyBirdOptions

    def __init__(self, options: EarlyBirdOptions | None = None) -> None:
        super().__init__(options)
        self.groups: dict[str, str | None] = {}  # BN name -> producer conv/linear
        self.recent: list[Tensor] = []
        self.distances: list[float] = []
        self.max_epoch = 0
        self.ticket_epoch: int | None = None
        self.ticket_by = ""
        self.mask: MaskSet | None = None

    def setup(self, state: TrainState) -> None:
        self.groups = bn_producers(state.model, state.input_shape)
        if not self.groups:
            raise DrtError(f"earlybird prunes channels by |BN γ|; model {type(state.model).__name__} has no "
                           "BatchNorm layers (try resnet20 or vgg11)")
        self.max_epoch = self.options.eb_max_epoch or max(1, state.epochs // 2)
        if self.max_epoch > state.epochs:
            raise DrtError(f"eb_max_epoch {self.max_epoch} is beyond the {state.epochs} training epochs")

    def _gammas(self, model: nn.Module) -> dict[str, Tensor]:
        return {bn: model.get_submodule(bn).weight for bn in self.groups}

    def after_backward(self, state: TrainState) -> None:
        if self.mask is not None:
            self.mask.mask_grads_(state.model)
            return
        for g in self._gammas(state.model).values():
            if g.grad is not None:
                g.grad.add_(torch.sign(g.detach()), alpha=self.options.eb_l1)

    def after_step(self, state: TrainState) -> None:
        if self.mask is not None:
            self.mask.apply_(state.model, state.optimizer)

    def epoch_end(self, state: TrainState) -> None:
        if self.mask is not None:
            return
        o = self.options
        per_bn = channel_masks(self._gammas(state.model), o.eb_ratio)
        self.recent = [*self.recent, torch.cat([per_bn[bn] for bn in self.groups])][-o.eb_window:]
        if len(self.recent) == o.eb_window:
            self.distances = hamming_distances(self.recent)
            state.log["eb_distance"] = max(self.distances)
        drawn = ticket_drawn(self.recent, o.eb_window, o.eb_threshold)
        if drawn or state.epoch >= self.max_epoch:
            self.ticket_epoch, self.ticket_by = state.epoch, "distance" if drawn else "max_epoch"
            self.mask = self._ticket(state.model, per_bn)
            check_ranks_agree(self.mask, f"Early-Bird ticket at epoch {state.epoch}")
            self.mask.apply_(state.model, state.optimizer)
            state.log["eb_ticket"] = state.epoch

    def _ticket(self, model: nn.Module, per_bn: Mapping[str, Tensor]) -> MaskSet:
        """Masks over each producer's output filters (and bias) and the BN γ, β of pruned channels."""
        params = dict(model.named_parameters())
        masks: dict[str, Tensor] = {}
        for bn, prod in self.groups.items():
            keep = per_bn[bn].to(params[f"{bn}.weight"].device)
            names = [f"{bn}.weight", f"{bn}.bias"] + ([f"{prod}.weight", f"{prod}.bias"] if prod else [])
            for n in names:
                if n in params:
                    shape = (-1, *[1] * (params[n].dim() - 1))
                    masks[n] = keep.reshape(shape).expand_as(params[n]).clone()
        return MaskSet(masks)

    def masks(self) -> dict[str, Tensor]:
        return dict(self.mask) if self.mask is not None else {}

    def summary(self, state: TrainState) -> dict[str, Any]:
        channels = sum(state.model.get_submodule(bn).num_features for bn in self.groups)
        kept_ch = sum(int(self.mask[f"{bn}.weight"].sum()) for bn in self.groups) if self.mask else channels
        weights = prunable(state.model)
        pruned_w = sum(int((~self.mask[n]).sum()) for n in weights if self.mask and n in self.mask)
        return {"ticket_epoch": self.ticket_epoch, "eb_max_epoch": self.max_epoch, "eb_ratio": self.options.eb_ratio,
                "ticket_by": self.ticket_by,
                "distances": list(self.distances), "channel_sparsity": 1 - kept_ch / channels,
                "weight_sparsity": pruned_w / max(1, sum(p.numel() for p in weights.values())),
                "sparsity_counts": "channels: BN channels; weights: conv+linear weights in masked output filters"}

    def state_dict(self) -> dict[str, Any]:
        return {"groups": json.dumps(self.groups), "recent": list(self.recent), "distances": list(self.distances),
                "max_epoch": self.max_epoch, "ticket_epoch": self.ticket_epoch, "ticket_by": self.ticket_by,
                "masks": self.mask.state_dict() if self.mask is not None else {}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        self.groups = json.loads(state["groups"])
        self.recent, self.distances = list(state["recent"]), list(state["distances"])
        self.max_epoch, self.ticket_epoch = state["max_epoch"], state["ticket_epoch"]
        self.ticket_by = state["ticket_by"]
        self.mask = MaskSet(state["masks"]).to(device) if state["masks"] else None
        return model

