"""The loop's per-epoch checkpoints: written by ``drt.io.save_atomic``, checked here when loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drt.errors import DrtError
from drt.io import load_file


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint; a missing, truncated or corrupted file is a one-line ``DrtError``."""
    payload = load_file(path)
    if not isinstance(payload, dict) or "model" not in payload or "epoch" not in payload:
        raise DrtError(f"checkpoint {path} is not a drt checkpoint (missing model/epoch)")
    return payload
