import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from clafusion_core.errors import AlignmentError, FusionError
from clafusion_core.interpolation import (InterpOptions, fusion_batch, interpolation_fuse, neuron_attributions,
                                          one_to_one, ridge_fit, weighted_kmeans)
from clafusion_core.layers import model_view
from clafusion_core.models import build_model
from clafusion_core.train import evaluate, reset_batchnorm
from model_utils import permuted_copy, random_model

generator = torch.Generator().manual_seed(0)
X = torch.randn(256, 1, 8, 8, generator=generator)          # fusion batch
Y = torch.randint(0, 10, (256,), generator=generator)
X_FRESH = torch.randn(128, 1, 8, 8, generator=generator)    # inputs the fusion never saw
SPECS = {"mlp": "mlp:40-30-20", "mlp-nobias": "mlp:40-30-nobias", "cnn": "vgg:8-8-M-16-M-24/20",
         "cnn-bn": "vgg:8-M-16-bn", "resnet-bn": "resnet:2-1-2-1@8-16-16-24"}


def _fuse(parents, reference=-1, weights=None, inputs=X, labels=Y, **options):
    weights = weights or [1 / len(parents)] * len(parents)
    return interpolation_fuse(parents, reference % len(parents), weights, inputs, labels, InterpOptions(**options))


def _max_error(model_a, model_b, inputs=X_FRESH):
    with torch.no_grad():
        return float((model_a(inputs) - model_b(inputs)).abs().max())


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_fusing_a_model_with_itself_returns_the_model(spec):
    model = random_model(spec)
    result = _fuse([model, model])
    assert _max_error(result.model, model) < 1e-4
    assert result.model is not model


@pytest.mark.parametrize("grouping", ["kmeans", "hungarian"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_fusing_a_permuted_copy_gives_the_model_back(spec, grouping):
    model = random_model(spec)
    permuted = permuted_copy(model, seed=3)
    assert _max_error(permuted, model) < 1e-4
    assert not torch.equal(next(permuted.parameters()), next(model.parameters()))
    result = _fuse([permuted, model], reference=1, grouping=grouping)
    assert _max_error(result.model, model) < 1e-4
    first_group = model_view(model).layers[0].out_group
    plan_of_permuted = result.membership[first_group][0]
    assert (plan_of_permuted.sum(1) == 1).all() and (plan_of_permuted.sum(0) == 1).all()   # a permutation...
    assert not np.array_equal(plan_of_permuted, np.eye(len(plan_of_permuted)))           # ...not the identity


def test_three_identical_parents_give_the_model():
    model = random_model("mlp:40-30-20", seed=4)
    calls = []
    result = interpolation_fuse([model, model, model], 1, [0.2, 0.5, 0.3], X, Y,
                                progress=lambda fraction, message: calls.append(fraction))
    assert _max_error(result.model, model) < 1e-4
    assert [len(m) for m in result.membership.values()] == [3, 3, 3]
    assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) == 5   # 4 layers, then done


def test_the_logits_layer_is_never_permuted():
    """Parent 2 = parent 1 with its classes shuffled: class i must average class i of both parents,
    even though pairing each class with its shuffled twin would fit the targets better."""
    model = random_model("mlp:40-30-20", seed=5)
    shuffled = permuted_copy(model, seed=0)
    with torch.no_grad():
        shuffled.head.weight.copy_(shuffled.head.weight[torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])])
        shuffled.head.bias.copy_(shuffled.head.bias[torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])])
        expected = (model(X_FRESH) + shuffled(X_FRESH)) / 2
        assert (expected - model(X_FRESH)).abs().max() > 0.05
        fused = _fuse([shuffled, model]).model
        assert (fused(X_FRESH) - expected).abs().max() < 1e-4
    assert None not in _fuse([shuffled, model]).membership


