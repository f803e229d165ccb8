"""``drt demo``: the main job on the embedded mnist5k data set, as a ranked table."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from drt.experiments.config import RunConfig, make_config
from drt.experiments.report_render import write_report
from drt.experiments.runner import run
from drt.experiments.small_dense import small_dense_config
from drt.experiments.table import format_table

BASE = {"dataset": "mnist5k", "model": "lenet5", "epochs": 10, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4}
DEMO_RUNS: list[dict[str, Any]] = [
    {"method": "dense"},
    {"method": "pcn", "pcn_epoch": "2", "pcn_keep": "0.95"},
    {"method": "snip", "sparsity": 0.9},
    {"method": "synflow", "sparsity": 0.9},
    {"method": "rigl", "sparsity": 0.9, "delta_t": 50},
    {"method": "rigl", "sparsity": 0.9, "delta_t": 50, "reg": "cka-sr", "cka_beta": 1e-3},
    {"method": "imp", "sparsity": 0.9, "imp_rounds": 2},
    {"method": "freezenet", "freeze_fraction": 0.9},
]
SEEDS = (0, 1)


def demo(results_dir: str | Path = "results", *, device: str = "auto", epochs: int | None = None,
         progress: bool = True) -> list[dict[str, Any]]:
    """Train every demo configuration over the seeds; print them ranked by mean test accuracy."""
    results_dir = Path(results_dir) / "demo"
    rows: list[dict[str, Any]] = []
    total = len(DEMO_RUNS) + 1

    def train_seeds(configs: list[RunConfig], label: str) -> list[dict[str, Any]]:
        print(f"[{len(rows) + 1}/{total}] {label}", flush=True)
        runs = [run(c, results_dir, device=device, progress=progress, log=lambda *_: None) for c in configs]
        rows.append(seed_summary(label, runs))
        return runs

    for spec in DEMO_RUNS:
        configs = [make_config({**BASE, **spec, "seed": seed, **({"epochs": epochs} if epochs is not None else {})})
                   for seed in SEEDS]
        runs = train_seeds(configs, configs[0].label().rsplit("/", 1)[0])
        if spec["method"] == "pcn":  # the baseline every compressed result needs: a narrower dense net
            target = statistics.mean(m["params_trainable"] for m in runs)
            small = [small_dense_config(c, target) for c in configs]
            train_seeds(small, f"lenet5/mnist5k/small-dense (width {small[0].model.width}, as PCN)")
    rows.sort(key=lambda r: -float(r["test acc %"].split()[0]))
    print()
    print(f"drt demo: lenet5 on mnist5k (4000 train / 1000 held-out test), seeds {', '.join(map(str, SEEDS))}: "
          "final-epoch test accuracy mean ± std; trainable = trained dimension; FLOPs = forward per image "
          "(multiply-add = 2), effective = weighted by layer density; time = measured training seconds")
    print(format_table(rows))
    html, md, _ = write_report(results_dir, results_dir / "report")
    print(f"results store: {results_dir / 'drt.sqlite'}")
    print(f"report: {html} (self-contained, opens offline) and {md}")
    return rows


def seed_summary(label: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row for a configuration over several seeds."""
    acc = [100 * m["test_acc"] for m in runs]
    mean = statistics.mean

    return {
        "method": label,
        "test acc %": f"{mean(acc):.2f} ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else f"{acc[0]:.2f}",
        "trainable": round(mean(m["params_trainable"] for m in runs)),
        "stored": round(mean(m["params_stored"] for m in runs)),
        "MFLOPs": f"{mean(m['flops'] for m in runs) / 1e6:.3f}",
        "eff. MFLOPs": f"{mean(m['flops_effective'] for m in runs) / 1e6:.3f}",
        "ms/step": f"{1000 * mean(m['step_time'] for m in runs):.2f}",
        "train s": f"{mean(m['train_time'] for m in runs):.1f}",
    }
