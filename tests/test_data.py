"""Tests of clafusion_core.data: the embedded digits set and tiny local copies in torchvision's layout."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from clafusion_core import data
from clafusion_core.data import DATASETS, dataset_info, load_dataset, probe_batch
from clafusion_core.errors import DatasetError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ------------------------------------------------------------------------------------------------
# helpers: write tiny datasets in the real file formats
# ------------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path, arr: np.ndarray, gz: bool) -> str:
    payload = idx_bytes(arr)
    path = str(path) + (".gz" if gz else "")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(payload)
    return path


def make_mnist_like(seed=0, n_train=20, n_test=10):
    """Random distinct images; every class twice in train (so a stratified split is possible)."""
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = np.arange(n_train, dtype=np.uint8) % 10
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test, dtype=np.uint8) * 3) % 10
    return xtr, ytr, xte, yte


def write_mnist_folder(folder, arrays, gz) -> None:
    os.makedirs(folder, exist_ok=True)
    for base, arr in zip(IDX_FILES, arrays):
        write_idx(os.path.join(folder, base), arr, gz=gz)


def raw_pixels(x: torch.Tensor, splits) -> np.ndarray:
    """Undo the per-channel normalisation: the pixel values as they were in the files."""
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    return (x * std + mean).round().numpy()


def row_index(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index in ``table`` of each row of ``rows`` (rows flattened); -1 when absent."""
    lookup = {r.tobytes(): i for i, r in enumerate(table.reshape(len(table), -1).astype(np.float64))}
    return np.array([lookup.get(r.tobytes(), -1) for r in rows.reshape(len(rows), -1).astype(np.float64)])


def make_cifar_batch(rng, n, num_classes, label_key):
    return {b"batch_label": b"tiny", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, num_classes, n)]}


def py2_style_batch(data_arr: np.ndarray, labels: list[int]) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the real CIFAR files: str (not bytes) keys and
    array data, numpy.core.multiarray._reconstruct + ndarray.__setstate__."""
    def s(text: bytes) -> bytes:           # py2 str: SHORT_BINSTRING or BINSTRING
        return (b"U" + bytes([len(text)]) + text) if len(text) < 256 else b"T" + struct.pack("<i", len(text)) + text

    def i(v: int) -> bytes:                 # BININT (signed 4 bytes)
        return b"J" + struct.pack("<i", v)

    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R" \
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R" \
        + b"(" + i(1) + i(data_arr.shape[0]) + i(data_arr.shape[1]) + b"\x86" + dtype + b"\x89" \
        + s(data_arr.tobytes()) + b"tb"
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    """Point the Debian Fashion-MNIST folder somewhere empty, so only the given root is searched."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian-package"))


# ------------------------------------------------------------------------------------------------
# dataset_info and names
# ------------------------------------------------------------------------------------------------

EXPECTED_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
                   "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_info_knows_shape_and_classes_without_data(name):
    info = dataset_info(name)
    shape, classes = EXPECTED_SHAPES[name]
    assert info.name == name
    assert info.input_shape == shape
    assert info.num_classes == classes
    assert len(info.class_names) == classes and len(set(info.class_names)) == classes


def test_dataset_names_are_forgiving_about_case_and_underscores():
    assert dataset_info("Fashion_MNIST").name == "fashion-mnist"


@pytest.mark.parametrize("call", [lambda: dataset_info("imagenet"), lambda: load_dataset("imagenet"),
                                  lambda: load_dataset(None)])
def test_unknown_dataset_lists_the_known_names(call):
    with pytest.raises(DatasetError) as err:
        call()
    for name in DATASETS:
        assert name in str(err.value)


# ------------------------------------------------------------------------------------------------
# digits: the embedded default
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_shapes_dtypes_and_classes(digits):
    assert digits.info.input_shape == (1, 8, 8) and digits.info.num_classes == 10
    for split in (digits.train, digits.val, digits.test):
        x, y = split.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8) and x.shape[0] == y.shape[0]
        assert set(y.tolist()) == set(range(10))      # stratified: every class in every split


