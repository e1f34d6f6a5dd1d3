import numpy as np
import pytest
import torch

from clafusion_core.errors import AlignmentError
from clafusion_core.methods import METHODS, FusionBatch
from clafusion_core.otfusion import OTOptions, align_onto, fuse_models, transport_plan
from model_utils import permuted_copy, random_model

X = torch.randn(256, 1, 8, 8)
SPECS = {"mlp": "mlp:40-30-20", "mlp-nobias": "mlp:40-30-nobias", "cnn": "vgg:8-8-M-16-M-24/20",
         "cnn-bn": "vgg:8-M-16-16-M-24-bn/20", "resnet-bn": "resnet:2-1-2-1@8-16-16-24"}


def _fuse(model_a, model_b, fusion_weight=0.5, **options):
    """A onto B through the registered OT method (the path the pipeline takes)."""
    return METHODS["ot"].fuse([model_a, model_b], 1, [1 - fusion_weight, fusion_weight], FusionBatch(X),
                              OTOptions(**options))


@pytest.mark.parametrize("ground_metric", ["weights", "activations"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_fusing_a_permuted_copy_gives_the_model_back(spec, ground_metric):
    model = random_model(spec)
    permuted = permuted_copy(model, seed=3)
    with torch.no_grad():
        assert not torch.allclose(permuted.state_dict()[next(iter(permuted.state_dict()))],
                                  model.state_dict()[next(iter(model.state_dict()))])
        fused = _fuse(permuted, model, ground_metric=ground_metric).model
        assert (fused(X) - model(X)).abs().max() < 1e-4


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_without_input_correction_the_permuted_copy_is_not_recovered(spec):
    model = random_model(spec)
    permuted = permuted_copy(model, seed=3)
    with torch.no_grad():
        fused = _fuse(permuted, model, ground_metric="weights", input_correction=False).model
        reference = model(X)
        assert (fused(X) - reference).abs().max() > 0.1 * reference.abs().max()


def test_the_weights_ground_metric_is_plain_or_squared_euclidean():
    """Neurons as points (weight rows, bias appended): A at 0 and p, B at 0 and q, with |p| = |q| = 1.6 and
    |p − q| = 3. Plain distances keep the pairs (0 + 3 < 1.6 + 1.6), squared ones swap them (1.6² + 1.6² < 3²):
    each plan is POT's exact one for the costs ``squared`` chooses."""
    import ot

    sine = 0.9375                                   # |p − q| = 2 · 1.6 · sine = 3
    points = {"a": [[0.0, 0.0], [1.6 * (1 - sine ** 2) ** 0.5, 1.6 * sine]],
              "b": [[0.0, 0.0], [1.6 * (1 - sine ** 2) ** 0.5, -1.6 * sine]]}
    models = {}
    for key, seed in (("a", 1), ("b", 2)):
        models[key] = random_model("mlp:2", seed=seed)
        with torch.no_grad():
            models[key].hidden[0].weight.zero_()[:, :2] = torch.tensor(points[key])
            models[key].hidden[0].bias.zero_()
    distances = np.linalg.norm(np.array(points["a"])[:, None] - np.array(points["b"])[None], axis=2)
    for squared, kept in ((False, True), (True, False)):
        plan = align_onto(models["a"], models["b"], OTOptions(ground_metric="weights", squared=squared)).plans["hidden.0"]
        expected = ot.emd(np.full(2, 0.5), np.full(2, 0.5), distances ** 2 if squared else distances)
        assert np.abs(plan - expected).max() < 1e-6
        assert np.allclose(plan, 0.5 * np.eye(2) if kept else 0.5 * np.eye(2)[::-1]), squared


@pytest.mark.parametrize("ground_metric", ["weights", "activations"])
def test_weight_zero_gives_the_aligned_a_which_computes_a(ground_metric):
    """s = 0 must give model A re-indexed onto B's neurons: for equal widths, exactly A's function."""
    model_a, model_b = random_model("mlp:40-30-20", seed=1), random_model("mlp:40-30-20", seed=2)
    with torch.no_grad():
        fused = _fuse(model_a, model_b, ground_metric=ground_metric, fusion_weight=0.0).model
        assert (fused(X) - model_a(X)).abs().max() < 1e-4
        fused_b = _fuse(model_a, model_b, ground_metric=ground_metric, fusion_weight=1.0).model
        assert (fused_b(X) - model_b(X)).abs().max() < 1e-5
        middle = _fuse(model_a, model_b, ground_metric=ground_metric).model
        assert (middle(X) - model_b(X)).abs().max() > 1e-2   # the fusion is not silently B


@pytest.mark.parametrize("widths", [("mlp:60-30", "mlp:20-10"), ("mlp:20-10", "mlp:60-30")])
def test_different_widths_take_the_target_widths(widths):
    model_a, model_b = random_model(widths[0], seed=1), random_model(widths[1], seed=2)
    fused = _fuse(model_a, model_b, ground_metric="activations")
    assert str(fused.model.spec) == widths[1]
    for group, plan in fused.plans(0).items():
        n_a = model_a.get_submodule(group).out_features
        n_b = model_b.get_submodule(group).out_features
        assert plan.shape == (n_a, n_b)
        np.testing.assert_allclose(plan.sum(1), np.full(n_a, 1 / n_a), atol=1e-9)
        np.testing.assert_allclose(plan.sum(0), np.full(n_b, 1 / n_b), atol=1e-9)


def test_sum_scaling_preserves_a_function_split_over_a_wider_target():
    """A neuron split over k target neurons: summing its outgoing weights over the copies (÷k each)
    keeps the function; averaging them (the reference behaviour) multiplies its contribution by k."""
    model_a = random_model("mlp:10", seed=1)
    model_b = random_model("mlp:30", seed=2)
    with torch.no_grad():
        out_sum = _fuse(model_a, model_b, ground_metric="weights", fusion_weight=0.0, input_scaling="sum").model(X)
        out_avg = _fuse(model_a, model_b, ground_metric="weights", fusion_weight=0.0, input_scaling="average").model(X)
        reference = model_a(X)
    assert (out_sum - reference).abs().max() < 1e-4
    assert (out_avg - reference).abs().max() > 1e-2


@pytest.mark.parametrize("seed", range(5))
def test_exact_and_sinkhorn_plans_agree_on_small_problems(seed):
    rng = np.random.default_rng(seed)
    cost = torch.tensor(rng.random((12, 9)))
    alpha, beta = torch.full((12,), 1 / 12, dtype=torch.float64), torch.full((9,), 1 / 9, dtype=torch.float64)
    exact, warning = transport_plan(cost, alpha, beta, "emd")
    entropic, _ = transport_plan(cost, alpha, beta, "sinkhorn", reg=0.005)
    assert warning is None
    for plan in (exact, entropic):
        assert torch.allclose(plan.sum(1), alpha, atol=1e-6)
        assert torch.allclose(plan.sum(0), beta, atol=1e-6)
    normalised = cost / cost.max()
    assert abs((exact * normalised).sum() - (entropic * normalised).sum()) < 0.01
    assert (exact - entropic).abs().sum() < 0.2


def test_sinkhorn_non_convergence_is_reported():
    cost = torch.rand(50, 50, dtype=torch.float64)
    uniform = torch.full((50,), 1 / 50, dtype=torch.float64)
    _, warning = transport_plan(cost, uniform, uniform, "sinkhorn", reg=1e-4)
    assert warning  # the caller gets the solver's complaint instead of a silent bad plan


def test_mismatched_layers_are_refused():
    with pytest.raises(AlignmentError, match="balance"):
        _fuse(random_model("mlp:10-10"), random_model("mlp:10"), ground_metric="weights")


@pytest.mark.parametrize("bad", [{"solver": "hungarian"}, {"sinkhorn_reg": 0.0}, {"ground_conv_features": "mean"}])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(AlignmentError):
        OTOptions(**bad)


def test_a_fusion_weight_outside_0_1_is_a_user_error():
    with pytest.raises(AlignmentError, match="between 0"):
        fuse_models(random_model("mlp:10"), random_model("mlp:10"), OTOptions(ground_metric="weights"), weight_b=1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_cpu_and_cuda_fusions_agree(spec):
    model_a, model_b = random_model(spec, seed=1), random_model(spec, seed=2)
    cpu = _fuse(model_a, model_b, ground_metric="weights").model
    gpu = fuse_models(model_a.cuda(), model_b.cuda(), OTOptions(ground_metric="weights"))[0]
    with torch.no_grad():
        assert torch.allclose(cpu(X), gpu(X.cuda()).cpu(), atol=1e-4)
