"""Step-time overhead of drt's masking vs a dense step vs torch.nn.utils.prune (90% sparsity).

    python benchmarks/mask_overhead.py [--steps 30] [--model resnet20] [--batch-size 128]

All three train the same model on the same real CIFAR-10 batch with SGD (momentum, weight
decay), interleaved step by step in one process; medians are reported. drt's step masks the
gradients after backward and re-applies the mask to weights and momentum after the step;
torch.nn.utils.prune re-parametrises weight = weight_orig * mask in a forward pre-hook.
Target (issue 4): drt's masked step at most 5% slower than dense.
"""

from __future__ import annotations

import argparse
import copy
import sys
from functools import partial

import torch
import torch.nn.functional as F
from common import data_root, interleaved_medians, write_result
from torch.nn.utils import prune

from drt.data import load
from drt.models import create
from drt.sparse import masks_from_scores, prunable, random_scores


def step(model, opt, x, y, masks=None) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if masks is not None:
        masks.mask_grads_(model)
    opt.step()
    if masks is not None:
        masks.apply_(model, opt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    data = load("cifar10", data_root=data_root(), subset=1000)
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    torch.manual_seed(0)
    base = create(args.model, (3, 32, 32), 10)
    scores = random_scores({n: p.detach() for n, p in prunable(base).items()}, torch.Generator().manual_seed(0))
    masks, _ = masks_from_scores(scores, args.sparsity, "global")
    models = {"dense": base, "drt-mask": copy.deepcopy(base), "torch-prune": copy.deepcopy(base)}
    masks.apply_(models["drt-mask"])
    modules = dict(models["torch-prune"].named_modules())
    for name in masks:
        prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", masks[name])
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for n, m in models.items()}
    use = {"dense": None, "drt-mask": masks, "torch-prune": None}
    times = interleaved_medians({n: partial(step, m, opts[n], x, y, use[n]) for n, m in models.items()}, args.steps)
    kept_ok = all(torch.count_nonzero(p[~masks[n]]) == 0 for n, p in prunable(models["drt-mask"]).items())
    rows = [{"step": n, "median_ms": round(1000 * t, 2),
             "overhead_vs_dense_pct": round(100 * (t / times["dense"] - 1), 2)} for n, t in times.items()]
    for r in rows:
        print(r)
    out = write_result("mask_overhead", rows, "python benchmarks/mask_overhead.py " + " ".join(sys.argv[1:]),
                       model=args.model, batch_size=args.batch_size, sparsity=args.sparsity, steps=args.steps,
                       seed=0, masked_weights_stayed_zero=bool(kept_ok),
                       target_met=rows[1]["overhead_vs_dense_pct"] <= 5.0)
    print("wrote", out)


if __name__ == "__main__":
    main()
