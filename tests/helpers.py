"""Helpers shared by test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from drt.train import train


class Interrupted(Exception):
    """Stands for a kill right after an epoch's checkpoint was written."""


def stop_at(epoch: int) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch`` callback that raises ``Interrupted`` once epoch ``epoch`` is done."""

    def stop(entry: dict[str, Any]) -> None:
        if entry["epoch"] == epoch:
            raise Interrupted

    return stop


def train_until(epoch: int, *args: Any, **kwargs: Any) -> None:
    """``drt.train.train(*args, **kwargs)`` stopped once epoch ``epoch`` is done and checkpointed."""
    with pytest.raises(Interrupted):
        train(*args, on_epoch=stop_at(epoch), **kwargs)
