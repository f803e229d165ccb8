"""IDX files (the MNIST format, gzipped or not) and the mnist / fashion-mnist data sets."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from drt.data.base import DATASETS, RawSplits, check_labels, class_names
from drt.data.paths import how_to_supply
from drt.errors import DrtError

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# the four standard files, by split; also found un-gzipped and with the "images.idx3" spelling
_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_EXPECTS = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
    "t10k-labels-idx1-ubyte.gz (gzipped or not)"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def parse_idx(data: bytes, source: str | Path) -> np.ndarray:
    """Parse the bytes of an IDX file into an array in native byte order; ``source`` names it in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DrtError(f"{source}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DrtError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DrtError(f"{source}: {what} IDX file ({len(data)} bytes, shape {shape} needs {expected})")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping it if it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DrtError(f"{path}: cannot read IDX file ({e})") from e
    return parse_idx(raw, path)


def _find(folder: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``folder``: gzipped, plain, or with ``.idx`` instead of ``-idx``."""
    for s in (stem, stem.replace("-idx", ".idx")):
        for name in (s + ".gz", s):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx_splits(name: str, folder: Path, classes: list[str]) -> RawSplits:
    """Read the four standard IDX files of data set ``name`` from ``folder`` as (N, 1, H, W) uint8."""
    arrays = {}
    for split, (img_stem, lab_stem) in _STEMS.items():
        img, lab = _find(folder, img_stem), _find(folder, lab_stem)
        if img is None or lab is None:
            missing = img_stem if img is None else lab_stem
            raise DrtError(f"data set {name!r}: {folder} has no {missing}[.gz]; expected {IDX_EXPECTS}; "
                           f"{how_to_supply(name)}")
        x, y = read_idx(img), read_idx(lab)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or x.dtype != np.uint8:
            raise DrtError(f"data set {name!r}: {img.name} {x.shape} {x.dtype} and {lab.name} "
                           f"{y.shape} are not matching uint8 images (N, H, W) and labels (N,)")
        arrays[split] = (x[:, None], check_labels(y, len(classes), lab))
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return RawSplits(x_train, y_train, x_test, y_test, classes)


@DATASETS.register("mnist", help="MNIST digits, 60k/10k 28x28 grey, from the four IDX files",
                   needs_dir=True, expects=IDX_EXPECTS)
def mnist(folder: Path) -> RawSplits:
    """MNIST (LeCun et al. 1998) from its standard IDX files."""
    return read_idx_splits("mnist", folder, class_names(10))


@DATASETS.register("fashion-mnist", help="Fashion-MNIST, 60k/10k 28x28 grey clothing images, from IDX files",
                   needs_dir=True, expects=IDX_EXPECTS)
def fashion_mnist(folder: Path) -> RawSplits:
    """Fashion-MNIST (Xiao et al. 2017) from its standard IDX files."""
    return read_idx_splits("fashion-mnist", folder, FASHION_CLASSES)