def test_ridge_fit_recovers_exactly_linear_targets():
    rng = torch.Generator().manual_seed(1)
    design = torch.randn(200, 12, generator=rng, dtype=torch.float64)
    true = torch.randn(12, 7, generator=rng, dtype=torch.float64)
    prior = torch.randn(12, 7, generator=rng, dtype=torch.float64)   # a wrong prior
    holdout = torch.arange(200) % 5 == 0
    fit = ridge_fit(design, design @ true, prior, holdout=holdout)
    assert fit.ridge == 0.0
    assert torch.allclose(fit.weights, true, atol=1e-8)
    # an explicit ridge shrinks towards the prior, by the closed form (ZᵀZ + λI)⁻¹(ZᵀA + λW⁰)
    shrunk = ridge_fit(design, design @ true, prior, ridge=0.1)
    closed_form = torch.linalg.solve(design.T @ design + shrunk.lam * torch.eye(12, dtype=torch.float64),
                                     design.T @ design @ true + shrunk.lam * prior)
    assert torch.allclose(shrunk.weights, closed_form, atol=1e-8)
    assert not torch.allclose(shrunk.weights, true, atol=1e-3)


@pytest.mark.parametrize("ridge", [None, 0.0, 1e-3])
def test_rank_deficient_fit_keeps_the_prior_where_the_data_does_not_look(ridge):
    """With fewer samples than inputs, the fit changes the prior only inside the row space of Z."""
    rng = torch.Generator().manual_seed(2)
    design = torch.randn(8, 20, generator=rng, dtype=torch.float64)
    targets = torch.randn(8, 5, generator=rng, dtype=torch.float64)
    prior = torch.randn(20, 5, generator=rng, dtype=torch.float64)
    fit = ridge_fit(design, targets, prior, ridge=ridge, holdout=torch.arange(8) < 2)
    null_space = torch.linalg.svd(design).Vh[8:].T            # directions no sample visits
    assert torch.isfinite(fit.weights).all()
    assert torch.allclose(null_space.T @ (fit.weights - prior), torch.zeros(12, 5, dtype=torch.float64), atol=1e-8)
    if ridge == 0.0:   # the exact interpolant nearest the prior
        assert torch.allclose(design @ fit.weights, targets, atol=1e-8)


def test_dead_input_columns_keep_the_prior_and_the_rest_is_fitted():
    """Inputs that are zero on every sample (dead channels) carry no information: their weights stay
    at the prior, while the live ones solve the exactly linear problem."""
    rng = torch.Generator().manual_seed(5)
    live = torch.randn(300, 10, generator=rng, dtype=torch.float64)
    design = torch.cat([live, torch.zeros(300, 400, dtype=torch.float64)], 1)
    true = torch.randn(410, 3, generator=rng, dtype=torch.float64)
    prior = torch.randn(410, 3, generator=rng, dtype=torch.float64)
    fit = ridge_fit(design, design @ true, prior, ridge=0.0)
    assert torch.allclose(fit.weights[10:], prior[10:])
    assert torch.allclose(fit.weights[:10], true[:10], atol=1e-8)


def test_a_tiny_fusion_batch_still_recovers_a_permuted_copy_on_fresh_inputs():
    """|D| = 20 < fan-in 65: a pseudo-inverse would zero the unseen directions; the prior keeps them."""
    model = random_model("mlp:40-30-20", seed=6)
    result = _fuse([permuted_copy(model, seed=1), model], inputs=X[:20], labels=Y[:20])
    assert _max_error(result.model, model) < 1e-4
    assert any("fewer than the fan-in" in w for w in result.warnings)


def _trained_fused_accuracy(pair, digits, samples, **options):
    inputs, labels = fusion_batch(digits, samples, seed=0)
    result = interpolation_fuse(list(pair), 1, [0.5, 0.5], inputs, labels, InterpOptions(**options))
    return evaluate(result.model, digits.test), result


def test_rank_deficient_fusion_of_trained_parents_stays_sane(same_shape_pair, digits):
    """40 samples for a fan-in of 65: finite weights and an accuracy near the parents' (~96.7 %)."""
    accuracy, result = _trained_fused_accuracy(same_shape_pair, digits, 40)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert accuracy > 0.85


@pytest.mark.parametrize("grouping, importance", [("kmeans", "uniform"), ("hungarian", "conductance")])
def test_fusing_the_trained_same_shape_pair_keeps_the_parents_accuracy(same_shape_pair, digits, grouping, importance):
    accuracy, result = _trained_fused_accuracy(same_shape_pair, digits, 1000, grouping=grouping, importance=importance)
    parents = [evaluate(m, digits.test) for m in same_shape_pair]
    assert accuracy >= min(parents) - 0.015
    mixed = [d["mixed_groups"] for d in result.diagnostics if "mixed_groups" in d]
    assert all(m > 0 for m in mixed)   # the fused neurons really combine both parents


