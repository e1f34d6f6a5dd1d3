"""Datasets: the embedded default and local copies in torchvision's layout.

Every fusion experiment needs the same three things from a dataset: a training split (to train and
finetune, and to recompute BatchNorm statistics), a held-out validation split (to draw the probe batch
whose activations drive the cost matrix and the activation-based ground metric, and to select
finetuning epochs without peeking at the test set) and the official test split (to report accuracy).
:func:`load_dataset` returns exactly these as :class:`torch.utils.data.TensorDataset` objects of
normalised float32 images ``[N, C, H, W]`` and int64 labels ``[N]``.

Supported datasets (:data:`DATASETS`):

- ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1797 images). It ships with
  scikit-learn, so it is the default that works everywhere without any files.
- ``mnist``, ``fashion-mnist`` -- the four IDX files (plain or ``.gz``) either flat in a folder or in
  torchvision's ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``. Fashion-MNIST is also found in the
  folder of Debian's ``dataset-fashion-mnist`` package (:data:`DEBIAN_FASHION_MNIST_DIR`).
- ``cifar10``, ``cifar100`` -- the "python version" batches in torchvision's layout
  (``<root>/cifar-10-batches-py``, ``<root>/cifar-100-python``).

Nothing is ever downloaded. The files are parsed here rather than through torchvision's dataset
classes because those verify md5 sums (which small or re-packed copies fail) and unpickle CIFAR
batches with the unrestricted :mod:`pickle`; here CIFAR pickles go through an unpickler that only
rebuilds numpy arrays, so a tampered file cannot run code.

Loaded splits are cached in-process, so the app, the CLI and the pipeline can call
:func:`load_dataset` repeatedly at no cost. The returned tensors are shared between calls: treat them
as read-only.
"""

from __future__ import annotations

import codecs
import functools
import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .errors import DatasetError
from .validation import MAX_DATASET_FILE_BYTES, megabytes, quote_path, read_regular_file

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetInfo",
    "DataSplits",
    "load_dataset",
    "probe_batch",
    "dataset_info",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")

#: Where Debian's ``dataset-fashion-mnist`` package puts the four ``*-ubyte.gz`` files (flat).
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: input shape and classes.

    Attributes
    ----------
    name : str
        Canonical dataset name, one of :data:`DATASETS`.
    channels, height, width : int
        Shape of one input image.
    num_classes : int
        Number of classes; labels are ``0 .. num_classes - 1``.
    class_names : tuple of str
        Human-readable name of each label, in label order.
    """

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one input image, as models and checkpoints record it."""
        return (self.channels, self.height, self.width)


@dataclass
class DataSplits:
    """A dataset's train / validation / test splits, normalised with train-split statistics.

    Attributes
    ----------
    info : DatasetInfo
        Shape and classes of the dataset.
    train, val, test : TensorDataset
        Each holds ``(x, y)``: ``x`` float32 ``[N, C, H, W]`` normalised per channel, ``y`` int64 ``[N]``.
    mean, std : tuple of float
        The per-channel statistics used for normalisation (raw pixel units), so that images can be
        shown un-normalised: ``raw = x * std + mean``.
    """

    info: DatasetInfo
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


_DIGIT_NAMES = tuple(str(i) for i in range(10))
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                  "dog", "frog", "horse", "ship", "truck")
_CIFAR100_NAMES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())

_INFOS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1, 8, 8, 10, _DIGIT_NAMES),
    "mnist": DatasetInfo("mnist", 1, 28, 28, 10, _DIGIT_NAMES),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 28, 10, _FASHION_NAMES),
    "cifar10": DatasetInfo("cifar10", 3, 32, 32, 10, _CIFAR10_NAMES),
    "cifar100": DatasetInfo("cifar100", 3, 32, 32, 100, _CIFAR100_NAMES),
}

# Digits: train / val / test = 60 / 20 / 20 of the 1797 images.
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_VAL_FRACTION_OF_REST = 0.25

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_SUBDIR = {"mnist": os.path.join("MNIST", "raw"), "fashion-mnist": os.path.join("FashionMNIST", "raw")}
_IDX_PRETTY = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

