"""``drt analyze``: rebuild a stored run's model exactly; PCN spectra of its layers, static and over training.

Spectra as in Principal Component Networks (Waleffe & Rekatsinas 2020): eigenvalues of each layer's
input covariance (eval mode, un-augmented training samples), k at cumulative explained-variance
thresholds, the subspace overlap ||V_a^T V_b||_F^2 / k between consecutive epochs, and test accuracy
right after the transform (no further training) versus k. CKA heatmaps live in ``analyze_cka``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drt.analysis.cost import forward_flops, param_counts
from drt.analysis.pca import explained_variance, k_explained
from drt.data import Dataset, TensorLoader
from drt.errors import DrtError
from drt.experiments import plots
from drt.experiments.config import RunConfig
from drt.experiments.env import resolve_device
from drt.experiments.loading import load_data
from drt.experiments.store import to_csv
from drt.methods import Method, TrainState
from drt.methods.dense import Dense
from drt.models import create
from drt.pcn import PCNStats, collect, compress, expand, pcn_layers, subspace_overlaps
from drt.pcn.layers import weight_of
from drt.train import train
from drt.train.loop import evaluate

THRESHOLDS = (0.9, 0.99, 0.999)
KEEPS: tuple[str | float, ...] = (0.8, 0.9, 0.95, 0.99, 0.999, "all")
STATS_BATCH = 256


# --- spectra of one model ------------------------------------------------------------------------

def stats_batches(data: Dataset, seed: int, device: torch.device | str = "cpu") -> TensorLoader:
    """Un-augmented training batches in the order PCN's statistics use (``seed + 1``, as the trainer)."""
    return TensorLoader(data.x_train, data.y_train, STATS_BATCH, shuffle=True, seed=seed + 1, device=device)


def model_stats(model: nn.Module, batches: Any, samples: int) -> PCNStats:
    """Input statistics of every Linear/Conv layer, the first included (PCN layers expanded: same inputs)."""
    plain = expand(model) if pcn_layers(model) else model
    return collect(plain, batches, max_samples=samples, exclude_first=False)


def _tag(t: float) -> str:
    return f"{t:g}"


def spectra_rows(model: nn.Module, stats: PCNStats, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Per layer: width d, current k and trainable parameters, k and parameters kept at each threshold.

    Parameters of a layer on k components: out * (k * kernel taps + 1) (the PCN layer always has a bias).
    """
    pcn = pcn_layers(model)
    rows = []
    for name in stats.layers:
        layer = model.get_submodule(name)
        w = weight_of(layer)
        out, taps = w.shape[0], math.prod(w.shape[2:])
        d, vals = stats.dim(name), stats.eigvals(name)
        row: dict[str, Any] = {"layer": name, "d": d, "k_now": int(pcn[name].k) if name in pcn else d,
                               "params_now": sum(p.numel() for p in layer.parameters() if p.requires_grad)}
        ks = {t: k_explained(vals, t, name) for t in thresholds}
        row.update({f"k@{_tag(t)}": k for t, k in ks.items()})
        row.update({f"params@{_tag(t)}": out * (k * taps + 1) for t, k in ks.items()})
        row["note"] = ("reads the input (not transformed by default)" if name in stats.first else
                       f"shares the basis of {stats.key(name)}" if stats.key(name) != name else "")
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A pipe table of ``rows`` (columns of the first row; floats to 4 decimals, None blank)."""
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows])


def write_table(rows: list[dict[str, Any]], out: Path, stem: str, heading: str) -> list[Path]:
    """``<stem>.md`` (heading + pipe table) and ``<stem>.csv``."""
    md, csv = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(f"{heading}\n\n{markdown(rows)}\n")
    csv.write_text(to_csv(rows))
    return [md, csv]


def write_spectra(out: Path, model: nn.Module, stats: PCNStats, thresholds: Sequence[float],
                  title: str) -> list[Path]:
    """spectra.png, explained_variance.png, spectra.md/.csv (per-layer k and parameters), spectra.json."""
    out.mkdir(parents=True, exist_ok=True)
    bases = [n for n in stats.layers if stats.key(n) == n]
    vals = {n: stats.eigvals(n).tolist() for n in bases}
    floor = 1e-12 * max((v[0] for v in vals.values() if v), default=1.0) or 1e-30  # below: float64 round-off
    spectra = {n: (list(range(1, len(v) + 1)), [max(x, floor) for x in v]) for n, v in vals.items()}
    curves = {n: (list(range(1, len(v) + 1)), explained_variance(stats.eigvals(n)).tolist()) for n, v in vals.items()}
    eig_panel = {"series": spectra, "xlabel": "component", "ylabel": "eigenvalue (floor 1e-12 x largest)",
                 "title": "input covariance spectra", "logy": True}
    ev_panel = {"series": curves, "xlabel": "k (components)", "logx": True, "hlines": thresholds,
                "ylabel": "cumulative explained variance", "title": "explained variance vs k"}
    files = [plots.line_panels(out / "spectra.png", [eig_panel], title),
             plots.line_panels(out / "explained_variance.png", [ev_panel], title)]
    rows = spectra_rows(model, stats, thresholds)
    files += write_table(rows, out, "spectra", f"# PCN spectra: {title}\n\nStatistics of each layer's input "
                         f"on {stats.samples} un-augmented training samples (eval mode). k@t: smallest k explaining "
                         "a fraction t of the variance; params@t: trainable weights + biases of the layer on k "
                         "components (out * (k * taps + 1)); params_now: the layer's trainable parameters now.")
    (out / "spectra.json").write_text(json.dumps({"samples": stats.samples, "eigenvalues": vals}))
    return [*files, out / "spectra.json"]


