"""Parity: `drt train` against a plain PyTorch loop written here, on identical settings and tensors.

    python benchmarks/parity.py vgg11 [--loops plain drt] [--seeds 0 1]   # one setting, some runs
    python benchmarks/parity.py --summary                                  # the table from every run

Both sides build the model the same way (``torch.manual_seed(seed)`` then ``drt.models.create``) and
train on the same data tensors (``drt.data.load``). Everything else on the plain side is its own:
data order, per-sample random crop (zero padding 4) and flip, ``torch.optim.SGD`` over
``model.parameters()``, a per-step cosine (with linear warm-up) through ``LambdaLR``, evaluation. The
drt side is the runner behind `drt train` (results in benchmarks/results/drt.sqlite). Each run writes
benchmarks/results/parity/<setting>-<loop>-seed<s>.json; ``--summary`` writes results/parity.json with
the per-epoch test accuracy of both loops and the final figures. Runs are independent: two
invocations may run side by side (accuracy only; no timings are compared here).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS, data_root, write_result

from drt.data import load
from drt.experiments.config import make_config
from drt.experiments.recipes import recipe
from drt.experiments.runner import run
from drt.models import create

SUBSET = {"subset": 10000}  # a fixed 10,000-image training subset, the full test set
SETTINGS: dict[str, dict[str, Any]] = {  # drt's published recipes (`drt list recipes`), as measured here
    # the recipe of the parity issue: VGG-11's recipe without its warm-up epoch
    "vgg11": {**recipe("vgg11-cifar10"), **SUBSET, "warmup_epochs": 0},
    "resnet20": {**recipe("resnet20-cifar10"), **SUBSET},
    "lenet5-fmnist": recipe("lenet5-fashion-mnist"),
    # the same with one epoch of linear warm-up (what keeps VGG-11's first steps from diverging)
    "vgg11-warmup": {**recipe("vgg11-cifar10"), **SUBSET},
}
OUT = RESULTS / "parity"


def plain_run(s: dict[str, Any], seed: int) -> list[float]:
    """The textbook loop; returns the test accuracy after every epoch."""
    data = load(s["dataset"], data_root=data_root(), subset=s.get("subset"))
    torch.manual_seed(seed)
    model = create(s["model"], tuple(data.input_shape), data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], nesterov=s["nesterov"],
                          weight_decay=s["weight_decay"])
    steps = math.ceil(len(data.x_train) / s["batch_size"])
    total, warm = s["epochs"] * steps, s.get("warmup_epochs", 0) * steps

    def factor(i: int) -> float:  # step i of the run: cosine over the run, linear warm-up on top
        return 0.5 * (1 + math.cos(math.pi * i / total)) * (min(1.0, (i + 1) / warm) if i < warm else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(10_000 + seed)
    accs = []
    for _ in range(s["epochs"]):
        model.train()
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(steps):
            idx = order[i * s["batch_size"]:(i + 1) * s["batch_size"]]
            x, y = data.x_train[idx], data.y_train[idx]
            if s["augment"] == "crop-flip":
                x = crop_flip(x, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        accs.append(accuracy(model, data.x_test, data.y_test))
        print(f"  plain epoch {len(accs)}: test {100 * accs[-1]:.2f}%", flush=True)
    return accs


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop of the zero-padded image, then a random horizontal flip."""
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[2:]
    out = torch.empty_like(x)
    for j in range(len(x)):
        dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
        img = padded[j, :, dy:dy + h, dx:dx + w]
        out[j] = img.flip(2) if float(torch.rand((), generator=gen)) < 0.5 else img
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000)) / len(x)


def drt_run(s: dict[str, Any], seed: int) -> list[float]:
    """`drt train` with the same settings (through its runner); the test accuracy after every epoch."""
    cfg = make_config({**s, "seed": seed, "data_root": str(data_root()), "eval_every": 1})
    metrics = run(cfg, RESULTS, device="cpu")
    history = json.loads((RESULTS / "runs" / metrics["run_id"] / "metrics.json").read_text())["history"]
    return [h["test_acc"] for h in history]


def summary() -> None:
    rows = []
    for name in SETTINGS:
        per: dict[str, list[dict[str, Any]]] = {}
        for loop in ("plain", "drt"):
            per[loop] = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{name}-{loop}-seed*.json"))]
        if not per["plain"] or not per["drt"]:
            continue
        row: dict[str, Any] = {"setting": name, "recipe": SETTINGS[name]}
        for loop, runs in per.items():
            finals = [100 * r["test_acc"][-1] for r in runs]
            row[f"{loop}_seeds"] = [r["seed"] for r in runs]
            row[f"{loop}_final"] = [round(f, 2) for f in finals]
            row[f"{loop}_mean"] = round(statistics.mean(finals), 2)
            row[f"{loop}_curves"] = [[round(100 * a, 2) for a in r["test_acc"]] for r in runs]
        spread = max(max(row["plain_final"]) - min(row["plain_final"]), max(row["drt_final"]) - min(row["drt_final"]))
        row["drt_minus_plain"] = round(row["drt_mean"] - row["plain_mean"], 2)
        row["within_1_point"] = abs(row["drt_minus_plain"]) <= 1.0
        row["seed_spread"] = round(spread, 2)
        rows.append(row)
    print(json.dumps([{k: v for k, v in r.items() if "curves" not in k and k != "recipe"} for r in rows], indent=1))
    write_result("parity", rows, "python benchmarks/parity.py --summary (runs: python benchmarks/parity.py SETTING)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", nargs="?", choices=sorted(SETTINGS))
    ap.add_argument("--loops", nargs="+", default=["plain", "drt"], choices=["plain", "drt"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--summary", action="store_true", help="write results/parity.json from the finished runs")
    args = ap.parse_args()
    if args.summary:
        return summary()
    if args.setting is None:
        sys.exit("parity: name a setting or pass --summary")
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for loop in args.loops:
            path = OUT / f"{args.setting}-{loop}-seed{seed}.json"
            if path.exists():
                print(f"{path.name}: done")
                continue
            print(f"{args.setting} {loop} seed {seed}", flush=True)
            t0 = time.time()
            accs = (plain_run if loop == "plain" else drt_run)(SETTINGS[args.setting], seed)
            path.write_text(json.dumps({"setting": args.setting, "loop": loop, "seed": seed, "test_acc": accs,
                                        "wall_s": round(time.time() - t0, 1), "torch": torch.__version__,
                                        "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