def test_digits_split_60_20_20_adds_up_to_1797(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797
    assert sizes[0] == pytest.approx(0.6 * 1797, abs=2)
    assert sizes[1] == pytest.approx(0.2 * 1797, abs=2) and sizes[2] == pytest.approx(0.2 * 1797, abs=2)


def test_digits_splits_partition_the_dataset_without_overlap(digits):
    full = load_digits()
    found = [row_index(raw_pixels(s.tensors[0], digits), full.images[:, None]) for s in
             (digits.train, digits.val, digits.test)]
    all_idx = np.concatenate(found)
    assert (all_idx >= 0).all()                                  # every row is a real digit ...
    assert np.array_equal(np.sort(all_idx), np.arange(1797))     # ... and each digit is in exactly one split
    for idx, split in zip(found, (digits.train, digits.val, digits.test)):
        assert np.array_equal(full.target[idx], split.tensors[1].numpy())   # labels travel with images


def test_digits_split_is_deterministic_per_seed_and_changes_with_it(digits):
    again = load_dataset("digits", seed=0)
    data._load_cached.cache_clear()                       # really recompute, not just hit the cache
    recomputed = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits, again), (digits, recomputed)):
        for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
            assert torch.equal(sa.tensors[0], sb.tensors[0]) and torch.equal(sa.tensors[1], sb.tensors[1])
    assert len(other.train) == len(digits.train)
    assert not torch.equal(digits.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(digits.test.tensors[1], other.test.tensors[1])


def test_train_split_is_normalised_per_channel_and_others_use_its_statistics(digits):
    x = digits.train.tensors[0].double()
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (x.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    full = load_digits().images
    train_rows = row_index(raw_pixels(digits.train.tensors[0], digits), full[:, None])
    assert digits.mean[0] == pytest.approx(full[train_rows].mean(), rel=1e-9)
    assert digits.std[0] == pytest.approx(full[train_rows].std(), rel=1e-9)
    # val/test are not re-normalised on their own statistics: the train statistics map them back to
    # integer pixel values 0..16
    for split in (digits.val, digits.test):
        raw = split.tensors[0].double() * digits.std[0] + digits.mean[0]
        assert (raw - raw.round()).abs().max() < 1e-4 and raw.min() > -1e-4 and raw.max() < 16 + 1e-4


def test_repeated_loads_are_served_from_the_cache():
    first, second = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert second.train.tensors[0] is first.train.tensors[0]
    assert second.val.tensors[0] is first.val.tensors[0] and second.test.tensors[1] is first.test.tensors[1]


def test_limit_train_subsamples_train_only_and_keeps_the_normalisation():
    full = load_dataset("digits", seed=2)
    small = load_dataset("digits", seed=2, limit_train=100)
    assert len(small.train) == 100
    assert torch.equal(small.val.tensors[0], full.val.tensors[0])
    assert torch.equal(small.test.tensors[0], full.test.tensors[0])
    assert small.mean == full.mean and small.std == full.std
    idx = row_index(small.train.tensors[0].numpy(), full.train.tensors[0].numpy())
    assert (idx >= 0).all() and len(set(idx.tolist())) == 100
    assert torch.equal(load_dataset("digits", seed=2, limit_train=100).train.tensors[0], small.train.tensors[0])
    assert len(load_dataset("digits", seed=2, limit_train=10**6).train) == len(full.train)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0}, {"val_fraction": -0.5},
                                    {"limit_train": 0}, {"seed": -1}, {"seed": 1.5}])
def test_invalid_split_parameters_are_dataset_errors(kwargs):
    with pytest.raises(DatasetError):
        load_dataset("digits", **kwargs)


