"""Budgets and checks for untrusted input: files, quoted strings and the numbers a run produces.

People load checkpoints and datasets they found somewhere, on a server shared by a class. A small
hostile file must never cost unbounded time or memory, hang the process, or run code; and every
refusal is a :class:`~.errors.FusionError` with one sentence saying what to do. This module holds
what the loaders share:

* the budgets (:data:`MAX_FILE_BYTES`, :data:`MAX_PARAMETERS`, ...), checked against the sizes a
  file *declares* before anything is read, inflated or allocated;
* :func:`read_regular_file` — the only way a path is read: a regular file within a size budget
  (never a FIFO, which blocks forever, nor ``/dev/zero``, which never ends, nor a directory);
* :func:`quote` — untrusted text (file names, keys, metadata) shortened and escaped for messages;
* :func:`check_finite_model` — a model with NaN or infinite weights is an error, never a result.
"""

from __future__ import annotations

import os
import stat

import torch
from torch import nn

from .errors import FusionError, NumericalError

#: Largest local file read (a checkpoint or one dataset file), and the most its records may inflate to.
MAX_FILE_BYTES = 4 * 2**30
#: Compressed records of a checkpoint may inflate to at most this many times the file's size (torch.save
#: stores its records uncompressed, so a plain file never comes near; a 2 MB file that inflates to 2 GB does).
MAX_INFLATION_RATIO = 4
#: Largest dataset file after decompression (an IDX file or a CIFAR batch).
MAX_DATASET_FILE_BYTES = 2 * 2**30
#: Largest safetensors JSON header (the tensor table and the metadata).
MAX_HEADER_BYTES = 16 * 2**20
#: Most tensors one checkpoint may hold.
MAX_TENSORS = 100_000
#: Most parameters of any model built (torchvision's VGG-19 with its 4096-4096 head has 143 million).
MAX_PARAMETERS = 2**28
#: Most alignable layers (plus poolings) of a model.
MAX_UNITS = 1000
#: Most values of one input sample (C·H·W), and of one feature map of one sample.
MAX_INPUT_VALUES = 2**22
MAX_ACTIVATION_VALUES = 2**28
#: Longest arch spec string.
MAX_SPEC_CHARS = 10_000

QUOTE_CHARS = 80
QUOTE_PATH_CHARS = 400


def megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def quote(text: object, limit: int = QUOTE_CHARS) -> str:
    """Untrusted text for a message: as it is when short and printable, else escaped and shortened.

    Escaping (``repr`` style) keeps control characters, newlines and bidi overrides from rewriting
    the message; shortening keeps a megabyte-long key from becoming a megabyte-long error.
    """
    text = str(text) if isinstance(text, str) else repr(text)
    if len(text) <= limit and text.isprintable():
        return text
    escaped = repr(text[: 4 * limit])[1:-1]
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def quote_path(path: object) -> str:
    """A path for a message: escaped like :func:`quote`, but kept whole up to :data:`QUOTE_PATH_CHARS`."""
    return quote(os.fspath(path) if isinstance(path, (str, os.PathLike)) else path, QUOTE_PATH_CHARS)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_stat(path: str | os.PathLike, what: str, error: type[FusionError]) -> os.stat_result:
    """``os.stat`` of a path that must name an existing regular file (links are followed)."""
    text = os.fspath(path)
    if isinstance(text, bytes) or "\x00" in text:
        raise error(f"The path {quote_path(text)} contains a NUL byte; give the path of a {what} file.")
    try:
        info = os.stat(text)
    except FileNotFoundError:
        raise error(f"{quote_path(text)} does not exist; check the path to the {what} file.") from None
    except OSError as exc:
        raise error(f"{quote_path(text)} cannot be read ({exc.strerror}); check the path and its permissions.") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{quote_path(text)} is {_kind(info.st_mode)}, not a file; give the path of a {what} file.")
    return info


def read_regular_file(path: str | os.PathLike, limit: int, what: str, error: type[FusionError]) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, refused before anything is read otherwise.

    The path is checked with ``stat`` first (a FIFO is never opened), then opened without blocking
    and checked again on the open descriptor, so a file swapped for a pipe in between is refused too.
    """
    info = regular_file_stat(path, what, error)
    name = quote_path(path)
    if info.st_size > limit:
        raise error(f"{name} is {megabytes(info.st_size)}, over the {megabytes(limit)} limit for a {what} file; "
                    "use a smaller file.")
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{name} cannot be read ({exc.strerror}); check the path and its permissions.") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{name} is not a regular file; give the path of a {what} file.")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:  # e.g. /proc/self/mem, which stat calls a regular file
            raise error(f"{name} cannot be read ({exc.strerror}); give the path of a {what} file.") from None
    if len(data) > limit:
        raise error(f"{name} grew past the {megabytes(limit)} limit for a {what} file while it was read; "
                    "use a smaller file.")
    return data


def nonfinite_tensor(model: nn.Module) -> str | None:
    """The name of the first floating tensor (parameter or buffer) with a NaN or infinite value, or None."""
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return key
    return None


def check_finite_model(*models: nn.Module | None, what: str = "The fused model") -> None:
    """Refuse a result with NaN or infinite weights (they would silently give NaN predictions).

    Weights that are finite in each parent can still overflow once transported, repaired or
    finetuned (parents with weights of 1e12, say); such a model is an error, never written out.
    """
    for model in models:
        if model is None:
            continue
        key = nonfinite_tensor(model)
        if key is not None:
            raise NumericalError(f"{what} came out with NaN or infinite values (first in {quote(key)}), so it was "
                                 "not kept; check that the parents' weights are of ordinary size, or try the exact "
                                 "solver or other fusion settings.")