def _duplicated(model):
    """The same function with every hidden neuron doubled (outgoing weights halved): a wider model."""
    widths = [2 * layer.out_features for layer in model.hidden]
    wide = build_model(f"mlp:{'-'.join(map(str, widths))}", model.input_shape, model.num_classes)
    with torch.no_grad():
        for i, (small, big) in enumerate(zip([*model.hidden, model.head], [*wide.hidden, wide.head])):
            weight = small.weight if i == 0 else small.weight.repeat_interleave(2, dim=1) / 2
            if small is not model.head:
                weight, bias = weight.repeat_interleave(2, dim=0), small.bias.repeat_interleave(2)
            else:
                bias = small.bias
            big.weight.copy_(weight)
            big.bias.copy_(bias)
    return wide


@pytest.mark.parametrize("reference", [0, 1])
def test_different_widths_take_the_reference_widths(reference):
    narrow = random_model("mlp:20-10", seed=7)
    wide = _duplicated(narrow)
    assert _max_error(wide, narrow) < 1e-5
    parents = [wide, narrow]
    result = _fuse(parents, reference=reference)
    widths = [u.width for u in model_view(result.model).units]
    assert widths == [u.width for u in model_view(parents[reference]).units]
    assert _max_error(result.model, narrow) < 1e-4
    shapes = [m.shape for m in result.membership["hidden.0"]]
    assert shapes == [(40, widths[0]), (20, widths[0])]


def test_a_parent_with_weight_zero_takes_no_part():
    model, other = random_model("mlp:40-30-20", seed=8), random_model("mlp:40-30-20", seed=9)
    result = _fuse([model, other], reference=1, weights=[1.0, 0.0])
    assert _max_error(result.model, model) < 1e-4
    assert not result.membership["hidden.0"][1].any()
    mixed = _fuse([model, other], reference=1).model
    assert _max_error(mixed, model) > 1e-2 and _max_error(mixed, other) > 1e-2   # not silently one parent


@pytest.mark.parametrize("spec", ["vgg:8-M-16-bn", "resnet:1-1-1-1@8-8-16-16"])
def test_batchnorm_is_written_in_canonical_form(spec):
    """Fused BN statistics are (a row sample of) the fused conv's output statistics on D, so that
    recomputing them on D — the pipeline's BN reset — barely moves the fused model's outputs."""
    model, other = random_model(spec, seed=1), random_model(spec, seed=2)
    fused = _fuse([model, other]).model
    with torch.no_grad():
        before = fused(X_FRESH)
        reset_batchnorm(fused, TensorDataset(X, Y))
        after = fused(X_FRESH)
    assert (after - before).abs().max() < 0.05 * before.abs().max()


def test_residual_streams_share_one_grouping():
    """Every layer writing a residual stream follows the grouping its first writer chose."""
    model, other = random_model("resnet:2-1-2-1@8-16-16-24", seed=1), random_model("resnet:2-1-2-1@8-16-16-24", seed=2)
    result = _fuse([model, other])
    shared = [d for d in result.diagnostics if d.get("shared_grouping")]
    assert {d["group"] for d in shared} == {"stream1", "stream3"}   # the streams with identity blocks
    assert [d["layers"] for d in result.diagnostics if d["group"] == "stream2"] == [["layer2.0.conv2", "layer2.0.downsample.0"]]
    for d in shared:
        first = next(e for e in result.diagnostics if e["group"] == d["group"])
        assert d["cluster_sizes"] == first["cluster_sizes"]


def _deeplift_rescale(model, inputs, labels):
    """DeepLIFT's rescale rule with a zero baseline on a bias-free ReLU MLP, written out in numpy.

    With every reference activation 0, the multiplier of a ReLU is Δy/Δx = relu(z)/z, linear layers
    pass their weights back, and neuron j's contribution to the target logit is Δz_j · m_j.
    """
    weights = [layer.weight.detach().double().numpy() for layer in [*model.hidden, model.head]]
    out = {}
    for n, (x, y) in enumerate(zip(inputs.flatten(1).double().numpy(), labels.numpy())):
        pre, h = [], x
        for w in weights[:-1]:
            pre.append(w @ h)
            h = np.maximum(pre[-1], 0)
        multiplier = np.eye(weights[-1].shape[0])[y] @ weights[-1]
        for i in reversed(range(len(pre))):
            z = pre[i]
            rescale = np.divide(np.maximum(z, 0), z, out=np.zeros_like(z), where=z != 0)
            multiplier_z = multiplier * rescale
            out.setdefault(f"hidden.{i}", []).append(z * multiplier_z)
            multiplier = multiplier_z @ weights[i]
    return {name: np.array(rows) for name, rows in out.items()}


