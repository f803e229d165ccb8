"""Shared fixtures: a tiny real data set and small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

# isort: off
import drt  # noqa: F401  (before torch: sets OMP_WAIT_POLICY, so a busy machine does not stall the suite)
import torch
# isort: on

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from drt.data import load

    return load("digits")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"
