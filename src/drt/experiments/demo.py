"""``drt demo``: the main job on the embedded mnist5k data set, as a ranked table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drt.experiments.config import make_config
from drt.experiments.runner import run
from drt.experiments.table import format_table, summary_row

BASE = {"dataset": "mnist5k", "model": "lenet5", "epochs": 10, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4}
DEMO_RUNS: list[dict[str, Any]] = [
    {"method": "dense"},
    {"method": "pcn", "pcn_epoch": "2", "pcn_keep": "0.95"},
    {"method": "snip", "sparsity": 0.9},
    {"method": "synflow", "sparsity": 0.9},
    {"method": "rigl", "sparsity": 0.9, "delta_t": 50},
    {"method": "rigl", "sparsity": 0.9, "delta_t": 50, "reg": "cka-sr", "cka_beta": 1e-3},
    {"method": "imp", "sparsity": 0.9, "imp_rounds": 2, "epochs": 5},
    {"method": "freezenet", "sparsity": 0.9},
]
SEEDS = (0, 1)


def demo(results_dir: str | Path = "results", *, device: str = "auto", epochs: int | None = None,
         progress: bool = True) -> list[dict[str, Any]]:
    """Train every demo configuration over the seeds and print them ranked by test accuracy."""
    results_dir = Path(results_dir) / "demo"
    rows = []
    for spec in DEMO_RUNS:
        for seed in SEEDS:
            values = {**BASE, **spec, "seed": seed}
            if epochs is not None:
                values["epochs"] = epochs
            cfg = make_config(values)
            metrics = run(cfg, results_dir, device=device, progress=progress)
            rows.append(summary_row(cfg.label(), metrics))
    rows.sort(key=lambda r: -float(r["test acc %"]))
    print()
    print("drt demo: mnist5k (4000 train / 1000 held-out test), final-epoch test accuracy; "
          "FLOPs = forward per sample (multiply-add = 2)")
    print(format_table(rows))
    print(f"results store: {results_dir / 'drt.sqlite'}")
    return rows