def analyze_spectra(model: nn.Module, data: Dataset, out: str | Path, *, samples: int = 5000,
                    thresholds: Sequence[float] = THRESHOLDS, seed: int = 0, title: str = "") -> dict[str, Any]:
    """Spectra of ``model``'s layers on ``samples`` un-augmented training samples, written to ``out``."""
    device = next(model.parameters()).device
    stats = model_stats(model, stats_batches(data, seed, device), samples)
    files = write_spectra(Path(out), model, stats, thresholds, title)
    return {"rows": spectra_rows(model, stats, thresholds), "stats": stats, "files": files}


# --- over training --------------------------------------------------------------------------------

def accuracy_vs_k(model: nn.Module, stats: PCNStats, keeps: Sequence[Any], data: Dataset,
                  device: torch.device, batch_size: int = 1000) -> list[dict[str, Any]]:
    """Test accuracy right after ``compress(model, stats, keep)`` (no training) per keep rule, plus dense."""
    rows = []
    shape = tuple(data.input_shape)
    for keep in ["dense", *keeps]:
        small = model if keep == "dense" else compress(model, stats, keep=keep)
        counts = param_counts(small)
        _, acc = evaluate(small, data.x_test, data.y_test, batch_size, device)
        rows.append({"keep": str(keep), "params_trainable": counts["trainable"], "params_frozen": counts["frozen"],
                     "flops": forward_flops(small, shape, device), "test_acc": acc})
    return rows


class SpectraTracker(Method):
    """Plug-in (regulariser slot) that records PCN statistics at every epoch end; never changes training.

    ``history``: per epoch and layer d, eigenvalues, k at ``thresholds`` and the subspace overlap with the
    previous epoch (k from ``overlap_keep``). ``accuracy``: ``accuracy_vs_k`` rows at ``eval_epochs``.
    """

    def __init__(self, data: Dataset, *, samples: int = 1000, thresholds: Sequence[float] = THRESHOLDS,
                 overlap_keep: float = 0.99, eval_epochs: Sequence[int] = (), keeps: Sequence[Any] = KEEPS) -> None:
        super().__init__()
        self.data, self.samples, self.thresholds, self.overlap_keep = data, samples, tuple(thresholds), overlap_keep
        self.eval_epochs, self.keeps = set(eval_epochs), list(keeps)
        self.history: list[dict[str, Any]] = []
        self.accuracy: list[dict[str, Any]] = []
        self.stats: PCNStats | None = None

    def epoch_end(self, state: TrainState) -> None:
        stats = model_stats(state.model, state.training_batches(), self.samples)
        overlaps = subspace_overlaps(self.stats, stats, self.overlap_keep) if self.stats is not None else {}
        for name in stats.layers:
            vals = stats.eigvals(name)
            self.history.append({"epoch": state.epoch, "layer": name, "d": stats.dim(name),
                                 **{f"k@{_tag(t)}": k_explained(vals, t, name) for t in self.thresholds},
                                 "overlap": overlaps.get(name), "eigenvalues": vals.tolist()})
        if state.epoch in self.eval_epochs:
            rows = accuracy_vs_k(state.model, stats, self.keeps, self.data, state.device)
            self.accuracy += [{"epoch": state.epoch, **r} for r in rows]
        self.stats = stats


