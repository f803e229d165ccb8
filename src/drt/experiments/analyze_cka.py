"""``drt analyze cka``: layer × layer linear CKA within one model or between two (runs or checkpoints).

Minibatch CKA (Nguyen, Raghu & Kornblith 2021): HSIC averaged over held-out test batches, then the
ratio; features captured by forward hooks on named modules, models in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from drt.analysis.cka_analysis import cka_table, layer_cka
from drt.data import Dataset, TensorLoader
from drt.errors import DrtError
from drt.experiments.plots import cka_heatmap
from drt.experiments.store import to_csv

DATA_KEYS = ("dataset", "subset", "val_size", "image_size")


def default_layers(model: nn.Module) -> list[str]:
    """The model's ``drt_stages`` flattened (ResNet blocks, VGG ReLUs, MLP hidden ReLUs)."""
    names = [n for stage in getattr(model, "drt_stages", None) or [] for n in stage]
    if not names:
        valid = ", ".join(n for n, _ in model.named_modules() if n)
        raise DrtError(f"{type(model).__name__} has no drt_stages; pass --layers (valid names: {valid})")
    return names


def check_same_data(a: dict[str, Any], b: dict[str, Any], what: str = "the two models") -> None:
    """DrtError naming the first data setting (dataset, subset, val_size, image_size) that differs."""
    for k in DATA_KEYS:
        if a.get(k) != b.get(k):
            raise DrtError(f"{what} were trained on different data ({k}: {a.get(k)!r} vs {b.get(k)!r}); "
                           "CKA needs the same inputs for both")


def analyze_cka(model_a: nn.Module, data: Dataset, out: str | Path, *, model_b: nn.Module | None = None,
                names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None, unbiased: bool = False,
                batches: int = 10, batch_size: int = 256, labels: tuple[str, str] = ("A", "A"),
                title: str = "Linear CKA") -> dict[str, Any]:
    """CKA between layers ``names_a`` of ``model_a`` and ``names_b`` of ``model_b`` (default: ``model_a``) on up to
    ``batches`` test batches of ``batch_size``; writes cka.png, cka.md and cka.csv to ``out``.

    Layers default to each model's ``drt_stages``. Returns {matrix (La, Lb) float64, names_a, names_b, files}.
    """
    if batches < 1 or batch_size < (4 if unbiased else 2):
        raise DrtError(f"need batches >= 1 and batch_size >= {4 if unbiased else 2}; got {batches}, {batch_size}")
    names_a = list(names_a or default_layers(model_a))
    names_b = list(names_b or (default_layers(model_b) if model_b is not None else names_a))
    loader = TensorLoader(data.x_test, data.y_test, batch_size, shuffle=False)
    matrix = layer_cka(model_a, loader, names_a, model_b, names_b, unbiased=unbiased, max_batches=batches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    used = min(batches, len(loader))
    kind = "unbiased" if unbiased else "biased"
    files = [cka_heatmap(matrix, names_a, names_b, out / "cka.png", title)]
    (out / "cka.md").write_text(f"# {title}\n\nRows: {labels[0]}; columns: {labels[1]}. Minibatch linear CKA "
                                f"({kind} HSIC averaged over {used} held-out test batches of up to {batch_size}, "
                                f"then normalised), eval mode.\n\n{cka_table(matrix, names_a, names_b)}\n")
    rows = [{"layer": n, **{m: f"{v:.6f}" for m, v in zip(names_b, r, strict=True)}}
            for n, r in zip(names_a, matrix.tolist(), strict=True)]
    (out / "cka.csv").write_text(to_csv(rows))
    return {"matrix": matrix, "names_a": names_a, "names_b": names_b, "files": [*files, out / "cka.md",
                                                                                   out / "cka.csv"]}
