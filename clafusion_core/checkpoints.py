"""Checkpoints: safetensors export with metadata, safe ``.pt`` loading, and arch inference from keys.

The app and the CLI export ``.safetensors`` files whose metadata names the arch spec, dataset, class
count and input shape, so a file rebuilds its model on its own. Other people's ``.pt``/``.pth``
state_dicts load too: ``torch.load(..., weights_only=True)`` never runs pickled code, and
:func:`infer_arch` reads the architecture from the key names and weight shapes of the layouts people in
this field actually have (ours, torchvision's ResNet/VGG, ``nn.Sequential`` MLPs and the reference
OTFusion/CLAFusion ``fc1``/``fc2``/... MLPs). Every problem a user can cause — a corrupt, pickled,
too-large, NaN or mismatched file — is a :class:`~.errors.CheckpointError` (or an
:class:`~.errors.ArchError` for an unknown layout) whose message says what to do.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
from collections import Counter
from dataclasses import dataclass, field

import safetensors.torch
import torch
from torch import nn

from . import torchfile
from .errors import ArchError, CheckpointError
from .families import FAMILIES, Family, get_family
from .families.keys import unknown_layout
from .models import ArchSpec, build_model, parse_arch
from .torchfile import is_dense, pickled_objects, unreadable
from .validation import MAX_FILE_BYTES, MAX_HEADER_BYTES, MAX_TENSORS, quote, read_regular_file

MAX_UPLOAD_BYTES = 200 * 1024 * 1024
FORMAT = "clafusion-explorer/1"
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
RESERVED_METADATA = ("format", "arch", "dataset", "num_classes", "input_shape")


@dataclass
class CheckpointInfo:
    """What a checkpoint said about itself (or what was inferred from it), for display and reuse.

    ``dataset`` is the dataset the file names in its metadata (None when it does not say);
    ``source`` is ``"safetensors"`` or ``"pt"``; ``extra`` holds the file's other metadata as strings
    (for a ``.pt`` dict, its plain scalar entries such as ``epoch`` or ``test_accuracy``).
    """

    arch: str
    dataset: str | None
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str
    extra: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ saving

def _metadata(model: nn.Module, dataset: str, extra: dict[str, str] | None) -> dict[str, str]:
    """The metadata strings that let a file rebuild its model without any other input."""
    clash = sorted(set(extra or {}) & set(RESERVED_METADATA))
    if clash:
        raise ValueError(f"extra metadata may not override the reserved keys {clash}")
    meta = {k: str(v) for k, v in (extra or {}).items()}
    info = model.info
    meta.update(format=FORMAT, arch=str(info.spec), dataset=str(dataset), num_classes=str(info.num_classes),
                input_shape=",".join(str(v) for v in info.input_shape))
    return meta


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of the state_dict (safetensors refuses views of shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _sorted_header(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys, so one model always exports to the same bytes.

    safetensors writes its metadata in hash-map order, which changes between calls; the tensor data
    and its offsets are untouched, and the header stays padded to 8 bytes as the format asks.
    """
    (size,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + size:]


def checkpoint_bytes(model: nn.Module, *, dataset: str, extra: dict[str, str] | None = None) -> bytes:
    """The model as ``.safetensors`` bytes with our metadata (what ``st.download_button`` serves)."""
    return _sorted_header(safetensors.torch.save(_tensors(model), metadata=_metadata(model, dataset, extra)))


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, dataset: str,
                    extra: dict[str, str] | None = None) -> None:
    """Write the model to ``path`` as ``.safetensors`` with our metadata (same bytes as :func:`checkpoint_bytes`)."""
    data = checkpoint_bytes(model, dataset=dataset, extra=extra)
    with open(path, "wb") as handle:
        handle.write(data)


# ----------------------------------------------------------------------------------------- reading

