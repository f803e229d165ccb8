"""Tests for drt.data: loaders (bundled, IDX, CIFAR pickle, image folders, archives), splits, TensorLoader."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drt.data import DATASETS, TensorLoader, apply_crop_flip, augment_crop_flip, crop_flip_params, load
from drt.data.idx import parse_idx, read_idx
from drt.data.splits import count_from, stratified_split
from drt.errors import DrtError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BUNDLED = [n for n in DATASETS if not DATASETS.meta(n)["needs_dir"]]
SHARED = Path(os.environ.get("DRT_TEST_DATA") or Path(__file__).parents[2] / "shared" / "data")


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def denormalise(d, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * torch.tensor(d.std).view(shape) + torch.tensor(d.mean).view(shape)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No user data root leaks in; every test gets its own cache folder."""
    monkeypatch.delenv("DRT_DATA_DIR", raising=False)
    monkeypatch.setenv("DRT_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- registry and bundled data sets

def test_registry_names_and_meta():
    assert set(DATASETS.names()) == {"digits", "mnist5k", "mnist1d", "mnist", "fashion-mnist", "cifar10",
                                     "cifar100", "imagefolder"}
    for name in DATASETS:
        meta = DATASETS.meta(name)
        assert isinstance(meta["help"], str) and meta["help"] and "\n" not in meta["help"]
        assert isinstance(meta["needs_dir"], bool)
    assert set(BUNDLED) == {"digits", "mnist5k", "mnist1d"}
    with pytest.raises(DrtError, match="valid: .*cifar10"):
        load("cifar11")


@pytest.mark.parametrize(
    "name, shape, n_train, n_test",
    [("digits", (1, 8, 8), 1438, 359), ("mnist5k", (1, 28, 28), 4000, 1000),
     ("mnist1d", (1, 40), 4000, 1000)],
)
def test_bundled_load(name, shape, n_train, n_test):
    d = load(name, data_dir="/nonexistent/ignored", val_size=0.1)
    n_val = round(0.1 * n_train)
    assert d.input_shape == shape and d.x_test.shape[1:] == shape
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (n_train - n_val, n_val, n_test)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.num_classes == len(d.classes) == 10
    for y in (d.y_train, d.y_val, d.y_test):
        assert set(y.tolist()) == set(range(10))
    tr, va, te = rows(d.x_train), rows(d.x_val), rows(d.x_test)
    assert not (tr & te) and not (tr & va) and not (va & te)
    assert torch.allclose(d.x_train.mean(), torch.tensor(0.0), atol=1e-4)
    assert torch.allclose(d.x_train.std(), torch.tensor(1.0), atol=1e-3)
    assert d.augment == "none"


def test_digits_values_and_fixed_test_split():
    from sklearn.datasets import load_digits

    d1, d2 = load("digits"), load("digits", seed=5)
    assert torch.equal(d1.x_test, d2.x_test) and torch.equal(d1.y_test, d2.y_test)  # never depends on seed
    raw = load_digits()
    pixels = denormalise(d1, d1.x_test).reshape(len(d1.x_test), -1) * 16
    # every test image is a real digits image with its label
    lookup = {np.round(r).astype(np.int64).tobytes(): t for r, t in zip(raw.data, raw.target, strict=True)}
    for img, label in zip(pixels.numpy(), d1.y_test.tolist(), strict=True):
        assert lookup[np.round(img).astype(np.int64).tobytes()] == label
    counts = torch.bincount(d1.y_test).tolist()
    assert max(counts) - min(counts) <= 2  # stratified


def test_mnist1d_leaves_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    d = load("mnist1d")
    assert np.random.rand() == expected
    assert torch.equal(load("mnist1d").x_train, d.x_train)


# ---------------------------------------------------------------- splits, subset and validation

def test_stratified_split_partitions_and_keeps_proportions():
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    taken, rest = stratified_split(y, 50, seed=7)
    assert len(taken) == 50 and len(rest) == 150
    assert sorted(np.concatenate([taken, rest]).tolist()) == list(range(200))
    assert np.abs(np.bincount(y[taken], minlength=4) - [25, 12.5, 7.5, 5]).max() <= 1
    again, _ = stratified_split(y, 50, seed=7)
    other, _ = stratified_split(y, 50, seed=8)
    assert np.array_equal(taken, again) and not np.array_equal(np.sort(taken), np.sort(other))


def test_count_from():
    assert count_from(0, 100, "v") == 0 and count_from(0.0, 100, "v") == 0
    assert count_from(0.25, 100, "v") == 25 and count_from(10, 100, "v") == 10
    assert count_from(10.0, 100, "v") == 10 and count_from(0.001, 100, "v") == 1
    for bad in (1.5, -0.1, 100, -1, "x", True):
        with pytest.raises(DrtError):
            count_from(bad, 100, "v")


def test_subset_and_val_sizes_and_determinism():
    d = load("digits", subset=500, val_size=100)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (400, 100, 359)
    again = load("digits", subset=500, val_size=100)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_val, again.y_val)
    other = load("digits", subset=500, val_size=100, seed=1)
    assert rows(other.x_train) != rows(d.x_train)
    # normalisation uses the final training split only
    assert torch.allclose(d.x_train.mean(), torch.tensor(0.0), atol=1e-4)
    subset_only = load("digits", subset=500)
    expected = 500 * torch.bincount(load("digits").y_train) / 1438  # stratified: class proportions kept
    assert (torch.bincount(subset_only.y_train) - expected).abs().max() <= 1
    # subset then val: the union of train and val is exactly the subset (compared in raw pixel units)
    union = torch.cat([denormalise(d, d.x_train), denormalise(d, d.x_val)]) * 16
    sub = denormalise(subset_only, subset_only.x_train) * 16
    assert rows(union.round().to(torch.int64)) == rows(sub.round().to(torch.int64))
    assert d.x_val.shape[1:] == d.input_shape


