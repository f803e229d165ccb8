"""Weight-magnitude distributions of the CKA-SR reference runs (with vs without the regulariser).

    python benchmarks/weight_magnitudes.py

Reads the finished `cka-sr` suite runs from benchmarks/results/drt.sqlite and their final
weights (benchmarks/results/runs/<id>/model.pt), takes the active (unmasked) conv and linear
weights, and writes per-group statistics (mean |w|, quantiles, share of tiny weights) and a
log-magnitude histogram to benchmarks/results/cka_weights.json and cka_weights.png.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np
import torch
from common import RESULTS, write_result
from matplotlib.figure import Figure

from drt.experiments.store import Store

BINS = np.linspace(-6, 0, 49)  # log10 |w|


def active_weights(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Non-zero conv/linear weights (the static masks zero the pruned ones)."""
    ws = [t.flatten() for n, t in state.items() if n.endswith("weight") and t.dim() in (2, 3, 4)]
    w = torch.cat(ws).abs()
    return w[w > 0].numpy()


def main() -> None:
    store = Store(RESULTS / "drt.sqlite")
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in store.runs("done"):
        c = r["config"]
        if c["method"] != "random" or c["data"].get("subset") != 20000 or c["train"]["epochs"] != 10:
            continue
        path = RESULTS / "runs" / r["id"] / "model.pt"
        if not path.exists():
            continue
        label = f"sparsity {c['method_options']['sparsity']}" + (" + CKA-SR" if c["reg"] else "")
        groups[label].append(active_weights(torch.load(path, map_location="cpu", weights_only=True)))
    rows = []
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label in sorted(groups):
        per_seed = groups[label]
        allw = np.concatenate(per_seed)
        hist, _ = np.histogram(np.log10(allw), bins=BINS, density=True)
        ax.plot(0.5 * (BINS[1:] + BINS[:-1]), hist, label=label)
        rows.append({"group": label, "seeds": len(per_seed),
                     "mean_abs": round(statistics.mean(float(w.mean()) for w in per_seed), 5),
                     "median_abs": round(float(np.median(allw)), 5),
                     "p10_abs": round(float(np.quantile(allw, 0.1)), 6),
                     "share_below_1e-3": round(float((allw < 1e-3).mean()), 5),
                     "histogram_log10": [round(float(h), 4) for h in hist]})
    ax.set_xlabel("log10 |w| (active conv/linear weights)")
    ax.set_ylabel("density")
    ax.legend()
    fig.savefig(RESULTS / "cka_weights.png", dpi=120, bbox_inches="tight")
    print("wrote", write_result("cka_weights", rows, "python benchmarks/weight_magnitudes.py",
                                bins_log10=[float(b) for b in BINS]))


if __name__ == "__main__":
    main()
