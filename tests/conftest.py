"""Shared fixtures: a tiny real data set and small configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from drt.data import load

    return load("digits")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"
