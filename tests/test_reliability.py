"""Hostile files, resource limits, shared models and numerical faults: each one a clear FusionError.

Every fault case of the reliability issue has a test here; tests/test_fuzz.py throws random mutations
of the same classes at the loaders. The oracles: a refusal happens *before* the expensive step (the
step is replaced by one that fails the test if reached), the declared budget is the one refused, and
what loads is exactly what was saved.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import struct
import threading
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from clafusion_core import checkpoints, cli, data, otfusion, pipeline, torchfile
from clafusion_core.activations import private_view, record_outputs
from clafusion_core.checkpoints import checkpoint_bytes, infer_arch, load_checkpoint
from clafusion_core.errors import ArchError, CheckpointError, DatasetError, FusionError, NumericalError
from clafusion_core.families.keys import prefix_renames
from clafusion_core.models import build_model, count_parameters, model_size, parse_arch
from clafusion_core.otfusion import MARGINAL_TOLERANCE, marginal_error, transport_plan
from clafusion_core.train import TrainConfig
from clafusion_core.validation import check_finite_model, quote


def mlp(spec: str = "mlp:32-16", shape=(1, 8, 8), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, shape, 10)


def pt_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def rezip(data: bytes, change) -> bytes:
    """The zip ``data`` with each record passed through ``change(name, content) -> (content, compression)``."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content, compression = change(info.filename, source.read(info))
            target.writestr(info.filename, content, compress_type=compression)
    return out.getvalue()


def deflate_bomb(elements: int) -> bytes:
    """A .pt whose one float32 storage of ``elements`` zeros is deflated: ~1000× smaller than it inflates."""
    data = pt_bytes({"w": torch.zeros(2)})

    def change(name, content):
        if name.endswith("data.pkl"):
            content = content.replace(b"K\x02\x85", b"J" + elements.to_bytes(4, "little") + b"\x85")
            content = content.replace(b"K\x02t", b"J" + elements.to_bytes(4, "little") + b"t")
            return content, zipfile.ZIP_STORED
        if name.endswith("data/0"):
            return bytes(4 * elements), zipfile.ZIP_DEFLATED
        return content, zipfile.ZIP_STORED

    return rezip(data, change)


