"""Each architecture family answers for its own models: spec, build, view, state_dict layouts, pins."""

import pytest

from clafusion_core.config import FusionConfig
from clafusion_core.families import FAMILIES, get_family
from clafusion_core.errors import ArchError
from clafusion_core.models import build_model, parse_arch
from clafusion_core.pipeline import stage_pins

SPECS = {"mlp": "mlp:32-16", "vgg": "vgg:8-M-16-bn/12", "resnet": "resnet:1-1-1-1@8-8-16-16"}
SHAPE = (3, 8, 8)


def test_the_registry_is_keyed_by_each_familys_name():
    assert list(FAMILIES) == ["mlp", "vgg", "resnet"]
    assert all(get_family(name).name == name for name in FAMILIES)
    with pytest.raises(ArchError, match="Unknown architecture family"):
        get_family("transformer")


@pytest.mark.parametrize("name, spec", SPECS.items(), ids=SPECS.keys())
def test_a_model_belongs_to_the_family_its_spec_names(name, spec):
    model = build_model(spec, SHAPE, 5)
    assert model.family is FAMILIES[name] and model.spec.family == name


@pytest.mark.parametrize("name, spec", SPECS.items(), ids=SPECS.keys())
def test_a_family_recognises_its_own_state_dicts_and_no_other_does(name, spec):
    """The layouts of the families are disjoint, so the order they are tried in never decides."""
    shapes = {k: v.shape for k, v in build_model(spec, SHAPE, 5).state_dict().items()}
    found = {family.name: family.infer(shapes) for family in FAMILIES.values()}
    assert [n for n, f in found.items() if f is not None] == [name]
    assert parse_arch(found[name][0]) == parse_arch(spec)


@pytest.mark.parametrize("name, spec", SPECS.items(), ids=SPECS.keys())
def test_the_first_weight_reads_the_input_width(name, spec):
    model = build_model(spec, SHAPE, 5)
    first = model.family.view(model).layers[0].name
    keys = list(model.state_dict())
    assert model.family.first_weight(keys) == f"{first}.weight"
    assert model.get_submodule(first).weight.shape[1] == model.family.input_width(SHAPE)
    assert model.get_submodule(model.family.head_weight.removesuffix(".weight")).out_features == 5


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_pins_follow_the_family(name):
    """ResNet stages start with the downsampling block, so each stage's first blocks are always matched."""
    family = FAMILIES[name]
    pins, notes = stage_pins(family, [2, 2, 2], FusionConfig.from_flat(pin_first=False, pin_last=True))
    assert [first for first, _ in pins] == [family.pins_stage_starts] * 3
    assert [last for _, last in pins] == [False, False, True]
    assert notes == ([family.pin_note] if family.pins_stage_starts else [])
    assert (name == "resnet") == family.pins_stage_starts