def _read_source(source: str | os.PathLike | bytes, name: str) -> tuple[bytes, str, int]:
    """The file's bytes, the name to use in messages and the byte budget its tensor data must fit.

    In-memory bytes (uploads) are held to :data:`MAX_UPLOAD_BYTES`, like Streamlit's own upload limit,
    and may not inflate beyond it either; local files to :data:`~.validation.MAX_FILE_BYTES`. A path
    must name a regular file (never a pipe, a device or a folder).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), quote(name)
        if len(data) > MAX_UPLOAD_BYTES:
            limit = MAX_UPLOAD_BYTES / 2**20
            raise CheckpointError(f"{name} is {len(data) / 2**20:.1f} MB, over the {limit:.0f} MB upload limit; "
                                  "upload a smaller checkpoint or load it from a local path with the CLI.")
        return data, name, MAX_UPLOAD_BYTES
    path = os.fspath(source)
    if name == "checkpoint":
        name = os.path.basename(path) or path
    return read_regular_file(path, MAX_FILE_BYTES, "checkpoint", CheckpointError), quote(name), MAX_FILE_BYTES


def _safetensors_header(data: bytes) -> dict | None:
    """The parsed JSON header if ``data`` is laid out as safetensors (8-byte length + JSON), else None.

    A header over :data:`~.validation.MAX_HEADER_BYTES` or nested too deeply for the JSON parser is
    not one safetensors writes.
    """
    if len(data) < 10:
        return None
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(len(data) - 8, MAX_HEADER_BYTES) or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _read_safetensors(data: bytes, header: dict, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file (whose library checks every offset against the data)."""
    if len(header) > MAX_TENSORS + 1:
        raise CheckpointError(f"{name} holds {len(header) - 1:,} tensors, over the limit of {MAX_TENSORS:,}; "
                              "load a smaller checkpoint.")
    try:
        tensors = safetensors.torch.load(data)
    except Exception:  # safetensors raises its own SafetensorError for every kind of damage
        raise unreadable(name) from None
    meta = header.get("__metadata__") or {}
    return dict(tensors), {str(k): str(v) for k, v in meta.items()}


def _read_torch(data: bytes, name: str, limit: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A ``torch.save`` file: its declared sizes checked first (:func:`.torchfile.scan`), then read with
    ``weights_only=True`` (tensors and plain containers only)."""
    if not data:
        raise unreadable(name)
    torchfile.scan(data, name, limit)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function reference, e.g. a whole nn.Module
            raise pickled_objects(name) from None
        raise unreadable(name) from None
    except Exception:
        raise unreadable(name) from None
    return _unwrap(obj, name)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _scalar_text(value: object) -> str | None:
    """A wrapper entry as informational text: plain scalars only, shortened (an int of a million digits is skipped)."""
    if isinstance(value, int) and value.bit_length() > 64 or not isinstance(value, (str, int, float, bool)):
        return None
    return quote(value if isinstance(value, str) else repr(value), 200)


def _unwrap(obj: object, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict inside a loaded object, plus the wrapper's plain scalar entries as metadata.

    Training scripts often save ``{"model_state_dict": sd, "epoch": 10, ...}``; the other entries are
    kept as informational strings and never used to build the model.
    """
    if _is_state_dict(obj):
        return dict(obj), {}
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                extra = {quote(k, 40): text for k, v in obj.items()
                         if k != key and isinstance(k, str) and (text := _scalar_text(v)) is not None}
                return dict(obj[key]), extra
    raise CheckpointError(f"{name} holds no state_dict of tensors (nor one under {', '.join(WRAPPER_KEYS)}); "
                          "save model.state_dict() instead.")


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that ``nn.DataParallel``/DDP add to every key."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _tensor_kind(value: torch.Tensor) -> str | None:
    """What makes a loaded tensor unusable as a weight here (None for a plain dense CPU tensor)."""
    if value.is_meta:
        return "meta (data-free)"
    if value.layout != torch.strided:
        return "sparse"
    if value.is_quantized:
        return "quantised"
    if value.is_complex():
        return "complex"
    if value.device.type != "cpu":
        return value.device.type
    return None


def _checked_tensor(key: object, value: torch.Tensor, name: str) -> torch.Tensor:
    """One entry of a state_dict, refused or made a plain dense float32 tensor (counters int64).

    Floating dtypes (float16, bfloat16, float64, float8) are converted *before* the finiteness check,
    so float64 values beyond float32's range (1e300) are caught as the infinities they become.
    """
    if not isinstance(key, str):
        raise CheckpointError(f"{name} has a key {quote(key)} that is not text, which a state_dict never has; "
                              "save model.state_dict() instead.")
    label = quote(key)
    kind = _tensor_kind(value)
    if kind is not None:
        raise CheckpointError(f"{name} stores {label} as a {kind} tensor, which cannot run in a model here; save a "
                              "state_dict of plain dense tensors (model.state_dict()).")
    if value.numel() and (not is_dense(tuple(value.shape), value.stride()) or
                          (value.storage_offset() + value.numel()) * value.element_size()
                          > value.untyped_storage().nbytes()):
        raise CheckpointError(f"{name} stores {label} as a view whose strides repeat or skip elements (a zero-stride "
                              "or overlapping view); save model.state_dict() with plain tensors.")
    if value.is_floating_point():
        value = value.to(torch.float32).contiguous()
        if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():  # a finite sum proves it finite
            raise CheckpointError(f"{name} contains NaN or infinite weights, or weights beyond float32's range "
                                  f"(first in {label}); retrain or export it again.")
        if key.endswith("running_var") and bool((value < 0).any()):
            raise CheckpointError(f"{name} has negative BatchNorm variances in {label}, which no trained model has; "
                                  "retrain or export it again.")
        return value
    if key.endswith("num_batches_tracked") and value.numel() == 1 and value.dtype != torch.bool:
        return value.to(torch.int64).reshape(())
    raise CheckpointError(f"{name} stores {label} as {str(value.dtype).removeprefix('torch.')} values, but weights "
                          "must be floating point; export the model with float32 weights.")


def _checked_tensors(state_dict: dict, name: str) -> dict[str, torch.Tensor]:
    """Every entry checked by :func:`_checked_tensor`; tensors sharing memory get their own copy, so that
    training or fusing one never changes another."""
    if len(state_dict) > MAX_TENSORS:
        raise CheckpointError(f"{name} holds {len(state_dict):,} tensors, over the limit of {MAX_TENSORS:,}; "
                              "load a smaller checkpoint.")
    checked = {key: _checked_tensor(key, value, name) for key, value in state_dict.items()}
    shared = Counter(v.untyped_storage().data_ptr() for v in checked.values() if v.numel())
    return {k: v.clone() if v.numel() and shared[v.untyped_storage().data_ptr()] > 1 else v for k, v in checked.items()}


# ----------------------------------------------------------------------------------- arch inference

def infer_arch(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, str]]:
    """The canonical arch spec of a state_dict and the key renames that map it onto our layout.

    Keys not in the renames keep their name. Each supported layout is recognised by a signature key:
    ours (``hidden.0``/``features.N.conv``/``layer1.0.conv1``), torchvision's VGG (``features.N.weight``),
    ``nn.Sequential`` MLPs (``0.weight`` or ``1.weight``) and ``fc1.weight`` MLPs. Widths come from the
    weight shapes. A ``module.`` prefix on every key is renamed away too.
    """
    stripped = _strip_prefix(state_dict)
    prefix = {k: s for k, s in zip(state_dict, stripped)} if stripped is not state_dict else {}
    try:
        spec, renames = _dispatch({k: v.shape for k, v in stripped.items()})
    except (KeyError, IndexError, ValueError) as exc:  # a layout that starts like a known one, then breaks
        raise unknown_layout(f", where {exc} is missing or malformed,") from None
    return spec, {old: renames.get(new, new) for old, new in prefix.items()} if prefix else renames