@pytest.fixture
def no_torch_load(monkeypatch):
    """Fail the test if a file reaches torch.load: the refusal must come from the declared sizes."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was reached")
    monkeypatch.setattr(checkpoints.torch, "load", refuse)


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and len(message) < 600, message


# -------------------------------------------------------------------------------------- declared sizes

def test_a_deflated_record_over_the_upload_budget_is_refused_before_inflating(no_torch_load, monkeypatch):
    bomb = deflate_bomb(10_000_000)                    # 40 MB of zeros in a ~40 kB file
    assert len(bomb) < 100_000
    monkeypatch.setattr(checkpoints, "MAX_UPLOAD_BYTES", 10_000_000)
    with pytest.raises(CheckpointError, match=r"declares 38\.1 MB of tensor data, over the 9\.5 MB limit") as err:
        load_checkpoint(bomb, name="bomb.pt")
    assert_one_sentence(str(err.value))


def test_a_local_file_inflating_beyond_four_times_its_size_is_refused(tmp_path, no_torch_load):
    path = tmp_path / "bomb.pt"
    path.write_bytes(deflate_bomb(10_000_000))
    with pytest.raises(CheckpointError, match=r"would inflate to 38\.1 MB, more than 4× its size"):
        load_checkpoint(path)


def test_a_deflated_record_within_budget_still_loads():
    bomb = deflate_bomb(1000)
    sd = torch.load(io.BytesIO(bomb), weights_only=True)
    assert sd["w"].shape == (1000,)
    torchfile.scan(bomb, "x", 10**6)  # within budget and 4× its size: the scan accepts it


def test_a_legacy_storage_declared_larger_than_the_file_is_refused_before_allocating(no_torch_load):
    data = pt_bytes({"w": torch.zeros(2)}, legacy=True)
    huge = data.replace(b"K\x02N", b"\x8a\x05\x00\x00\x00\x00\x01N")   # numel 2 -> 2**32
    assert huge != data
    with pytest.raises(CheckpointError, match="over the .* limit|not a readable"):
        load_checkpoint(huge, name="legacy.pt")


def test_a_legacy_checkpoint_loads():
    model = mlp()
    loaded, _ = load_checkpoint(pt_bytes(model.state_dict(), legacy=True))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make", [lambda: torch.zeros(1).expand(10**4, 10**4),
                                  lambda: torch.arange(12.0).reshape(3, 4)[:, :2],
                                  lambda: torch.arange(12.0).as_strided((3, 3), (1, 1))],
                         ids=["zero-stride", "column-slice", "overlapping"])
def test_views_that_repeat_or_skip_elements_are_refused(make, no_torch_load):
    with pytest.raises(CheckpointError, match="strides repeat or skip elements") as err:
        load_checkpoint(pt_bytes({"hidden.0.weight": make()}), name="view.pt")
    assert_one_sentence(str(err.value))


def test_a_transposed_dense_tensor_loads_with_its_values():
    model = mlp()
    state = model.state_dict()
    state["hidden.0.weight"] = state["hidden.0.weight"].t().contiguous().t()   # same values, permuted strides
    assert not state["hidden.0.weight"].is_contiguous()
    loaded, _ = load_checkpoint(pt_bytes(state))
    assert torch.equal(loaded.hidden[0].weight, model.hidden[0].weight)


@pytest.mark.parametrize("shape, stride, dense", [((3, 4), (4, 1), True), ((3, 4), (1, 3), True),
                                                  ((3, 4), (0, 1), False), ((3, 4), (4, 2), False),
                                                  ((3, 4), (2, 1), False), ((1, 5), (0, 1), True),
                                                  ((2, 3, 4), (12, 1, 3), True), ((0, 7), (0, 0), True)])
def test_is_dense_agrees_with_counting_the_addressed_elements(shape, stride, dense):
    """Oracle: a layout is dense iff it addresses numel distinct offsets forming one contiguous range."""
    offsets = {sum(i * s for i, s in zip(index, stride)) for index in np.ndindex(*shape)}
    numel = math.prod(shape)
    brute = len(offsets) == numel and (not offsets or max(offsets) - min(offsets) + 1 == numel)
    assert brute == dense == torchfile.is_dense(shape, stride)


def test_too_many_tensors_are_refused(monkeypatch):
    monkeypatch.setattr(torchfile, "MAX_TENSORS", 3)
    with pytest.raises(CheckpointError, match="holds more than 3 tensors"):
        load_checkpoint(pt_bytes({str(i): torch.zeros(1) for i in range(5)}))


# ----------------------------------------------------------------------------------- kinds and dtypes

@pytest.mark.parametrize("make, kind", [
    (lambda: torch.zeros(3, 4).to_sparse(), "sparse"),
    (lambda: torch.quantize_per_tensor(torch.zeros(3, 4), 0.1, 0, torch.qint8), "quantised"),
    (lambda: torch.zeros(3, 4, device="meta"), "meta"),
    (lambda: torch.zeros(3, 4, dtype=torch.complex64), "complex"),
    (lambda: torch.zeros(3, 4, dtype=torch.int32), "int32 values"),
    (lambda: torch.zeros(3, 4, dtype=torch.bool), "bool values"),
], ids=["sparse", "quantised", "meta", "complex", "int", "bool"])
def test_tensors_that_cannot_run_are_refused_by_kind(make, kind):
    state = mlp().state_dict()
    state["hidden.0.weight"] = make()
    with pytest.raises(CheckpointError, match=kind) as err:
        load_checkpoint(pt_bytes(state), name="odd.pt")
    assert_one_sentence(str(err.value))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn],
                         ids=str)
def test_float_dtypes_are_converted_to_float32_exactly(dtype):
    model = mlp()
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    loaded, _ = load_checkpoint(pt_bytes(state))
    for key, value in state.items():
        assert loaded.state_dict()[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict()[key], value.to(torch.float32))


def test_float64_values_beyond_float32_are_refused_not_turned_into_inf():
    state = {k: v.double() for k, v in mlp().state_dict().items()}
    state["head.bias"][0] = 1e300
    assert torch.isfinite(state["head.bias"]).all()           # finite in the file ...
    with pytest.raises(CheckpointError, match=r"beyond float32's range \(first in head\.bias\)"):
        load_checkpoint(pt_bytes(state))                       # ... infinite once float32


def test_negative_batchnorm_variance_is_refused():
    state = build_model("vgg:8-M-16-bn", (3, 8, 8), 10).state_dict()
    state["features.0.bn.running_var"][2] = -1.0
    with pytest.raises(CheckpointError, match="negative BatchNorm variances in features.0.bn.running_var"):
        load_checkpoint(pt_bytes(state), input_shape=(3, 8, 8))


@pytest.mark.parametrize("key", [0, 1.5, (1, 2), b"hidden.0.weight"], ids=repr)
def test_non_string_keys_are_refused(key):
    state = dict(mlp().state_dict())
    state[key] = state.pop("head.bias")
    with pytest.raises(CheckpointError, match="is not text") as err:
        load_checkpoint(pt_bytes(state))
    assert_one_sentence(str(err.value))


def test_tensors_sharing_memory_are_given_their_own_copies():
    model = mlp("mlp:16-16")
    state = model.state_dict()
    shared = torch.zeros(16)
    state["hidden.0.bias"], state["hidden.1.bias"] = shared, shared
    loaded, _ = load_checkpoint(pt_bytes(state))
    with torch.no_grad():
        loaded.hidden[0].bias += 1
    assert torch.equal(loaded.hidden[1].bias, torch.zeros(16))


# ------------------------------------------------------------------------------------- safetensors files

def safetensors_with(meta: dict[str, str], state=None) -> bytes:
    model = mlp()
    base = {"format": checkpoints.FORMAT, "arch": "mlp:32-16", "dataset": "digits", "num_classes": "10",
            "input_shape": "1,8,8"}
    return safetensors.torch.save(state or model.state_dict(), metadata={**base, **meta})


def test_a_deeply_nested_safetensors_header_is_refused_without_recursion_error():
    header = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    data = struct.pack("<Q", len(header)) + header
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(data, name="deep.safetensors")


def test_an_oversized_safetensors_header_is_not_parsed(monkeypatch):
    data = safetensors_with({})
    monkeypatch.setattr(checkpoints, "MAX_HEADER_BYTES", 64)
    monkeypatch.setattr(checkpoints.json, "loads", lambda *_: pytest.fail("the header was parsed"))
    with pytest.raises(CheckpointError):
        load_checkpoint(data)


@pytest.mark.parametrize("meta", [{"num_classes": "１０"}, {"num_classes": "²"}, {"num_classes": "١٠"},
                                  {"input_shape": "1,８,8"}, {"input_shape": "1,²,8"}],
                         ids=["fullwidth", "superscript", "arabic-indic", "shape-fullwidth", "shape-superscript"])
def test_unicode_digits_in_metadata_are_not_numbers(meta):
    """Non-ASCII digits are ignored as malformed, so the weights decide (and match): no ValueError."""
    loaded, info = load_checkpoint(safetensors_with(meta))
    assert (info.num_classes, info.input_shape) == (10, (1, 8, 8))


@pytest.mark.parametrize("arch, match", [
    ("resnet:999999999-1-1-1", "layers, over the limit"),
    ("mlp:9223372036854775808", "width of 19 digits"),
    ("mlp:4000000000", "width of 10 digits"),
    ("mlp:３２-16", "not a whole number written with the digits 0-9"),
    ("vgg:" + "-".join(["M"] * 2000) + "-8", "layers, over the limit"),
    ("mlp:" + "1" * 20_000, "at most 10,000 characters"),
], ids=["resnet-1e9-blocks", "width-2^63", "width-4e9", "fullwidth-width", "2000-pools", "long-spec"])
def test_hostile_arch_metadata_is_refused_before_building(arch, match, monkeypatch):
    data = safetensors_with({"arch": arch})
    for module, model in (("mlp", "MLP"), ("vgg", "VGG"), ("resnet", "SmallResNet")):
        monkeypatch.setattr(f"clafusion_core.families.{module}.{model}", lambda *a, **k: pytest.fail("a layer was built"))
    with pytest.raises(ArchError, match=match) as err:
        load_checkpoint(data)
    assert_one_sentence(str(err.value))


def test_an_input_shape_beyond_the_budget_is_refused():
    state = build_model("vgg:8-M-16", (3, 8, 8), 10).state_dict()
    data = safetensors.torch.save(state, metadata={"arch": "vgg:8-M-16", "input_shape": "3,100000,100000"})
    with pytest.raises(ArchError, match="Inputs of shape 3×100000×100000"):
        load_checkpoint(data)


def test_a_weight_of_the_wrong_rank_names_the_key():
    state = mlp().state_dict()
    state["hidden.0.weight"] = state["hidden.0.weight"].flatten()
    with pytest.raises(CheckpointError, match=r"hidden\.0\.weight has shape \(2048,\), but a Linear weight is 2-D"):
        load_checkpoint(safetensors_with({}, state), name="rank.safetensors")


def test_a_conv_bias_of_the_wrong_length_is_refused():
    from torchvision.models.vgg import make_layers
    torch.manual_seed(0)
    features = make_layers([8, "M"], batch_norm=True)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.weight"] = torch.randn(10, 8)
    state["classifier.bias"] = torch.zeros(10)
    state["features.0.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"conv bias features\.0\.conv\.bias has shape \(3,\)"):
        load_checkpoint(pt_bytes(state), input_shape=(3, 8, 8))


def test_a_model_that_overflows_on_a_sample_is_refused():
    model = mlp("mlp:32-16-8")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e15)
    with pytest.raises(CheckpointError, match="NaN or infinite outputs on a sample input"):
        load_checkpoint(checkpoint_bytes(model, dataset="digits"), name="huge.safetensors")


# ------------------------------------------------------------------------------------------ arch inference

def test_a_huge_layer_index_is_refused_instantly():
    state = {"features.100000000.weight": torch.zeros(4, 3, 3, 3), "classifier.weight": torch.zeros(10, 4)}
    with pytest.raises(ArchError, match="layer index 100,000,000"):
        infer_arch(state)


def _quadratic_prefix_renames(keys, prefixes):
    """The former implementation: every key against every prefix (the oracle for the linear one)."""
    renames = {}
    for key in keys:
        for old, new in prefixes.items():
            if key.startswith(old) and old != new:
                renames[key] = new + key[len(old):]
                break
    return renames


def test_prefix_renames_equal_the_quadratic_search():
    rng = np.random.default_rng(0)
    modules = [f"features.{i}." for i in range(40)] + [f"fc{i}." for i in range(1, 12)] + ["linear.", "classifier."]
    keys = [m + p for m in modules for p in ("weight", "bias", "running_var")]
    for _ in range(20):
        chosen = rng.choice(len(modules), 15, replace=False)
        prefixes = {modules[i]: f"x.{i}." if i % 3 else modules[i] for i in chosen}
        assert prefix_renames(keys, prefixes) == _quadratic_prefix_renames(keys, prefixes)


@pytest.mark.parametrize("spec", ["mlp:32-16", "mlp:7-nobias", "vgg:8-M-16-bn/12", "vgg11x0.125",
                                  "vgg:8-M-8-tvhead", "resnet:1-1-1-1@8-16-16-32", "resnet:2-1-1-2@8-8-16-16-tvstem"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 7, 5)], ids=lambda s: "x".join(map(str, s)))
def test_model_size_equals_the_built_model(spec, shape):
    """Oracle: the closed form against the model itself (parameters counted, feature maps hooked)."""
    model = build_model(spec, shape, 7)
    maps = [shape[0] * shape[1] * shape[2]]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda _m, _i, out: maps.append(out[0].numel()))
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    size = model_size(parse_arch(spec), shape, 7)
    assert size.parameters == count_parameters(model)
    assert size.activation_values == max(maps)


# ----------------------------------------------------------------------------------------------- paths

@pytest.mark.timeout(30)
@pytest.mark.parametrize("make, match", [
    (lambda tmp: (os.mkfifo(tmp / "pipe"), tmp / "pipe")[1], "is a named pipe, not a file"),
    (lambda tmp: "/dev/zero", "is a device, not a file"),
    (lambda tmp: tmp, "is a folder, not a file"),
    (lambda tmp: str(tmp / "a\x00b"), "contains a NUL byte"),
    (lambda tmp: tmp / "missing.pt", "does not exist"),
], ids=["fifo", "dev-zero", "folder", "nul-byte", "missing"])
@pytest.mark.parametrize("reader", ["checkpoint", "dataset", "app-path-key"])
def test_paths_that_are_not_regular_files_are_refused(tmp_path, make, match, reader):
    path = make(tmp_path)
    if reader == "checkpoint":
        call, error = lambda: load_checkpoint(path), CheckpointError
    elif reader == "dataset":
        call, error = lambda: data._read_idx(str(path)), DatasetError
    else:
        from app_support import cached
        call, error = lambda: cached.path_key(str(path)), CheckpointError
    with pytest.raises(error, match=match) as err:
        call()
    assert_one_sentence(str(err.value))


def test_a_file_over_the_local_budget_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    path.write_bytes(b"\0" * 1000)
    monkeypatch.setattr(checkpoints, "MAX_FILE_BYTES", 999)
    with pytest.raises(CheckpointError, match="over the 0.0 MB limit for a checkpoint file"):
        load_checkpoint(path)


@pytest.mark.parametrize("text, expected", [("model.pt", "model.pt"), ("a\nb.pt", "a\\nb.pt"),
                                            ("\x1b[31mred", "\\x1b[31mred"), ("x" * 500, "x" * 79 + "…"),
                                            ("\u202eevil", "\\u202eevil")])
def test_untrusted_text_is_escaped_and_shortened(text, expected):
    assert quote(text) == expected


def test_a_hostile_upload_name_and_key_do_not_rewrite_the_message():
    state = {"\n" * 3 + "k" * 10_000: torch.zeros(2)}
    with pytest.raises(FusionError) as err:
        load_checkpoint(pt_bytes(state), name="evil\nname\x1b[2J.pt")
    assert_one_sentence(str(err.value))
    assert str(err.value).startswith("evil\\nname\\x1b[2J.pt")


# ---------------------------------------------------------------------------------------- code execution

class _WritesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickle_that_would_write_a_file_never_runs(tmp_path, legacy, monkeypatch):
    marker = tmp_path / "pwned"
    data = pt_bytes({"hidden.0.weight": torch.zeros(2), "x": _WritesAFile(marker)}, legacy=legacy)
    calls = []
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **k: calls.append(1))
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(data)
    assert not marker.exists() and not calls   # refused by the scan, before torch.load


# ------------------------------------------------------------------------------------------------ data

def idx(arr: np.ndarray, code: int = 0x08, dims: tuple[int, ...] | None = None) -> bytes:
    dims = arr.shape if dims is None else dims
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


def test_idx_dims_that_overflow_int64_are_refused_not_wrapped(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx(np.zeros(8, np.uint8), dims=(2**32 - 1, 2**32 - 1, 2**32 - 1)))
    with pytest.raises(DatasetError, match="4294967295 × 4294967295 × 4294967295 values .* over the"):
        data._read_idx(str(path))


def test_a_gzip_bomb_is_inflated_only_as_far_as_its_header_declares(tmp_path, monkeypatch):
    header = idx(np.zeros(0, np.uint8), dims=(10, 28, 28))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + bytes(50_000_000)))     # declares 7840 bytes, inflates to 50 MB
    assert path.stat().st_size < 100_000
    inflated = []
    original = data.zlib.decompressobj

    class Counting:
        def __init__(self, *a, **k):
            self.inner = original(*a, **k)

        def decompress(self, raw, max_length=0):
            out = self.inner.decompress(raw, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(data.zlib, "decompressobj", Counting)
    with pytest.raises(DatasetError, match="inflates to more than its header declares"):
        data._read_idx(str(path))
    assert sum(inflated) <= 2 * (len(header) + 7840) + 2 * 1024


def test_a_header_declaring_more_than_the_budget_is_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_DATASET_FILE_BYTES", 10_000)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx(np.zeros(100 * 784, np.uint8), dims=(100, 28, 28))))
    with pytest.raises(DatasetError, match="over the 0.0 MB limit for a dataset file"):
        data._read_idx(str(path))


def mnist_folder(folder, test_images: int = 10, labels=None) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (test_images, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(test_images) % 10).astype(np.uint8)}
    for name, arr in arrays.items():
        (folder / name).write_bytes(idx(arr))
    if labels is not None:
        (folder / "train-labels-idx1-ubyte").write_bytes(idx(labels.astype(">f4"), code=0x0D))


def test_a_test_split_without_images_is_refused(tmp_path):
    mnist_folder(tmp_path, test_images=0)
    with pytest.raises(DatasetError, match="test split .* holds no images"):
        data.load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2.5], ids=["nan", "inf", "fraction"])
def test_float_labels_must_be_whole_numbers(tmp_path, bad):
    labels = (np.arange(20) % 10).astype(np.float32)
    labels[3] = bad
    mnist_folder(tmp_path, labels=labels)
    with pytest.raises(DatasetError, match="labels that are not whole numbers"):
        data.load_dataset("mnist", tmp_path)


def test_whole_float_labels_still_load(tmp_path):
    mnist_folder(tmp_path, labels=(np.arange(20) % 10).astype(np.float32))
    splits = data.load_dataset("mnist", tmp_path)
    assert sorted(set(splits.train.tensors[1].tolist()) | set(splits.val.tensors[1].tolist())) == list(range(10))


@pytest.mark.parametrize("payload", [
    b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R.",                      # bytearray(2**30)
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85U\x01b\x87R.",
], ids=["bytearray", "reconstruct"])
def test_a_cifar_pickle_cannot_ask_for_memory_it_does_not_hold(tmp_path, payload):
    path = tmp_path / "test_batch"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match="asks for memory it does not hold"):
        data._load_pickle(str(path))


# ------------------------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rel")
    paths = []
    for arch, seed in (("mlp:32-16", 0), ("mlp:16", 1)):
        paths.append(folder / f"{seed}.safetensors")
        assert cli.main(["train", "--arch", arch, "--epochs", "1", "--seed", str(seed), "--out", str(paths[-1])]) == 0
    return paths


@pytest.mark.parametrize("args, message", [
    (["train", "--arch", "mlp:8", "--batch-size", "0"], "batch size must be a whole number of at least 1"),
    (["train", "--arch", "mlp:8", "--lr", "-0.1"], "learning rate must be a positive number"),
    (["train", "--arch", "mlp:8", "--lr", "nan"], "learning rate must be a positive number"),
    (["train", "--arch", "mlp:8", "--momentum", "-0.5"], "momentum must lie in [0, 1)"),
    (["train", "--arch", "mlp:8", "--momentum", "1.5"], "momentum must lie in [0, 1)"),
    (["train", "--arch", "mlp:8", "--seed", str(2**64)], "seed must be a whole number"),
    (["train", "--arch", "mlp:99999999999"], "width of 11 digits"),
    (["train", "--arch", "resnet:999999999-1-1-1"], "over the limit of 1,000"),
    (["train", "--arch", "mlp:8", "--out", "{missing}/a.safetensors"], "does not exist; create it first"),
    (["fuse", "{a}", "{b}", "--finetune-lr", "-1"], "learning rate must be a positive number"),
    (["fuse", "{a}", "{b}", "--seed", str(2**64)], "seed must be a whole number"),
    (["fuse", "{a}", "{b}", "--json", "{missing}/r.json"], "does not exist; create it first"),
    (["fuse", "{a}", "{b}", "--out", "{missing}/f.safetensors"], "does not exist; create it first"),
    (["fuse", "{a}", "{b}", "--out", "{folder}"], "is a folder; give a file name"),
    (["align", "{a}", "/dev/zero"], "is a device, not a file"),
], ids=["batch-0", "lr-negative", "lr-nan", "momentum-negative", "momentum-1.5", "seed-2^64", "arch-width",
        "arch-blocks", "train-out-missing", "finetune-lr", "fuse-seed", "json-missing", "out-missing",
        "out-folder", "dev-zero"])
def test_cli_faults_exit_2_with_one_sentence_before_any_work(args, message, pair_files, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setattr(cli, "train_model", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(cli, "run_fusion", lambda *a, **k: pytest.fail("fusion started"))
    if "--out" not in args and args[0] == "train":
        args = args + ["--out", str(tmp_path / "m.safetensors")]
    fill = {"a": str(pair_files[0]), "b": str(pair_files[1]), "missing": str(tmp_path / "nowhere"),
            "folder": str(tmp_path)}
    capsys.readouterr()
    assert cli.main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_non_finite_fused_model_exits_2_and_is_never_written(pair_files, tmp_path, capsys, monkeypatch):
    original = pipeline.fuse_balanced

    def overflowing(*args, **kwargs):
        fused, layer_weights, report = original(*args, **kwargs)
        with torch.no_grad():
            fused.model.head.bias[0] = math.inf     # what weights of 1e12 turn into after repair
        return fused, layer_weights, report

    monkeypatch.setattr(pipeline, "fuse_balanced", overflowing)
    out = tmp_path / "fused.safetensors"
    assert cli.main(["fuse", *map(str, pair_files), "--out", str(out), "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite values (first in head.bias)" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_check_finite_model_names_the_first_bad_tensor():
    model = mlp()
    check_finite_model(model, None)
    with torch.no_grad():
        model.hidden[1].weight[0, 0] = math.nan
    with pytest.raises(NumericalError, match=r"first in hidden\.1\.weight"):
        check_finite_model(model)


def test_ctrl_c_during_finetuning_keeps_the_one_shot_model(pair_files, tmp_path, capsys, monkeypatch):
    expected_out = tmp_path / "one_shot.safetensors"
    assert cli.main(["fuse", *map(str, pair_files), "--out", str(expected_out)]) == 0
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt   # what Ctrl-C raises in the main thread

    monkeypatch.setattr(pipeline, "finetune", interrupted)
    out, result = tmp_path / "fused.safetensors", tmp_path / "r.json"
    capsys.readouterr()
    status = cli.main(["fuse", *map(str, pair_files), "--finetune-epochs", "3", "--out", str(out),
                       "--json", str(result)])
    err = capsys.readouterr().err
    assert status == cli.INTERRUPTED and calls
    assert "interrupted: Finetuning was interrupted (Ctrl-C); kept the fused model from before it." in err
    assert out.read_bytes() == expected_out.read_bytes()     # the one-shot model, byte for byte
    payload = json.loads(result.read_text())
    assert payload["accuracy"]["fused_finetuned"] is None and any("interrupted" in w for w in payload["warnings"])


def test_train_config_refuses_what_torch_would_fail_on():
    for bad in ({"batch_size": 0}, {"lr": 0.0}, {"lr": math.inf}, {"momentum": 1.0}, {"seed": -1},
                {"weight_decay": -1e-4}, {"temperature": math.nan}):
        with pytest.raises(FusionError):
            TrainConfig(**bad)
    TrainConfig(batch_size=np.int64(8), seed=np.int64(3))


# --------------------------------------------------------------------------------------------- Sinkhorn

def fifty_iterations(monkeypatch, iterations: int = 50) -> None:
    """Cap Sinkhorn at ``iterations`` per attempt on a 60×40 plan, in chunks of 10 (the cap is what is
    tested, not its size)."""
    monkeypatch.setattr(otfusion, "SINKHORN_WORK", (60 * 40 + otfusion.SINKHORN_OVERHEAD) * iterations)
    monkeypatch.setattr(otfusion, "SINKHORN_CHUNK", 10)


def _problem(n=60, m=40, seed=0):
    rng = np.random.default_rng(seed)
    cost = torch.cdist(torch.tensor(rng.normal(size=(n, 5))), torch.tensor(rng.normal(size=(m, 5))))
    return cost, torch.full((n,), 1 / n, dtype=torch.float64), torch.full((m,), 1 / m, dtype=torch.float64)


def test_sinkhorn_that_cannot_converge_falls_back_to_exact_with_a_message(monkeypatch):
    fifty_iterations(monkeypatch)
    cost, alpha, beta = _problem()
    plan, message = transport_plan(cost, alpha, beta, "sinkhorn", reg=1e-3)
    exact, _ = transport_plan(cost, alpha, beta, "emd")
    assert message.startswith("Sinkhorn at regularisation 0.001 (its marginals were off by")
    assert "and at 0.01" in message and "the exact solver was used instead" in message
    assert torch.equal(plan, exact)


@pytest.mark.parametrize("reg", [1e-7, math.nan])
def test_a_regularisation_below_the_floor_goes_straight_to_exact(reg, monkeypatch):
    monkeypatch.setattr(otfusion, "_sinkhorn", lambda *a: pytest.fail("Sinkhorn ran"))
    cost, alpha, beta = _problem()
    plan, message = transport_plan(cost, alpha, beta, "sinkhorn", reg=reg)
    assert "cannot converge in bounded time" in message and "exact solver" in message
    assert torch.equal(plan, transport_plan(cost, alpha, beta, "emd")[0])


def test_sinkhorn_falls_back_to_ten_times_the_regularisation_when_that_converges(monkeypatch):
    fifty_iterations(monkeypatch)
    cost, alpha, beta = _problem()
    plan, message = transport_plan(cost, alpha, beta, "sinkhorn", reg=0.005)
    reference, note = transport_plan(cost, alpha, beta, "sinkhorn", reg=0.05)
    assert message.startswith("Sinkhorn at regularisation 0.005 did not converge within its iteration limit")
    assert "so 0.05 was used instead" in message and note is None
    assert torch.equal(plan, reference)
    assert marginal_error(plan, alpha, beta) <= MARGINAL_TOLERANCE


def test_sinkhorn_within_tolerance_but_unconverged_is_used_and_said_so(monkeypatch):
    fifty_iterations(monkeypatch)
    cost, alpha, beta = _problem()
    plan, message = transport_plan(cost, alpha, beta, "sinkhorn", reg=0.02)
    error = marginal_error(plan, alpha, beta)
    assert 1e-6 < error <= MARGINAL_TOLERANCE
    assert message == (f"Sinkhorn stopped at its limit of 50 iterations before converging; its marginals are off "
                       f"by at most {error:.2g} (relative).")


def test_chunked_sinkhorn_equals_one_uninterrupted_run(monkeypatch):
    """Oracle: POT's own single run with the same iteration count (warm starts continue, not restart)."""
    import ot
    fifty_iterations(monkeypatch, 120)
    cost, alpha, beta = _problem()
    normalised = cost / cost.max()
    chunked, iterations, _ = otfusion._sinkhorn(alpha, beta, normalised, 0.02)
    single = ot.sinkhorn(alpha, beta, normalised, 0.02, method="sinkhorn_log", numItermax=iterations,
                         stopThr=1e-9, warn=False)
    assert torch.allclose(chunked, single, rtol=1e-12, atol=1e-15)


