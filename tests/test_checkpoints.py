"""Checkpoints: exact safetensors round trips, safe .pt loading, arch inference and user-facing errors."""

from __future__ import annotations

import functools
import io
import pickle

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import VGG as TorchvisionVGG
from torchvision.models.vgg import make_layers

from clafusion_core import checkpoints
from clafusion_core.checkpoints import (FORMAT, CheckpointInfo, checkpoint_bytes, infer_arch, load_checkpoint,
                                        save_checkpoint)
from clafusion_core.errors import ArchError, CheckpointError, FusionError
from clafusion_core.models import ModelInfo, build_model, parse_arch

SPECS = ["mlp:32-16", "mlp:32-16-nobias", "vgg:8-M-16-M-32", "vgg:8-M-16-bn/12",
         "resnet:1-1-1-1@8-16-16-32", "resnet:2-1-1-1@8-8-16-16-tvstem"]
SHAPES = [(1, 8, 8), (3, 32, 32)]


# -------------------------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine torch's thread pool costs 100× more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial biases and BatchNorm statistics, so every tensor is really carried over."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
        if isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def ours(spec: str, shape=(1, 8, 8), classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise(build_model(spec, shape, classes), seed)


def pt_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@torch.no_grad()
def same_outputs(a: nn.Module, b: nn.Module, shape, atol: float = 0.0) -> bool:
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    return torch.allclose(a(x), b(x), rtol=0, atol=atol)


# --------------------------------------------------------------------------------- our own checkpoints

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("spec", SPECS)
def test_safetensors_round_trip_is_exact(tmp_path, spec, shape):
    model = ours(spec, shape)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, dataset="digits", extra={"note": "hi"})
    loaded, info = load_checkpoint(path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert same_outputs(model, loaded, shape)
    assert info == CheckpointInfo(str(model.spec), "digits", 10, shape, "safetensors", {"note": "hi"})
    assert loaded.info == model.info == ModelInfo(parse_arch(spec), shape, 10)   # the metadata record round-trips
    assert not loaded.training and all(p.dtype == torch.float32 and p.device.type == "cpu"
                                       for p in loaded.parameters())


@pytest.mark.parametrize("spec", SPECS)
def test_checkpoint_bytes_equal_the_file_and_load_identically(tmp_path, spec):
    model = ours(spec, (3, 32, 32), classes=7)
    data = checkpoint_bytes(model, dataset="mine")
    save_checkpoint(model, tmp_path / "m.safetensors", dataset="mine")
    assert data == (tmp_path / "m.safetensors").read_bytes()
    loaded, info = load_checkpoint(data, name="upload.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert (info.arch, info.num_classes, info.input_shape, info.dataset) == (str(model.spec), 7, (3, 32, 32), "mine")


def test_metadata_is_written_as_strings():
    header = checkpoints._safetensors_header(checkpoint_bytes(ours("mlp:32-16"), dataset="digits"))
    assert header["__metadata__"] == {"format": FORMAT, "arch": "mlp:32-16", "dataset": "digits",
                                      "num_classes": "10", "input_shape": "1,8,8"}


def test_extra_metadata_cannot_override_reserved_keys():
    with pytest.raises(ValueError, match="arch"):
        checkpoint_bytes(ours("mlp:32-16"), dataset="digits", extra={"arch": "mlp:1"})


@pytest.mark.parametrize("spec", SPECS)
def test_infer_arch_reads_our_layouts(spec):
    model = ours(spec, (3, 32, 32))
    assert infer_arch(model.state_dict()) == (str(model.spec), {})


@pytest.mark.parametrize("spec", SPECS)
def test_our_state_dict_as_pt_loads_by_inference(spec):
    model = ours(spec, (3, 32, 32))
    loaded, info = load_checkpoint(pt_bytes(model.state_dict()), input_shape=(3, 32, 32))
    assert info.arch == str(model.spec) and info.source == "pt"
    assert same_outputs(model, loaded, (3, 32, 32))


def test_safetensors_without_metadata_is_inferred():
    model = ours("mlp:32-16")
    import safetensors.torch
    loaded, info = load_checkpoint(safetensors.torch.save(model.state_dict()))
    assert (info.arch, info.input_shape, info.dataset) == ("mlp:32-16", (1, 8, 8), None)
    assert same_outputs(model, loaded, (1, 8, 8))


def test_named_vgg_regains_its_final_pool():
    model = ours("vgg11x0.125", (3, 32, 32))
    assert infer_arch(model.state_dict())[0] == str(model.spec)
    assert str(model.spec).endswith("-M")


# ------------------------------------------------------------------------------ torchvision checkpoints

def test_torchvision_resnet18_loads_with_equal_outputs():
    torch.manual_seed(0)
    tv = randomise(torchvision.models.resnet18(num_classes=10))
    loaded, info = load_checkpoint(pt_bytes(tv.state_dict()), input_shape=(3, 64, 64), name="r18.pth")
    assert info.arch == "resnet:2-2-2-2@64-128-256-512-tvstem"
    assert same_outputs(tv, loaded, (3, 64, 64), atol=1e-5)


@functools.lru_cache(maxsize=None)
def small_torchvision_vgg(bn: bool) -> nn.Module:
    """torchvision's VGG class on a tiny cfg, its classifier's first Linear sized for 32 channels.

    Built on the meta device first: torchvision would otherwise initialise a 25088×4096 Linear only
    for it to be replaced. Cached: tests only read it.
    """
    cfg = [8, "M", 16, "M", 32, 32, "M"]
    with torch.device("meta"):
        tv = TorchvisionVGG(make_layers(cfg), num_classes=10)
    torch.manual_seed(0)
    tv.features = make_layers(cfg, batch_norm=bn)
    tv.classifier = nn.Sequential(nn.Linear(32 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                                  nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 10))
    return randomise(tv)


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
def test_small_torchvision_vgg_loads_with_equal_outputs(bn):
    tv = small_torchvision_vgg(bn)
    loaded, info = load_checkpoint(pt_bytes(tv.state_dict()), input_shape=(3, 32, 32))
    assert info.arch == "vgg:8-M-16-M-32-32-M" + ("-bn" if bn else "") + "-tvhead"
    assert same_outputs(tv, loaded, (3, 32, 32), atol=1e-5)


def test_infer_arch_maps_torchvision_vgg_indices_to_ours():
    arch, renames = infer_arch(small_torchvision_vgg(bn=True).state_dict())
    assert renames["features.4.weight"] == "features.2.conv.weight"  # conv 1 after Conv, BN, ReLU, MaxPool
    assert renames["features.12.running_var"] == "features.5.bn.running_var"
    assert renames["classifier.3.weight"] == "classifier.1.linear.weight"
    assert renames["classifier.6.bias"] == "head.bias"


@pytest.mark.slow  # 133M parameters: half a gigabyte written and read back
def test_real_torchvision_vgg11_bn_loads_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    tv = randomise(torchvision.models.vgg11_bn(num_classes=10))
    torch.save(tv.state_dict(), tmp_path / "vgg11_bn.pth")
    loaded, info = load_checkpoint(tmp_path / "vgg11_bn.pth", dataset="cifar10")
    assert info.arch == "vgg:64-M-128-M-256-256-M-512-512-M-512-512-M-bn-tvhead"
    assert same_outputs(tv, loaded, (3, 32, 32), atol=1e-4)


def test_cifar_vgg_with_single_linear_classifier_loads():
    """The common CIFAR VGG: torchvision's features, then one ``classifier`` Linear on 1×1 maps."""
    torch.manual_seed(0)
    features = make_layers([8, "M", 16, "M", 16, "M", 16, "M", 16, "M"], batch_norm=True)
    reference = randomise(nn.Sequential(features, nn.Flatten(), nn.Linear(16, 10)))
    state = {k.replace("0.", "features.", 1) if k.startswith("0.") else k.replace("2.", "classifier.", 1): v
             for k, v in reference.state_dict().items()}
    loaded, info = load_checkpoint(pt_bytes(state), input_shape=(3, 32, 32))
    assert info.arch == "vgg:8-M-16-M-16-M-16-M-16-M-bn"
    assert same_outputs(reference, loaded, (3, 32, 32), atol=1e-5)


def test_cifar_resnet_shortcut_and_linear_names_load():
    model = ours("resnet:1-1-1-1@8-16-16-32", (3, 32, 32))
    state = {k.replace(".downsample.", ".shortcut.").replace("fc.", "linear."): v
             for k, v in model.state_dict().items()}
    loaded, _ = load_checkpoint(pt_bytes(state), input_shape=(3, 32, 32))
    assert same_outputs(model, loaded, (3, 32, 32))


def test_bottleneck_resnet50_is_refused_with_arch_error():
    state = torchvision.models.resnet50(num_classes=10).state_dict()
    with pytest.raises(ArchError, match="only BasicBlock ResNets are supported") as err:
        load_checkpoint(pt_bytes(state), input_shape=(3, 32, 32), name="r50.pt")
    assert str(err.value).startswith("r50.pt")


# ------------------------------------------------------------------------------------ MLP checkpoints

@pytest.mark.parametrize("flatten", [False, True], ids=["plain", "flatten"])
def test_sequential_mlp_loads(flatten):
    torch.manual_seed(0)
    layers = [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)]
    reference = nn.Sequential(*([nn.Flatten()] if flatten else []), *layers).eval()
    loaded, info = load_checkpoint(pt_bytes(reference.state_dict()), input_shape=(1, 8, 8))
    assert info.arch == "mlp:32-16"
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x.flatten(1)))


