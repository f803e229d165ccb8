"""Where data lives: data-set folder resolution, the cache folder and the atomic decoded-array cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from drt.errors import DrtError

ENV_DATA_DIR = "DRT_DATA_DIR"
ENV_CACHE_DIR = "DRT_CACHE_DIR"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def how_to_supply(name: str) -> str:
    """The one-clause hint telling a user how to point drt at data set ``name``."""
    return f"supply it with --data-dir DIR, --data-root ROOT (uses ROOT/{name}) or {ENV_DATA_DIR}=ROOT"


def resolve_dir(name: str, expects: str, data_dir: str | Path | None, data_root: str | Path | None) -> Path:
    """The folder of data set ``name``: ``data_dir`` > ``data_root/name`` > ``$DRT_DATA_DIR/name``."""
    if data_dir is not None:
        path, source = Path(data_dir), "--data-dir"
    elif data_root is not None:
        path, source = Path(data_root) / name, "--data-root"
    elif os.environ.get(ENV_DATA_DIR):
        path, source = Path(os.environ[ENV_DATA_DIR]) / name, ENV_DATA_DIR
    else:
        raise DrtError(f"data set {name!r} needs a folder holding {expects}; {how_to_supply(name)}")
    path = path.expanduser()
    if not path.is_dir():
        raise DrtError(
            f"data set {name!r}: folder {path} (from {source}) not found; it should hold {expects}; "
            f"{how_to_supply(name)}"
        )
    return path


def cache_dir() -> Path:
    """The cache folder: ``$DRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/drt``, else ``~/.cache/drt``."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "drt"


def digest(parts: Iterable[str]) -> str:
    """A short hex key over ``parts``."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def file_key(path: Path) -> str:
    """A key that changes when the file at ``path`` changes (absolute path, size, mtime)."""
    st = path.stat()
    return digest([str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)])


def archives_in(folder: Path) -> list[Path]:
    """The tar archives directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def _publish(tmp: Path, dest: Path) -> None:
    """Atomically rename the finished ``tmp`` folder to ``dest``; a concurrent winner is kept."""
    try:
        os.rename(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays stored as ``<cache>/arrays/<key>/<name>.npy``, built by ``build()`` on a miss.

    Writing is atomic (temporary folder, then rename) and best effort: an unwritable cache only costs
    the rebuild next time.
    """
    dest = cache_dir() / "arrays" / key
    if dest.is_dir():
        return {f.stem: np.load(f, allow_pickle=False) for f in sorted(dest.glob("*.npy"))}
    arrays = build()
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
        _publish(tmp, dest)
    except OSError:
        pass
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return arrays
