"""Edge-popup (Ramanujan et al. 2020): no weight is ever trained; a score per weight picks a subnetwork.

Every conv and linear weight is fixed at a random value W₀ (by default the paper's best, the signed
Kaiming constant ±gain/√fan_in); other parameters (biases, BN γ and β) stay at their initial value
(with BN's γ = 1, β = 0: the paper's non-affine BN). The method trains one real score s per weight;
the layer computes with W₀ ⊙ h(|s|), h keeping the top (1 − sparsity) of each layer's scores
(``--distribution``: uniform per layer as in the paper; erk or global also work, with exact counts).
The gradient is straight-through: ∂L/∂s = sign(s) ⊙ W₀ ⊙ ∂L/∂W_eff, W_eff the weight the layer used.

Mechanics without model surgery (``reparam.Reparametrised``): the layer's ``weight`` parameter holds
W₀ ⊙ h(|s|), so the model, its checkpoints and its ``model.pt`` are plain; its dense gradient gives
the scores' gradient; the optimizer holds only the scores (weight decay on scores, as the paper).
Accounting: the trained dimension is the number of scores (one per conv/linear weight); the stored
model is the mask plus the init seed.
Deviations: scores start Kaiming-uniform from a generator seeded by the run (the paper: the global
RNG); ``--popup-scale-fan`` (off by default, as in the paper's main results) scales fan_in by each
layer's kept fraction (the paper's ``scale_fan``, by the overall one); AMP's gradient scaling is
refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from drt.analysis.cost import param_counts
from drt.errors import DrtError
from drt.methods.base import METHODS, TrainState
from drt.methods.reparam import Reparametrised
from drt.methods.shared import Distribution, Sparsity
from drt.models import name_of
from drt.options import opt, own_default
from drt.sparse import MaskSet, check_ranks_agree, masks_from_scores, prunable

WEIGHTS = ("signed-constant", "init")


@dataclass(frozen=True)
class PopupOptions(Distribution, Sparsity):
    """``sparsity`` (here 1 - k: the weights left out of the subnetwork; default 0.5), ``distribution``
    (default uniform, the paper's top-k% per layer) and edge-popup's own settings."""

    title: ClassVar[str] = "edge-popup"
    sparsity: float = own_default(Sparsity, "sparsity", 0.5)
    popup_weights: str = opt("signed-constant", "the fixed weights: signed-constant (±gain/√fan_in, the "
                                                "paper's best) or init (the model's own initialisation)", WEIGHTS)
    popup_scale_fan: bool = opt(False, "signed-constant: fan_in times the layer's kept fraction (the paper's "
                                       "scale_fan; off in its main results)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.popup_weights not in WEIGHTS:
            raise DrtError(f"popup_weights must be one of {', '.join(WEIGHTS)}; got {self.popup_weights!r}")


def signed_constant(weight: Tensor, kept: float = 1.0) -> Tensor:
    """±gain/√(fan_in · kept) with the signs of ``weight`` (ReLU gain √2; Ramanujan et al. 2020)."""
    fan = nn.init._calculate_correct_fan(weight, "fan_in") * kept
    return weight.detach().sign() * (nn.init.calculate_gain("relu") / math.sqrt(max(fan, 1e-12)))


@METHODS.register("edge-popup", help="edge-popup: weights fixed at random values, a trained score per weight "
                                     "picks the top-k subnetwork (Ramanujan et al. 2020)")
class EdgePopup(Reparametrised):
    Options = PopupOptions
    label = "edge-popup"

    def __init__(self, options: PopupOptions | None = None) -> None:
        super().__init__(options)
        self.scores: dict[str, nn.Parameter] = {}
        self.fixed: dict[str, Tensor] = {}  # W₀ of each scored weight
        self._mask: MaskSet | None = None

    @property
    def mask(self) -> MaskSet:
        """The current subnetwork (name -> bool, True = used); DrtError before ``setup``."""
        if self._mask is None:
            raise DrtError("edge-popup has no subnetwork yet: its setup hook has not run")
        return self._mask

    @mask.setter
    def mask(self, mask: MaskSet) -> None:
        self._mask = mask

    @property
    def distribution(self) -> str:
        return self.options.distribution or "uniform"

    def setup(self, state: TrainState) -> None:
        o, weights = self.options, prunable(state.model)
        if not weights:
            raise DrtError(f"edge-popup: model {name_of(state.model)} has no conv or linear weights")
        g = torch.Generator().manual_seed(state.seed + 31)  # identical on every rank
        self.scores, self.fixed, self._mask = {}, {}, None
        for n, w in weights.items():
            s = torch.empty(w.shape)
            nn.init.kaiming_uniform_(s, a=math.sqrt(5), generator=g)  # the layers' own default init
            self.scores[n] = nn.Parameter(s.to(w.device))
        self.mask = self.subnetwork()  # the per-layer counts
        for n, w in weights.items():
            kept = self.mask.density(n) if o.popup_scale_fan else 1.0
            self.fixed[n] = signed_constant(w, kept) if o.popup_weights == "signed-constant" else w.detach().clone()
        self.attach(state)
        self.write(state.model)
        check_ranks_agree(self.mask, "edge-popup subnetwork at setup")

    def epoch_end(self, state: TrainState) -> None:
        check_ranks_agree(self.mask, f"edge-popup subnetwork after epoch {state.epoch}")

    def subnetwork(self) -> MaskSet:
        """The largest |scores|: per layer at the counts of the first choice (they never change), or
        under one global threshold (``--distribution global``)."""
        scores = {n: s.detach().abs() for n, s in self.scores.items()}
        if self._mask is None or self.distribution == "global":
            return masks_from_scores(scores, self.options.sparsity, self.distribution)[0]
        out = {}
        for n, s in scores.items():
            m = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            m[torch.topk(s.reshape(-1), int(self.mask[n].sum()), sorted=False).indices] = True
            out[n] = m.reshape(s.shape)
        return MaskSet(out)

    def trained(self) -> list[nn.Parameter]:
        return list(self.scores.values())

    def sources(self) -> set[str]:
        return set(self.fixed)

    def backward(self, grads: dict[str, Tensor | None]) -> None:
        for n, s in self.scores.items():  # straight-through: ∂L/∂s = sign(s) ⊙ W₀ ⊙ ∂L/∂W_eff
            g = grads[n]
            s.grad = None if g is None else s.detach().sign() * self.fixed[n] * g

    @torch.no_grad()
    def write(self, model: nn.Module) -> None:
        """The top scores per layer become the mask; each weight becomes W₀ ⊙ mask."""
        self.mask = self.subnetwork()
        params = dict(model.named_parameters())
        for n, w0 in self.fixed.items():
            params[n].copy_(w0 * self.mask[n].to(w0.device))

    def masks(self) -> dict[str, Tensor]:
        return dict(self._mask) if self._mask is not None else {}

    def frozen_masks(self) -> dict[str, Tensor]:
        return {n: torch.zeros_like(m) for n, m in self.masks().items()}  # no weight is trained

    def summary(self, state: TrainState) -> dict[str, Any]:
        counts = param_counts(state.model, self.masks(), self.frozen_masks())
        scores = sum(s.numel() for s in self.scores.values())
        return {"sparsity_target": self.options.sparsity, "sparsity_achieved": self.mask.sparsity(),
                "distribution": self.distribution, "popup_weights": self.options.popup_weights,
                "scores_trained": scores, "params_trainable": counts["trainable"] + scores,
                "params_total": counts["total"] + scores, "params_stored": 1 + math.ceil(scores / 32),
                "stored_counts": "the init seed plus the subnetwork mask, one bit per conv/linear weight "
                                 "(counted as 32-bit numbers)",
                "trainable_counts": "one score per conv/linear weight; no weight is trained"}

    def state_dict(self) -> dict[str, Any]:
        return {"scores": {n: s.detach().clone() for n, s in self.scores.items()},
                "fixed": {n: w.clone() for n, w in self.fixed.items()}}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        self.scores = {n: nn.Parameter(s.to(device)) for n, s in state["scores"].items()}
        self.fixed = {n: w.to(device) for n, w in state["fixed"].items()}
        self.mask = masks_from_scores({n: s.detach().abs() for n, s in self.scores.items()}, self.options.sparsity,
                                      self.distribution)[0]  # the counts; then the current subnetwork
        self.mask = self.subnetwork()
        self.mark(model)
        return model
