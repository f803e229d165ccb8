"""CKA-SR overhead per training step: our stacked U-centred computation vs the naive pairwise one.

    python benchmarks/cka_overhead.py [--steps 20] [--model resnet20] [--batch-size 128]

Same model, same real CIFAR-10 batch, SGD; every variant interleaved step by step in one process;
medians reported. The term is added on every step here (m = 1, the worst case; the reference adds
it every 5 batches, which divides the overhead by 5). Target (issue 5): <= 10% over a plain step at n = 8.
"""

from __future__ import annotations

import argparse
import copy
import sys
from functools import partial

import torch
import torch.nn.functional as F
from common import data_root, interleaved_medians, write_result

from drt.analysis.hooks import FeatureHooks
from drt.cka import cka_sr_loss, cka_sr_reference
from drt.data import load
from drt.methods.cka_sr import feature_stages
from drt.models import create

VARIANTS = {"plain": None, "stacked n=8": (cka_sr_loss, 8), "naive n=8": (cka_sr_reference, 8),
            "stacked n=full": (cka_sr_loss, -1), "naive n=full": (cka_sr_reference, -1)}


def step(model, opt, hooks, stages, x, y, variant) -> None:
    loss = F.cross_entropy(model(x), y)
    if variant is not None:
        fn, n = variant
        loss = loss + 1e-4 * fn([[hooks.features[name] for name in s] for s in stages], n).float()
    hooks.clear()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    data = load("cifar10", data_root=data_root(), subset=1000)
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    torch.manual_seed(0)
    base = create(args.model, (3, 32, 32), 10)
    stages = feature_stages(base)
    runs = {}
    for name in VARIANTS:
        m = copy.deepcopy(base)
        runs[name] = (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
                      FeatureHooks(m, [n for s in stages for n in s]))
    times = interleaved_medians({n: partial(step, *r, stages, x, y, VARIANTS[n]) for n, r in runs.items()}, args.steps)
    rows = [{"variant": n, "median_ms": round(1000 * t, 2), "overhead_pct": round(100 * (t / times["plain"] - 1), 2)}
            for n, t in times.items()]
    for r in rows:
        print(r)
    out = write_result("cka_overhead", rows, "python benchmarks/cka_overhead.py " + " ".join(sys.argv[1:]),
                       model=args.model, batch_size=args.batch_size, steps=args.steps, seed=0,
                       stages=[len(s) for s in stages], target_met=rows[1]["overhead_pct"] <= 10.0)
    print("wrote", out)


if __name__ == "__main__":
    main()