_CIFAR_LAYOUT = {
    # name: (folder, train files, test file, label key, optional meta file, meta names key, pretty, archive)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                "labels", "batches.meta", "label_names", "CIFAR-10", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), "test",
                 "fine_labels", "meta", "fine_label_names", "CIFAR-100", "cifar-100-python.tar.gz"),
}


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def dataset_info(name: str) -> DatasetInfo:
    """Shape and classes of a dataset, without reading any data.

    Models are built from an arch spec plus the dataset's input shape and class count; knowing these
    without loading lets the app and the CLI build or validate models before the data is touched.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS` (case-insensitive; ``_`` may stand for ``-``).

    Returns
    -------
    DatasetInfo
    """
    return _INFOS[_canonical_name(name)]


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, *, seed: int = 0,
                 val_fraction: float = 0.1, limit_train: int | None = None) -> DataSplits:
    """Load a dataset as normalised train / validation / test tensors.

    The test split is the dataset's official test set (for ``digits``, a stratified 20 %). The
    validation split is a seeded, stratified ``val_fraction`` of the official training set (for
    ``digits``: another 20 % of all images, so train / val / test = 60 / 20 / 20, and ``val_fraction``
    is not used). Each split keeps the order the images have in the files.

    Every split is normalised per channel, ``x = (raw - mean_c) / std_c``, with ``mean_c`` and
    ``std_c`` computed on the training split before ``limit_train`` subsampling, so that limiting the
    training set for speed does not change what a model sees as input.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str or path-like, optional
        Folder holding the files in torchvision's layout (or, for the MNIST family, the four IDX files
        directly). Not used for ``digits``. For ``fashion-mnist`` the Debian package folder
        :data:`DEBIAN_FASHION_MNIST_DIR` is searched as well, and is the default.
    seed : int, default 0
        Seed of the validation (and, for ``digits``, test) split and of ``limit_train``.
    val_fraction : float, default 0.1
        Fraction of the official training set held out for validation, in (0, 1).
    limit_train : int, optional
        Keep only this many (seeded, random) training images, for quick experiments.

    Returns
    -------
    DataSplits

    Raises
    ------
    DatasetError
        Unknown name, missing or unreadable files, or invalid split parameters.
    """
    canonical = _canonical_name(name)
    seed = _check_seed(seed)
    val_fraction = _check_fraction(val_fraction)
    if limit_train is not None:
        if isinstance(limit_train, bool) or not isinstance(limit_train, (int, np.integer)) or limit_train < 1:
            raise DatasetError(f"limit_train must be a positive number of training images, not {limit_train!r}: "
                               "choose at least 1, or leave it unset to use the whole training split.")
        limit_train = int(limit_train)

    source = _locate(canonical, root)
    info, mean, std, tensors = _load_cached(canonical, source, seed, val_fraction, limit_train)
    xtr, ytr, xva, yva, xte, yte = tensors
    return DataSplits(info=info, train=TensorDataset(xtr, ytr), val=TensorDataset(xva, yva),
                      test=TensorDataset(xte, yte), mean=mean, std=std)


#: Default probe sizes: as large as keeps the app interactive. Activation-based fusion varies by
#: ±1–1.7 pp with the draw at 200 samples and ±0.35 at 1000+ (and neuron interpolation needs at least
#: the fan-in); conv maps at 32×32 cost more per sample, so CIFAR gets fewer.
PROBE_SIZES = {"digits": 1000, "mnist": 1000, "fashion-mnist": 1000, "cifar10": 500, "cifar100": 500}


def default_probe_size(dataset: str) -> int:
    return PROBE_SIZES.get(dataset, 1000)


