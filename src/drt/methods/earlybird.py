"""Early-Bird tickets (You et al. 2020): the structured early-training baseline PCN is compared against.

``earlybird``: network-slimming L1 on BN γ; at each epoch end the channel mask keeps
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
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from drt.errors import DrtError
from drt.methods.base import METHODS, Method, TrainState
from drt.models import name_of
from drt.options import opt
from drt.pcn.layers import weight_of
from drt.sparse import MaskSet, check_ranks_agree, global_topk, prunable


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
        if isinstance(m, _ConvNd | nn.Linear) and not isinstance(m, _ConvTransposeNd):  # outputs: weight dim 0
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
    title: ClassVar[str] = "Early-Bird"
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
            raise DrtError(f"earlybird prunes channels by |BN γ|; model {name_of(state.model)} has no "
                           "BatchNorm layers (try resnet20 or vgg11)")
        self.max_epoch = self.options.eb_max_epoch or max(1, state.epochs // 2)
        if self.max_epoch > state.epochs:
            raise DrtError(f"eb_max_epoch {self.max_epoch} is beyond the {state.epochs} training epochs")

    def _gammas(self, model: nn.Module) -> dict[str, Tensor]:
        return {bn: weight_of(model.get_submodule(bn)) for bn in self.groups}

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
        channels = sum(cast(_BatchNorm, state.model.get_submodule(bn)).num_features for bn in self.groups)
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

