"""Training-step time of PCN vs its peers at equal trainable parameters, side by side in one run.

    python benchmarks/peer_speed.py peers-cifar [--steps 20] [--seed 0]

For the PCN runs a peers suite is planned from (suites.PEERS_OF) and their small-dense and
Torch-Pruning peers, plus the dense run of the same setting: the trained models are loaded from
benchmarks/results (rebuilt by their own plug-ins: PCN layers, pruned channels), and one SGD step
on the same real batch is timed round-robin, so the ratios are fair on a noisy machine. Writes
benchmarks/results/peer_speed-<suite>.json.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS, data_root, interleaved_medians, write_result
from suites import PEERS_OF

from drt.analysis.cost import forward_flops, param_counts
from drt.experiments.loading import load_run_model
from drt.experiments.report import budget_label
from drt.experiments.store import Store


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def selected_runs(suite: str, seed: int) -> list[dict[str, Any]]:
    """Finished dense, PCN, small-dense and tp-channel runs of the suite's setting and ``seed``."""
    want = PEERS_OF[suite]
    out = []
    for r in Store(RESULTS / "drt.sqlite").runs("done"):
        c = r["config"]
        flat = {**c["data"], **c["train"], "model": c["model"]["model"]}
        if r["seed"] == seed and c["method"] in ("dense", "pcn", "tp-channel") and \
                all(flat.get(k) == v for k, v in want.items()):
            out.append(r)
    return out


def label(run: dict[str, Any]) -> str:
    c = run["config"]
    if c["method"] == "dense" and (c["model"].get("width") or c["model"].get("hidden")):
        return f"small-dense width={c['model'].get('width') or c['model'].get('hidden')}"
    return budget_label(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", choices=sorted(PEERS_OF))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="which seed's trained models to time")
    args = ap.parse_args()
    runs = selected_runs(args.suite, args.seed)
    if not any(r["config"]["method"] == "pcn" for r in runs):
        sys.exit(f"peer_speed: no finished PCN run for {args.suite} seed {args.seed}; run the suites first")
    models, rows = {}, []
    for r in runs:
        model, _, data = load_run_model(RESULTS, r["id"], data_root=str(data_root()))
        name = f"{label(r)} ({r['id'][:8]})"
        models[name] = model.train()
        shape = tuple(data.input_shape)
        rows.append({"model": name, "trainable": param_counts(model)["trainable"],
                     "mflops": round(forward_flops(model, shape) / 1e6, 3),
                     "test_acc": round(100 * r["metrics"]["test_acc"], 2)})
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for n, m in models.items()}
    times = interleaved_medians({n: partial(train_step, m, opts[n], x, y) for n, m in models.items()}, args.steps)
    dense = next((times[n] for n in times if n.startswith("dense ")), None)
    for row in rows:
        t = times[row["model"]]
        row.update({"step_ms": round(1000 * t, 2), "speedup_vs_dense": round(dense / t, 3) if dense else None})
    rows.sort(key=lambda row: -row["trainable"])
    for row in rows:
        print(row, flush=True)
    out = write_result(f"peer_speed-{args.suite}", rows, "python benchmarks/peer_speed.py " + " ".join(sys.argv[1:]),
                       setting=PEERS_OF[args.suite], batch_size=args.batch_size, steps=args.steps, seed=args.seed)
    print("wrote", out)


if __name__ == "__main__":
    main()
