"""Files of tensors: written atomically, read without executing code (``weights_only=True``)."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from drt.errors import DrtError, first_line


def save_atomic(path: str | Path, payload: Any) -> None:
    """``torch.save(payload)`` to ``path`` atomically: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so a power loss cannot leave an empty file
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # and the rename itself (not possible on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` without code execution; a missing, truncated or corrupted file is a one-line ``DrtError``."""
    path = Path(path)
    if not path.is_file():
        raise DrtError(f"no {what} at {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        with warnings.catch_warnings():  # a damaged file is reported below, once, not as torch's pickle notes
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        raise DrtError(f"{what} {path} is corrupted or truncated ({first_line(e, 120)}); "
                       "delete it to start afresh") from None
