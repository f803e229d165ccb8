"""The data-set registry and the raw (un-normalised) splits every loader returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drt.errors import DrtError
from drt.registry import Registry

AUGMENTATIONS = ("none", "crop-flip")


@dataclass(frozen=True)
class RawSplits:
    """A loader's output before subset/validation carving and normalisation.

    ``x_*`` are uint8 (pixel values 0..255) or float32 arrays already scaled to roughly [0, 1]
    (images) or any range (1-D signals), shaped (N, C, H, W) or (N, C, L); ``y_*`` are int64.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    augment: str = "none"


# A loader takes the data set's folder (None when it needs none) and options (e.g. image_size).
Loader = Callable[..., RawSplits]

# Registry meta per entry: help (one line), needs_dir (bool), expects (what the folder must hold,
# for error messages), options (tuple of extra keyword options the loader accepts).
DATASETS: Registry[Loader] = Registry("data set")


def class_names(n: int) -> list[str]:
    """The class names "0".."n-1" (digit data sets)."""
    return [str(i) for i in range(n)]


def check_labels(y: np.ndarray, num_classes: int, source: str | Path) -> np.ndarray:
    """Return ``y`` as int64 after checking it lies in [0, num_classes); ``source`` names it in errors."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DrtError(f"{source}: labels outside 0..{num_classes - 1} (found {y.min()}..{y.max()})")
    return y