def probe_examples(splits: DataSplits, size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared probe batch: ``size`` validation images drawn without replacement.

    Layer similarities (the cost matrix) and activation-based ground metrics compare the two networks
    on one common batch of inputs. It comes from the validation split, which neither network was
    trained on, so the comparison reflects how the networks generalise rather than what they memorised;
    a fixed ``seed`` makes every stage (and the app and the CLI) see the same batch.

    Parameters
    ----------
    splits : DataSplits
        Output of :func:`load_dataset`.
    size : int or None
        Number of images; if larger than the validation split, all of it is used. None: the
        dataset's default (:data:`PROBE_SIZES`).
    seed : int, default 0
        Seed of the draw.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        float32 images ``[min(size, len(val)), C, H, W]`` and their labels, copies (safe to modify).
    """
    if size is None:
        size = default_probe_size(splits.info.name)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise DatasetError(f"The probe size must be a whole number of images, not {size!r}: choose e.g. 200.")
    if size < 1:
        raise DatasetError(f"The probe set is empty (probe size {size}): choose a probe size of at least 1 "
                           "(the default is 1000).")
    x_val = splits.val.tensors[0]
    n = int(x_val.shape[0])
    if n == 0:
        raise DatasetError("The validation split is empty, so there is nothing to probe with: "
                           "use a larger val_fraction or more training data.")
    seed = _check_seed(seed)
    order = np.random.default_rng(seed).permutation(n)[: min(int(size), n)]
    index = torch.from_numpy(order)
    return x_val[index].clone(), splits.val.tensors[1][index].clone()


def probe_batch(splits: DataSplits, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """The probe images of :func:`probe_examples` (without their labels)."""
    return probe_examples(splits, size, seed)[0]


# --------------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------------

def _canonical_name(name: object) -> str:
    if isinstance(name, str):
        key = name.strip().lower().replace("_", "-")
        if key in _INFOS:
            return key
    raise DatasetError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DatasetError(f"The seed must be a whole number between 0 and 2**32 - 1, not {seed!r}: choose e.g. 0.")
    return int(seed)


def _check_fraction(val_fraction: object) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.floating)) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"val_fraction must be strictly between 0 and 1, not {val_fraction!r}: choose e.g. 0.1.")
    return float(val_fraction)


# --------------------------------------------------------------------------------------------------
# locating files (cheap; the result keys the cache, so edited files are re-read)
# --------------------------------------------------------------------------------------------------

def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _locate(name: str, root: str | os.PathLike[str] | None) -> tuple:
    """Find the files of dataset ``name``; return a hashable description (paths, sizes, mtimes)."""
    if name == "digits":
        return ("sklearn",)
    root_dir = None
    if root is not None:
        root_dir = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if name in _IDX_SUBDIR:
        return _locate_idx(name, root_dir)
    return _locate_cifar(name, root_dir)


def _search_folders(folders: list[str], names: tuple[str, ...],
                    suffixes: tuple[str, ...] = ("",)) -> tuple[str | None, dict[str, str], list[str]]:
    """Where a dataset's files are: ``(folder, {name: path}, missing names)``.

    The first folder holding every name wins (``missing`` empty); else the first holding some of them, so
    the error can say which are missing; else ``(None, {}, all names)``. A name may carry any of
    ``suffixes`` (the first that exists wins, e.g. plain before ``.gz``).
    """
    partial = None
    for folder in folders:
        found = {}
        for name in names:
            candidates = (os.path.join(folder, name + suffix) for suffix in suffixes)
            path = next((c for c in candidates if os.path.isfile(c)), None)
            if path is not None:
                found[name] = path
        missing = [name for name in names if name not in found]
        if not missing:
            return folder, found, []
        if found and partial is None:
            partial = (folder, found, missing)
    return partial or (None, {}, list(names))


def _locate_idx(name: str, root_dir: str | None) -> tuple:
    pretty = _IDX_PRETTY[name]
    files_text = ", ".join(_IDX_FILES[:-1]) + f" and {_IDX_FILES[-1]} (each plain or .gz)"
    apt_hint = " or run `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    if root_dir is None and name == "mnist":
        raise DatasetError(f"{pretty} is read from local files: pass a data root holding {files_text}, "
                           f"flat or in torchvision's MNIST/raw/ subfolder.")
    if root_dir is not None and not os.path.isdir(root_dir):
        raise DatasetError(f"The data root {quote_path(root_dir)} does not exist: pass a folder holding {files_text}, "
                           f"flat or in its {_IDX_SUBDIR[name]}/ subfolder{apt_hint}.")
    folders = []
    if root_dir is not None:
        folders += [root_dir, os.path.join(root_dir, _IDX_SUBDIR[name])]
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST_DIR)  # read at call time, so it can be redirected
    folder, found, missing = _search_folders(folders, _IDX_FILES, ("", ".gz"))
    if folder is not None and not missing:
        return ("idx",) + tuple(_file_key(found[base]) for base in _IDX_FILES)
    if folder is not None:
        raise DatasetError(f"The {pretty} files in {folder} are incomplete (missing {', '.join(missing)}): "
                           f"put all four of {files_text} there{apt_hint}.")
    searched = ", ".join(folders)
    raise DatasetError(f"No {pretty} files were found in {searched}: put {files_text} "
                       f"in one of these folders{apt_hint}.")


def _locate_cifar(name: str, root_dir: str | None) -> tuple:
    folder_name, train_files, test_file, _, meta_file, _, pretty, archive = _CIFAR_LAYOUT[name]
    needed = train_files + (test_file,)
    files_text = ", ".join(needed[:-1]) + f" and {needed[-1]}" if len(needed) > 1 else needed[0]
    howto = (f"extract the python version of {pretty} ({archive}) into the data root so that "
             f"{os.path.join('<root>', folder_name)} holds {files_text}")
    if root_dir is None:
        raise DatasetError(f"{pretty} is read from local files: pass a data root and {howto}.")
    if not os.path.isdir(root_dir):
        raise DatasetError(f"The data root {quote_path(root_dir)} does not exist: {howto}.")
    # torchvision's layout first; the batch folder itself is accepted too.
    folders = [os.path.join(root_dir, folder_name), root_dir]
    folder, found, missing = _search_folders(folders, needed)
    if folder is not None and not missing:
        meta_path = os.path.join(folder, meta_file)
        meta = _file_key(meta_path) if os.path.isfile(meta_path) else None
        return ("cifar",) + tuple(_file_key(found[f]) for f in needed) + (meta,)
    if folder is not None:
        raise DatasetError(f"The {pretty} files in {folder} are incomplete (missing {', '.join(missing)}): "
                           f"{howto}.")
    raise DatasetError(f"No {pretty} files were found in {folders[0]}: {howto}.")


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_file(path: str) -> bytes:
    """A dataset file's bytes: a regular file within :data:`~.validation.MAX_DATASET_FILE_BYTES`."""
    return read_regular_file(path, MAX_DATASET_FILE_BYTES, "dataset", DatasetError)


def _gunzip(raw: bytes, limit: int, path: str, head: bool = False) -> bytes:
    """Inflate gzip ``raw`` (one or more members) to at most ``limit`` bytes, never more.

    With ``head`` the first ``limit`` bytes are returned as they are; otherwise more than ``limit``
    bytes is an error, raised as soon as the ``limit + 1``-th byte appears (a 2 MB file that would
    inflate to 2 GB costs ``limit`` bytes, not 2 GB).
    """
    out, rest = bytearray(), raw
    try:
        while rest and len(out) <= limit:
            stream = zlib.decompressobj(wbits=31)
            out += stream.decompress(rest, limit + 1 - len(out))
            if not stream.eof and not stream.unconsumed_tail and not head:
                raise zlib.error("the compressed stream ends early")
            if not stream.eof:
                break
            rest = stream.unused_data
    except zlib.error as exc:
        raise DatasetError(f"Could not read {quote_path(path)} ({exc}): replace it with an intact copy of "
                           f"{_base_name(path)}.") from None
    if head:
        return bytes(out[:limit])
    if len(out) > limit:
        raise DatasetError(f"{quote_path(path)} inflates to more than its header declares ({megabytes(limit)}): replace "
                           f"it with an intact copy of {_base_name(path)}.")
    return bytes(out)


def _base_name(path: str) -> str:
    base = os.path.basename(path)
    return base[:-3] if base.endswith(".gz") else base


def _idx_header(head: bytes, path: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """The header size, dims and dtype an IDX file declares, its total size checked against the budget."""
    expected = _base_name(path)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DatasetError(f"{quote_path(path)} is not an IDX file (bad magic number): replace it with an intact copy "
                           f"of {expected}.")
    header = 4 + 4 * head[3]
    if len(head) < header:
        raise DatasetError(f"{quote_path(path)} is truncated (its header is incomplete): replace it with an intact copy "
                           f"of {expected}.")
    dims = struct.unpack(f">{head[3]}I", head[4:header])
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    size = header + math.prod(dims) * dtype.itemsize   # Python ints: no overflow
    if size > MAX_DATASET_FILE_BYTES:
        raise DatasetError(f"{quote_path(path)} declares {' × '.join(map(str, dims))} values ({megabytes(size)}), over the "
                           f"{megabytes(MAX_DATASET_FILE_BYTES)} limit for a dataset file: replace it with an intact "
                           f"copy of {expected}.")
    return header, dims, dtype


def _read_idx(path: str) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, a dtype code, the number of dims, big-endian uint32 dims, data.

    Gzipped files (judged by their magic, not their name) are inflated only as far as the header's
    declared size, which is checked against the budget first.
    """
    raw = _read_file(path)
    gzipped = raw[:2] == b"\x1f\x8b"
    header, dims, dtype = _idx_header(_gunzip(raw, 4 + 4 * 255, path, head=True) if gzipped else raw[:4 + 4 * 255],
                                      path)
    size = header + math.prod(dims) * dtype.itemsize
    if gzipped:
        raw = _gunzip(raw, size, path)
    if len(raw) != size:
        what = "truncated" if len(raw) < size else "longer than its header says"
        raise DatasetError(f"{quote_path(path)} is {what} ({len(raw)} bytes, expected {size}): replace it with an intact "
                           f"copy of {_base_name(path)}.")
    return np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)


def _read_idx_pair(images_path: str, labels_path: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DatasetError(f"{quote_path(images_path)} has NaN or infinite pixels: replace it with an intact copy of "
                           f"{_base_name(images_path)}.")
    if images.ndim != 3 or images.shape[1:] != (info.height, info.width):
        raise DatasetError(f"{quote_path(images_path)} holds images of shape {images.shape[1:]}, not "
                           f"{info.height}x{info.width}: replace it with the {_base_name(images_path)} "
                           f"file of {_IDX_PRETTY[info.name]}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{quote_path(labels_path)} has {labels.shape} labels for {images.shape[0]} images in "
                           f"{quote_path(images_path)}: use the labels file that belongs to these images.")
    _check_labels(labels, info, labels_path)
    return images[:, None, :, :], labels.astype(np.int64)


def _check_labels(labels: np.ndarray, info: DatasetInfo, path: str) -> None:
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise DatasetError(f"{quote_path(path)} has labels that are not whole numbers (NaN, infinite or fractional): "
                           f"replace it with an intact copy of the {info.name} file.")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise DatasetError(f"{quote_path(path)} has labels outside 0..{info.num_classes - 1}: replace it with an intact "
                           f"copy of the {info.name} file.")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes as ``_codecs.encode(text, "latin1")`` at pickle protocols < 3.
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise DatasetError(f"Refused to decode pickled text as {encoding!r}: only latin1 occurs in CIFAR files.")
    return codecs.encode(text, "latin1")


def _bytes_only(function):
    """``bytearray`` / numpy's ``_frombuffer`` restricted to data the pickle itself holds (``bytearray(10**12)``
    would allocate a terabyte from a few bytes of pickle)."""
    def guarded(data=b"", *args):
        if not isinstance(data, (bytes, bytearray)):
            raise DatasetError("Refused to load a pickle that asks for memory it does not hold; replace it with "
                               "the file from the official python version of the dataset.")
        return function(data, *args)
    return guarded


def _empty_array(reconstruct):
    """numpy's ``_reconstruct``, which pickles call with shape ``(0,)`` before ``__setstate__`` fills the array
    from the pickle's own bytes; any other shape would allocate memory the file never provides."""
    def guarded(subtype, shape, dtype):
        if not (isinstance(shape, tuple) and all(isinstance(n, int) for n in shape) and math.prod(shape) == 0):
            raise DatasetError("Refused to load a pickle that asks for memory it does not hold; replace it with "
                               "the file from the official python version of the dataset.")
        return reconstruct(subtype, shape, dtype)
    return guarded


def _safe_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name: what numpy needs to rebuild an array, and no more."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _empty_array(multiarray._reconstruct)
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _bytes_only(numeric._frombuffer)
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("_codecs", "encode")] = _latin1_encode
    for module in ("builtins", "__builtin__"):
        allowed[(module, "bytearray")] = _bytes_only(bytearray)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, lists, dicts and strings, and refuses everything else.

    Unpickling calls whatever global a pickle names; CIFAR batches only ever name numpy's array
    reconstruction helpers, so any other global means the file was not made by the CIFAR authors.
    """

    _allowed = None

    def find_class(self, module: str, name: str):  # noqa: D102 - see class docstring
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _safe_globals()
        obj = _RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise DatasetError(f"Refused to load {getattr(self, 'path', 'a pickle')}: it refers to "
                               f"{module}.{name}, which a CIFAR batch never contains; replace it with "
                               f"the file from the official python version of the dataset.")
        return obj

    def persistent_load(self, pid):  # noqa: D102
        raise DatasetError(f"Refused to load {getattr(self, 'path', 'a pickle')}: it uses persistent ids, "
                           "which a CIFAR batch never contains; replace it with the official file.")


def _load_pickle(path: str) -> dict:
    """Unpickle a CIFAR batch with :class:`_RestrictedUnpickler`; return it with str keys."""
    raw = _read_file(path)
    try:
        unpickler = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1")
        unpickler.path = quote_path(path)
        obj = unpickler.load()
    except DatasetError:
        raise
    except Exception as exc:  # corrupt pickles raise anything from EOFError to TypeError
        raise DatasetError(f"Could not read {quote_path(path)} ({type(exc).__name__}): replace it with an intact "
                           f"copy of {os.path.basename(path)}.") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{quote_path(path)} does not hold a CIFAR batch (a dict): replace it with an intact copy of "
                           f"{os.path.basename(path)}.")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_batch(path: str, label_key: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels is None:
        raise DatasetError(f"{quote_path(path)} is not a {info.name} batch (expected 'data' of shape [N, 3072] and "
                           f"'{label_key}'): replace it with an intact copy of {os.path.basename(path)}.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{quote_path(path)} has unreadable '{label_key}': replace it with an intact copy of "
                           f"{os.path.basename(path)}.") from None
    if labels.shape[0] != data.shape[0]:
        raise DatasetError(f"{quote_path(path)} has {labels.shape[0]} labels for {data.shape[0]} images: replace it "
                           f"with an intact copy of {os.path.basename(path)}.")
    _check_labels(labels, info, path)
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_class_names(meta_path: str | None, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Label names from the optional meta file; the built-in list when it is absent or unusable."""
    if meta_path is None:
        return default
    names = _load_pickle(meta_path).get(key)
    if not isinstance(names, (list, tuple)) or len(names) != len(default):
        return default
    out = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)
    return out if all(isinstance(n, str) for n in out) else default


