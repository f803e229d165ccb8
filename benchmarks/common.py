"""Shared helpers for benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from drt.experiments.env import environment

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED_DATA = ROOT.parents[1] / "shared" / "data"


def data_root() -> Path:
    """The data root: $DRT_DATA_DIR, else ../shared/data beside the checkout."""
    return Path(os.environ.get("DRT_DATA_DIR", SHARED_DATA))


def write_result(name: str, rows: list[dict[str, Any]], command: str, **extra: Any) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the rows, environment and command."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               "env": environment(torch.device("cpu")), **extra, "rows": rows}
    out.write_text(json.dumps(payload, indent=2))
    return out


def interleaved_medians(calls: Mapping[str, Callable[[], object]], steps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each named callable, timed round-robin in one process.

    Interleaving makes machine noise hit every variant alike, so ratios between them are fair;
    ``warmup`` untimed rounds run first (allocator, kernel selection).
    """
    times: dict[str, list[float]] = {n: [] for n in calls}
    for i in range(warmup + steps):
        for n, fn in calls.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[n].append(time.perf_counter() - t)
    return {n: statistics.median(t) for n, t in times.items()}


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One plain SGD step in train mode (what the side-by-side timings compare)."""
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@torch.no_grad()
def forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One eval-mode forward pass (inference latency)."""
    model.eval()
    model(x)


def step_and_forward_medians(models: Mapping[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                             steps: int) -> dict[tuple[str, str], float]:
    """Median seconds of one SGD step and one eval forward per model, all timed round-robin."""
    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for n, m in models.items():
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        calls[(n, "step")] = functools.partial(train_step, m, opt, x, y)
        calls[(n, "forward")] = functools.partial(forward, m, x)
    return interleaved_medians(calls, steps)  # type: ignore[arg-type]
