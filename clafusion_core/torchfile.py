"""What a ``torch.save`` file declares, read without running its code or allocating its tensors.

``torch.load(..., weights_only=True)`` never runs pickled code, but it trusts the sizes a file
declares: a zip record deflated from 2 MB to 2 GB is inflated in full, a legacy-format storage is
allocated at its declared size before its bytes are read, and a tensor may be a zero-stride view that
describes a terabyte in four bytes. :func:`scan` reads only the zip directory and the pickle, through
an unpickler whose every global is an inert stand-in, and checks what the file declares — the records'
inflated sizes, each storage's dtype and element count, each tensor's offset, shape and strides —
before the loader hands the bytes to ``torch.load``:

* the records (zip) or storages (legacy format) fit the byte budget and the bytes the file holds, and
  compressed records inflate to at most :data:`~.validation.MAX_INFLATION_RATIO` times the file;
* every tensor is a plain dense tensor inside its storage: its elements, ordered by stride, are laid
  out with strides ``1, n₁, n₁n₂, …`` (a transposed copy is fine; a zero stride, an overlap or a view
  that skips elements is not);
* only dense tensors of a known dtype are built: sparse, quantised, meta, nested and subclassed
  tensors are refused by name, and any other global (a class, a function) as "pickled Python objects".
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field

import torch

from .errors import CheckpointError
from .validation import MAX_INFLATION_RATIO, MAX_TENSORS, megabytes

#: Largest pickle part of a checkpoint (about 150 bytes per tensor in a ``torch.save`` state_dict).
MAX_PICKLE_BYTES = 16 * 2**20
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C   # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL_VERSION = 1001
MAX_DIMS = 16


def unreadable(name: str) -> CheckpointError:
    return CheckpointError(f"{name} is not a readable safetensors or PyTorch checkpoint (it may be truncated); "
                           "export it again.")


def pickled_objects(name: str) -> CheckpointError:
    return CheckpointError(f"{name} holds pickled Python objects (such as a whole model), which are never "
                           "loaded because they can run code; save model.state_dict() instead.")


class _Malformed(Exception):
    """The pickle is not one ``torch.save`` writes (reported as an unreadable file)."""


class _Unsupported(Exception):
    """A tensor kind that cannot run in our models (sparse, quantised, meta, ...)."""


class _Forbidden(Exception):
    """A global that is not a tensor rebuild function: a class or function reference."""


class _TooMany(Exception):
    """More tensors than :data:`~.validation.MAX_TENSORS`."""


@dataclass(frozen=True)
class Storage:
    key: str
    dtype: torch.dtype
    numel: int          # elements of ``dtype``

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)


@dataclass(frozen=True)
class Tensor:
    storage: Storage
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class Declared:
    """Everything a file declares: its storages by key, its tensors, and its inflated size in bytes."""

    storages: dict[str, Storage] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    inflated_bytes: int = 0


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@functools.cache
def _dtypes() -> dict[str, torch.dtype]:
    return {name: value for name in dir(torch) if isinstance(value := getattr(torch, name), torch.dtype)}


@functools.cache
def _storage_types() -> dict[str, torch.dtype]:
    """``FloatStorage`` → float32, ... (the legacy typed-storage classes ``torch.save`` names)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TypedStorage is deprecated": we only read the classes' dtypes
        for name in dir(torch):
            value = getattr(torch, name)
            if name.endswith("Storage") and isinstance(value, type) and issubclass(value, torch.storage._LegacyStorage):
                out[name] = value.dtype
    return out


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _ints(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or len(values) > MAX_DIMS or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise _Malformed(what)
    return values


def _latin1(text: object, encoding: str = "latin1") -> bytes:
    """``_codecs.encode``, which protocol-2 pickles use to write bytes; latin1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Malformed("encode")
    return text.encode("latin1")


class _Scanner(pickle.Unpickler):
    """An unpickler for ``torch.save`` pickles that builds records of the tensors instead of tensors."""

    def __init__(self, file, declared: Declared):
        super().__init__(file, encoding="utf-8")
        self.declared = declared

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return self._tensor_v3
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        if module in ("torch", "torch.storage") and name == "UntypedStorage":
            return _StorageType(torch.uint8)
        if module == "torch" and name in _storage_types():
            return _StorageType(_storage_types()[name])
        if module == "torch" and name in _dtypes():
            return _dtypes()[name]
        if (module, name) == ("torch", "Size"):
            return lambda dims=(): _ints(tuple(dims) if isinstance(dims, (tuple, list)) else None, "size")
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if module == "torch._utils" and name.startswith("_rebuild_") or (module, name) == (
                "torch._tensor", "_rebuild_from_type_v2"):
            kind = next((k for k in ("sparse", "qtensor", "meta", "nested") if k in name), "special")
            raise _Unsupported({"qtensor": "quantised"}.get(kind, kind))
        raise _Forbidden(f"{module}.{name}")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise _Malformed("persistent id")
        storage_type, key, location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(location, str) \
                or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0 or (len(pid) == 6 and pid[5] is not None):
            raise _Malformed("storage")
        storage = Storage(key, storage_type.dtype, numel)
        known = self.declared.storages.setdefault(key, storage)
        if known != storage:
            raise _Malformed("storage declared twice")
        return storage

    def _tensor(self, storage, offset, shape, stride, dtype) -> Tensor:
        if not isinstance(storage, Storage) or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise _Malformed("tensor")
        tensor = Tensor(storage, dtype, offset, _ints(shape, "shape"), _ints(stride, "stride"))
        if len(tensor.shape) != len(tensor.stride):
            raise _Malformed("tensor")
        self.declared.tensors.append(tensor)
        if len(self.declared.tensors) > MAX_TENSORS:
            raise _TooMany()
        return tensor

    def _tensor_v2(self, storage, offset, shape, stride, requires_grad=False, hooks=None, metadata=None):
        return self._tensor(storage, offset, shape, stride, getattr(storage, "dtype", None))

    def _tensor_v3(self, storage, offset, shape, stride, requires_grad, hooks, dtype, metadata=None):
        if not isinstance(dtype, torch.dtype) or getattr(storage, "dtype", None) != torch.uint8:
            raise _Malformed("tensor")
        return self._tensor(storage, offset, shape, stride, dtype)


def is_dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a strided layout covers exactly ``numel`` consecutive elements, each once.

    Ordered by stride, the dimensions longer than 1 must have strides ``1, n₁, n₁n₂, …``: a permuted
    contiguous tensor passes; a zero stride (repeats), an overlap or a gap does not. An empty tensor
    addresses nothing, so it is dense.
    """
    if 0 in shape:
        return True
    expected = 1
    for size, step in sorted(((s, t) for s, t in zip(shape, stride) if s > 1), key=lambda st: st[1]):
        if step != expected:
            return False
        expected *= size
    return True


def _check_tensors(declared: Declared, name: str) -> None:
    for tensor in declared.tensors:
        numel = math.prod(tensor.shape)
        if numel == 0:
            continue
        itemsize = _itemsize(tensor.dtype)
        last = tensor.offset + sum((size - 1) * step for size, step in zip(tensor.shape, tensor.stride))
        if (last + 1) * itemsize > tensor.storage.nbytes:
            raise unreadable(name)
        if not is_dense(tensor.shape, tensor.stride):
            raise CheckpointError(f"{name} holds a tensor whose strides repeat or skip elements (a zero-stride or "
                                  "overlapping view), which a saved state_dict never has; save model.state_dict() "
                                  "with plain tensors.")


def _unpickle(file, declared: Declared, name: str):
    try:
        return _Scanner(file, declared).load()
    except _Forbidden:
        raise pickled_objects(name) from None
    except _TooMany:
        raise CheckpointError(f"{name} holds more than {MAX_TENSORS:,} tensors; load a smaller checkpoint.") from None
    except _Unsupported as exc:
        raise CheckpointError(f"{name} holds a {exc} tensor, which cannot run in a model here; save a state_dict "
                              "of plain dense tensors (model.state_dict()).") from None
    except Exception:  # every kind of damage: EOF, bad opcodes, wrong argument types, RecursionError, ...
        raise unreadable(name) from None


def _over_budget(name: str, size: int, limit: int) -> CheckpointError:
    return CheckpointError(f"{name} declares {megabytes(size)} of tensor data, over the {megabytes(limit)} limit; "
                           "load a smaller checkpoint.")


def _scan_zip(data: bytes, name: str, limit: int) -> Declared:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except Exception:
        raise unreadable(name) from None
    names = [info.filename for info in infos]
    if len(infos) > MAX_TENSORS + 16:
        raise CheckpointError(f"{name} holds more than {MAX_TENSORS:,} tensors; load a smaller checkpoint.")
    if not infos or len(set(names)) != len(names) or "/" not in names[0]:
        raise unreadable(name)
    declared = Declared(inflated_bytes=sum(info.file_size for info in infos))
    if declared.inflated_bytes > limit:
        raise _over_budget(name, declared.inflated_bytes, limit)
    if declared.inflated_bytes > MAX_INFLATION_RATIO * len(data) + 2**20:
        raise CheckpointError(f"{name} is {megabytes(len(data))} but its compressed records would inflate to "
                              f"{megabytes(declared.inflated_bytes)}, more than {MAX_INFLATION_RATIO}× its size; "
                              "save it again with torch.save, which does not compress.")
    prefix = names[0].split("/", 1)[0] + "/"
    sizes = dict(zip(names, (info.file_size for info in infos)))
    pickle_name = prefix + "data.pkl"
    if sizes.get(pickle_name, MAX_PICKLE_BYTES + 1) > MAX_PICKLE_BYTES:
        raise unreadable(name)
    try:
        raw = archive.read(pickle_name)
    except Exception:
        raise unreadable(name) from None
    _unpickle(io.BytesIO(raw), declared, name)
    for storage in declared.storages.values():
        if sizes.get(f"{prefix}data/{storage.key}", -1) < storage.nbytes:
            raise unreadable(name)
    return declared


def _scan_legacy(data: bytes, name: str, limit: int) -> Declared:
    """The pre-1.6 format: pickles of the magic number, protocol, system info, the object and the storage
    keys, then each storage's element count (8 bytes) and bytes."""
    declared = Declared()
    file = io.BytesIO(data[:MAX_PICKLE_BYTES])
    if _unpickle(file, declared, name) != LEGACY_MAGIC_NUMBER or \
            _unpickle(file, declared, name) != LEGACY_PROTOCOL_VERSION or \
            not isinstance(_unpickle(file, declared, name), dict):
        raise unreadable(name)
    _unpickle(file, declared, name)
    keys = _unpickle(file, declared, name)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared.storages):
        raise unreadable(name)
    declared.inflated_bytes = sum(s.nbytes for s in declared.storages.values())
    if declared.inflated_bytes > limit:
        raise _over_budget(name, declared.inflated_bytes, limit)
    if declared.inflated_bytes + 8 * len(keys) > len(data) - file.tell():
        raise unreadable(name)
    return declared


def scan(data: bytes, name: str, limit: int) -> Declared:
    """Check what a ``torch.save`` file declares against ``limit`` bytes; raise a CheckpointError if it fails.

    Nothing of the file is run, inflated or allocated beyond its pickle (at most
    :data:`MAX_PICKLE_BYTES`); torch.load may then read it knowing every allocation it will make.
    """
    declared = _scan_zip(data, name, limit) if data[:4] == b"PK\x03\x04" else _scan_legacy(data, name, limit)
    _check_tensors(declared, name)
    return declared
