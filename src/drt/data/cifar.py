"""cifar10, cifar100 and imagefolder: one reader family for pickle batches, image trees and archives."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from drt.data.base import DATASETS, RawSplits
from drt.data.images import (
    CIFAR10_PICKLE,
    CIFAR100_PICKLE,
    PickleFormat,
    find_split,
    read_image_tree,
    read_pickles,
)
from drt.data.paths import archives_in, cached_arrays, digest, file_key, how_to_supply
from drt.data.trees import DirTree, FileTree, TarTree
from drt.errors import DrtError

TREE_EXPECTS = "train/<class>/*.{jpg,png} and test/<class>/*, or .tar.gz archives of that tree"
CIFAR10_EXPECTS = f"cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), or {TREE_EXPECTS}"
CIFAR100_EXPECTS = f"cifar-100-python/ (train, test, meta), or {TREE_EXPECTS}"

Reader = Callable[[], dict[str, np.ndarray]]


def _locate(trees: list[FileTree], pickle_format: PickleFormat | None,
            size: tuple[int, int] | None) -> tuple[str, Reader] | None:
    """("pickle" | "tree", reader) for the first layout found in ``trees`` (pickle batches first), or None."""
    if pickle_format is not None:
        for tree in trees:
            if (prefix := pickle_format.find(tree)) is not None:
                return "pickle", partial(read_pickles, tree, prefix, pickle_format)
    train = next(((t, p) for t in trees if (p := find_split(t, "train")) is not None), None)
    test = next(((t, p) for t in trees if (p := find_split(t, "test")) is not None), None)
    if train is None or test is None:
        return None
    return "tree", partial(read_image_tree, train, test, size)


def read_image_dataset(name: str, folder: Path, expects: str, *, pickle_format: PickleFormat | None = None,
                       size: tuple[int, int] | None = None, num_classes: int | None = None,
                       augment: str = "crop-flip") -> RawSplits:
    """Read data set ``name`` from ``folder``: pickle batches, else an image tree, else its archives.

    Archives (``*.tar.gz`` etc. directly in ``folder``) are used only when the folder itself holds neither
    layout; they are read in place, never extracted. Decoded images (and anything read from archives) are
    cached as uint8 .npy under the cache folder, keyed by the source files' paths, sizes and mtimes and by
    ``size``, so a second load skips decoding.
    """
    tag = f"{name}|{pickle_format}|{size}"
    here = DirTree(folder)
    found = _locate([here], pickle_format, size)
    if found is not None and found[0] == "pickle":
        arrays = found[1]()  # plain pickle files load fast: no cache
    elif found is not None:
        arrays = cached_arrays(digest([tag, here.key(here.files)]), found[1])
    elif archives := archives_in(folder):

        def build() -> dict[str, np.ndarray]:
            inside = _locate([TarTree(a) for a in archives], pickle_format, size)
            if inside is None:
                names = ", ".join(a.name for a in archives)
                raise DrtError(f"data set {name!r}: neither {folder} nor its archives ({names}) hold: {expects}")
            return inside[1]()

        arrays = cached_arrays(digest([tag, *(file_key(a) for a in archives)]), build)
    else:
        raise DrtError(f"data set {name!r}: {folder} holds none of: {expects}; {how_to_supply(name)}")
    classes = [str(c) for c in arrays["classes"]]
    if num_classes is not None and len(classes) != num_classes:
        raise DrtError(f"data set {name!r}: found {len(classes)} classes in {folder}, expected {num_classes}")
    return RawSplits(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], classes, augment)


@DATASETS.register("cifar10", help="CIFAR-10, 50k/10k 32x32 colour images, 10 classes",
                   needs_dir=True, expects=CIFAR10_EXPECTS)
def cifar10(folder: Path) -> RawSplits:
    """CIFAR-10 (Krizhevsky 2009): official pickle batches, an image tree, or archives of either."""
    return read_image_dataset("cifar10", folder, CIFAR10_EXPECTS, pickle_format=CIFAR10_PICKLE,
                              size=(32, 32), num_classes=10)


@DATASETS.register("cifar100", help="CIFAR-100, 50k/10k 32x32 colour images, 100 fine classes",
                   needs_dir=True, expects=CIFAR100_EXPECTS)
def cifar100(folder: Path) -> RawSplits:
    """CIFAR-100 (Krizhevsky 2009) with fine labels: official pickle files, an image tree, or archives."""
    return read_image_dataset("cifar100", folder, CIFAR100_EXPECTS, pickle_format=CIFAR100_PICKLE,
                              size=(32, 32), num_classes=100)


@DATASETS.register("imagefolder", help="any train/<class>/*, test/<class>/* image tree (or .tar.gz of it)",
                   needs_dir=True, expects=TREE_EXPECTS, options=("image_size",))
def imagefolder(folder: Path, image_size: int | None = None) -> RawSplits:
    """An image tree as RGB, resized to ``image_size`` squared (default: first training image's size).

    "First" is in (class folder, file name) order; images of another size are resized (bilinear).
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise DrtError(f"image_size must be a positive integer, got {image_size!r}")
    size = None if image_size is None else (image_size, image_size)
    return read_image_dataset("imagefolder", folder, TREE_EXPECTS, size=size)
