"""Readers shared by the colour-image data sets: image-folder trees and CIFAR-style pickle batches.

Both read from a ``FileTree`` (a folder or an archive read in place).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np

from drt.data.base import check_labels
from drt.data.trees import FileTree
from drt.errors import DrtError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def find_split(tree: FileTree, split: str) -> str | None:
    """The shallowest prefix ``p`` ("" or "a/b/") with images at ``p<split>/<class>/<file>``, or None."""
    prefixes = set()
    for rel in tree.files:
        parts = rel.split("/")
        if len(parts) >= 3 and parts[-3] == split and rel.lower().endswith(IMAGE_SUFFIXES):
            prefixes.add("".join(p + "/" for p in parts[:-3]))
    return min(prefixes, key=lambda p: (p.count("/"), p)) if prefixes else None


def list_split(tree: FileTree, root: str,
               classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths and labels under ``root`` (e.g. "train/") of ``tree``, sorted by class then file name.

    ``classes`` fixes the class order (the train split's, for the test split); by default the sorted class
    folder names. A class folder not in ``classes`` is an error.
    """
    entries = []
    for rel in tree.files:
        parts = rel[len(root):].split("/")
        if rel.startswith(root) and len(parts) == 2 and rel.lower().endswith(IMAGE_SUFFIXES):
            entries.append((parts[0], rel))
    found = sorted({c for c, _ in entries})
    if classes is None:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise DrtError(f"{tree.name}: class folders {unknown} in {root} are not among the training classes")
    index = {c: i for i, c in enumerate(classes)}
    entries.sort(key=lambda e: (index[e[0]], e[1]))
    return [rel for _, rel in entries], np.array([index[c] for c, _ in entries], dtype=np.int64), classes


def _decode(data: bytes, source: str, size: tuple[int, int] | None) -> np.ndarray:
    """One encoded image as RGB uint8 (H, W, 3), resized (bilinear) to ``size`` = (H, W) if it differs."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise DrtError(f"cannot read image {source}: {e}") from e
    if size is not None and (rgb.height, rgb.width) != size:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def decode_images(tree: FileTree, rels: list[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode images ``rels`` of ``tree`` to RGB uint8 (N, 3, H, W), all resized to ``size`` = (H, W).

    ``size`` None takes the size of the first image in ``rels``.
    """
    if size is None:
        size = _decode(tree.read(rels[0]), f"{tree.name}:{rels[0]}", None).shape[:2]
    out = np.empty((len(rels), 3, *size), dtype=np.uint8)
    for i, data in tree.iter_bytes(rels):
        out[i] = _decode(data, f"{tree.name}:{rels[i]}", size).transpose(2, 0, 1)
    return out


def read_image_tree(train: tuple[FileTree, str], test: tuple[FileTree, str],
                    size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """x/y of an image-folder train/test pair, each given as (tree, prefix of its split folder).

    The test split uses the training split's classes and image size (``size`` None: the first image's).
    """
    train_rels, y_train, classes = list_split(train[0], train[1] + "train/")
    test_rels, y_test, _ = list_split(test[0], test[1] + "test/", classes)
    x_train = decode_images(train[0], train_rels, size)
    x_test = decode_images(test[0], test_rels, (x_train.shape[2], x_train.shape[3]))
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": np.asarray(classes, dtype=np.str_)}


@dataclass(frozen=True)
class PickleFormat:
    """Layout of a CIFAR-style python-pickle release (Krizhevsky 2009)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes

    def find(self, tree: FileTree) -> str | None:
        """The shallowest prefix ("" or "a/") under which ``tree`` holds every file of the release."""
        have = set(tree.files)
        prefixes = [rel[: -len(self.meta)] for rel in tree.files if rel.split("/")[-1] == self.meta]
        complete = [p for p in prefixes if all(p + f in have for f in (*self.train, *self.test))]
        return min(complete, key=lambda p: (p.count("/"), p)) if complete else None


CIFAR10_PICKLE = PickleFormat(tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                              b"labels", b"label_names")
CIFAR100_PICKLE = PickleFormat(("train",), ("test",), "meta", b"fine_labels", b"fine_label_names")

# The only globals a CIFAR pickle needs (numpy arrays, as written by python 2 or 3); anything else is refused.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, so a hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.", 1)
        module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def parse_pickle(data: bytes, source: str) -> dict:
    """Unpickle one CIFAR pickle file (a dict with bytes keys) safely; ``source`` names it in errors."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise DrtError(f"{source}: not a readable CIFAR pickle file ({e})") from e
    if not isinstance(obj, dict):
        raise DrtError(f"{source}: expected a dict in a CIFAR pickle file, got {type(obj).__name__}")
    return obj


def _batch_arrays(batch: dict, fmt: PickleFormat, num_classes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and int64 labels of one parsed batch."""
    try:
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[fmt.label_key])
    except KeyError as e:
        raise DrtError(f"{source}: missing key {e} in CIFAR pickle") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DrtError(f"{source}: data {data.shape}, {len(labels)} labels: not N x 3072 images")
    return data.reshape(-1, 3, 32, 32), check_labels(labels, num_classes, source)


def read_pickles(tree: FileTree, prefix: str, fmt: PickleFormat) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test and classes of the release found at ``prefix`` in ``tree``."""
    rels = [prefix + f for f in (fmt.meta, *fmt.train, *fmt.test)]
    parsed = {rels[i]: parse_pickle(data, f"{tree.name}:{rels[i]}") for i, data in tree.iter_bytes(rels)}
    meta = parsed[rels[0]]
    if fmt.names_key not in meta:
        raise DrtError(f"{tree.name}:{rels[0]}: missing key {fmt.names_key!r}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[fmt.names_key]]
    out = {"classes": np.asarray(classes, dtype=np.str_)}
    for split, names in (("train", fmt.train), ("test", fmt.test)):
        pairs = [_batch_arrays(parsed[prefix + n], fmt, len(classes), f"{tree.name}:{prefix + n}") for n in names]
        out[f"x_{split}"] = np.concatenate([x for x, _ in pairs])
        out[f"y_{split}"] = np.concatenate([y for _, y in pairs])
    return out
