"""Run a named benchmark suite (see suites.py) through drt's runner; resumable.

    python benchmarks/run_suite.py pcn-resnet20 [--limit-minutes 110]

Writes every run into benchmarks/results/drt.sqlite (finished runs are skipped, a killed run
continues from its checkpoint) and stops starting new runs after --limit-minutes.
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, data_root
from suites import SUITES

from drt.errors import DrtError
from drt.experiments.config import make_config
from drt.experiments.runner import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="+", choices=sorted(SUITES))
    ap.add_argument("--limit-minutes", type=float, default=110.0, help="start no new run after this long")
    args = ap.parse_args()
    t0 = time.time()
    for name in args.suites:
        for values in SUITES[name]:
            if time.time() - t0 > 60 * args.limit_minutes:
                print(f"time limit reached; run `python benchmarks/run_suite.py {name}` again to continue")
                return
            needs_dir = values["dataset"] in ("cifar10", "fashion-mnist", "mnist")
            cfg = make_config({**values, "data_root": str(data_root())} if needs_dir else values)
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
