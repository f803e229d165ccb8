"""PCN vs dense: measured training-step time and inference latency against the forward-FLOP ratio.

    python benchmarks/pcn_speed.py [vgg11 resnet20 resnet20w64 vgg16] [--steps 10] [--batch-size 128]

For each model the statistics come from real CIFAR-10 images (2000) through the freshly initialised
model (seed 0; the trained models of the accuracy suites are not kept in the repository, and speed
depends on the k, not on the weights; VGG-16 uses the PCN paper's fixed reference k). Each model is
transformed in four ways, all with drt's default execution plan (``plan="auto"``):
- `keep=all`: nothing removed (every layer stays untouched: dense speed expected);
- `var=0.99`: 99% explained variance per layer (VGG-16: the paper's k: conv8-10 -> 64, conv11-13 -> 32);
- `k=W/4`: one fixed k = max(4, base width // 4) for every layer (at most its width d; VGG-16: the
  reference k again);
- `+output`: the 99% (VGG-16: reference) transform plus the output transform.
Dense and every PCN variant are timed round-robin in one process on one real batch (one SGD step and
one eval forward each, medians). Columns: trainable conv/linear parameters, forward MFLOPs, FLOP
ratio, step and inference time and speed-up vs dense, realization (step speed-up / FLOP ratio), and
how many layers run factored / merged / untouched. Targets (issue 13): step speed-up >= 0.97 in every
row; realization >= 0.8 where the FLOP ratio is >= 1.5. Writes benchmarks/results/pcn_speed-<model>.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from common import data_root, step_and_forward_medians, write_result

import drt.pcn
from drt.analysis.cost import forward_flops, param_counts
from drt.data import load
from drt.models import create
from drt.pcn.stats import eligible_layers

REFERENCE = {**{f"conv{i}": 64 for i in (8, 9, 10)}, **{f"conv{i}": 32 for i in (11, 12, 13)}}
MODELS = {"vgg11": ("vgg11", {}), "resnet20": ("resnet20", {}), "resnet20w64": ("resnet20", {"width": 64}),
          "vgg16": ("vgg16", {})}


def variants(name: str, dense: torch.nn.Module, stats: drt.pcn.PCNStats, batch: int) -> dict[str, Any]:
    kw = {"batch_size": batch, "min_fraction": 0.0}
    if name == "vgg16":
        var: Any = REFERENCE
        fixed: Any = REFERENCE
    else:
        var = 0.99
        width = MODELS[name][1].get("width", 16 if name.startswith("resnet") else 64)
        k = max(4, width // 4)
        fixed = {n: min(k, stats.dim(n)) for n in stats.layers if n in eligible_layers(dense)[0]}
    return {"keep=all": drt.pcn.compress(dense, stats, keep="all", **kw),
            "var=0.99" if name != "vgg16" else "reference": drt.pcn.compress(dense, stats, keep=var, **kw),
            "k=W/4" if name != "vgg16" else "reference(k)": drt.pcn.compress(dense, stats, keep=fixed, **kw),
            "+output": drt.pcn.compress(dense, stats, keep=var, output=True, **kw)}


def plan_counts(model: torch.nn.Module, dense: torch.nn.Module) -> dict[str, int]:
    plans = list(drt.pcn.plan_of(model).values())
    layers = len(eligible_layers(dense)[0])
    return {"factored": plans.count("factored"), "merged": plans.count("merged"), "untouched": layers - len(plans)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    data = load("cifar10", data_root=data_root(), subset=2000)
    batches = [data.x_train[i:i + 250] for i in range(0, 2000, 250)]
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    for name in args.models:
        arch, opts = MODELS[name]
        torch.manual_seed(0)
        dense = create(arch, (3, 32, 32), 10, **opts).train()
        stats = drt.pcn.collect(dense, batches)
        models = {"dense": dense, **variants(name, dense, stats, args.batch_size)}
        times = step_and_forward_medians(models, x, y, args.steps)
        base_step, base_fwd = times[("dense", "step")], times[("dense", "forward")]
        base_flops = forward_flops(dense, (3, 32, 32))
        rows = []
        for n, m in models.items():
            flops = forward_flops(m, (3, 32, 32))
            s, f = times[(n, "step")], times[(n, "forward")]
            ratio, speedup = base_flops / flops, base_step / s
            rows.append({"model": name, "config": n, "trainable": param_counts(m)["trainable"],
                         "frozen_basis": param_counts(m)["frozen"], "mflops": round(flops / 1e6, 2),
                         "flop_ratio": round(ratio, 3), "step_ms": round(1000 * s, 1),
                         "step_speedup": round(speedup, 3), "realization": round(speedup / ratio, 3),
                         "infer_ms": round(1000 * f, 1), "infer_speedup": round(base_fwd / f, 3),
                         **plan_counts(m, dense),
                         "target_met": speedup >= 0.97 and (ratio < 1.5 or speedup / ratio >= 0.8)})
            print(rows[-1], flush=True)
        out = write_result(f"pcn_speed-{name}", rows, "python benchmarks/pcn_speed.py " + " ".join(sys.argv[1:]),
                           model=name, statistics_from="fresh init, 2000 CIFAR-10 images",
                           batch_size=args.batch_size, steps=args.steps,
                           seed=0, plans={n: dict(drt.pcn.plan_of(m)) for n, m in models.items() if n != "dense"})
        print("wrote", out, flush=True)


if __name__ == "__main__":
    main()
