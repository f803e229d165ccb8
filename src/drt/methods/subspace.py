"""Random-subspace training (Li et al. 2018, "intrinsic dimension"): θ = θ₀ + Pφ, only φ ∈ ℝᵈ is trained.

P is a fixed N × d random projection over *all* N parameters of the model (weights, biases, BN γ
and β): the very sparse random projection of Li, Hastie & Church (2006) — each column has
⌈density · N⌉ entries ±1 at random rows (density 1/√N by default), scaled to unit length — stored as
a sparse matrix, so d = 1000 on a 272k-parameter ResNet-20 takes ~0.5M non-zeros. φ starts at 0
(the run starts at θ₀, the model's initialisation). A coordinate mask is the special case where P
selects columns of the identity (spec "sparse-and-frozen", the framework).

Mechanics as edge-popup's (``reparam.Reparametrised``): the parameters hold θ₀ + Pφ; their dense
gradient g gives ∂L/∂φ = Pᵀg; the optimizer holds only φ (weight decay, if any, on φ).
Accounting: trained dimension d; stored d numbers plus the seed that regenerates θ₀ and P.
Deviation: row indices are drawn with replacement (a rare repeated row adds up before the column is
normalised); Li et al.'s dense and Fastfood projections are not offered. AMP's gradient scaling is
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
from drt.options import opt


@dataclass(frozen=True)
class SubspaceOptions:
    title: ClassVar[str] = "random subspace"
    subspace_dim: int = opt(1000, "dimension d of the random subspace θ = θ₀ + Pφ; only φ is trained")
    subspace_density: float | None = opt(None, "fraction of non-zero entries per column of P (default 1/√N)")

    def __post_init__(self) -> None:
        if isinstance(self.subspace_dim, bool) or not isinstance(self.subspace_dim, int) or self.subspace_dim < 1:
            raise DrtError(f"subspace_dim must be a positive integer, got {self.subspace_dim!r}")
        if self.subspace_density is not None and not 0.0 < self.subspace_density <= 1.0:
            raise DrtError(f"subspace_density must be in (0, 1], got {self.subspace_density}")


def sparse_projection(n: int, d: int, density: float, generator: torch.Generator) -> Tensor:
    """An n × d sparse COO matrix: per column ⌈density · n⌉ entries ±1 at random rows, unit-norm columns."""
    k = max(1, math.ceil(density * n))
    rows = torch.randint(0, n, (d, k), generator=generator).reshape(-1)
    cols = torch.arange(d).repeat_interleave(k)
    signs = torch.randint(0, 2, (d * k,), generator=generator).float() * 2 - 1
    p = torch.sparse_coo_tensor(torch.stack([rows, cols]), signs, (n, d), check_invariants=True).coalesce()
    norms = torch.zeros(d).index_add_(0, p.indices()[1], p.values() ** 2).sqrt()
    values = p.values() / norms.clamp_min(1e-12)[p.indices()[1]]
    return torch.sparse_coo_tensor(p.indices(), values, (n, d), check_invariants=True).coalesce()


@METHODS.register("subspace", help="random-subspace training: θ = θ₀ + Pφ with a fixed sparse random P, only "
                                   "φ (--subspace-dim) trained (Li et al. 2018, intrinsic dimension)")
class Subspace(Reparametrised):
    Options = SubspaceOptions
    label = "subspace training"

    def __init__(self, options: SubspaceOptions | None = None) -> None:
        super().__init__(options)
        self.shapes: dict[str, torch.Size] = {}  # every parameter of the model, in order
        self.phi = nn.Parameter(torch.zeros(0))  # φ (d,), θ₀ (n,) and P (sparse n × d): set at setup
        self.theta0 = torch.zeros(0)
        self.proj = torch.zeros(0, 0)

    def setup(self, state: TrainState) -> None:
        self.shapes = {n: p.shape for n, p in state.model.named_parameters()}
        theta0 = torch.cat([p.detach().reshape(-1) for p in state.model.parameters()])
        n, d = theta0.numel(), self.options.subspace_dim
        if d >= n:
            raise DrtError(f"subspace_dim {d} must be below the model's {n} parameters")
        density = self.options.subspace_density or 1 / math.sqrt(n)
        g = torch.Generator().manual_seed(state.seed + 37)  # identical on every rank
        self.proj = sparse_projection(n, d, density, g).to(state.device)
        self.theta0 = theta0.clone()
        self.phi = nn.Parameter(torch.zeros(d, device=theta0.device))
        self.attach(state)

    def trained(self) -> list[nn.Parameter]:
        return [self.phi]

    def sources(self) -> set[str]:
        return set(self.shapes)

    def backward(self, grads: dict[str, Tensor | None]) -> None:
        flat = [(g if g is not None else torch.zeros(s, device=self.phi.device)).reshape(-1)
                for g, s in zip(grads.values(), self.shapes.values(), strict=True)]
        self.phi.grad = torch.sparse.mm(self.proj.t(), torch.cat(flat).unsqueeze(1)).squeeze(1)  # Pᵀ g

    @torch.no_grad()
    def write(self, model: nn.Module) -> None:
        theta = self.theta0 + torch.sparse.mm(self.proj, self.phi.detach().unsqueeze(1)).squeeze(1)
        torch.nn.utils.vector_to_parameters(theta, model.parameters())

    def frozen_masks(self) -> dict[str, Tensor]:
        return {}  # nothing of the model is trained directly: see summary

    def summary(self, state: TrainState) -> dict[str, Any]:
        n, d = self.theta0.numel(), self.phi.numel()
        counts = param_counts(state.model)
        return {"subspace_dim": d, "projection_nonzeros": int(self.proj._nnz()), "params_trainable": d,
                "params_frozen": counts["total"], "params_total": counts["total"] + d, "params_stored": d + 1,
                "trainable_counts": f"φ, the {d} coordinates of θ - θ₀ in a fixed random subspace of the {n} "
                                    "parameters", "stored_counts": "φ plus the seed that regenerates θ₀ and P"}

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi.detach().clone(), "theta0": self.theta0.clone(),
                "proj_indices": self.proj.indices().clone(), "proj_values": self.proj.values().clone(),
                "proj_shape": list(self.proj.shape)}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        self.phi = nn.Parameter(state["phi"].to(device))
        self.theta0 = state["theta0"].to(device)
        self.proj = torch.sparse_coo_tensor(state["proj_indices"], state["proj_values"], tuple(state["proj_shape"]),
                                            check_invariants=True).coalesce().to(device)
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        self.mark(model)
        return model
