"""Layer cost metrics: known values, invariances, degenerate layers, shapes and errors."""

import time

import numpy as np
import pytest
import torch

from clafusion_core import similarity
from clafusion_core.errors import FusionError
from clafusion_core.similarity import (
    METRIC_LABELS,
    METRICS,
    cca_similarity,
    cost_matrix,
    debiased_cka,
    layer_widths_cost,
    linear_cka,
    rbf_cka,
)

DATA_METRICS = [m for m in METRICS if m != "width"]
PAIRWISE = {"linear_cka": linear_cka, "debiased_cka": debiased_cka, "rbf_cka": rbf_cka, "cca": cca_similarity}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run this module single-threaded: slower than the 2-core target for the timing test, but immune
    to the collapse of torch's OpenMP pool when other processes share the CPU (small ops then take
    10-100x longer), which made timings and the module's run time erratic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _relu_layers(widths, n=120, d_in=30, seed=0, x=None):
    """Activations of a random ReLU MLP on a shared probe batch."""
    g = _gen(seed)
    h = torch.randn(n, d_in, generator=_gen(1000)) if x is None else x
    out = []
    for w in widths:
        h = torch.relu(h @ torch.randn(h.shape[1], w, generator=g) / h.shape[1] ** 0.5)
        out.append(h)
    return out


def _orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=torch.float64))
    return q


def test_metric_names_and_labels():
    assert METRICS == ("linear_cka", "debiased_cka", "rbf_cka", "cca", "wasserstein", "width")
    assert set(METRIC_LABELS) == set(METRICS)
    assert all(isinstance(v, str) and v for v in METRIC_LABELS.values())