def test_subset_errors():
    with pytest.raises(DrtError, match="subset=2000 .*1..1438"):
        load("digits", subset=2000)
    with pytest.raises(DrtError, match="val_size"):
        load("digits", val_size=1.5)
    with pytest.raises(DrtError, match="image_size applies only"):
        load("digits", image_size=8)


# ---------------------------------------------------------------- IDX (mnist, fashion-mnist)

def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        data = idx_bytes(a)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def test_parse_idx_exact_and_corrupt(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(a), "x"), a)
    i32 = bytes([0, 0, 0x0C, 1]) + np.array([3], ">u4").tobytes() + np.array([1, -2, 70000], ">i4").tobytes()
    assert parse_idx(i32, "x").tolist() == [1, -2, 70000]
    path = tmp_path / "bad-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(a)[:-5]))
    with pytest.raises(DrtError, match=r"bad-images-idx3-ubyte\.gz: truncated"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(a))[:-8])  # gzip stream cut short
    with pytest.raises(DrtError, match=r"bad-images-idx3-ubyte\.gz"):
        read_idx(path)
    path.write_bytes(b"\x08\x03" + idx_bytes(a)[2:])
    with pytest.raises(DrtError, match="bad magic"):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_on_tiny_files(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "fashion-mnist", gz=gz)
    d = load("fashion-mnist", data_root=tmp_path)
    assert d.x_train.shape == (6, 1, 5, 4) and d.x_test.shape == (4, 1, 5, 4)
    assert d.classes[0] == "T-shirt/top" and d.num_classes == 10
    assert torch.allclose(denormalise(d, d.x_test)[:, 0] * 255,
                          torch.tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32), atol=1e-3)
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_missing_dir_and_files_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(DrtError) as e:
        load("mnist")
    assert "\n" not in str(e.value) and "'mnist'" in str(e.value) and "DRT_DATA_DIR" in str(e.value)
    with pytest.raises(DrtError) as e:
        load("mnist", data_root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "mnist") in msg and "--data-dir" in msg
    assert "train-images-idx3-ubyte.gz" in msg
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DrtError, match="no t10k-labels-idx1-ubyte") as e:
        load("mnist", data_root=tmp_path)
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DrtError, match="holds none of: cifar-10-batches-py") as e:
        load("cifar10", data_dir=empty)
    assert "\n" not in str(e.value)
    # resolution order: data_dir > data_root/<name> > $DRT_DATA_DIR/<name>
    write_idx_set(tmp_path / "env" / "mnist", n_train=3)
    monkeypatch.setenv("DRT_DATA_DIR", str(tmp_path / "env"))
    assert len(load("mnist").x_train) == 3
    write_idx_set(tmp_path / "root" / "mnist", n_train=5)
    assert len(load("mnist", data_root=tmp_path / "root").x_train) == 5
    write_idx_set(tmp_path / "own", n_train=7)
    assert len(load("mnist", data_dir=tmp_path / "own", data_root=tmp_path / "root").x_train) == 7


# ---------------------------------------------------------------- CIFAR pickles, image folders, archives

