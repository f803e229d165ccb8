"""Kill anywhere, resume, and get the uninterrupted run bit for bit (issue 15, C9).

Each case runs ``drt train`` three times in fresh processes (tests/kill_child.py): uninterrupted;
SIGKILLed at the N-th call of a function (a training step, a checkpoint write, a PCN transform, an
IMP round boundary, a DST update, Early-Bird's search); then ``--resume``. The resumed run's final
weights, optimizer state, the methods' state (masks, bases, schedules), RNG, per-epoch history and
its store row must equal the uninterrupted run's exactly (timings aside). CPU, one thread per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from drt.experiments.store import Store

CHILD = Path(__file__).with_name("kill_child.py")
BASE = ("--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--quiet")
STEP, SAVE = "drt.methods.driver:Driver.step", "torch:save"
TINY_BN = ("--model", "resnet20", "--width", "4")  # a BatchNorm network (Early-Bird, CKA-SR's stages)
# (case, drt train flags, [(function, call number, partial), ...]); digits: 23 steps per epoch
CASES: list[tuple[str, tuple[str, ...], list[tuple[str, int, bool]]]] = [
    ("dense", ("--model", "mlp", "--method", "dense"),
     [(STEP, 5, False), (STEP, 40, False), (SAVE, 2, True), ("os:replace", 2, False)]),
    ("pcn", ("--model", "mlp", "--method", "pcn", "--pcn-epoch", "1"),
     [("drt.methods.pcn:compress", 1, False), (STEP, 30, False), (SAVE, 2, True)]),
    ("snip", ("--model", "mlp", "--method", "snip"), [(STEP, 1, False), (STEP, 50, False)]),
    ("imp", ("--model", "mlp", "--method", "imp", "--imp-rounds", "2", "--epochs", "2"),
     [("drt.methods.lottery:IMP._prune_and_reset", 1, False), (STEP, 60, False)]),
    ("rigl", ("--model", "mlp", "--method", "rigl", "--delta-t", "8"),
     [("drt.methods.dst:drop_grow_", 3, False), (SAVE, 1, True)]),
    ("earlybird", (*TINY_BN, "--method", "earlybird", "--eb-window", "2", "--eb-max-epoch", "3", "--epochs", "4"),
     [("drt.methods.earlybird:ticket_drawn", 2, False), (STEP, 80, False)]),
    ("freezenet", ("--model", "mlp", "--method", "freezenet"), [(STEP, 30, False)]),
    ("subspace", ("--model", "mlp", "--method", "subspace", "--subspace-dim", "500"), [(STEP, 30, False)]),
    ("rigl+cka-sr", (*TINY_BN, "--method", "rigl", "--delta-t", "8", "--reg", "cka-sr"),
     [(STEP, 30, False), ("drt.methods.dst:drop_grow_", 2, False)]),
]
TIMING = ("time", "_per_s", "memory", "wall_clock")


def _drt(results: Path, flags: tuple[str, ...], kill: tuple[str, int, bool] | None = None,
         resume: bool = False) -> subprocess.CompletedProcess:
    target = ["none"] if kill is None else [kill[0], str(kill[1]), *(["partial"] if kill[2] else [])]
    argv = [sys.executable, str(CHILD), *target, "--", "train", *BASE, *flags, "--results-dir", str(results),
            *(["--resume"] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def _untimed(x: Any) -> Any:
    """``x`` without wall-clock measurements (they differ between any two runs)."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not (isinstance(k, str) and any(t in k for t in TIMING))}
    if isinstance(x, list | tuple):
        return [_untimed(v) for v in x]
    return x


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _outcome(results: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(final checkpoint, final model, store row) of the one run in ``results``."""
    store = Store(results / "drt.sqlite")
    (row,) = store.runs()
    run_dir = results / "runs" / row["id"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # its setup_time is a timing: dropped
    model = torch.load(run_dir / "model.pt", weights_only=True)
    stored = {"status": row["status"], "metrics": _untimed(row["metrics"]),
              "epochs": _untimed(store.epochs(row["id"])), "error": row["error"]}
    return _untimed(ckpt), model, stored


def _killed_then_resumed(results: Path, flags: tuple[str, ...], kill: tuple[str, int, bool]) -> str | None:
    """Kill a run at ``kill``, resume it; None if both went as they should, else what went wrong."""
    killed = _drt(results, flags, kill)
    if killed.returncode != -9:
        return f"{kill} never fired (exit {killed.returncode}): {killed.stderr}"
    (row,) = Store(results / "drt.sqlite").runs()
    if row["status"] != "running":  # what a kill leaves: a claim by a dead process
        return f"{kill} left the row {row['status']}"
    resumed = _drt(results, flags, resume=True)
    return None if resumed.returncode == 0 else f"resume after {kill}: {resumed.stderr}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_killed_anywhere_then_resumed_equals_uninterrupted(case, tmp_path):
    name, flags, kills = case
    with ThreadPoolExecutor(2) as pool:  # one thread per process: two at a time on the 2 cores
        ref = pool.submit(_drt, tmp_path / "ref", flags)
        outcomes = list(pool.map(lambda ik: _killed_then_resumed(tmp_path / f"kill{ik[0]}", flags, ik[1]),
                                 enumerate(kills)))
    assert ref.result().returncode == 0, ref.result().stderr
    want = _outcome(tmp_path / "ref")
    for i, (kill, problem) in enumerate(zip(kills, outcomes, strict=True)):
        assert problem is None, f"{name}: {problem}"
        got = _outcome(tmp_path / f"kill{i}")
        for part, a, b in zip(("checkpoint", "model", "store row"), want, got, strict=True):
            _assert_same(a, b, f"{name} killed at {kill[0]}#{kill[1]}: {part}")