@pytest.mark.parametrize("metric", ["linear_cka", "debiased_cka", "rbf_cka", "cca"])
def test_layer_against_itself_has_zero_cost(metric):
    x = torch.randn(80, 20, generator=_gen(1))
    assert PAIRWISE[metric](x, x) == pytest.approx(1.0, abs=1e-9)
    c = cost_matrix([x], [x], metric)
    assert c[0, 0] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("metric", ["linear_cka", "rbf_cka", "debiased_cka", "cca"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(metric):
    g = _gen(2)
    x = torch.randn(60, 12, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(12, 8, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(60, 8, generator=g, dtype=torch.float64)
    f = PAIRWISE[metric]
    base = f(x, y)
    assert 0.05 < base < 0.999  # a non-trivial value, so invariance is a real check
    assert f(x @ _orthogonal(12, 3) * 7.5, y) == pytest.approx(base, abs=1e-9)
    assert f(x, 0.01 * y @ _orthogonal(8, 4)) == pytest.approx(base, abs=1e-9)


def test_linear_cka_matches_feature_space_formula():
    g = _gen(5)
    x = torch.randn(70, 15, generator=g, dtype=torch.float64) + 3.0
    y = x[:, :9] ** 2 + torch.randn(70, 9, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = torch.linalg.norm(yc.T @ xc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(float(expected), abs=1e-12)
    assert 1 - cost_matrix([x], [y], "linear_cka")[0, 0] == pytest.approx(float(expected), abs=1e-12)


def _hsic_unbiased(k, l):
    """Song et al. 2012, eq. (5), written term by term."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def test_debiased_cka_matches_unbiased_hsic_formula():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 60))  # fewer samples than features
    y = x[:, :30] @ rng.normal(size=(30, 50)) + rng.normal(size=(40, 50)) * 3
    k, l = x @ x.T, y @ y.T  # uncentred: the unbiased estimator needs no centring
    expected = _hsic_unbiased(k, l) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(l, l))
    assert 0.05 < expected < 0.95
    assert debiased_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, abs=1e-10)


def test_debiased_cka_close_to_linear_cka_for_many_samples():
    g = _gen(7)
    x = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, 3, generator=g, dtype=torch.float64) + torch.randn(2000, 3, generator=g, dtype=torch.float64)
    lin, deb = linear_cka(x, y), debiased_cka(x, y)
    assert 0.2 < lin < 0.9
    assert deb == pytest.approx(lin, abs=0.01)


def test_debiased_cka_removes_bias_when_samples_fewer_than_features():
    g = _gen(8)
    x, y = torch.randn(50, 500, generator=g), torch.randn(50, 500, generator=g)  # independent layers
    assert linear_cka(x, y) > 0.5  # the plug-in estimator is badly biased here
    assert debiased_cka(x, y) < 0.05


def test_cca_invariant_to_invertible_linear_transform():
    g = _gen(9)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    a = _orthogonal(10, 10) @ torch.diag(torch.linspace(0.5, 2.0, 10, dtype=torch.float64)) @ _orthogonal(10, 11)
    assert cost_matrix([x], [x @ a + 4.0], "cca")[0, 0] == pytest.approx(0.0, abs=1e-9)
    y = torch.randn(300, 10, generator=g, dtype=torch.float64)
    assert cost_matrix([x], [y], "cca")[0, 0] > 0.8  # unrelated layers are far apart


def test_wasserstein_zero_for_permuted_and_scaled_copies():
    x = _relu_layers([40], seed=11)[0]
    perm = torch.randperm(40, generator=_gen(12))
    other = _relu_layers([40], seed=13)
    c = cost_matrix([x], [x[:, perm], 3.7 * x, other[0]], "wasserstein")
    assert c[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert c[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert c[0, 2] == pytest.approx(1.0)  # the only non-zero entry is the max


def test_wasserstein_matches_pot_on_rms_scaled_neurons():
    import ot

    g = _gen(14)
    x, y = torch.rand(30, 7, generator=g, dtype=torch.float64), torch.rand(30, 5, generator=g, dtype=torch.float64) * 4
    xs = (x / torch.sqrt((x**2).mean())).T.numpy()
    ys = (y / torch.sqrt((y**2).mean())).T.numpy()
    m = ot.dist(xs, ys, metric="euclidean")
    expected = ot.emd2(np.full(7, 1 / 7), np.full(5, 1 / 5), m)
    assert similarity.wasserstein_cost(x, y) == pytest.approx(expected, rel=1e-9)


def test_width_cost_matches_formula():
    wa, wb = [400, 200, 100, 50, 25], [400, 200, 100]
    expected = np.array([[abs(a - b) / 400 for b in wb] for a in wa])
    np.testing.assert_allclose(layer_widths_cost(wa, wb), expected)
    acts_a = [torch.zeros(3, w) for w in wa]
    acts_b = [torch.ones(3, w) for w in wb]
    np.testing.assert_allclose(cost_matrix(acts_a, acts_b, "width"), expected)
    np.testing.assert_allclose(layer_widths_cost([8, 16], [32]), [[24 / 32], [16 / 32]])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("la", "lb"), [(3, 2), (1, 1), (2, 4), (0, 3), (2, 0)])
def test_cost_matrix_shape(metric, la, lb):
    acts = _relu_layers([12, 9, 7, 5], n=20)
    c = cost_matrix(acts[:la], acts[:lb], metric)
    assert c.shape == (la, lb) and c.dtype == np.float64


@pytest.mark.parametrize("metric", METRICS)
def test_values_in_unit_interval_on_real_layers(metric):
    acts_a = _relu_layers([40, 30, 20, 10, 5], seed=1)
    acts_b = _relu_layers([40, 20, 10], seed=2)
    c = cost_matrix(acts_a, acts_b, metric)
    assert np.all(np.isfinite(c)) and c.min() >= 0.0 and c.max() <= 1.0
    assert c.std() > 0.01  # the metric tells layers apart


@pytest.mark.parametrize("metric", METRICS)
def test_dead_neurons_and_constant_layers_stay_finite(metric):
    g = _gen(15)
    live = torch.relu(torch.randn(50, 12, generator=g))
    with_dead = live.clone()
    with_dead[:, :5] = 0.0  # dead neurons inside a live layer
    all_dead = torch.zeros(50, 8)
    constant = torch.full((50, 6), 2.5)
    constant_f64 = torch.full((50, 6), 0.1, dtype=torch.float64)  # 0.1 * 50 / 50 is not exact in float64
    layers = [live, with_dead, all_dead, constant, constant_f64]
    c = cost_matrix(layers, layers, metric)
    assert np.all(np.isfinite(c)) and c.min() >= 0.0 and c.max() <= 1.0
    if metric in PAIRWISE:
        # documented: a layer constant over the samples has cost 1 to every layer, itself included
        assert np.all(c[2:, :] == 1.0) and np.all(c[:, 2:] == 1.0)
        assert c[0, 1] < 0.9  # dead neurons do not break the comparison of the live ones


@pytest.mark.parametrize("metric", ["linear_cka", "debiased_cka", "rbf_cka", "cca"])
def test_cost_matrix_agrees_with_pairwise_functions(metric):
    acts_a = _relu_layers([25, 15, 8], seed=3)
    acts_b = _relu_layers([20, 10], seed=4)
    c = cost_matrix(acts_a, acts_b, metric)
    expected = [[1 - PAIRWISE[metric](x, y) for y in acts_b] for x in acts_a]
    np.testing.assert_allclose(c, expected, atol=1e-10)


def test_rbf_sigma_changes_the_kernel():
    acts_a = _relu_layers([25, 15], seed=3)
    acts_b = _relu_layers([20, 10], seed=4)
    c1 = cost_matrix(acts_a, acts_b, "rbf_cka", rbf_sigma=0.8)
    c2 = cost_matrix(acts_a, acts_b, "rbf_cka", rbf_sigma=5.0)
    assert np.abs(c1 - c2).max() > 1e-3
    np.testing.assert_allclose(1 - c2[0, 0], rbf_cka(acts_a[0], acts_b[0], sigma=5.0), atol=1e-12)
    with pytest.raises(FusionError, match="sigma"):
        cost_matrix(acts_a, acts_b, "rbf_cka", rbf_sigma=0.0)


def test_accepts_numpy_float32_and_conv_shaped_activations():
    x = torch.relu(torch.randn(16, 4, 3, 3, generator=_gen(16)))
    c = cost_matrix([x.numpy(), x.float()], [x.double().reshape(16, -1)], "linear_cka")
    np.testing.assert_allclose(c, 0.0, atol=1e-9)


def test_unknown_metric_raises_fusion_error_listing_metrics():
    acts = _relu_layers([5], n=10)
    with pytest.raises(FusionError, match="linear_cka.*width"):
        cost_matrix(acts, acts, "cosine")


def test_bad_activations_raise_fusion_error():
    good = torch.randn(10, 4)
    with pytest.raises(FusionError, match="same probe batch"):
        cost_matrix([good], [torch.randn(11, 4)], "linear_cka")
    bad = good.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FusionError, match="NaN"):
        cost_matrix([good], [bad], "cca")
    with pytest.raises(FusionError, match="shape"):
        cost_matrix([torch.randn(10)], [good], "linear_cka")
    with pytest.raises(FusionError, match="at least 4"):
        cost_matrix([torch.randn(3, 4)], [torch.randn(3, 2)], "debiased_cka")


@pytest.mark.parametrize("metric", METRICS)
def test_full_matrix_is_fast(metric):
    # the app switches metrics live: 5 vs 3 layers, widths up to 400, 200 probe samples
    x = torch.randn(200, 784, generator=_gen(17))
    acts_a = _relu_layers([400, 200, 100, 50, 25], seed=18, x=x)
    acts_b = _relu_layers([400, 200, 100], seed=19, x=x)
    cost_matrix(acts_a, acts_b, metric)  # warm-up
    best = min(_timed(cost_matrix, acts_a, acts_b, metric) for _ in range(5))
    assert best < 0.3, f"{metric}: {best:.3f} s"


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_matches_cpu(metric):
    acts_a = _relu_layers([30, 20, 10], seed=20)
    acts_b = _relu_layers([25, 10], seed=21)
    cpu = cost_matrix(acts_a, acts_b, metric)
    gpu = cost_matrix([a.cuda() for a in acts_a], [b.cuda() for b in acts_b], metric)
    np.testing.assert_allclose(gpu, cpu, atol=1e-8)
