"""Data sets (registry ``DATASETS``), in-memory ``Dataset`` loading and the ``TensorLoader``.

Importing this package registers every data set; heavy dependencies load only when a data set is loaded.
"""

from drt.data import bundled, cifar, idx  # noqa: F401  (register the data sets)
from drt.data.augment import apply_crop_flip, augment_crop_flip, crop_flip_params
from drt.data.base import AUGMENTATIONS, DATASETS, RawSplits
from drt.data.dataset import Dataset, load
from drt.data.loader import TensorLoader

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "Dataset",
    "RawSplits",
    "TensorLoader",
    "apply_crop_flip",
    "augment_crop_flip",
    "crop_flip_params",
    "load",
]
