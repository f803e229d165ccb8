"""Methods whose trained tensors live outside the model (edge-popup's scores, a random subspace's φ).

Without model surgery: the model's parameters hold a function of the method's tensors, written after
every optimizer step; the parameters keep ``requires_grad`` so backward (and DDP's all-reduce) gives
their dense gradient, which ``backward`` turns into the method's gradients before it is dropped.
The optimizer holds only ``trained()``, so weight decay acts on those. AMP's gradient scaling is
refused: the model's gradients are not in the optimizer, so the scaler would not unscale them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from drt.errors import DrtError
from drt.methods.base import Method, TrainState


class Reparametrised(Method):
    """Subclasses set ``label`` and implement ``trained``, ``sources``, ``backward`` and ``write``."""

    label = "this method"

    def trained(self) -> list[nn.Parameter]:
        """The tensors the optimizer steps."""
        raise NotImplementedError

    def sources(self) -> set[str]:
        """Names of the model parameters whose gradient ``backward`` reads (the rest stay frozen)."""
        raise NotImplementedError

    def backward(self, grads: dict[str, Tensor | None]) -> None:
        """Set the ``.grad`` of ``trained()`` from the sources' gradients (None: not reached)."""
        raise NotImplementedError

    def write(self, model: nn.Module) -> None:
        """Write the function of the trained tensors into the model's parameters."""
        raise NotImplementedError

    def attach(self, state: TrainState) -> None:
        self.mark(state.model)

    def mark(self, model: nn.Module) -> None:
        sources = self.sources()
        for n, p in model.named_parameters():
            p.requires_grad_(n in sources)

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": self.trained(), "weight_decay": weight_decay}]

    def after_backward(self, state: TrainState) -> None:
        if state.grad_scaling:
            raise DrtError(f"{self.label} does not support AMP gradient scaling (drop --amp)")
        sources = self.sources()
        params = {n: p for n, p in state.model.named_parameters() if n in sources}
        self.backward({n: p.grad for n, p in params.items()})
        for p in params.values():
            p.grad = None

    @torch.no_grad()
    def after_step(self, state: TrainState) -> None:
        self.write(state.model)
