"""Training-step time and inference latency of PCN, its peers and dense, side by side in one run.

    python benchmarks/step_speed.py cifar-subset [--steps 20] [--seed 0]

For one named setting (suites.SETTINGS) the trained dense, PCN, small-dense and Torch-Pruning
models of one seed are loaded from benchmarks/results (rebuilt by their own plug-ins: PCN layers,
pruned channels); one SGD step and one eval-mode forward pass on the same real batch are timed
round-robin, so the ratios are fair on a noisy machine. Writes benchmarks/results/speed-<setting>.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import RESULTS, data_root, step_and_forward_medians, write_result
from suites import SETTINGS, selects

from drt.analysis.cost import forward_flops, param_counts
from drt.experiments.loading import load_run_model
from drt.experiments.report import budget_label
from drt.experiments.store import Store


def selected_runs(setting: str, seed: int) -> list[dict[str, Any]]:
    """Finished dense, PCN, small-dense and tp-channel runs of the setting and ``seed``."""
    return [r for r in Store(RESULTS / "drt.sqlite").runs("done")
            if r["seed"] == seed and selects(r["config"], setting, ("dense", "pcn", "tp-channel"))]


def label(run: dict[str, Any], setting: str) -> str:
    """``dense``, ``small-dense width=W`` (a dense run narrower than the setting's model) or the method/budget."""
    c, base = run["config"], SETTINGS[setting]
    size = {k: c["model"].get(k) for k in ("width", "hidden")}
    if c["method"] == "dense" and any(v and v != base.get(k) for k, v in size.items()):
        return f"small-dense width={size['width'] or size['hidden']}"
    return budget_label(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", choices=sorted(SETTINGS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="which seed's trained models to time")
    args = ap.parse_args()
    runs = selected_runs(args.setting, args.seed)
    if not any(r["config"]["method"] == "pcn" for r in runs):
        sys.exit(f"step_speed: no finished PCN run for {args.setting} seed {args.seed}; run its suites first")
    models, rows = {}, []
    for r in runs:
        model, _, data = load_run_model(RESULTS, r["id"], data_root=str(data_root()))
        name = f"{label(r, args.setting)} ({r['id'][:8]})"
        models[name] = model.train()
        shape = tuple(data.input_shape)
        rows.append({"model": name, "trainable": param_counts(model)["trainable"],
                     "mflops": round(forward_flops(model, shape) / 1e6, 3),
                     "test_acc": round(100 * r["metrics"]["test_acc"], 2)})
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    times = step_and_forward_medians(models, x, y, args.steps)
    dense = next((n for n in models if n.startswith("dense ")), None)
    for row in rows:
        step, fwd = times[(row["model"], "step")], times[(row["model"], "forward")]
        row.update({"step_ms": round(1000 * step, 2), "infer_ms": round(1000 * fwd, 2)})
        if dense is not None:
            row.update({"step_speedup": round(times[(dense, "step")] / step, 3),
                        "infer_speedup": round(times[(dense, "forward")] / fwd, 3)})
    rows.sort(key=lambda row: -row["trainable"])
    for row in rows:
        print(row, flush=True)
    out = write_result(f"speed-{args.setting}", rows, "python benchmarks/step_speed.py " + " ".join(sys.argv[1:]),
                       setting=SETTINGS[args.setting], batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    print("wrote", out)


if __name__ == "__main__":
    main()
