"""Layer × layer CKA of one model or two models over a data set: the matrix and its Markdown table.

The heatmap is drawn by ``drt.experiments.plots.cka_heatmap`` (plots live in one place)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from drt.analysis.hooks import FeatureHooks
from drt.cka import MinibatchCKA
from drt.errors import DrtError


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def layer_cka(
    model_a: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    names_a: Sequence[str],
    model_b: nn.Module | None = None,
    names_b: Sequence[str] | None = None,
    unbiased: bool = False,
    max_batches: int | None = None,
) -> Tensor:
    """Minibatch linear CKA (Nguyen et al. 2021) between layers ``names_a`` and ``names_b``: (La, Lb).

    ``batches`` yields inputs or (x, y, ...) pairs; models run in eval mode without grad (their
    training flags are restored). ``model_b`` None compares ``model_a`` with itself; ``names_b``
    None reuses ``names_a``. Batches smaller than the estimator's minimum (4 unbiased, 2 biased)
    are skipped. Returns a CPU float64 tensor.
    """
    names_b = list(names_a if names_b is None else names_b)
    other = model_a if model_b is None else model_b
    same = other is model_a
    models = [model_a] if same else [model_a, other]
    was_training = [m.training for m in models]
    acc = MinibatchCKA(unbiased=unbiased)
    hooks = [FeatureHooks(model_a, list(names_a) + (names_b if same else []), detach=True)]
    if not same:
        hooks.append(FeatureHooks(other, names_b, detach=True))
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = cast(Tensor, batch[0] if isinstance(batch, list | tuple) else batch)
                if x.shape[0] < (4 if unbiased else 2):
                    continue
                for m, h in zip(models, hooks, strict=True):
                    h.clear()
                    m(x.to(_device(m)))
                fa = [hooks[0].features[n] for n in names_a]
                fb = [hooks[-1].features[n] for n in names_b]
                acc.update(fa, None if same and names_b == list(names_a) else fb)
    finally:
        for h in hooks:
            h.remove()
        for m, t in zip(models, was_training, strict=True):
            m.train(t)
    if acc.batches == 0:
        raise DrtError("layer_cka got no usable batch; give at least one batch of 4 or more samples")
    return acc.compute().cpu()


def check_names(matrix: Tensor, names_a: Sequence[str], names_b: Sequence[str]) -> None:
    if tuple(matrix.shape) != (len(names_a), len(names_b)):
        raise DrtError(
            f"CKA matrix of shape {tuple(matrix.shape)} does not match {len(names_a)} × {len(names_b)} names"
        )


def cka_table(matrix: Tensor, names_a: Sequence[str], names_b: Sequence[str] | None = None) -> str:
    """Markdown table of ``matrix``: one row per ``names_a``, one column per ``names_b``, 3 decimals."""
    names_b = list(names_a if names_b is None else names_b)
    check_names(matrix, names_a, names_b)
    lines = ["| | " + " | ".join(names_b) + " |", "|---" * (len(names_b) + 1) + "|"]
    for name, row in zip(names_a, matrix.tolist(), strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)
