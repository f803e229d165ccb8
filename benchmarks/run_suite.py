"""Run a named benchmark suite (see suites.py) through drt's runner; resumable.

    python benchmarks/run_suite.py pcn-resnet20 [--limit-minutes 110]

Writes every run into benchmarks/results/drt.sqlite (finished runs are skipped, a killed run
continues from its checkpoint) and stops starting new runs after --limit-minutes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from common import RESULTS, data_root
from suites import SUITES, peer_configs

from drt.errors import DrtError
from drt.experiments.config import RunConfig, make_config
from drt.experiments.runner import run
from drt.experiments.store import Store


def configs(name: str) -> list[RunConfig]:
    """The suite's run configs, reading data from the data root of this machine."""
    if name.startswith("peers-"):
        store = RESULTS / "drt.sqlite"
        planned = peer_configs(Store(store).runs("done"), name) if store.exists() else []
        return [replace(c, data=replace(c.data, data_root=str(data_root()), data_dir=None)) for c in planned]
    out = []
    for values in SUITES[name]:
        needs_dir = values["dataset"] in ("cifar10", "fashion-mnist", "mnist")
        out.append(make_config({**values, "data_root": str(data_root())} if needs_dir else values))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="+", choices=sorted(SUITES))
    ap.add_argument("--limit-minutes", type=float, default=110.0, help="start no new run after this long")
    args = ap.parse_args()
    t0 = time.time()
    for name in args.suites:
        for cfg in configs(name):
            if time.time() - t0 > 60 * args.limit_minutes:
                print(f"time limit reached; run `python benchmarks/run_suite.py {name}` again to continue")
                return
            try:
                m = run(cfg, RESULTS, resume=True)
            except DrtError as e:  # e.g. the same run is being trained by another suite process
                print(f"[{name}] {cfg.label()}: skipped: {e}", flush=True)
                continue
            took = "skipped (done)" if m["skipped"] else f"{m['train_time']:.0f} s"
            print(f"[{name}] {cfg.label()}: test acc {m['test_acc']:.4f}, trainable {m['params_trainable']}, {took}",
                  flush=True)


if __name__ == "__main__":
    main()