def test_a_hopeless_attempt_is_abandoned_early_from_its_decay(monkeypatch):
    fifty_iterations(monkeypatch, 5000)
    cost, alpha, beta = _problem()
    _, iterations, error = otfusion._sinkhorn(alpha, beta, cost / cost.max(), 1e-4)
    assert error > MARGINAL_TOLERANCE and iterations < 5000


@pytest.mark.parametrize("reg", [1e-3, 1e-6, 1e-9])
def test_every_sinkhorn_plan_returned_has_marginals_within_tolerance(reg, monkeypatch):
    """Oracle: row and column sums against α and β, whatever the regularisation asked for."""
    fifty_iterations(monkeypatch, 500)
    cost, alpha, beta = _problem(n=30, m=20, seed=1)
    plan, _ = transport_plan(cost, alpha, beta, "sinkhorn", reg=reg)
    assert marginal_error(plan, alpha, beta) <= MARGINAL_TOLERANCE


# --------------------------------------------------------------------------------------------- sessions

class Rendezvous(nn.Module):
    """Holds every forward pass until the other thread's is inside the model too."""

    def __init__(self, barrier: threading.Barrier):
        super().__init__()
        self.barrier = barrier

    def forward(self, x):
        self.barrier.wait(timeout=20)
        return x


@pytest.mark.timeout(60)
def test_concurrent_recordings_on_one_shared_model_see_only_their_own_outputs():
    torch.manual_seed(0)
    barrier = threading.Barrier(2)
    model = nn.Sequential(nn.Linear(4, 4), Rendezvous(barrier), nn.ReLU(), nn.Linear(4, 3)).eval()
    inputs = [torch.randn(5, 4), torch.randn(7, 4)]
    results, failures = [None, None], []

    def record(i):
        try:
            results[i] = record_outputs(model, inputs[i], {"0", "3"})
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    with torch.no_grad():
        for x, got in zip(inputs, results):
            first = model[0](x)
            assert got["0"].shape == first.shape and torch.allclose(got["0"], first)
            assert torch.allclose(got["3"], model[3](torch.relu(first)))
    assert not any(m._forward_hooks for m in model.modules()) and not model.training


def test_a_private_view_shares_weights_but_not_hooks_or_mode():
    model = mlp().train()
    view = private_view(model).eval()
    view.hidden[0].register_forward_hook(lambda *_: None)
    assert model.training and not view.training
    assert not model.hidden[0]._forward_hooks
    assert view.hidden[0].weight is model.hidden[0].weight
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(view(x), model.eval()(x))