def write_cifar_pickles(folder: Path, per_batch: int = 3) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
        xs.append(data)
        ys += labels
    names = [c.encode() for c in CIFAR10_CLASSES]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return np.concatenate(xs), ys


def test_cifar10_pickle_reader(tmp_path):
    x, y = write_cifar_pickles(tmp_path / "cifar10" / "cifar-10-batches-py")
    d = load("cifar10", data_root=tmp_path)
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.classes[-1] == "truck" and d.augment == "crop-flip"
    assert d.y_train.tolist() == y[:15] and d.y_test.tolist() == y[15:]
    back = denormalise(d, d.x_train) * 255
    assert torch.allclose(back, torch.tensor(x[:15].reshape(15, 3, 32, 32), dtype=torch.float32), atol=1e-3)
    # batches directly in the folder are accepted too
    direct = load("cifar10", data_dir=tmp_path / "cifar10" / "cifar-10-batches-py")
    assert torch.equal(direct.y_test, d.y_test)


def test_cifar100_pickle_and_hostile_pickle(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, n in (("train", 8), ("test", 4)):
        with (folder / split).open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}, f)
    with (folder / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    d = load("cifar100", data_root=tmp_path)
    assert d.num_classes == 100 and d.y_test.tolist() == [0, 1, 2, 3] and d.x_train.shape == (8, 3, 32, 32)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "test").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DrtError, match="refusing to load"):
        load("cifar100", data_root=tmp_path)


def write_png_tree(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> dict[str, np.ndarray]:
    """root/<split>/<class>/<i>.png with random RGB pixels; returns the pixel arrays by relative path."""
    rng = np.random.default_rng(3)
    pixels = {}
    for split, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            cls = ("cat", "dog")[i % 2]
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / split / cls / f"{i:03d}.png")
            pixels[f"{split}/{cls}/{i:03d}.png"] = a
    return pixels


def test_imagefolder_reader_exact_pixels_and_resize(tmp_path):
    pixels = write_png_tree(tmp_path / "imgs", {"train": [(6, 5)] * 4, "test": [(6, 5), (3, 3)]})
    d = load("imagefolder", data_dir=tmp_path / "imgs")
    assert d.classes == ["cat", "dog"] and d.x_train.shape == (4, 3, 6, 5) and d.x_test.shape == (2, 3, 6, 5)
    assert d.y_train.tolist() == [0, 0, 1, 1]  # sorted by class, then file name
    first_cat = torch.tensor(pixels["train/cat/000.png"], dtype=torch.float32).permute(2, 0, 1)
    assert torch.allclose(denormalise(d, d.x_train[:1])[0] * 255, first_cat, atol=1e-3)
    resized = load("imagefolder", data_dir=tmp_path / "imgs", image_size=4)
    assert resized.input_shape == (3, 4, 4) and resized.x_test.shape == (2, 3, 4, 4)
    with pytest.raises(DrtError, match="image_size"):
        load("imagefolder", data_dir=tmp_path / "imgs", image_size=0)


