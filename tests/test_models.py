import copy

import pytest
import torch

from clafusion_core.errors import ArchError
from clafusion_core.layers import model_view
from clafusion_core.models import ModelInfo, build_model, parse_arch, rebuild

SPECS = ["mlp:400-200-100", "mlp:64-nobias", "vgg11", "vgg13", "vgg11-bn", "vgg:32-M-64-M-128-bn/64",
         "resnet18", "resnet34x0.25", "resnet:1-1-1-1@8-16-16-32", "resnet18x0.25-tvstem"]
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("spec", SPECS)
def test_every_arch_builds_and_runs(spec, shape):
    model = build_model(spec, shape, 7)
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    view = model_view(model)
    depths, widths = [len(s) for s in view.stages], [[u.width for u in s] for s in view.stages]
    assert model.family.with_stage_depths(model.spec, depths, widths) == model.spec   # the view is the spec's
    assert view.layers[-1].out_group is None  # the logits layer is never permuted


@pytest.mark.parametrize("spec", SPECS)
def test_the_metadata_is_one_read_only_record_that_copies_keep(spec):
    model = build_model(spec, (3, 32, 32), 7)
    assert model.info == ModelInfo(parse_arch(spec), (3, 32, 32), 7)
    assert (model.spec, model.input_shape, model.num_classes) == (model.info.spec, (3, 32, 32), 7)
    clone = copy.deepcopy(model)
    assert clone.info == model.info and clone.family is model.family
    assert rebuild(model, model.spec).info == model.info
    with pytest.raises(AttributeError):
        model.num_classes = 3        # change the record, not one field of it


@pytest.mark.parametrize("spec", SPECS)
def test_canonical_spec_string_round_trips(spec):
    parsed = parse_arch(spec)
    assert parse_arch(str(parsed)) == parsed


def test_width_multiplier_scales_widths():
    assert parse_arch("resnet18x0.5").widths == (32, 64, 128, 256)
    assert parse_arch("mlp:400-200x0.5").layers == (200, 100)
    assert parse_arch("vgg:64-M-128x0.25").layers == (16, "M", 32)


def test_named_specs_match_torchvision_configs():
    assert parse_arch("vgg11").layers == (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
    assert parse_arch("resnet34").layers == (3, 4, 6, 3)


@pytest.mark.parametrize("spec", ["transformer", "mlp", "mlp:abc", "mlp:0-3", "vgg:M-M", "resnet:1-1-1",
                                  "vgg11-foo", "mlp:10x99"])
def test_bad_specs_raise_arch_error(spec):
    with pytest.raises(ArchError):
        parse_arch(spec)


def test_resnet_module_names_equal_torchvision():
    import torchvision

    ours = set(build_model("resnet18-tvstem", (3, 64, 64), 10).state_dict())
    theirs = set(torchvision.models.resnet18(num_classes=10).state_dict())
    assert ours == theirs
