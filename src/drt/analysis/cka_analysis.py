"""Layer × layer CKA of one model or two models over a data set: matrix, heatmap, Markdown table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

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
    same = model_b is None or model_b is model_a
    models = [model_a] if same else [model_a, model_b]
    was_training = [m.training for m in models]
    acc = MinibatchCKA(unbiased=unbiased)
    hooks = [FeatureHooks(model_a, list(names_a) + (names_b if same else []), detach=True)]
    if not same:
        hooks.append(FeatureHooks(model_b, names_b, detach=True))
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x = batch[0] if isinstance(batch, list | tuple) else batch
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


def _check(matrix: Tensor, names_a: Sequence[str], names_b: Sequence[str]) -> None:
    if tuple(matrix.shape) != (len(names_a), len(names_b)):
        raise DrtError(
            f"CKA matrix of shape {tuple(matrix.shape)} does not match {len(names_a)} × {len(names_b)} names"
        )


def plot_cka_heatmap(
    matrix: Tensor,
    names_a: Sequence[str],
    names_b: Sequence[str] | None,
    path: str | Path,
    title: str = "Linear CKA",
) -> Path:
    """Write a PNG heatmap of ``matrix`` (rows ``names_a``, columns ``names_b``) to ``path``; returns it."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    names_b = list(names_a if names_b is None else names_b)
    _check(matrix, names_a, names_b)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = 2.5 + 0.35 * max(len(names_a), len(names_b))
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    m = matrix.detach().cpu().double().numpy()
    im = ax.imshow(m, vmin=min(0.0, float(m.min())), vmax=1.0, cmap="magma", origin="lower")
    ax.set_xticks(range(len(names_b)), names_b, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names_a)), names_a, fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="CKA")
    fig.savefig(path, dpi=120, format="png")
    return path


def cka_table(matrix: Tensor, names_a: Sequence[str], names_b: Sequence[str] | None = None) -> str:
    """Markdown table of ``matrix``: one row per ``names_a``, one column per ``names_b``, 3 decimals."""
    names_b = list(names_a if names_b is None else names_b)
    _check(matrix, names_a, names_b)
    lines = ["| | " + " | ".join(names_b) + " |", "|---" * (len(names_b) + 1) + "|"]
    for name, row in zip(names_a, matrix.tolist(), strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)