def test_otfusion_fc_mlp_in_a_wrapper_loads_without_a_shape():
    torch.manual_seed(0)
    fcs = [nn.Linear(784, 40, bias=False), nn.Linear(40, 20, bias=False), nn.Linear(20, 10, bias=False)]
    state = {f"fc{i + 1}.weight": fc.weight.detach().clone() for i, fc in enumerate(fcs)}
    wrapped = {"model_state_dict": state, "test_accuracy": 97.1, "epoch": 10}
    loaded, info = load_checkpoint(pt_bytes(wrapped), name="otfusion.pth")
    assert (info.arch, info.input_shape, info.num_classes) == ("mlp:40-20-nobias", (1, 28, 28), 10)
    assert info.extra == {"test_accuracy": "97.1", "epoch": "10"}
    x = torch.randn(3, 1, 28, 28)
    expected = fcs[2](torch.relu(fcs[1](torch.relu(fcs[0](x.flatten(1))))))
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, rtol=0, atol=1e-6)


def test_dataparallel_prefix_is_stripped():
    model = ours("mlp:32-16")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert infer_arch(state)[1]["module.head.weight"] == "head.weight"
    loaded, _ = load_checkpoint(pt_bytes({"state_dict": state}), input_shape=(1, 8, 8))
    assert same_outputs(model, loaded, (1, 8, 8))