def _dispatch(shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]]:
    """Ask the families in turn whether the keys are in one of their layouts."""
    for candidate in FAMILIES.values():
        found = candidate.infer(shapes)
        if found is not None:
            return found
    keys = list(shapes)
    raise unknown_layout(f", starting with '{quote(keys[0])}'," if keys else ", none at all,")


# ----------------------------------------------------------------------------------------- loading

def _fold_conv_bias(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold a conv bias that feeds a BatchNorm into the BN's running mean (our BN convs have no bias).

    ``BN(conv(x) + b)`` equals ``BN'(conv(x))`` with ``running_mean' = running_mean - b``; in training
    mode the batch mean absorbs ``b`` anyway, so dropping it loses nothing (torchvision's ``vgg*_bn``).
    """
    out = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(".conv.bias")]:
        mean_key = key[: -len("conv.bias")] + "bn.running_mean"
        if mean_key in out:
            bias, mean = out.pop(key), out[mean_key]
            if bias.shape != mean.shape:
                raise CheckpointError(f"The conv bias {quote(key)} has shape {tuple(bias.shape)} but its BatchNorm "
                                      f"has {tuple(mean.shape)}; pass the right --arch / choose the right "
                                      "architecture.")
            out[mean_key] = mean - bias
    return out


def _size_of(state_dict: dict[str, torch.Tensor], key: str, rank: int, axis: int, name: str) -> int | None:
    """``state_dict[key].shape[axis]`` of a weight that must have ``rank`` dimensions (None if absent)."""
    value = state_dict.get(key)
    if value is None:
        return None
    if value.dim() != rank:
        raise CheckpointError(f"{name}'s weight {quote(key)} has shape {tuple(value.shape)}, but a "
                              f"{'Linear' if rank == 2 else 'conv'} weight is {rank}-D; pass the right --arch / "
                              "choose the right architecture.")
    return int(value.shape[axis])


def _first_layer_inputs(family: Family, state_dict: dict[str, torch.Tensor], name: str) -> int | None:
    """The first layer's input size: MLP in_features, CNN in_channels (None if the key is missing)."""
    key = family.first_weight(list(state_dict))
    return _size_of(state_dict, key, 4 if family.is_conv else 2, 1, name) if key else None


def _head_outputs(family: Family, state_dict: dict[str, torch.Tensor], name: str) -> int | None:
    return _size_of(state_dict, family.head_weight, 2, 0, name)


def _metadata_int(text: str | None) -> int | None:
    """A whole number written in ASCII digits (``str.isdigit`` also accepts ``'²'``, which ``int`` refuses)."""
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) else None


def _parse_shape(text: str | None) -> tuple[int, int, int] | None:
    """``"1,8,8"`` -> ``(1, 8, 8)``; None when absent or malformed (then the shape is found otherwise)."""
    parts = [_metadata_int(p) for p in (text or "").split(",")]
    if len(parts) != 3 or None in parts:
        return None
    c, h, w = parts
    return (c, h, w)


def _guess_input_shape(family: Family, inputs: int | None, name: str) -> tuple[int, int, int]:
    """The input shape the first layer implies (an MLP's square in_features: 1×s×s); CNN files do not say
    their image size."""
    shape = family.guess_input_shape(inputs) if inputs else None
    if shape is not None:
        return shape
    if not family.is_conv:
        raise CheckpointError(f"{name} takes {inputs} input values, which is not a square grayscale image; "
                              "choose the dataset it was trained on.")
    raise CheckpointError(f"{name} does not record the image size it was trained on; choose the dataset it was "
                          "trained on.")


def _check_shapes(family: Family, state_dict: dict[str, torch.Tensor], input_shape: tuple[int, int, int],
                  num_classes: int, dataset: str, name: str) -> None:
    """Refuse a checkpoint whose first layer or head does not fit the chosen dataset."""
    fix = f"load a checkpoint trained on {dataset} or choose the matching dataset."
    outputs = _head_outputs(family, state_dict, name)
    if outputs is not None and outputs != num_classes:
        raise CheckpointError(f"{name} predicts {outputs} classes but {dataset} has {num_classes}; {fix}")
    inputs = _first_layer_inputs(family, state_dict, name)
    if inputs is None or inputs == family.input_width(input_shape):
        return
    c, h, w = input_shape
    if family.is_conv:
        raise CheckpointError(f"{name} takes {inputs}-channel images but {dataset} images have {c} channels; {fix}")
    raise CheckpointError(f"{name} takes {inputs} input values but {dataset} images are {c}×{h}×{w} = "
                          f"{c * h * w}; {fix}")


def _check_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Name the first missing, unexpected or mis-shaped key (clearer than load_state_dict's list)."""
    expected = model.state_dict()
    fix = "pass the right --arch / choose the right architecture."
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise CheckpointError(f"{name} does not fit {model.spec}: it lacks {missing[0]!r}; {fix}")
    if unexpected:
        raise CheckpointError(f"{name} does not fit {model.spec}: it has an unexpected '{quote(unexpected[0])}'; {fix}")
    for key in expected:
        value = state_dict.get(key)
        if value is not None and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{name} does not fit {model.spec}: {key!r} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(expected[key].shape)}; {fix}")


def _build_loaded(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int,
                  state_dict: dict[str, torch.Tensor], name: str) -> nn.Module:
    """Build the model on the meta device and adopt the checkpoint's tensors (no wasted random init).

    Falls back to an ordinary build if any tensor were left on the meta device.
    """
    tensors = state_dict
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes)
    _check_fits(model, tensors, name)
    model.load_state_dict(dict(tensors), strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = build_model(spec, input_shape, num_classes)
        model.load_state_dict(tensors, strict=True)
    return model.float().eval()


@torch.no_grad()
def _check_runs(model: nn.Module, name: str) -> None:
    """One forward pass on a seeded standard-normal sample (the scale of normalised data): the model must
    run and give finite logits, or the file is refused before it can replace a working model."""
    sample = torch.randn((1, *model.input_shape), generator=torch.Generator().manual_seed(0))
    try:
        logits = model(sample)
    except Exception as exc:  # noqa: BLE001 - whatever a broken model raises, the file is at fault
        raise CheckpointError(f"{name} loads but cannot run ({type(exc).__name__}); export it again.") from None
    if tuple(logits.shape) != (1, model.num_classes) or not torch.isfinite(logits).all():
        raise CheckpointError(f"{name} gives NaN or infinite outputs on a sample input (its weights are too large or "
                              "inconsistent); retrain or export it again.")


def _read(data: bytes, name: str, limit: int) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """State_dict, metadata and source kind of a file's bytes (safetensors tried first)."""
    header = _safetensors_header(data)
    if header is not None:
        state_dict, meta = _read_safetensors(data, header, name)
        return state_dict, meta, "safetensors"
    state_dict, extra = _read_torch(data, name, limit)
    return state_dict, extra, "pt"


def _resolve_arch(arch: str | None, meta: dict[str, str],
                  state_dict: dict[str, torch.Tensor]) -> tuple[ArchSpec, dict[str, str]]:
    """The spec (caller's, else the file's metadata, else inferred) and the renames to our layout."""
    try:
        inferred, renames = infer_arch(state_dict)
    except ArchError:
        if arch is None and "arch" not in meta:
            raise
        inferred, renames = None, {}
    return parse_arch(arch or meta.get("arch") or inferred), renames  # type: ignore[arg-type]


def _dataset_defaults(dataset: str | None) -> tuple[tuple[int, int, int] | None, int | None]:
    """Input shape and classes of a named dataset (imported lazily: data.py pulls in the data stack)."""
    if dataset is None:
        return None, None
    from .data import dataset_info

    info = dataset_info(dataset)
    return info.input_shape, info.num_classes


def _target(spec: ArchSpec, state_dict: dict[str, torch.Tensor], meta: dict[str, str],
            input_shape: tuple[int, int, int] | None, num_classes: int | None, dataset: str | None,
            name: str) -> tuple[tuple[int, int, int], int]:
    """Input shape and class count to build for: the caller's, the dataset's, the file's, then the weights'.

    Whatever the caller chose is checked against the weights, so a mismatch is reported in terms of
    the dataset rather than as a shape error deep inside ``load_state_dict``.
    """
    family = get_family(spec.family)
    ds_shape, ds_classes = _dataset_defaults(dataset if input_shape is None or num_classes is None else None)
    shape = input_shape or ds_shape or _parse_shape(meta.get("input_shape")) \
        or _guess_input_shape(family, _first_layer_inputs(family, state_dict, name), name)
    meta_classes = _metadata_int(meta.get("num_classes"))
    classes = num_classes or ds_classes or meta_classes or _head_outputs(family, state_dict, name)
    if classes is None:
        raise CheckpointError(f"{name} has no classifier head to count its classes; choose the dataset it was "
                              "trained on.")
    label = quote(dataset or meta.get("dataset") or "the chosen dataset")
    _check_shapes(family, state_dict, tuple(shape), classes, label, name)
    return tuple(int(v) for v in shape), int(classes)  # type: ignore[return-value]


def load_checkpoint(source: str | os.PathLike | bytes, *, arch: str | None = None,
                    input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None,
                    dataset: str | None = None, name: str = "checkpoint") -> tuple[nn.Module, CheckpointInfo]:
    """Load a ``.safetensors``/``.pt``/``.pth`` checkpoint into a model of ours, validated against the dataset.

    The arch is the caller's, else the file's metadata, else inferred from the keys. ``input_shape``,
    ``num_classes`` and ``dataset`` are what the user chose; they default to the named dataset's, then
    to the file's metadata, then to what the weights say, and the weights must fit them. The model comes
    back in eval mode, float32, on the CPU, carrying ``spec``, ``input_shape`` and ``num_classes``.
    """
    data, name, limit = _read_source(source, name)
    state_dict, strings, kind = _read(data, name, limit)
    del data
    meta = strings if kind == "safetensors" else {}  # a .pt wrapper's entries are informational only
    state_dict = _strip_prefix(_checked_tensors(state_dict, name))
    try:
        spec, renames = _resolve_arch(arch, meta, state_dict)
    except ArchError as exc:
        raise ArchError(str(exc).replace("The checkpoint", name, 1)) from None
    state_dict = _fold_conv_bias({renames.get(k, k): v for k, v in state_dict.items()})
    shape, classes = _target(spec, state_dict, meta, input_shape, num_classes, dataset, name)
    model = _build_loaded(spec, shape, classes, state_dict, name)
    _check_runs(model, name)
    extra = {k: v for k, v in strings.items() if kind == "pt" or k not in RESERVED_METADATA}
    info = CheckpointInfo(arch=str(spec), dataset=meta.get("dataset"), num_classes=classes,
                          input_shape=shape, source=kind, extra=extra)
    return model, info
