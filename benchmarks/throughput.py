"""Training throughput of resnet20 and vgg11 on the real CIFAR-10 images (one epoch each).

    python benchmarks/throughput.py [--models resnet20 vgg11] [--epochs 1]

Trains through `drt`'s own loop (so the numbers include augmentation and the hooks), records
each run in benchmarks/results/drt.sqlite and writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import sys

from common import RESULTS, data_root, write_result

from drt.experiments.config import make_config
from drt.experiments.runner import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "vgg11"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    rows = []
    for model in args.models:
        cfg = make_config({"model": model, "dataset": "cifar10", "data_root": str(data_root()),
                           "epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "seed": 0})
        m = run(cfg, RESULTS, force=True)
        rows.append({"model": model, "epochs": args.epochs, "batch_size": args.batch_size,
                     "images_per_s": round(m["images_per_s"], 1), "ms_per_step": round(1000 * m["step_time"], 2),
                     "train_s": round(m["train_time"], 1), "test_acc": m["test_acc"],
                     "params": m["params_total"], "mflops_per_sample": round(m["flops"] / 1e6, 2),
                     "run_id": m["run_id"]})
        print(rows[-1], flush=True)
    print("wrote", write_result("throughput", rows, "python benchmarks/throughput.py " + " ".join(sys.argv[1:])))


if __name__ == "__main__":
    main()
