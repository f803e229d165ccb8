"""Data-parallel training on the 2-core CPU machine: 1 vs 2 processes, and the cost of the distributed steps.

    python benchmarks/ddp.py [--steps 10] [--rounds 2] [--repeats 10]

Throughput: `drt`'s own loop (``drt.train.train``, dense, no augmentation) for 2 epochs of ``steps``
steps at a global batch of 128: 1 process with batch 128 and 2 threads, or 2 processes (gloo, DDP)
with batch 64 and 1 thread each (threads = 2 // processes); plus 1 process with 1 thread as a control
(on a busy machine two OpenMP threads of one process wait for each other). Reported: the second
epoch's images/s (all ranks' images over rank 0's time); ``rounds`` alternating measurements per
setting. resnet20 on real CIFAR-10, lenet5 on mnist5k.

Distributed steps (2 processes, 1 thread each), medians of ``repeats`` after a barrier, beside the
local work they accompany: the PCN statistics all-reduce of resnet20's input moments
(``PCNStats.all_reduce_``) vs collecting them on 64 images and the eigen-decompositions; the mask
agreement check (checksum + all-gather, ``check_ranks_agree``) at 90% sparsity vs the local checksum;
the gradient average SNIP-type scores use (``drt.dist.mean_``) vs one DDP training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from common import data_root, write_result

from drt.data import load
from drt.dist import mean_
from drt.methods.dense import Dense
from drt.models import create
from drt.pcn import PCNStats, collect
from drt.sparse import check_ranks_agree, masks_from_scores, prunable, random_scores
from drt.train import TrainConfig, train
from drt.train.distributed import wrapper

CASES = {"resnet20": "cifar10", "lenet5": "mnist5k"}
GLOBAL_BATCH = 128


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(dataset: str, n_train: int):
    d = load(dataset, data_root=data_root(), subset=n_train)
    return dataclasses.replace(d, x_test=d.x_test[:500], y_test=d.y_test[:500])


def _join(rank: int, world: int, port: int, threads: int | None = None) -> None:
    torch.set_num_threads(threads or 2 // world)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _throughput(rank: int, world: int, port: int, out: str, model: str, steps: int, threads: int) -> None:
    _join(rank, world, port, threads)
    data = _data(CASES[model], steps * GLOBAL_BATCH)
    torch.manual_seed(0)
    net = create(model, data.input_shape, data.num_classes)
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH // world, lr=0.05, seed=0)
    res = train(net, data, cfg, Dense(), device=torch.device("cpu"))
    if rank == 0:
        last = res.history[-1]
        torch.save({"images_per_s": last["images_per_s"], "ms_per_step": 1000 * last["step_time"]},
                   Path(out) / "throughput.pt")
    if world > 1:
        dist.destroy_process_group()


def _median_ms(fn, repeats: int, sync: bool = True) -> float:
    times = []
    for _ in range(repeats):
        if sync:
            dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _collectives(rank: int, world: int, port: int, out: str, repeats: int) -> None:
    _join(rank, world, port)
    data = _data("cifar10", 256)
    torch.manual_seed(0)
    net = create("resnet20", data.input_shape, data.num_classes)
    x, y = data.x_train[:64], data.y_train[:64]
    row: dict = {}
    # PCN statistics: collect locally, all-reduce the raw sums, eigen-decompose
    stats = collect(net, [x], max_samples=64)
    state = stats.state_dict()
    row["pcn_stats_mb"] = round(sum(t.numel() * t.element_size() for t in stats.tensors()) / 2**20, 2)
    row["pcn_collect_64_images_ms"] = _median_ms(lambda: collect(net, [x], max_samples=64), repeats, sync=False)
    row["pcn_all_reduce_ms"] = _median_ms(lambda: PCNStats.from_state_dict(state).all_reduce_(), repeats)
    fresh = PCNStats.from_state_dict(state).all_reduce_()
    row["pcn_eig_all_layers_ms"] = _median_ms(
        lambda: [PCNStats.from_state_dict(fresh.state_dict()).eig(n) for n in fresh.layers], 3, sync=False)
    # masks: the agreement check after every mask change
    weights = {n: p.detach() for n, p in prunable(net).items()}
    masks, _ = masks_from_scores(random_scores(weights, torch.Generator().manual_seed(0)), 0.9, "erk")
    row["mask_numel"] = masks.numel()
    row["mask_checksum_local_ms"] = _median_ms(masks.checksum, repeats, sync=False)
    row["mask_check_ranks_agree_ms"] = _median_ms(lambda: check_ranks_agree(masks, "bench"), repeats)
    # gradient average of the scores vs one DDP training step (batch 64 per rank)
    grads = {n: torch.randn_like(p) for n, p in weights.items()}
    row["score_grad_all_reduce_ms"] = _median_ms(lambda: mean_(grads), repeats)
    ddp = wrapper(torch.device("cpu"))(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()

    step()
    row["ddp_train_step_ms"] = _median_ms(step, repeats)
    if rank == 0:
        torch.save({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                   Path(out) / "collectives.pt")
    dist.destroy_process_group()


def _spawn(fn, world: int, *args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(fn, args=(world, _free_port(), out, *args), nprocs=world, join=True)
        name = "throughput.pt" if fn is _throughput else "collectives.pt"
        return torch.load(Path(out) / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps per epoch (2 epochs; the second is timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating measurements per setting")
    ap.add_argument("--repeats", type=int, default=10, help="repeats of each distributed step")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    settings = [(1, 2), (2, 1), (1, 1)]  # (processes, threads per process)
    for model in CASES:
        got: dict[tuple[int, int], list[dict]] = {s: [] for s in settings}
        for _ in range(args.rounds):
            for world, threads in settings:
                got[world, threads].append(_spawn(_throughput, world, model, args.steps, threads))
                print(model, world, threads, got[world, threads][-1], flush=True)
        for (world, threads), runs in got.items():
            ips = [g["images_per_s"] for g in runs]
            rows.append({"measure": "throughput", "model": model, "dataset": CASES[model], "processes": world,
                         "threads_per_process": threads, "batch_per_process": GLOBAL_BATCH // world,
                         "global_batch": GLOBAL_BATCH, "images_per_s": [round(v, 1) for v in ips],
                         "images_per_s_median": round(statistics.median(ips), 1),
                         "ms_per_step_median": round(statistics.median(g["ms_per_step"] for g in runs), 2)})
    coll = _spawn(_collectives, 2, args.repeats)
    print(coll, flush=True)
    rows.append({"measure": "distributed steps", "model": "resnet20", "processes": 2, **coll})
    out = write_result("ddp", rows, "python benchmarks/ddp.py " + " ".join(sys.argv[1:]), steps=args.steps,
                       rounds=args.rounds, repeats=args.repeats, wall_s=round(time.perf_counter() - t0, 1),
                       note="2-core machine shared with other benchmark jobs during the measurement")
    print("wrote", out)


if __name__ == "__main__":
    main()