def make_tar(path: Path, root: Path, members: list[str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.add(root / m, arcname=m)


def test_archives_read_in_place_cached_and_rekeyed(tmp_path):
    src = tmp_path / "src"
    write_png_tree(src, {"train": [(4, 4)] * 4, "test": [(4, 4)] * 2})
    data = tmp_path / "data" / "imagefolder"
    data.mkdir(parents=True)
    make_tar(data / "x-train.tar.gz", src, ["train"])
    make_tar(data / "x-test.tar.gz", src, ["test"])
    before = snapshot(data)
    d = load("imagefolder", data_root=tmp_path / "data")
    assert d.x_train.shape == (4, 3, 4, 4) and d.x_test.shape == (2, 3, 4, 4) and d.classes == ["cat", "dog"]
    assert snapshot(data) == before  # nothing written into the data folder
    cache = tmp_path / "cache"
    assert [p.parent.name for p in cache.rglob("*.npy")] and not list(cache.rglob("*.png"))  # only arrays
    entries = list((cache / "arrays").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")
    with pytest.MonkeyPatch.context() as mp:  # a cache hit decodes nothing
        mp.setattr("drt.data.images._decode", lambda *a: pytest.fail("decoded despite the cache"))
        assert torch.equal(load("imagefolder", data_root=tmp_path / "data").x_train, d.x_train)
    assert len(list((cache / "arrays").iterdir())) == 1
    # a changed archive gets a new key and its new content is read
    write_png_tree(src, {"train": [(4, 4)] * 6})
    make_tar(data / "x-train.tar.gz", src, ["train"])
    assert len(load("imagefolder", data_root=tmp_path / "data").x_train) == 6
    assert len(list((cache / "arrays").iterdir())) == 2


def test_cifar_pickle_archive_and_corrupt_archive(tmp_path):
    src = tmp_path / "src"
    _, y = write_cifar_pickles(src / "cifar-10-batches-py")
    data = tmp_path / "cifar10"
    data.mkdir()
    make_tar(data / "cifar-10-python.tar.gz", src, ["cifar-10-batches-py"])  # the official archive layout
    assert load("cifar10", data_root=tmp_path).y_test.tolist() == y[15:]
    (data / "cifar-10-python.tar.gz").write_bytes((data / "cifar-10-python.tar.gz").read_bytes()[:500])
    with pytest.raises(DrtError, match="cifar-10-python.tar.gz") as e:
        load("cifar10", data_root=tmp_path)
    assert "\n" not in str(e.value)


def test_unsafe_archive_members_are_ignored(tmp_path):
    src = tmp_path / "src"
    write_png_tree(src, {"train": [(4, 4)] * 2, "test": [(4, 4)] * 2})
    data = tmp_path / "imagefolder"
    data.mkdir()
    with tarfile.open(data / "evil.tar.gz", "w:gz") as tar:
        for name in ("../train/cat/9.png", "/abs/test/cat/9.png"):
            tar.add(src / "train" / "cat" / "000.png", arcname=name)
    with pytest.raises(DrtError, match="nor its archives"):
        load("imagefolder", data_dir=data)
    with tarfile.open(data / "evil.tar.gz", "w:gz") as tar:
        tar.add(src / "train", arcname="train")
        tar.add(src / "test", arcname="test")
        tar.add(src / "test" / "cat" / "000.png", arcname="../test/cat/999.png")
    assert len(load("imagefolder", data_dir=data).x_test) == 2  # the climbing member is skipped
    assert not (tmp_path / "test").exists()


# ---------------------------------------------------------------- real files (shared data root)

def need_shared(name: str) -> Path:
    if not (SHARED / name).is_dir():
        pytest.skip(f"shared data not found at {SHARED / name} (set DRT_TEST_DATA to a data root)")
    return SHARED


@pytest.mark.parametrize("name, first", [("mnist", "0"), ("fashion-mnist", "T-shirt/top")])
def test_real_idx(name, first):
    d = load(name, data_root=need_shared(name))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.classes[0] == first and d.num_classes == 10
    if name == "fashion-mnist":
        assert torch.bincount(d.y_train).tolist() == [6000] * 10
        assert torch.bincount(d.y_test).tolist() == [1000] * 10
    else:
        assert torch.bincount(d.y_train).min() > 5000 and torch.bincount(d.y_test).min() > 800
    assert abs(d.x_train.mean().item()) < 1e-3 and abs(d.x_train.std().item() - 1) < 1e-3
    if name == "mnist":
        assert d.mean[0] == pytest.approx(0.1307, abs=1e-4) and d.std[0] == pytest.approx(0.3081, abs=1e-4)


@pytest.fixture(scope="module")
def real_cifar(tmp_path_factory):
    root = need_shared("cifar10")
    cache = tmp_path_factory.mktemp("cifar-cache")
    before = snapshot(root / "cifar10")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DRT_CACHE_DIR", str(cache))
        d = load("cifar10", data_root=root)
        again = load("cifar10", data_root=root, subset=10000, val_size=0.1)  # served from the .npy cache
    return d, again, cache, before, root


def test_real_cifar10(real_cifar):
    d, again, cache, before, root = real_cifar
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert d.classes == CIFAR10_CLASSES
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    assert d.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=2e-3)
    assert d.x_train.mean(dim=(0, 2, 3)).abs().max() < 1e-3 and d.augment == "crop-flip"
    assert snapshot(root / "cifar10") == before
    assert len(list((cache / "arrays").iterdir())) == 1 and not list(cache.rglob("*.jpg"))
    assert (len(again.x_train), len(again.x_val)) == (9000, 1000)
    assert torch.bincount(again.y_train).tolist() == [900] * 10
    assert torch.allclose(denormalise(again, again.x_test), denormalise(d, d.x_test), atol=1e-5)


# ---------------------------------------------------------------- augmentation and TensorLoader

def test_crop_flip_exact():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    pad = 4
    centre, no = torch.full((2,), pad), torch.zeros(2, dtype=torch.bool)
    assert torch.equal(apply_crop_flip(x, centre, centre, no, pad), x)
    assert torch.equal(apply_crop_flip(x, centre, centre, ~no, pad), torch.flip(x, dims=[-1]))
    shifted = apply_crop_flip(x, torch.tensor([0, pad]), torch.tensor([pad, 2 * pad]), no, pad)
    assert torch.equal(shifted[0, :, pad:], x[0, :, : 5 - pad]) and shifted[0, :, :pad].abs().sum() == 0
    assert torch.equal(shifted[1, :, :, : 6 - pad], x[1, :, :, pad:])
    assert shifted[1, :, :, 6 - pad:].abs().sum() == 0
    g = torch.Generator().manual_seed(0)
    out = augment_crop_flip(torch.randn(64, 3, 8, 8), g)
    assert out.shape == (64, 3, 8, 8)
    dy, dx, flip = crop_flip_params(1000, torch.Generator().manual_seed(1))
    assert dy.min() == 0 and dy.max() == 8 and dx.min() == 0 and dx.max() == 8 and 400 < flip.sum() < 600


def collect(loader: TensorLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_deterministic_and_covers_each_sample_once():
    x = torch.arange(103, dtype=torch.float32).view(103, 1, 1, 1).expand(103, 1, 4, 4).contiguous()
    y = torch.arange(103)
    loader = TensorLoader(x, y, 10, shuffle=True, seed=3)
    state = torch.get_rng_state()
    a, b, c = collect(loader, 0), collect(loader, 0), collect(loader, 1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert len(loader) == len(a) == 11 and len(a[-1][1]) == 3
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(torch.cat([t[1] for t in a]), torch.cat([t[1] for t in c]))
    for batches in (a, c):
        ys = torch.cat([t[1] for t in batches])
        assert sorted(ys.tolist()) == list(range(103))
        assert all(torch.equal(xb[:, 0, 0, 0], yb.float()) for xb, yb in batches)
    assert len(TensorLoader(x, y, 10, shuffle=True, drop_last=True)) == 10
    plain = torch.cat([t[1] for t in TensorLoader(x, y, 10, shuffle=False)])
    assert torch.equal(plain, y)


@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_sharding_reproduces_single_process(drop_last):
    x = torch.randn(70, 3, 8, 8)
    y = torch.arange(70)
    kw = dict(shuffle=True, augment="crop-flip", seed=11, drop_last=drop_last)
    single = collect(TensorLoader(x, y, 8, **kw), 2)
    ranks = [collect(TensorLoader(x, y, 4, rank=r, world_size=2, **kw), 2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == (8 if drop_last else 9)
    for i, (xs, ys) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), ys)
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), xs)
    # augmentation really happened and differs between epochs
    unaug = collect(TensorLoader(x, y, 8, shuffle=True, seed=11, drop_last=drop_last), 2)
    assert not torch.equal(single[0][0], unaug[0][0]) and torch.equal(single[0][1], unaug[0][1])


def test_loader_validation():
    x, y = torch.zeros(4, 1, 40), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DrtError, match="crop-flip"):
        TensorLoader(x, y, 2, shuffle=True, augment="crop-flip")
    with pytest.raises(DrtError, match="unknown augmentation"):
        TensorLoader(x, y, 2, shuffle=True, augment="mixup")
    with pytest.raises(DrtError, match="rank"):
        TensorLoader(x, y, 2, shuffle=True, rank=2, world_size=2)


def test_a_subset_below_the_class_count_is_refused_and_an_uneven_one_is_said():
    from drt.data.base import RawSplits
    from drt.data.dataset import _carve

    y = np.repeat(np.arange(10), 50)  # balanced: 50 images per class
    raw = RawSplits(np.zeros((500, 1, 4, 4), np.uint8), y, np.zeros((10, 1, 4, 4), np.uint8), np.arange(10),
                    [str(c) for c in range(10)])
    with pytest.raises(DrtError, match="subset=7 is smaller than the 10 classes of 'toy'"):
        _carve(raw, 7, 0, 0, "toy")
    with pytest.warns(UserWarning, match="subset=105 does not divide by the 10 classes of 'toy': built 10 to 11"):
        idx, _ = _carve(raw, 105, 0, 0, "toy")
    assert len(idx) == 105
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.bincount(y[_carve(raw, 100, 0, 0, "toy")[0]]).tolist() == [10] * 10  # even: silent