def track_spectra(cfg: RunConfig, out: str | Path, *, samples: int = 1000, thresholds: Sequence[float] = THRESHOLDS,
                  overlap_keep: float = 0.99, at_epochs: Sequence[int] | None = None, keeps: Sequence[Any] = KEEPS,
                  device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Train ``cfg`` dense (as the runner would, not stored) with a ``SpectraTracker``; write plots and tables.

    ``at_epochs``: epochs after which accuracy versus k is measured (default: the last).
    """
    if cfg.method != "dense" or cfg.reg:
        raise DrtError(f"spectra tracking trains the dense model; drop method {cfg.method!r} / regularisers")
    bad = [k for k in [overlap_keep, *thresholds] if isinstance(k, bool) or not 0 < k <= 1]
    bad += [k for k in keeps if k != "all" and (isinstance(k, bool) or not isinstance(k, int | float) or k <= 0
                                                or (isinstance(k, float) and k > 1))]
    if bad:
        raise DrtError(f"invalid keep rule / threshold {bad[0]!r}: use 'all', an int k >= 1 or a fraction in (0, 1]")
    epochs = cfg.train.epochs
    at = sorted(set(at_epochs or [epochs]))
    if any(not 1 <= e <= epochs for e in at):
        raise DrtError(f"--at-epoch values must be in 1..{epochs}; got {', '.join(map(str, at))}")
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = create(cfg.model.model, data.input_shape, data.num_classes, **cfg.model.options())
    tracker = SpectraTracker(data, samples=samples, thresholds=thresholds, overlap_keep=overlap_keep,
                             eval_epochs=at, keeps=keeps)
    augment = data.augment if cfg.data.augment == "auto" else cfg.data.augment
    result = train(model, data, cfg.train, Dense(), [tracker], device=resolve_device(device), augment=augment,
                   progress=progress)
    return write_tracking(Path(out), cfg, tracker, result.model, result.history)


def write_tracking(out: Path, cfg: RunConfig, tracker: SpectraTracker, model: nn.Module,
                   history: list[dict[str, Any]]) -> dict[str, Any]:
    """k_vs_epoch.png, overlap_vs_epoch.png, accuracy_vs_params.png, tracking.md/csv/json, accuracy_vs_k.md/csv,
    and the final epoch's spectra."""
    out.mkdir(parents=True, exist_ok=True)
    title, ths, ov = cfg.label(), tracker.thresholds, _tag(tracker.overlap_keep)
    rows = [{k: v for k, v in h.items() if k != "eigenvalues"} for h in tracker.history]
    layers = list(dict.fromkeys(r["layer"] for r in rows))

    def series(key: str) -> dict[str, tuple[list[int], list[float]]]:
        pts = {n: [(r["epoch"], r[key]) for r in rows if r["layer"] == n and r[key] is not None] for n in layers}
        return {n: ([e for e, _ in p], [v for _, v in p]) for n, p in pts.items() if p}

    k_panels = [{"series": series(f"k@{_tag(t)}"), "xlabel": "epoch", "ylabel": "k", "xint": True,
                 "title": f"k at {_tag(t)} explained variance"} for t in ths]
    overlap = {"series": series("overlap"), "xlabel": "epoch", "ylabel": "||Va^T Vb||_F^2 / k", "xint": True,
               "ylim": (0, 1.02), "title": f"subspace overlap with the previous epoch (k at {ov})"}
    files = [plots.line_panels(out / "k_vs_epoch.png", k_panels, title),
             plots.line_panels(out / "overlap_vs_epoch.png", [overlap], title)]
    files += write_table(rows, out, "tracking", f"# PCN spectra over training: {title}\n\nPer epoch and layer: "
                         f"k at each explained-variance threshold and the overlap ||Va^T Vb||_F^2 / k with the "
                         f"previous epoch's top-k subspace (k at {ov}; 1 = settled, k/d = random), from "
                         f"{tracker.samples} un-augmented training samples (blank: first epoch, or a layer "
                         "sharing another layer's basis).")
    (out / "tracking.json").write_text(json.dumps({"history": tracker.history, "train": history}))
    files.append(out / "tracking.json")
    acc = tracker.accuracy
    if acc:
        pts = {f"epoch {e}": [r for r in acc if r["epoch"] == e and r["keep"] != "dense"]
               for e in dict.fromkeys(r["epoch"] for r in acc)}
        files.append(plots.line_panels(out / "accuracy_vs_params.png", [{
            "series": {k: ([r["params_trainable"] for r in v], [r["test_acc"] for r in v]) for k, v in pts.items()},
            "xlabel": "trainable parameters", "ylabel": "test accuracy", "logx": True,
            "title": "accuracy right after the PCN transform (no training)"}], title))
        files += write_table(acc, out, "accuracy_vs_k", f"# Accuracy right after the transform vs k: {title}\n\n"
                             "compress(model, stats, keep) at the given epoch, held-out test accuracy with no further "
                             "training; 'dense' is the model itself, 'all' keeps k = d (exact). Trainable/frozen count "
                             "conv and linear weights and biases plus BN (frozen: PCN bases V and means); FLOPs: "
                             "forward per sample.")
    if tracker.stats is not None:
        files += write_spectra(out / "final_spectra", model, tracker.stats, ths, f"{title}, epoch {cfg.train.epochs}")
    return {"history": rows, "accuracy": acc, "files": files, "train": history}