# ------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST from IDX files
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,subdir,gz", [
    ("mnist", "MNIST/raw", False),
    ("mnist", "MNIST/raw", True),
    ("mnist", "", True),
    ("fashion-mnist", "FashionMNIST/raw", True),
    ("fashion-mnist", "", False),
])
def test_idx_files_load_with_their_pixels_labels_and_order(tmp_path, no_debian, name, subdir, gz):
    xtr, ytr, xte, yte = make_mnist_like(seed=len(subdir) + gz)
    write_mnist_folder(tmp_path / subdir if subdir else tmp_path, (xtr, ytr, xte, yte), gz=gz)
    splits = load_dataset(name, tmp_path, val_fraction=0.25)
    assert splits.info.name == name and splits.info.input_shape == (1, 28, 28)

    # test split: the official test set, exactly, in file order
    x, y = splits.test.tensors
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.array_equal(y.numpy(), yte)
    assert np.array_equal(raw_pixels(x, splits), xte[:, None].astype(np.float64))

    # train + val: a partition of the official train set, each in file order, labels with their images
    seen = []
    for split, n in ((splits.train, 15), (splits.val, 5)):
        x, y = split.tensors
        assert len(split) == n and x.dtype == torch.float32 and y.dtype == torch.int64
        idx = row_index(raw_pixels(x, splits), xtr[:, None])
        assert (idx >= 0).all() and (np.diff(idx) > 0).all()
        assert np.array_equal(y.numpy(), ytr[idx])
        seen.append(idx)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(20))
    assert splits.mean[0] == pytest.approx(xtr[seen[0]].mean(), rel=1e-9)


def test_plain_and_gzipped_files_may_be_mixed(tmp_path):
    arrays = make_mnist_like(seed=5)
    for k, (base, arr) in enumerate(zip(IDX_FILES, arrays)):
        write_idx(tmp_path / base, arr, gz=bool(k % 2))
    splits = load_dataset("mnist", tmp_path)
    assert np.array_equal(splits.test.tensors[1].numpy(), arrays[3])


def test_gzip_is_recognised_by_content_not_by_name(tmp_path):
    arrays = make_mnist_like(seed=6)
    for base, arr in zip(IDX_FILES, arrays):
        (tmp_path / base).write_bytes(gzip.compress(idx_bytes(arr)))   # compressed, but no .gz suffix
    splits = load_dataset("mnist", tmp_path)
    assert np.array_equal(splits.test.tensors[1].numpy(), arrays[3])


def test_constant_images_normalise_to_zeros_not_nan(tmp_path):
    xtr, ytr, xte, yte = make_mnist_like()
    write_mnist_folder(tmp_path, (np.full_like(xtr, 7), ytr, np.full_like(xte, 7), yte), gz=False)
    splits = load_dataset("mnist", tmp_path)
    assert splits.mean == (7.0,) and splits.std == (1.0,)
    assert (splits.train.tensors[0] == 0).all() and (splits.test.tensors[0] == 0).all()


def test_idx_reader_handles_other_dtypes_and_dims(tmp_path):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i4")
    assert np.array_equal(data._read_idx(write_idx(tmp_path / "a", arr, gz=True)), arr)
    floats = np.linspace(0, 1, 6, dtype=">f4")
    assert np.array_equal(data._read_idx(write_idx(tmp_path / "b", floats, gz=False)), floats)


def test_changed_files_are_reread_not_served_stale_from_the_cache(tmp_path):
    xtr, ytr, xte, yte = make_mnist_like(seed=7)
    write_mnist_folder(tmp_path, (xtr, ytr, xte, yte), gz=False)
    first = load_dataset("mnist", tmp_path)
    new_labels = (yte + 1) % 10
    write_idx(tmp_path / IDX_FILES[3], new_labels, gz=False)
    os.utime(tmp_path / IDX_FILES[3], ns=(1, 1))          # a different mtime even on coarse clocks
    second = load_dataset("mnist", tmp_path)
    assert np.array_equal(first.test.tensors[1].numpy(), yte)
    assert np.array_equal(second.test.tensors[1].numpy(), new_labels)


def test_mnist_without_a_root_asks_for_one():
    with pytest.raises(DatasetError, match="data root") as err:
        load_dataset("mnist")
    for base in IDX_FILES:
        assert base in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_root_names_the_expected_files(tmp_path, no_debian, name):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, tmp_path / "does-not-exist")
    msg = str(err.value)
    assert "does-not-exist" in msg
    for base in IDX_FILES:
        assert base in msg


@pytest.mark.parametrize("name,subdir", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_empty_root_names_the_files_and_the_folders_searched(tmp_path, no_debian, name, subdir):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, tmp_path)
    msg = str(err.value)
    for base in IDX_FILES:
        assert base in msg
    assert str(tmp_path / subdir) in msg
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in msg and data.DEBIAN_FASHION_MNIST_DIR in msg
    else:
        assert "apt-get" not in msg


