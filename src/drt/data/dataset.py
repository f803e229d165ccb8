"""The in-memory ``Dataset`` and ``load``: registry loader -> subset -> validation split -> normalisation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drt.data.base import DATASETS, RawSplits
from drt.data.paths import resolve_dir
from drt.data.splits import (
    SUBSET_STREAM,
    VAL_STREAM,
    channel_stats,
    count_from,
    normalise_,
    stratified_split,
    to_float,
)
from drt.errors import DrtError


@dataclass
class Dataset:
    """A classification data set held in memory as normalised float32 tensors.

    Images are (N, C, H, W), 1-D signals (N, C, L); labels int64. ``x_test`` is the held-out test split
    (never for model selection); ``x_val`` an optional validation split carved from train. ``mean``
    and ``std`` are the per-channel statistics (of the [0, 1]-scaled training inputs) used to normalise.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    num_classes: int
    classes: list[str]
    augment: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (3, 32, 32) or (1, 40)."""
        return tuple(self.x_train.shape[1:])


def _carve(raw: RawSplits, subset: int | None, val_size: float | int, seed: int,
           name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted indices (train, val or None) into ``raw.x_train`` after seeded subset and validation carving."""
    y = raw.y_train
    idx = np.arange(len(y))
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int | np.integer) or not 0 < subset <= len(y):
            raise DrtError(f"subset={subset!r} for data set {name!r} must be an integer in 1..{len(y)} "
                           f"(its training set size)")
        classes, sizes = np.unique(y, return_counts=True)
        if subset < len(classes):
            raise DrtError(f"subset={subset} is smaller than the {len(classes)} classes of {name!r}: some class "
                           "would have no training image")
        idx, _ = stratified_split(y, int(subset), [seed, SUBSET_STREAM])
        if sizes.min() == sizes.max() and subset % len(classes):  # a balanced set, an uneven subset
            per = np.unique(y[idx], return_counts=True)[1]
            warnings.warn(f"subset={subset} does not divide by the {len(classes)} classes of {name!r}: built "
                          f"{per.min()} to {per.max()} training images per class", stacklevel=3)
    n_val = count_from(val_size, len(idx), "val_size")
    if n_val == 0:
        return np.sort(idx), None
    val, train = stratified_split(y[idx], n_val, [seed, VAL_STREAM])
    return np.sort(idx[train]), np.sort(idx[val])


def load(name: str, *, data_dir: str | Path | None = None, data_root: str | Path | None = None,
         val_size: float | int = 0, subset: int | None = None, seed: int = 0,
         image_size: int | None = None) -> Dataset:
    """Load registered data set ``name`` into memory, normalised with its training-split statistics.

    Args:
        data_dir: the data set's own folder; else ``data_root/<name>``; else ``$DRT_DATA_DIR/<name>``
            (ignored by data sets that need no folder).
        subset: keep a stratified subset of this many training samples (drawn with ``seed``).
        val_size: a fraction in [0, 1) or a count of the (subset) training samples carved off as a
            stratified validation split (drawn with ``seed``); 0 = none.
        seed: the *split* seed for ``subset`` and ``val_size``, not the run seed: keep it fixed (default 0)
            so runs with different run seeds see the same subset and validation split.
        image_size: resize images to ``image_size`` squared (``imagefolder`` only).

    Normalisation: per-channel mean/std of the final training split (after subset and validation
    carving), applied to train, validation and test alike.
    """
    loader = DATASETS.get(name)
    meta = DATASETS.meta(name)
    options = {}
    if image_size is not None:
        if "image_size" not in meta.get("options", ()):
            raise DrtError(f"image_size applies only to the imagefolder data set, not {name!r}")
        options["image_size"] = image_size
    folder = resolve_dir(name, meta["expects"], data_dir, data_root) if meta.get("needs_dir") else None
    raw = loader(folder, **options)
    train_idx, val_idx = _carve(raw, subset, val_size, seed, name)
    x_train = to_float(raw.x_train[train_idx])
    mean, std = channel_stats(x_train)
    x_val = y_val = None
    if val_idx is not None:
        x_val = normalise_(to_float(raw.x_train[val_idx]), mean, std)
        y_val = torch.from_numpy(raw.y_train[val_idx])
    return Dataset(
        name=name,
        x_train=normalise_(x_train, mean, std),
        y_train=torch.from_numpy(raw.y_train[train_idx]),
        x_test=normalise_(to_float(raw.x_test), mean, std),
        y_test=torch.from_numpy(np.ascontiguousarray(raw.y_test, dtype=np.int64)),
        x_val=x_val,
        y_val=y_val,
        num_classes=len(raw.classes),
        classes=list(raw.classes),
        augment=raw.augment,
        mean=mean,
        std=std,
    )
