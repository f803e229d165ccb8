"""PCN vs dense: measured training-step time and inference latency against the forward-FLOP ratio.

    python benchmarks/pcn_speed.py [--steps 15] [--batch-size 128]

Configurations (VGG-16 on CIFAR-10-shaped inputs; the basis comes from real CIFAR-10 images):
- `reference`: the PCN paper's input-only setting, conv8-10 inputs -> 64 components,
  conv11-13 -> 32, nothing else transformed;
- `reference+output`: the same plus the output transform (the producers of those inputs keep as
  many channels as the largest k reading them).
Dense and PCN steps are interleaved in one process (same batch, same thread count); medians are
reported. Target (issue 3): step speed-up >= 0.8 x forward-FLOP ratio.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import data_root, step_and_forward_medians, write_result

import drt.pcn
from drt.analysis.cost import forward_flops, param_counts
from drt.data import load
from drt.models import create

REFERENCE = {**{f"conv{i}": 64 for i in (8, 9, 10)}, **{f"conv{i}": 32 for i in (11, 12, 13)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="vgg16")
    args = ap.parse_args()
    data = load("cifar10", data_root=data_root(), subset=2000)
    torch.manual_seed(0)
    dense = create(args.model, (3, 32, 32), 10)
    stats = drt.pcn.collect(dense, [data.x_train[i:i + 250] for i in range(0, 2000, 250)])
    models = {"dense": dense,
              "reference": drt.pcn.compress(dense, stats, keep=REFERENCE),
              "reference+output": drt.pcn.compress(dense, stats, keep=REFERENCE, output=True)}
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    times = step_and_forward_medians(models, x, y, args.steps)
    base_step, base_fwd = times[("dense", "step")], times[("dense", "forward")]
    base_flops = forward_flops(dense, (3, 32, 32))
    rows = []
    for n, m in models.items():
        flops = forward_flops(m, (3, 32, 32))
        counts = param_counts(m)
        s, f = times[(n, "step")], times[(n, "forward")]
        conv_lin = sum(p.numel() for name, p in m.named_parameters() if "bn" not in name)
        rows.append({"config": n, "trainable_conv_linear": conv_lin, "frozen_basis": counts["frozen"],
                     "mflops": round(flops / 1e6, 2), "flop_ratio": round(base_flops / flops, 3),
                     "step_ms": round(1000 * s, 1), "step_speedup": round(base_step / s, 3),
                     "infer_ms": round(1000 * f, 1), "infer_speedup": round(base_fwd / f, 3),
                     "target_met": n == "dense" or base_step / s >= 0.8 * base_flops / flops})
        print(rows[-1], flush=True)
    out = write_result("pcn_speed", rows, "python benchmarks/pcn_speed.py " + " ".join(sys.argv[1:]),
                       model=args.model, batch_size=args.batch_size, steps=args.steps, seed=0)
    print("wrote", out)


if __name__ == "__main__":
    main()