def test_fashion_mnist_without_root_or_package_names_the_package(no_debian):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist")
    assert data.DEBIAN_FASHION_MNIST_DIR in str(err.value)


def test_missing_file_is_named(tmp_path):
    write_mnist_folder(tmp_path / "MNIST" / "raw", make_mnist_like(), gz=True)
    os.remove(tmp_path / "MNIST" / "raw" / (IDX_FILES[2] + ".gz"))
    with pytest.raises(DatasetError, match="missing t10k-images-idx3-ubyte") as err:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte" not in str(err.value).split("missing")[1].split(")")[0]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [100, 3])
def test_truncated_idx_file_is_a_dataset_error_naming_the_file(tmp_path, gz, cut):
    write_mnist_folder(tmp_path, make_mnist_like(), gz=False)
    path = tmp_path / IDX_FILES[0]
    payload = path.read_bytes()[:-cut] if cut > 10 else path.read_bytes()[:cut]
    os.remove(path)
    target = tmp_path / (IDX_FILES[0] + (".gz" if gz else ""))
    target.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DatasetError, match=IDX_FILES[0]):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_stream_is_a_dataset_error(tmp_path):
    write_mnist_folder(tmp_path, make_mnist_like(), gz=True)
    path = tmp_path / (IDX_FILES[1] + ".gz")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match=IDX_FILES[1]):
        load_dataset("mnist", tmp_path)


def test_wrong_image_size_or_label_count_is_a_dataset_error(tmp_path):
    xtr, ytr, xte, yte = make_mnist_like()
    write_mnist_folder(tmp_path / "a", (xtr[:, :8, :8].copy(), ytr, xte, yte), gz=False)
    with pytest.raises(DatasetError, match="28x28"):
        load_dataset("mnist", tmp_path / "a")
    write_mnist_folder(tmp_path / "b", (xtr, ytr[:-1].copy(), xte, yte), gz=False)
    with pytest.raises(DatasetError, match="labels"):
        load_dataset("mnist", tmp_path / "b")


DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_from_the_debian_package_by_default():
    assert data.DEBIAN_FASHION_MNIST_DIR == DEBIAN
    splits = load_dataset("fashion-mnist")
    assert len(splits.train) + len(splits.val) == 60000 and len(splits.val) == 6000
    assert splits.test.tensors[0].shape == (10000, 1, 28, 28)
    assert splits.info.num_classes == 10
    assert set(splits.test.tensors[1].tolist()) == set(range(10))


# ------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 from python pickles, read with a restricted unpickler
# ------------------------------------------------------------------------------------------------

def write_cifar10(root, protocol=2, meta=True, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[fname] = make_cifar_batch(rng, 4, 10, b"labels")
        (folder / fname).write_bytes(pickle.dumps(batches[fname], protocol=protocol))
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=protocol))
    return folder, batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_images_labels_and_meta_names(tmp_path, protocol):
    _, batches = write_cifar10(tmp_path, protocol=protocol)
    splits = load_dataset("cifar10", tmp_path, val_fraction=0.25)
    assert splits.info.input_shape == (3, 32, 32)
    assert splits.info.class_names == tuple(f"class{i}" for i in range(10))
    x, y = splits.test.tensors
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == batches["test_batch"][b"labels"]
    assert np.array_equal(raw_pixels(x, splits), batches["test_batch"][b"data"].reshape(4, 3, 32, 32))
    train_x = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    assert len(splits.train) == 15 and len(splits.val) == 5
    idx = np.concatenate([row_index(raw_pixels(s.tensors[0], splits), train_x) for s in (splits.train, splits.val)])
    assert np.array_equal(np.sort(idx), np.arange(20))
    assert np.array_equal(np.concatenate([splits.train.tensors[1], splits.val.tensors[1]]), train_y[idx])
    assert len(splits.mean) == len(splits.std) == 3


def test_cifar10_without_meta_uses_the_builtin_class_names(tmp_path):
    write_cifar10(tmp_path, meta=False, seed=1)
    assert load_dataset("cifar10", tmp_path).info.class_names[:2] == ("airplane", "automobile")


