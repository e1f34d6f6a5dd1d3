"""The fusion-method interface: align once, average many; N parents; memory layouts; no side effects."""

import copy

import numpy as np
import pytest
import torch

from clafusion_core.errors import AlignmentError
from clafusion_core.methods import METHODS, FusionBatch, get_method
from clafusion_core.otfusion import OTOptions, layer_tensors, weighted_average
from clafusion_core.layers import model_view
from model_utils import permuted_copy, random_model

X = torch.randn(128, 1, 8, 8)
BATCH = FusionBatch(X)
SPECS = {"mlp": "mlp:40-30-20", "cnn": "vgg:8-8-M-16-M-24/20", "cnn-bn": "vgg:8-M-16-16-M-24-bn/20",
         "resnet-bn": "resnet:2-1-2-1@8-16-16-24"}
OT = METHODS["ot"]


def _max_output_error(model, reference):
    with torch.no_grad():
        return (model(X) - reference(X)).abs().max().item()


@pytest.mark.parametrize("ground_metric", ["weights", "activations"])
@pytest.mark.parametrize("spec", ["vgg:8-8-M-16-M-24/20", "vgg:8-M-16-16-M-24-bn/20", "resnet:2-1-2-1@8-16-16-24"])
def test_a_channels_last_permuted_copy_fuses_back_to_the_model(spec, ground_metric):
    """Weights in channels_last memory format (the usual GPU layout) are written through, not into a copy."""
    model = random_model(spec).to(memory_format=torch.channels_last)
    permuted = permuted_copy(model, seed=3).to(memory_format=torch.channels_last)
    fused = OT.fuse([permuted, model], 1, [0.5, 0.5], BATCH, OTOptions(ground_metric=ground_metric)).model
    assert _max_output_error(fused, model) < 1e-4
    assert _max_output_error(permuted, model) < 1e-4          # the oracle itself: same function
    assert not torch.equal(permuted.state_dict()["features.0.conv.weight" if "vgg" in spec else "conv1.weight"],
                           model.state_dict()["features.0.conv.weight" if "vgg" in spec else "conv1.weight"])


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_fusion_at_s_is_the_average_of_the_aligned_endpoints(spec):
    """The plans do not depend on s: fuse(s) = (1 − s)·fuse(0) + s·B, parameter by parameter."""
    model_a, model_b = random_model(spec, seed=1), random_model(spec, seed=2)
    endpoint = OT.fuse([model_a, model_b], 1, [1.0, 0.0], BATCH).model
    state_0, state_b = endpoint.state_dict(), model_b.state_dict()
    for s in (0.25, 0.5, 0.8):
        fused = OT.fuse([model_a, model_b], 1, [1 - s, s], BATCH).model.state_dict()
        for key, value in fused.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, (1 - s) * state_0[key] + s * state_b[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_three_identical_parents_fuse_to_the_parent(spec):
    model = random_model(spec, seed=4)
    fused = OT.fuse([model, copy.deepcopy(model), copy.deepcopy(model)], 0, [1 / 3] * 3, BATCH).model
    assert _max_output_error(fused, model) < 1e-4


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_three_permuted_copies_fuse_back_to_the_model(spec):
    model = random_model(spec, seed=5)
    parents = [permuted_copy(model, seed=1), model, permuted_copy(model, seed=2)]
    output = OT.fuse(parents, 1, [0.2, 0.5, 0.3], BATCH, OTOptions(ground_metric="weights"))
    assert _max_output_error(output.model, model) < 1e-4
    for group, plans in output.correspondence.items():
        assert len(plans) == 3
        np.testing.assert_allclose(plans[1], np.eye(len(plans[1])) / len(plans[1]), atol=1e-7)  # the reference


def test_weights_one_zero_zero_give_the_aligned_first_model():
    parents = [random_model("mlp:40-30-20", seed=s) for s in (1, 2, 3)]
    output = OT.fuse(parents, 1, [1.0, 0.0, 0.0], BATCH)
    assert _max_output_error(output.model, parents[0]) < 1e-4     # equal widths: aligned A computes A
    assert _max_output_error(output.aligned[0], parents[0]) < 1e-4
    assert output.aligned[1] is parents[1]


def test_the_fused_model_is_the_weighted_average_of_the_aligned_parents():
    parents = [random_model("vgg:8-M-16-16-M-24-bn/20", seed=s) for s in (1, 2, 3)]
    output = OT.fuse(parents, 2, [0.1, 0.3, 0.6], BATCH)
    again = weighted_average(output.aligned, [0.1, 0.3, 0.6])
    for key, value in output.model.state_dict().items():
        torch.testing.assert_close(value, again.state_dict()[key])


def test_layer_weights_override_the_weights_of_their_layers_only():
    model_a, model_b = random_model("mlp:40-30-20", seed=1), random_model("mlp:40-30-20", seed=2)
    output = OT.fuse([model_a, model_b], 1, [0.5, 0.5], BATCH, layer_weights={"hidden.1": [1.0, 0.0]})
    aligned_a = output.aligned[0]
    layer = next(l for l in model_view(model_b).layers if l.name == "hidden.1")
    torch.testing.assert_close(layer_tensors(output.model, layer)["weight"], layer_tensors(aligned_a, layer)["weight"])
    other = next(l for l in model_view(model_b).layers if l.name == "hidden.0")
    torch.testing.assert_close(layer_tensors(output.model, other)["weight"],
                               0.5 * layer_tensors(aligned_a, other)["weight"] + 0.5 * model_b.hidden[0].weight)


@pytest.mark.parametrize("bad", [dict(reference=3), dict(weights=[0.7, 0.7]), dict(weights=[1.0]), dict(parents=1)])
def test_bad_method_arguments_are_user_errors(bad):
    parents = [random_model("mlp:10", seed=1), random_model("mlp:10", seed=2)][: bad.get("parents", 2)]
    with pytest.raises(AlignmentError):
        OT.fuse(parents, bad.get("reference", 1), bad.get("weights", [0.5, 0.5])[: len(parents) + 1], BATCH)


def test_unknown_methods_name_the_registered_ones():
    with pytest.raises(AlignmentError, match="ot"):
        get_method("magic")


def test_a_fusion_leaves_its_inputs_and_the_global_rng_untouched():
    parents = [random_model("vgg:8-M-16-16-M-24-bn/20", seed=s) for s in (1, 2)]
    before = [copy.deepcopy(p.state_dict()) for p in parents]
    rng = torch.random.get_rng_state()
    OT.fuse(parents, 1, [0.5, 0.5], BATCH)
    assert torch.equal(rng, torch.random.get_rng_state())
    for parent, state in zip(parents, before):
        for key, value in parent.state_dict().items():
            assert torch.equal(value, state[key]) and value.device == state[key].device