def test_half_precision_checkpoint_loads_as_float32():
    model = ours("mlp:32-16")
    loaded, _ = load_checkpoint(pt_bytes({k: v.half() for k, v in model.state_dict().items()}))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert same_outputs(model, loaded, (1, 8, 8), atol=1e-2)


# ----------------------------------------------------------------------------------- refused files

class _Payload:
    """Unpickling this would create a file: proof that a loader ran the file's code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_module_is_refused(tmp_path):
    torch.save(nn.Sequential(nn.Linear(64, 10)), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"save model\.state_dict\(\) instead") as err:
        load_checkpoint(tmp_path / "whole.pt")
    assert str(err.value).startswith("whole.pt")


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    data = pt_bytes({"weight": torch.zeros(2), "payload": _Payload(marker)})
    with pytest.raises(CheckpointError):
        load_checkpoint(data)
    with pytest.raises(CheckpointError):
        load_checkpoint(pickle.dumps(_Payload(marker)))
    assert not marker.exists()


def _truncated_safetensors() -> bytes:
    data = checkpoint_bytes(ours("mlp:32-16"), dataset="digits")
    return data[: len(data) - 100]


def _truncated_pt() -> bytes:
    data = pt_bytes(ours("mlp:32-16").state_dict())
    return data[: len(data) // 2]


@pytest.mark.parametrize("make", [_truncated_safetensors, _truncated_pt, lambda: bytes(range(256)) * 40,
                                  lambda: b"", lambda: b"PK\x03\x04garbage"],
                         ids=["truncated-safetensors", "truncated-pt", "random", "empty", "bad-zip"])
def test_unreadable_bytes_are_refused(make):
    with pytest.raises(CheckpointError, match="not a readable safetensors or PyTorch checkpoint") as err:
        load_checkpoint(make(), name="bad.pt")
    assert str(err.value).startswith("bad.pt")


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_non_state_dict_contents_are_refused():
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_checkpoint(pt_bytes({"epoch": 3, "optimizer": {"lr": 0.1}}))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_nan_weights_are_refused(fmt):
    model = ours("vgg:8-M-16-bn/12", (3, 32, 32))
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    data = checkpoint_bytes(model, dataset="cifar10") if fmt == "safetensors" else pt_bytes(model.state_dict())
    with pytest.raises(CheckpointError, match="NaN or infinite weights.*retrain or export it again"):
        load_checkpoint(data, input_shape=(3, 32, 32), name="nan.ckpt")


def test_infinite_weights_are_refused():
    state = ours("mlp:32-16").state_dict()
    state["hidden.0.bias"][3] = float("inf")
    with pytest.raises(CheckpointError, match=r"hidden\.0\.bias"):
        load_checkpoint(pt_bytes(state))


def test_too_large_upload_is_refused(monkeypatch):
    data = checkpoint_bytes(ours("mlp:32-16"), dataset="digits")
    monkeypatch.setattr(checkpoints, "MAX_UPLOAD_BYTES", len(data) - 1)
    with pytest.raises(CheckpointError, match="upload limit"):
        load_checkpoint(data, name="big.safetensors")
    monkeypatch.setattr(checkpoints, "MAX_UPLOAD_BYTES", len(data))
    load_checkpoint(data)


# ----------------------------------------------------------------------- mismatches with the user's choice

def test_wrong_class_count_names_both_numbers():
    data = checkpoint_bytes(ours("resnet:1-1-1-1@8-16-16-32", (3, 32, 32)), dataset="cifar10")
    with pytest.raises(CheckpointError, match="predicts 10 classes but cifar100 has 100") as err:
        load_checkpoint(data, dataset="cifar100", name="model.safetensors")
    assert str(err.value).startswith("model.safetensors") and "choose the matching dataset" in str(err.value)


def test_wrong_input_size_names_both_sizes():
    data = checkpoint_bytes(ours("mlp:32-16", (1, 8, 8)), dataset="digits")
    with pytest.raises(CheckpointError, match="64 input values but mnist images are 1×28×28 = 784"):
        load_checkpoint(data, dataset="mnist")


def test_wrong_channel_count_names_both_counts():
    data = pt_bytes(ours("vgg:8-M-16-M-32", (1, 8, 8)).state_dict())
    with pytest.raises(CheckpointError, match="1-channel images but cifar10 images have 3 channels"):
        load_checkpoint(data, dataset="cifar10")


def test_dataset_name_supplies_shape_and_classes():
    model = ours("mlp:32-16", (1, 8, 8))
    loaded, info = load_checkpoint(pt_bytes(model.state_dict()), dataset="digits")
    assert (loaded.input_shape, loaded.num_classes, info.dataset) == ((1, 8, 8), 10, None)


def test_cnn_pt_without_a_shape_asks_for_the_dataset():
    data = pt_bytes(ours("resnet:1-1-1-1@8-16-16-32", (3, 32, 32)).state_dict())
    with pytest.raises(CheckpointError, match="choose the dataset it was trained on"):
        load_checkpoint(data)


def test_non_square_mlp_input_asks_for_the_dataset():
    data = pt_bytes(ours("mlp:32-16", (3, 32, 32)).state_dict())
    with pytest.raises(CheckpointError, match="3072 input values.*choose the dataset"):
        load_checkpoint(data)


def test_wrong_arch_names_the_first_bad_key():
    data = checkpoint_bytes(ours("mlp:32-16"), dataset="digits")
    with pytest.raises(CheckpointError, match=r"hidden\.2\.weight.*pass the right --arch"):
        load_checkpoint(data, arch="mlp:32-16-8")
    with pytest.raises(CheckpointError, match=r"hidden\.1\.weight.*shape \(16, 32\), expected \(20, 32\)"):
        load_checkpoint(data, arch="mlp:32-20")


def test_unknown_layout_is_an_arch_error_naming_the_file():
    data = pt_bytes({"encoder.weight": torch.zeros(4, 4), "decoder.weight": torch.zeros(4, 4)})
    with pytest.raises(ArchError, match="cannot tell the architecture from.*; pass --arch") as err:
        load_checkpoint(data, name="odd.pt")
    assert str(err.value).startswith("odd.pt") and isinstance(err.value, FusionError)


def _without_head():
    state = ours("vgg:8-M-16", (3, 32, 32)).state_dict()
    del state["head.weight"]
    return state


def _resnet_with_a_gap():
    return {k.replace("layer2.0.", "layer2.5."): v for k, v in ours("resnet:1-1-1-1@8-16-16-32").state_dict().items()}


@pytest.mark.parametrize("make", [_without_head, _resnet_with_a_gap, lambda: {"0.weight": torch.zeros(3, 4)},
                                  lambda: {"fc1.weight": torch.zeros(3, 4), "fc3.weight": torch.zeros(2, 3)},
                                  lambda: {"0.weight": torch.zeros(3, 4), "1.weight": torch.zeros(2, 3)}],
                         ids=["vgg-no-head", "resnet-block-gap", "one-linear", "fc-gap", "linears-in-a-row"])
def test_broken_known_layouts_are_arch_errors(make):
    with pytest.raises(ArchError, match="cannot tell the architecture from"):
        infer_arch(make())


def test_given_arch_loads_an_unknown_layout_when_keys_match():
    model = ours("mlp:32-16")
    loaded, info = load_checkpoint(pt_bytes(model.state_dict()), arch="mlp:32-16", input_shape=(1, 8, 8))
    assert info.arch == "mlp:32-16" and same_outputs(model, loaded, (1, 8, 8))
