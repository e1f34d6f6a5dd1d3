"""Statistics repair, per-layer weights at inserted identities, the OT ground metric's activations."""

import copy

import pytest
import torch

from clafusion_core.activations import group_activations, record_outputs
from clafusion_core.balancing import balance
from clafusion_core.layers import model_view
from clafusion_core.methods import METHODS, FusionBatch
from clafusion_core.otfusion import layer_tensors
from clafusion_core.pipeline import FusionConfig, inserted_layer_weights, run_fusion
from clafusion_core.repair import repair_statistics, repair_targets, repairable_layers, with_biases
from clafusion_core.train import evaluate
from model_utils import random_model

X = torch.randn(300, 1, 8, 8)


def _stats(outputs):
    flat = outputs.transpose(0, 1).reshape(outputs.shape[1], -1)
    return flat.mean(1), flat.std(1)


@pytest.mark.parametrize("spec", ["mlp:40-30-20-nobias", "mlp:40-30-20", "vgg:8-8-M-16-M-24/20"])
def test_after_repair_every_fused_neuron_has_its_target_mean_and_std(spec):
    """Target of fused neuron k: Σ_p w_p · (plan-weighted mean of the parent neurons sent to k)."""
    model_a, model_b = random_model(spec, seed=1), random_model(spec, seed=2)
    weights = [0.4, 0.6]
    output = METHODS["ot"].fuse([model_a, model_b], 1, weights, FusionBatch(X))
    repaired = with_biases(copy.deepcopy(output.model))
    repair_statistics(repaired, [model_a, model_b], output.correspondence, weights, X)
    layers = repairable_layers(repaired)
    assert layers
    names = {l.name for l in layers}
    outs = [record_outputs(m, X, names) for m in (model_a, model_b, repaired)]
    for layer in layers:
        plan = torch.as_tensor(output.correspondence[layer.out_group][0])
        share = plan / plan.sum(0, keepdim=True)          # A's neurons sent to each fused neuron
        mean_a, std_a = _stats(outs[0][layer.name])
        mean_b, std_b = _stats(outs[1][layer.name])
        mean_f, std_f = _stats(outs[2][layer.name])
        torch.testing.assert_close(mean_f, weights[0] * share.T @ mean_a + weights[1] * mean_b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(std_f, weights[0] * share.T @ std_a + weights[1] * std_b, atol=1e-4, rtol=1e-4)


def test_a_bias_free_model_gets_zero_biases_that_keep_its_function():
    model = random_model("mlp:40-30-nobias")
    biased = with_biases(model)
    assert model.hidden[0].bias is None and biased.hidden[0].bias is not None
    assert torch.count_nonzero(biased.hidden[0].bias) == 0 and not str(biased.spec).endswith("nobias")
    with torch.no_grad():
        assert torch.equal(model(X), biased(X))
    assert with_biases(biased) is biased


def test_repair_without_a_bias_could_only_rescale_and_miss_the_mean():
    """Why repair adds biases: on a bias-free layer a rescale moves the std but not the mean onto target."""
    model_a, model_b = random_model("mlp:40-30-nobias", seed=1), random_model("mlp:40-30-nobias", seed=2)
    output = METHODS["ot"].fuse([model_a, model_b], 1, [0.5, 0.5], FusionBatch(X))
    scaled_only, shifted = copy.deepcopy(output.model), with_biases(copy.deepcopy(output.model))
    for fused in (scaled_only, shifted):
        repair_statistics(fused, [model_a, model_b], output.correspondence, [0.5, 0.5], X)
    target = repair_targets([model_a, model_b], output.correspondence, [0.5, 0.5], None, X,
                            repairable_layers(shifted))["hidden.0"][0]
    miss = [(_stats(record_outputs(m, X, {"hidden.0"})["hidden.0"])[0] - target).abs().max() for m in (scaled_only, shifted)]
    assert miss[1] < 1e-4 < miss[0]


def test_the_pipeline_keeps_repair_only_when_it_improves_validation(mlp_pair, digits):
    for config in (FusionConfig(), FusionConfig.from_flat(dataset="digits", probe_size=100, probe_seed=3)):
        result = run_fusion(*mlp_pair, digits, config)
        report = result.repair
        assert report["enabled"] and report["kept"] == (report["val_with"] > report["val_without"])
        assert evaluate(result.fused.model, digits.val) == pytest.approx(max(report["val_with"], report["val_without"]))
        assert result.to_json()["repair"] == report


def test_repair_is_not_applicable_where_batchnorm_is_everywhere(digits):
    model_a, model_b = random_model("resnet:1-1-1-1@8-8-16-16", seed=1), random_model("resnet:1-1-1-1@8-8-16-16", seed=2)
    result = run_fusion(model_a, model_b, digits, FusionConfig.from_flat(probe_size=100))
    assert result.repair["enabled"] is False and "kept" not in result.repair


def test_inserted_identity_layers_take_the_deeper_models_layer():
    model_a, model_b = random_model("mlp:40-30-20-10", seed=1), random_model("mlp:40-10", seed=2)
    balanced = balance(model_a, model_b, [[0, 3]], "add")
    layer_weights = inserted_layer_weights(balanced, "deeper")
    assert layer_weights == {"hidden.1": [1.0, 0.0], "hidden.2": [1.0, 0.0]}
    assert inserted_layer_weights(balanced, "average") == {}
    output = METHODS["ot"].fuse([balanced.model_a, balanced.model_b], 1, [0.5, 0.5], FusionBatch(X),
                                layer_weights=layer_weights)
    for layer in model_view(balanced.model_b).layers:
        fused, aligned = (layer_tensors(m, layer)["weight"] for m in (output.model, output.aligned[0]))
        if layer.name in layer_weights:
            torch.testing.assert_close(fused, aligned)
        else:
            torch.testing.assert_close(fused, 0.5 * aligned + 0.5 * layer_tensors(balanced.model_b, layer)["weight"])


def test_resnet_inserted_blocks_cover_all_their_layers():
    model_a = random_model("resnet:2-1-1-1@8-8-16-16", seed=1)
    model_b = random_model("resnet:1-1-1-1@8-8-16-16", seed=2)
    balanced = balance(model_a, model_b, [[0], [0], [0], [0]], "add")
    assert set(inserted_layer_weights(balanced, "deeper")) == {"layer1.1.conv1", "layer1.1.conv2"}


def test_per_position_ground_activations_compare_channels_on_their_whole_maps():
    """Distances between channels over (sample, position) rows = distances between their flattened maps."""
    model = random_model("vgg:8-M-16/20", seed=1)
    rows = group_activations(model, X)["features.0"]
    maps = torch.relu(record_outputs(model, X, {"features.0.conv"})["features.0.conv"])
    assert rows.shape == (X.shape[0] * 8 * 8, 8)
    per_channel = maps.transpose(0, 1).reshape(8, -1)
    torch.testing.assert_close(torch.cdist(rows.T, rows.T), torch.cdist(per_channel, per_channel), atol=1e-3, rtol=1e-5)
    pooled = group_activations(model, X, conv="pool")["features.0"]
    torch.testing.assert_close(pooled, maps.mean((2, 3)))
    capped = group_activations(model, X, max_rows=1000)["features.0"]
    assert len(capped) <= 1000 and torch.equal(capped, rows[:: -(-len(rows) // 1000)])