# --------------------------------------------------------------------------------------------------
# splitting, normalising, caching
# --------------------------------------------------------------------------------------------------

def _split_off(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of indices into (kept, held out); stratified by label whenever that is possible."""
    from sklearn.model_selection import train_test_split

    n = int(y.shape[0])
    if n < 2:
        raise DatasetError(f"The training set has {n} image(s), too few to hold out a validation split: "
                           "use a dataset with at least 2 training images.")
    n_held = min(max(int(round(fraction * n)), 1), n - 1)
    _, counts = np.unique(y, return_counts=True)
    stratifiable = counts.min() >= 2 and min(n_held, n - n_held) >= counts.size
    kept, held = train_test_split(np.arange(n), test_size=n_held, random_state=seed,
                                  stratify=y if stratifiable else None)
    return np.sort(kept), np.sort(held)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x`` [N, C, H, W] in float64 (exact histograms for uint8 images)."""
    if x.dtype == np.uint8:
        values = np.arange(256, dtype=np.float64)
        mean, var = [], []
        for c in range(x.shape[1]):
            hist = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
            total = hist.sum()
            m = (hist @ values) / total
            mean.append(m)
            var.append(max((hist @ (values - m) ** 2) / total, 0.0))
        mean_a, std_a = np.array(mean), np.sqrt(np.array(var))
    else:
        mean_a = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std_a = x.std(axis=(0, 2, 3), dtype=np.float64)
    std_a = np.where(std_a > 0, std_a, 1.0)  # a constant channel is centred, not blown up
    return mean_a, std_a


def _normalised(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    out = x.astype(np.float32)
    out -= mean.astype(np.float32)[None, :, None, None]
    out /= std.astype(np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(out))


@functools.lru_cache(maxsize=2)
def _read_source(name: str, source: tuple):
    """Raw arrays of a dataset's files: (info, x_train, y_train, x_test, y_test), never modified.

    Cached apart from the splits so that another seed or ``limit_train`` does not re-read the files.
    """
    info = _INFOS[name]
    if source[0] == "idx":
        paths = [key[0] for key in source[1:]]
        xtr, ytr = _read_idx_pair(paths[0], paths[1], info)
        xte, yte = _read_idx_pair(paths[2], paths[3], info)
    else:
        _, train_files, _, label_key, _, names_key, _, _ = _CIFAR_LAYOUT[name]
        keys, meta = source[1:-1], source[-1]
        paths = [key[0] for key in keys]
        batches = [_read_cifar_batch(path, label_key, info) for path in paths]
        xtr = np.concatenate([b[0] for b in batches[:-1]])
        ytr = np.concatenate([b[1] for b in batches[:-1]])
        xte, yte = batches[-1]
        names = _cifar_class_names(meta[0] if meta else None, names_key, info.class_names)
        if names != info.class_names:
            info = DatasetInfo(info.name, info.channels, info.height, info.width, info.num_classes, names)
    if len(yte) == 0:
        raise DatasetError(f"The test split ({quote_path(paths[-1])}) holds no images, so no accuracy can be "
                           f"reported: replace it with an intact copy of {_base_name(paths[-1])}.")
    return info, xtr, ytr, xte, yte


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, source: tuple, seed: int, val_fraction: float, limit_train: int | None):
    """Read, split and normalise once per (dataset files, seed, val_fraction, limit_train)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        info = _INFOS["digits"]
        x_all = digits.images.astype(np.float32)[:, None, :, :]
        y_all = digits.target.astype(np.int64)
        rest, test_idx = _split_off(y_all, _DIGITS_TEST_FRACTION, seed)
        keep, val_local = _split_off(y_all[rest], _DIGITS_VAL_FRACTION_OF_REST, seed)
        train_idx, val_idx = rest[keep], rest[val_local]
        x_train_all, y_train_all = x_all, y_all
        x_test, y_test = x_all[test_idx], y_all[test_idx]
    else:
        info, x_train_all, y_train_all, x_test, y_test = _read_source(name, source)
        train_idx, val_idx = _split_off(y_train_all, val_fraction, seed)
    y_train_all = np.asarray(y_train_all, dtype=np.int64)

    x_train = x_train_all[train_idx]
    mean, std = _channel_stats(x_train)
    if limit_train is not None and limit_train < train_idx.size:
        chosen = np.sort(np.random.default_rng(seed).choice(train_idx.size, size=limit_train, replace=False))
        train_idx, x_train = train_idx[chosen], x_train[chosen]

    tensors = (
        _normalised(x_train, mean, std), torch.from_numpy(y_train_all[train_idx].copy()),
        _normalised(x_train_all[val_idx], mean, std), torch.from_numpy(y_train_all[val_idx].copy()),
        _normalised(x_test, mean, std), torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
    )
    return info, tuple(float(m) for m in mean), tuple(float(s) for s in std), tensors