def test_cifar_batch_written_by_python2_like_the_real_files_loads(tmp_path):
    folder, batches = write_cifar10(tmp_path, seed=2)
    rng = np.random.default_rng(9)
    arr = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [9, 0, 3, 3, 7]
    blob = py2_style_batch(arr, labels)
    assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob
    (folder / "test_batch").write_bytes(blob)
    splits = load_dataset("cifar10", tmp_path)
    assert splits.test.tensors[1].tolist() == labels
    assert np.array_equal(raw_pixels(splits.test.tensors[0], splits), arr.reshape(5, 3, 32, 32))


def test_cifar100_loads_fine_labels_and_100_classes(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    train = make_cifar_batch(rng, 12, 100, b"fine_labels")
    train[b"coarse_labels"] = [0] * 12
    test = make_cifar_batch(rng, 5, 100, b"fine_labels")
    (folder / "train").write_bytes(pickle.dumps(train))
    (folder / "test").write_bytes(pickle.dumps(test))
    splits = load_dataset("cifar100", tmp_path)
    assert splits.info.num_classes == 100 and len(splits.info.class_names) == 100
    assert splits.test.tensors[0].shape == (5, 3, 32, 32)
    assert splits.test.tensors[1].tolist() == test[b"fine_labels"]
    assert sorted(splits.train.tensors[1].tolist() + splits.val.tensors[1].tolist()) == sorted(train[b"fine_labels"])


class _RunsCommand:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("where", ["value", "meta"])
def test_pickle_naming_a_forbidden_global_is_refused_and_never_runs(tmp_path, where):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _RunsCommand(os.system, f"touch {marker}"), b"labels": [0]}
    target = "test_batch" if where == "value" else "batches.meta"
    (folder / target).write_bytes(pickle.dumps(evil if where == "value" else {b"label_names": evil}))
    with pytest.raises(DatasetError, match="system") as err:
        load_dataset("cifar10", tmp_path)
    assert target in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins_that_run_code(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(_RunsCommand(eval, "1 + 1")))
    with pytest.raises(DatasetError, match="eval"):
        data._load_pickle(str(path))


def test_missing_cifar_batch_is_named(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    os.remove(folder / "data_batch_3")
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("name,expected", [("cifar10", ["cifar-10-batches-py", "data_batch_1", "test_batch"]),
                                           ("cifar100", ["cifar-100-python", "train", "test"])])
def test_missing_cifar_root_names_the_expected_files(tmp_path, name, expected):
    for root in (tmp_path, tmp_path / "nope", None):
        with pytest.raises(DatasetError) as err:
            load_dataset(name, root)
        for word in expected:
            assert word in str(err.value)


def test_corrupt_cifar_pickle_is_a_dataset_error(tmp_path):
    folder, _ = write_cifar10(tmp_path)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


# ------------------------------------------------------------------------------------------------
# probe batch
# ------------------------------------------------------------------------------------------------

def test_probe_batch_is_a_seeded_draw_without_replacement_from_val(digits):
    probe = probe_batch(digits, size=50, seed=0)
    assert probe.shape == (50, 1, 8, 8) and probe.dtype == torch.float32
    assert torch.equal(probe, probe_batch(digits, size=50, seed=0))
    assert not torch.equal(probe, probe_batch(digits, size=50, seed=1))
    val_idx = row_index(probe.numpy(), digits.val.tensors[0].numpy())
    assert (val_idx >= 0).all() and len(set(val_idx.tolist())) == 50
    assert (row_index(probe.numpy(), digits.train.tensors[0].numpy()) == -1).all()
    probe[:] = 0                                  # a copy: the split is untouched
    assert digits.val.tensors[0].abs().sum() > 0


def test_probe_batch_larger_than_val_uses_all_of_val(digits):
    probe = probe_batch(digits, size=10**6)
    assert probe.shape[0] == len(digits.val)
    assert np.array_equal(np.sort(row_index(probe.numpy(), digits.val.tensors[0].numpy())),
                          np.arange(len(digits.val)))


@pytest.mark.parametrize("size", [0, -3])
def test_empty_probe_is_a_dataset_error(digits, size):
    with pytest.raises(DatasetError, match="probe"):
        probe_batch(digits, size=size)
