"""CKA-SR: a regulariser that lowers the similarity between layers' features (Ni et al. 2023).

L = CE + β · Σ_stages Σ_i Σ_j CKA₁(X_i, X_j): all ordered pairs within a stage, i = j included,
unbiased linear CKA in float64 on the first ``n`` samples, added once every ``m`` batches.
Stages come from the model's ``drt_stages`` (ResNet: blocks per stage; VGG: the convs between
two pools; MLP/LeNet: all hidden layers) or from ``--cka-layers`` (one stage of named modules).
Variant ``aug``: β · mean biased linear CKA over all unordered pairs across stages (AugCKA-SR).
Under DDP each rank computes it on its local batch; DDP averages the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from drt.analysis.hooks import FeatureHooks
from drt.cka import aug_cka_loss, cka_sr_loss
from drt.errors import DrtError
from drt.methods.base import REGULARISERS, Method, TrainState
from drt.models import name_of
from drt.options import opt


@dataclass(frozen=True)
class CKASROptions:
    title: ClassVar[str] = "CKA-SR regulariser"
    cka_beta: float = opt(1e-4, "weight β of the CKA-SR term (the paper: 1e-4 CIFAR, 1e-5 ImageNet)")
    cka_samples: int = opt(8, "use the first n samples of each batch (-1: all; at least 4)")
    cka_every: int = opt(5, "add the term once every m batches")
    cka_variant: str = opt("cka-sr", "cka-sr (within stages, unbiased) or aug (all pairs, biased)",
                           ("cka-sr", "aug"))
    cka_layers: tuple[str, ...] | None = opt(None, "feature modules (one stage) instead of the model's stages")

    def __post_init__(self) -> None:
        if not self.cka_beta >= 0:
            raise DrtError(f"cka_beta must be >= 0, got {self.cka_beta}")
        if self.cka_samples != -1 and self.cka_samples < 4:
            raise DrtError("cka_samples must be -1 (all) or at least 4 (the unbiased HSIC minimum), "
                           f"got {self.cka_samples}")
        if self.cka_every < 1:
            raise DrtError(f"cka_every must be >= 1, got {self.cka_every}")


def feature_stages(model: nn.Module, layers: tuple[str, ...] | None = None) -> list[list[str]]:
    """The feature modules grouped by stage: named layers, or the model's ``drt_stages``."""
    if layers:
        return [list(layers)]
    stages = getattr(model, "drt_stages", None)
    if not stages:
        raise DrtError(f"model {name_of(model)} declares no feature stages; name them with --cka-layers "
                       "(Python: Options(cka_layers=[...]))")
    return [list(s) for s in stages]


@REGULARISERS.register("cka-sr", help="CKA-SR: penalise CKA between layers' features (Ni et al. 2023)")
class CKASR(Method):
    Options = CKASROptions

    def __init__(self, options: CKASROptions | None = None) -> None:
        super().__init__(options)
        self.hooks: FeatureHooks | None = None
        self.stages: list[list[str]] = []

    def attach(self, state: TrainState) -> None:
        if self.hooks is not None:
            self.hooks.remove()
        self.stages = feature_stages(state.model, self.options.cka_layers)
        self.hooks = FeatureHooks(state.model, [n for s in self.stages for n in s])

    def loss(self) -> torch.Tensor | None:
        """β × the CKA-SR term on the features captured by the last forward pass; None for a batch too
        small for the estimator (a short last batch: fewer than 4 samples, 2 for AugCKA)."""
        if self.hooks is None:
            raise DrtError("CKA-SR has no feature hooks: its attach hook has not run")
        o, feats = self.options, self.hooks.features
        missing = [n for s in self.stages for n in s if n not in feats]
        if missing:
            raise DrtError(f"CKA-SR feature layers {', '.join(missing)} did not run in the forward pass")
        stages = [[feats[n] for n in s] for s in self.stages]
        if stages and stages[0] and stages[0][0].shape[0] < (2 if o.cka_variant == "aug" else 4):
            return None
        if o.cka_variant == "aug":
            term = aug_cka_loss([f for s in stages for f in s], o.cka_samples)
        else:
            term = cka_sr_loss(stages, o.cka_samples)
        return o.cka_beta * term

    def extra_loss(self, state: TrainState, output: torch.Tensor) -> torch.Tensor | None:
        try:
            if state.step % self.options.cka_every or self.options.cka_beta == 0:
                return None
            if self.hooks is None:
                raise DrtError("CKA-SR was not attached to the model (call attach() / use it through the Driver)")
            loss = self.loss()
            if loss is not None:
                state.log["cka_sr"] = float(loss.detach()) / max(self.options.cka_beta, 1e-30)
            return loss
        finally:
            if self.hooks is not None:
                self.hooks.clear()