def test_conductance_equals_deeplift_on_a_bias_free_relu_net():
    model = random_model("mlp:40-30-20-nobias", seed=10)
    attributions = neuron_attributions(model, X[:64], Y[:64])
    oracle = _deeplift_rescale(model, X[:64], Y[:64])
    assert set(attributions) == set(oracle)
    for name, values in attributions.items():
        np.testing.assert_allclose(values.double().numpy(), oracle[name], atol=1e-5)
        with torch.no_grad():   # completeness: every layer's attributions sum to the true-class logit
            logit = model(X[:64]).gather(1, Y[:64, None])[:, 0]
        np.testing.assert_allclose(values.sum(1).numpy(), logit.numpy(), atol=1e-4)


@torch.no_grad()
def _bias_free_resnet():
    """A ResNet whose BatchNorms are the identity and whose head has no bias: a bias-free ReLU net."""
    model = random_model("resnet:1-1-1-1@8-8-16-16", seed=3, randomise_bn=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.fill_(1.0), module.bias.zero_(), module.running_mean.zero_(), module.running_var.fill_(1.0)
    model.fc.bias.zero_()
    return model


def test_conductance_of_residual_streams_is_complete():
    """At every cut through a bias-free ReLU ResNet (the stem, each block's pre-ReLU sum) the
    attributions add up to the true-class logit — so a block's last conv is credited with the whole
    stream (its BatchNorm output plus the shortcut), not with its BatchNorm output alone."""
    model = _bias_free_resnet()
    attributions = neuron_attributions(model, X[:32], Y[:32])
    with torch.no_grad():
        logit = model(X[:32]).gather(1, Y[:32, None])[:, 0]
    cuts = [name for name in attributions if name == "conv1" or name.endswith("conv2")]
    assert len(cuts) == 5
    for name in cuts:
        np.testing.assert_allclose(attributions[name].sum(1).numpy(), logit.numpy(), rtol=1e-4, atol=1e-4)


def test_conductance_importance_changes_the_grouping():
    model, other = random_model("mlp:40-30-20", seed=11), random_model("mlp:40-30-20", seed=12)
    uniform = _fuse([model, other], importance="uniform")
    conductance = _fuse([model, other], importance="conductance")
    scores = conductance.importance["hidden.0"][0]
    assert abs(scores.sum() - 0.5) < 1e-9 and scores.std() > 0        # normalised per parent × its weight
    assert not all(np.array_equal(a, b) for a, b in zip(uniform.membership["hidden.0"],
                                                        conductance.membership["hidden.0"]))


# ------------------------------------------------------------------- the grouping algorithms alone


def _cost_of(labels, fits, targets, importance):
    """Σ_groups Σ_{j∈group} s_j ‖centre − target_j‖ with importance-weighted centres of the fits (−1: left out)."""
    labels, fits, targets, importance = (np.asarray(v) for v in (labels, fits, targets, importance))
    total = 0.0
    for c in set(labels.tolist()) - {-1}:
        members = labels == c
        centre = importance[members] @ fits[members] / importance[members].sum()
        total += float(importance[members] @ np.linalg.norm(centre - targets[members], axis=1))
    return total


def test_kmeans_finds_the_brute_force_optimum_on_separated_groups():
    rng = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    fits = centres[[0, 0, 0, 1, 1, 1, 2, 2]] + 0.5 * torch.randn(8, 2, generator=rng, dtype=torch.float64)
    targets = fits + 0.1 * torch.randn(8, 2, generator=rng, dtype=torch.float64)
    importance = torch.rand(8, generator=rng, dtype=torch.float64) + 0.1
    grouping = weighted_kmeans(fits, targets, torch.zeros(8, dtype=torch.float64), importance, 3)
    best = min(_cost_of(labels, fits, targets, importance)
               for labels in itertools.product(range(3), repeat=8) if len(set(labels)) == 3)
    assert grouping.cost == pytest.approx(best, rel=1e-9)
    assert grouping.cost == pytest.approx(_cost_of(grouping.labels, fits, targets, importance), rel=1e-9)


def test_kmeans_result_is_a_lloyd_fixed_point_without_empty_groups():
    rng = torch.Generator().manual_seed(4)
    fits = torch.randn(60, 5, generator=rng, dtype=torch.float64)
    targets = fits + 0.3 * torch.randn(60, 5, generator=rng, dtype=torch.float64)
    importance = torch.rand(60, generator=rng, dtype=torch.float64) + 0.1
    grouping = weighted_kmeans(fits, targets, torch.zeros(60, dtype=torch.float64), importance, 12, iterations=200)
    assert grouping.converged
    assert torch.bincount(grouping.labels, minlength=12).min() >= 1
    centres = torch.stack([(importance[grouping.labels == c, None] * fits[grouping.labels == c]).sum(0)
                           / importance[grouping.labels == c].sum() for c in range(12)])
    nearest = torch.cdist(targets, centres).argmin(1)
    assert torch.equal(nearest, grouping.labels)


@pytest.mark.parametrize("other_width", [3, 4, 5])
def test_one_to_one_matching_is_optimal_by_brute_force(other_width):
    rng = torch.Generator().manual_seed(other_width)
    n = 4
    fits = torch.randn(n + other_width, 3, generator=rng, dtype=torch.float64)
    targets = fits + 0.5 * torch.randn(n + other_width, 3, generator=rng, dtype=torch.float64)
    importance = torch.rand(n + other_width, generator=rng, dtype=torch.float64) + 0.1
    reference, other = torch.arange(n), torch.arange(n, n + other_width)
    grouping = one_to_one(fits, targets, torch.zeros(n + other_width, dtype=torch.float64), importance, reference, other)
    assert torch.equal(grouping.labels[:n], torch.arange(n))
    best = float("inf")
    for partners in itertools.permutations(list(range(other_width)) + [-1] * max(0, n - other_width), n):
        labels = torch.full((n + other_width,), -1)
        labels[:n] = torch.arange(n)
        for i, j in enumerate(partners):
            if j >= 0:
                labels[n + j] = i
        best = min(best, _cost_of(labels, fits, targets, importance))
    assert grouping.cost == pytest.approx(best, rel=1e-9)


# ----------------------------------------------------------------------------- inputs and errors


def test_fusion_batch_is_class_balanced_and_never_uses_the_test_split(digits):
    inputs, labels = fusion_batch(digits, 500, seed=1)
    assert len(inputs) == 500
    assert torch.bincount(labels, minlength=10).tolist() == [50] * 10
    pool_rows = {tuple(row.tolist()) for row in torch.cat([digits.train.tensors[0], digits.val.tensors[0]]).flatten(1)}
    drawn = {tuple(row.tolist()) for row in inputs.flatten(1)}
    assert drawn <= pool_rows


@pytest.mark.parametrize("options, message", [
    (dict(grouping="spectral"), "Unknown grouping"), (dict(importance="shap"), "Unknown importance"),
    (dict(ridge=-1.0), "non-negative"), (dict(fusion_size=2), "at least 5"), (dict(restarts=0), "at least 1 restart"),
])
def test_bad_options_say_what_to_choose(options, message):
    with pytest.raises(AlignmentError, match=message):
        InterpOptions(**options)


def test_bad_calls_say_what_to_do():
    model = random_model("mlp:40-30-20")
    with pytest.raises(AlignmentError, match="summing to 1"):
        _fuse([model, model], weights=[0.7, 0.7])
    with pytest.raises(AlignmentError, match="same layers"):
        _fuse([model, random_model("mlp:40-30")])
    with pytest.raises(AlignmentError, match="exactly two parents"):
        _fuse([model, model, model], grouping="hungarian")
    with pytest.raises(FusionError, match="at least 5 samples"):
        _fuse([model, model], inputs=X[:3], labels=Y[:3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fusing_on_cuda_matches_the_cpu():
    model, other = random_model("vgg:8-M-16-bn", seed=1), random_model("vgg:8-M-16-bn", seed=2)
    on_cpu = _fuse([model, other]).model
    cuda = torch.device("cuda")
    on_gpu = interpolation_fuse([model.to(cuda), other.to(cuda)], 1, [0.5, 0.5], X.to(cuda), Y.to(cuda)).model
    assert _max_error(on_gpu.cpu(), on_cpu) < 1e-3
