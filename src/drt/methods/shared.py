"""Settings several methods share, each declared once: one flag name, one meaning (``drt.options``).

A method's ``Options`` inherits the ones it reads. ``SparseOptions`` (mask-based methods) is all four
of the sparse ones; IMP takes ``Sparsity`` and ``LayerRules`` (it prunes under one global threshold),
torch-prune ``Sparsity`` alone, edge-popup ``Sparsity`` (default 0.5) and ``Distribution``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from drt.errors import DrtError
from drt.options import Options, opt
from drt.sparse import DISTRIBUTIONS, check_sparsity

SPARSE = "sparse methods"


@dataclass(frozen=True)
class Sparsity(Options):
    title: ClassVar[str] = SPARSE
    sparsity: float = opt(0.9, "target sparsity: the fraction of conv and linear weights masked out (biases and BN "
                               "never are)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sparsity(self.sparsity)


@dataclass(frozen=True)
class Distribution(Options):
    title: ClassVar[str] = SPARSE
    distribution: str | None = opt(None, "per-layer densities (default: the method's own: erk for random and "
                                         "dynamic sparse training, uniform for snfs and edge-popup, else global)",
                                   DISTRIBUTIONS)


@dataclass(frozen=True)
class LayerRules(Options):
    title: ClassVar[str] = SPARSE
    dense_first: bool = opt(False, "keep the first prunable layer dense")
    dense_last: bool = opt(False, "keep the last prunable layer (the classifier) dense")
    guard: bool = opt(True, "layer-collapse guard: every prunable layer keeps >= 1 weight")


@dataclass(frozen=True)
class ScoreBatches(Options):
    title: ClassVar[str] = "scores on training batches"
    score_batches: int = opt(1, "training batches used for data-driven scores (SNIP's saliency, FreezeNet's too)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_batches < 1:
            raise DrtError(f"score_batches must be >= 1, got {self.score_batches}")
