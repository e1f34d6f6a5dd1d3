"""Layer cost metrics: how dissimilar the layers of two networks are.

Every metric compares the activations of two layers on one shared probe batch: ``acts[i]`` is an
``[n_samples, features_i]`` matrix whose rows are the same probe inputs for every layer of both
models. :func:`cost_matrix` turns two lists of such matrices into the cost matrix ``C`` that the
cross-layer alignment (:mod:`clafusion_core.alignment`) minimises over; ``C[i, j]`` lies in
``[0, 1]``, lower means more similar, and it is never NaN or infinite.

Degenerate layers. A layer whose activations do not vary over the probe batch (all neurons dead, or
every neuron constant) carries no information about the inputs: its centred Gram matrix is zero and
CKA / CCA are undefined (0 / 0). Those metrics define its similarity to *every* layer, itself
included, as 0, i.e. cost 1. Dead (all-zero) neurons inside an otherwise live layer are harmless: they
add nothing to the Gram matrix and are dropped by the CCA truncation. The Wasserstein metric compares
the neurons themselves, which are well defined for constant layers, so it needs no such rule.

The maths runs in float64 torch on the device of the first activation matrix (CPU for Apple ``mps``,
which has no float64); results come back as numpy arrays.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import ot
import torch

from .errors import FusionError

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "cost_matrix",
    "linear_cka",
    "debiased_cka",
    "rbf_cka",
    "cca_similarity",
    "wasserstein_cost",
    "layer_widths_cost",
]

METRICS: tuple[str, ...] = ("linear_cka", "debiased_cka", "rbf_cka", "cca", "wasserstein", "width")

METRIC_LABELS: dict[str, str] = {
    "linear_cka": "1 − linear CKA",
    "debiased_cka": "1 − debiased CKA",
    "rbf_cka": "1 − RBF CKA",
    "cca": "1 − mean squared CCA",
    "wasserstein": "Wasserstein distance of neurons (÷ max)",
    "width": "|width difference| ÷ max width",
}

# A centred layer whose Frobenius norm is below this fraction of the raw layer's norm is constant up
# to floating-point rounding (e.g. the mean of identical float64 values is not always exact).
_FLAT_RTOL = 1e-10
# Fraction of the variance kept by the CCA truncation (SVCCA, Raghu et al. 2017).
_CCA_VARIANCE = 0.99
# Network simplex iterations for ot.emd2; 400 x 400 problems need well under this.
_EMD_ITERMAX = 10_000_000


# ----------------------------------------------------------------------------------------------------
# input handling


def _device_of(x) -> torch.device:
    dev = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    return torch.device("cpu") if dev.type == "mps" else dev


def _as_matrix(x, device: torch.device, what: str = "activation matrix") -> torch.Tensor:
    """``x`` as a float64 ``[n_samples, features]`` tensor on ``device`` (extra dims flattened)."""
    t = torch.as_tensor(x).detach()
    if t.ndim < 2:
        raise FusionError(
            f"Each {what} must have shape [n_samples, features] (got shape {tuple(t.shape)}); "
            "pass one row per probe sample."
        )
    t = t.to(device=device, dtype=torch.float64).reshape(t.shape[0], -1)
    if t.shape[1] == 0:
        raise FusionError(f"A {what} has no features (shape {tuple(t.shape)}); pass layers with at least one neuron.")
    if not bool(torch.isfinite(t).all()):
        raise FusionError(
            f"A {what} contains NaN or infinite values; check the model's weights and the probe inputs."
        )
    return t


def _prepare(acts_a: Sequence, acts_b: Sequence) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both layer lists as float64 matrices on one device, checked to share the probe batch."""
    if isinstance(acts_a, torch.Tensor) or isinstance(acts_b, torch.Tensor):
        raise FusionError("Pass the activations as a list of per-layer matrices, not a single tensor.")
    acts_a, acts_b = list(acts_a), list(acts_b)
    first = (acts_a + acts_b)[:1]
    device = _device_of(first[0]) if first else torch.device("cpu")
    xs = [_as_matrix(x, device) for x in acts_a]
    ys = [_as_matrix(y, device) for y in acts_b]
    sizes = {int(t.shape[0]) for t in xs + ys}
    if len(sizes) > 1:
        raise FusionError(
            f"The activation matrices have different numbers of rows {sorted(sizes)}; "
            "compute every layer's activations on the same probe batch."
        )
    return xs, ys


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _prepare([x], [y])
    return xs[0], ys[0]


# ----------------------------------------------------------------------------------------------------
# per-layer features: each layer becomes one vector, all pairs are then one matrix product


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Column-centred ``x`` and whether the layer is constant over the samples."""
    xc = x - x.mean(dim=0, keepdim=True)
    flat = bool(torch.linalg.matrix_norm(xc) <= _FLAT_RTOL * torch.linalg.matrix_norm(x))
    return xc, flat


def _unit(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||``; the zero vector stays zero (a degenerate layer: similarity 0 to everything)."""
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def _double_centre(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11ᵀ/n``."""
    k = k - k.mean(dim=0, keepdim=True)
    return k - k.mean(dim=1, keepdim=True)


def _u_centre(k: torch.Tensor) -> torch.Tensor:
    """U-centring of a Gram matrix (Székely & Rizzo 2014), the unbiased HSIC's centring.

    With :math:`\\tilde K` = K with a zero diagonal, off the diagonal
    :math:`\\bar K_{ij} = \\tilde K_{ij} - \\frac{\\tilde K_{i\\cdot}}{n-2} - \\frac{\\tilde K_{\\cdot j}}{n-2}
    + \\frac{\\tilde K_{\\cdot\\cdot}}{(n-1)(n-2)}`, and :math:`\\bar K_{ii} = 0`.
    """
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0.0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means[:, None] - means[None, :]
    k.fill_diagonal_(0.0)
    return k


def _linear_feature(x: torch.Tensor) -> torch.Tensor:
    xc, flat = _centre(x)
    if flat:
        return torch.zeros(x.shape[0] ** 2, dtype=x.dtype, device=x.device)
    return _unit((xc @ xc.T).reshape(-1))


def _debiased_feature(x: torch.Tensor) -> torch.Tensor:
    xc, flat = _centre(x)
    if flat:
        return torch.zeros(x.shape[0] ** 2, dtype=x.dtype, device=x.device)
    return _unit(_u_centre(xc @ xc.T).reshape(-1))


def _rbf_feature(x: torch.Tensor, sigma: float) -> torch.Tensor:
    n = x.shape[0]
    xc, flat = _centre(x)
    if flat or n < 2:
        return torch.zeros(n * n, dtype=x.dtype, device=x.device)
    gram = xc @ xc.T
    sq_norms = torch.diagonal(gram)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram).clamp_min_(0.0)
    sq_dist.fill_diagonal_(0.0)
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    pairs = sq_dist[iu[0], iu[1]]
    med = torch.median(pairs)  # median squared distance = (median distance)²
    if med <= 0:  # more than half of the samples coincide: use the distinct pairs only
        pairs = pairs[pairs > 0]
        if pairs.numel() == 0:
            return torch.zeros(n * n, dtype=x.dtype, device=x.device)
        med = torch.median(pairs)
    k = torch.exp(-sq_dist / (2.0 * sigma**2 * med))
    return _unit(_double_centre(k).reshape(-1))


def _cka_stack(xs: Sequence[torch.Tensor], feature) -> torch.Tensor:
    if not xs:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.stack([feature(x) for x in xs])


def _cka_matrix(xs, ys, feature) -> np.ndarray:
    """All-pairs CKA: rows of unit-norm centred Grams, one matrix product."""
    fa, fb = _cka_stack(xs, feature), _cka_stack(ys, feature)
    if fa.shape[0] == 0 or fb.shape[0] == 0:
        return np.zeros((len(xs), len(ys)))
    return (fa @ fb.T).cpu().numpy()


def _cca_basis(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (n × k) of the top singular directions holding 99 % of the centred variance."""
    xc, flat = _centre(x)
    if flat:
        return xc[:, :0]
    n, d = xc.shape
    # The SVD xc = U S Vᵀ through the eigendecomposition of the smaller Gram matrix (eigenvalues S²):
    # several times faster than torch.linalg.svd here, and exact enough for the directions we keep,
    # which hold at least the top 99 % of the variance.
    if n <= d:
        var, vecs = torch.linalg.eigh(xc @ xc.T)  # vecs = U
    else:
        var, vecs = torch.linalg.eigh(xc.T @ xc)  # vecs = V, U = xc V / S
    var, vecs = var.flip(0), vecs.flip(1)  # descending
    # numerical rank first: directions at rounding level are noise, not signal
    var = var[var > var[0] * max(n, d) * torch.finfo(var.dtype).eps]
    cum = torch.cumsum(var, dim=0)
    k = min(int(torch.searchsorted(cum, _CCA_VARIANCE * cum[-1]).item()) + 1, var.numel())
    if n <= d:
        return vecs[:, :k]
    return (xc @ vecs[:, :k]) / torch.sqrt(var[:k])


def _cca_from_bases(ua: torch.Tensor, ub: torch.Tensor) -> float:
    k = min(ua.shape[1], ub.shape[1])
    if k == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(ua.T @ ub) ** 2 / k)


def _cca_matrix(xs, ys) -> np.ndarray:
    ba = [_cca_basis(x) for x in xs]
    bb = [_cca_basis(y) for y in ys]
    return np.array([[_cca_from_bases(ua, ub) for ub in bb] for ua in ba], dtype=np.float64).reshape(
        len(xs), len(ys)
    )


def _rms_scaled(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by its root-mean-square entry (an all-zero layer stays zero)."""
    rms = torch.linalg.matrix_norm(x) / math.sqrt(x.numel())
    return x / rms if rms > 0 else x


def _wasserstein_matrix(xs, ys) -> np.ndarray:
    """Unnormalised exact OT costs between the neuron clouds of every pair of layers."""
    out = np.zeros((len(xs), len(ys)))
    if not xs or not ys:
        return out
    # neurons are the columns: one point in R^n_samples per neuron
    pa = torch.cat([_rms_scaled(x).T for x in xs])
    pb = torch.cat([_rms_scaled(y).T for y in ys])
    dist = ot.dist(pa, pb, metric="euclidean").cpu().numpy()  # every pair of layers in one call
    oa = np.cumsum([0] + [x.shape[1] for x in xs])
    ob = np.cumsum([0] + [y.shape[1] for y in ys])
    for i in range(len(xs)):
        wa = np.full(oa[i + 1] - oa[i], 1.0 / (oa[i + 1] - oa[i]))
        for j in range(len(ys)):
            wb = np.full(ob[j + 1] - ob[j], 1.0 / (ob[j + 1] - ob[j]))
            block = np.ascontiguousarray(dist[oa[i] : oa[i + 1], ob[j] : ob[j + 1]])
            out[i, j] = float(ot.emd2(wa, wb, block, numItermax=_EMD_ITERMAX))
    return out


def _checked_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise FusionError(f"The RBF bandwidth factor sigma must be a positive number (got {sigma}).")
    return sigma


def _clip_similarity(s: float) -> float:
    return float(min(max(s, 0.0), 1.0)) if math.isfinite(s) else 0.0


# ----------------------------------------------------------------------------------------------------
# public pairwise similarities


def linear_cka(x, y) -> float:
    r"""Linear centred kernel alignment of two layers (a similarity in [0, 1]).

    .. math::
        \mathrm{CKA}(X, Y) = \frac{\langle K_c, L_c \rangle_F}{\|K_c\|_F \, \|L_c\|_F},
        \qquad K_c = H X X^\top H,\; L_c = H Y Y^\top H,\; H = I_n - \tfrac{1}{n}\mathbf{1}\mathbf{1}^\top

    which equals :math:`\|Y_c^\top X_c\|_F^2 / (\|X_c^\top X_c\|_F \|Y_c^\top Y_c\|_F)` for
    column-centred :math:`X_c, Y_c`. It is invariant to orthogonal transforms and isotropic scaling of
    either layer. A layer that is constant over the samples has similarity 0 to every layer.

    Parameters
    ----------
    x : (n, p) tensor or array
        Activations of the first layer, one row per probe sample.
    y : (n, q) tensor or array
        Activations of the second layer on the same samples.

    Returns
    -------
    similarity : float
        Linear CKA in [0, 1]; 1 means the representations agree up to rotation and scale.

    References
    ----------
    Kornblith, Norouzi, Lee, Hinton. Similarity of Neural Network Representations Revisited. ICML 2019.
    """
    x, y = _pair(x, y)
    return _clip_similarity(float(_linear_feature(x) @ _linear_feature(y)))


def debiased_cka(x, y) -> float:
    r"""CKA with the unbiased HSIC estimator (a similarity in [0, 1]); valid when samples < features.

    .. math::
        \mathrm{CKA}_u(X, Y) = \frac{\mathrm{HSIC}_u(K, L)}{\sqrt{\mathrm{HSIC}_u(K, K)\,\mathrm{HSIC}_u(L, L)}},
        \qquad K = X_c X_c^\top,\; L = Y_c Y_c^\top

    .. math::
        \mathrm{HSIC}_u(K, L) = \frac{1}{n(n-3)} \Big[ \mathrm{tr}(\tilde K \tilde L)
        + \frac{\mathbf{1}^\top \tilde K \mathbf{1}\, \mathbf{1}^\top \tilde L \mathbf{1}}{(n-1)(n-2)}
        - \frac{2}{n-2} \mathbf{1}^\top \tilde K \tilde L \mathbf{1} \Big]

    where :math:`\tilde K, \tilde L` are the Gram matrices with zeroed diagonals. It is computed as the
    cosine between U-centred Gram matrices, which is the same ratio. The estimator can be slightly
    negative for unrelated layers; the result is clipped to [0, 1]. Needs n ≥ 4 samples.

    Parameters
    ----------
    x : (n, p) tensor or array
        Activations of the first layer, one row per probe sample.
    y : (n, q) tensor or array
        Activations of the second layer on the same samples.

    Returns
    -------
    similarity : float
        Debiased linear CKA clipped to [0, 1].

    References
    ----------
    Song, Smola, Gretton, Bedo, Borgwardt. Feature Selection via Dependence Maximization. JMLR 2012.
    Nguyen, Raghu, Kornblith. Do Wide and Deep Networks Learn the Same Things? ICLR 2021.
    """
    x, y = _pair(x, y)
    _check_debiased_samples(x.shape[0])
    return _clip_similarity(float(_debiased_feature(x) @ _debiased_feature(y)))


def rbf_cka(x, y, sigma: float = 0.8) -> float:
    r"""CKA with a Gaussian (RBF) kernel (a similarity in [0, 1]).

    .. math::
        K_{ij} = \exp\!\Big(-\frac{\|x_i - x_j\|^2}{2 h_X^2}\Big), \qquad
        h_X = \sigma \cdot \mathrm{median}_{i<j} \|x_i - x_j\|,
        \qquad \mathrm{CKA} = \frac{\langle H K H, H L H \rangle_F}{\|H K H\|_F \|H L H\|_F}

    (the same for :math:`L` on Y). The bandwidth scales with each layer's own median distance, so the
    value is invariant to isotropic scaling and orthogonal transforms. If more than half of the sample
    pairs coincide, the median is taken over the distinct pairs; a constant layer has similarity 0.

    Parameters
    ----------
    x : (n, p) tensor or array
        Activations of the first layer, one row per probe sample.
    y : (n, q) tensor or array
        Activations of the second layer on the same samples.
    sigma : float, optional (default=0.8)
        Bandwidth as a fraction of the median pairwise distance.

    Returns
    -------
    similarity : float
        RBF CKA in [0, 1].

    References
    ----------
    Kornblith, Norouzi, Lee, Hinton. Similarity of Neural Network Representations Revisited. ICML 2019.
    """
    sigma = _checked_sigma(sigma)
    x, y = _pair(x, y)
    return _clip_similarity(float(_rbf_feature(x, sigma) @ _rbf_feature(y, sigma)))


def cca_similarity(x, y) -> float:
    r"""Mean squared canonical correlation after SVD truncation (SVCCA; a similarity in [0, 1]).

    Each column-centred layer is reduced to the orthonormal basis :math:`U_X` (n × k_X) of its top left
    singular vectors that hold 99 % of its variance; the canonical correlations
    :math:`\rho_1 \ge \dots \ge \rho_k` are the singular values of :math:`U_X^\top U_Y`, and

    .. math::
        \bar\rho^2 = \frac{1}{\min(k_X, k_Y)} \sum_{i} \rho_i^2
                   = \frac{\|U_X^\top U_Y\|_F^2}{\min(k_X, k_Y)}.

    It is invariant to any invertible linear transform that keeps the truncated subspace (exactly so
    when no direction is truncated). Like all CCA measures it saturates when a layer's kept rank
    approaches the number of samples: use more probe samples than the layers' effective ranks. A
    constant layer has similarity 0.

    Parameters
    ----------
    x : (n, p) tensor or array
        Activations of the first layer, one row per probe sample.
    y : (n, q) tensor or array
        Activations of the second layer on the same samples.

    Returns
    -------
    similarity : float
        Mean squared canonical correlation in [0, 1].

    References
    ----------
    Raghu, Gilmer, Yosinski, Sohl-Dickstein. SVCCA: Singular Vector Canonical Correlation Analysis for
    Deep Learning Dynamics and Interpretability. NeurIPS 2017.
    """
    x, y = _pair(x, y)
    return _clip_similarity(_cca_from_bases(_cca_basis(x), _cca_basis(y)))


def wasserstein_cost(x, y) -> float:
    r"""Exact OT cost between two layers' neurons as point clouds (unnormalised, scale-free).

    Each layer is divided by its root-mean-square entry, :math:`\hat X = X / (\|X\|_F / \sqrt{np})`, and
    neuron k becomes the point :math:`\hat X_{:,k} \in \mathbb{R}^n`. With uniform weights
    :math:`a = \mathbf{1}_p/p`, :math:`b = \mathbf{1}_q/q` and Euclidean ground cost
    :math:`M_{kl} = \|\hat X_{:,k} - \hat Y_{:,l}\|_2`,

    .. math::
        W(X, Y) = \min_{\gamma \ge 0,\; \gamma \mathbf{1} = a,\; \gamma^\top \mathbf{1} = b}
                  \langle \gamma, M \rangle_F

    solved by POT's network simplex (:func:`ot.emd2`). It is zero for a neuron-permuted or rescaled
    copy of a layer. :func:`cost_matrix` divides the matrix of these values by its maximum.

    Parameters
    ----------
    x : (n, p) tensor or array
        Activations of the first layer, one row per probe sample.
    y : (n, q) tensor or array
        Activations of the second layer on the same samples.

    Returns
    -------
    cost : float
        The optimal transport cost (≥ 0; about :math:`\sqrt{n}` for unrelated layers).

    References
    ----------
    Singh, Jaggi. Model Fusion via Optimal Transport. NeurIPS 2020.
    """
    x, y = _pair(x, y)
    return float(_wasserstein_matrix([x], [y])[0, 0])


def layer_widths_cost(widths_a: Sequence[int], widths_b: Sequence[int]) -> np.ndarray:
    r"""Width-difference cost matrix, CLAFusion's default layer representation.

    .. math::
        C_{ij} = \frac{|w^A_i - w^B_j|}{\max(\max_i w^A_i, \max_j w^B_j)}

    Parameters
    ----------
    widths_a : sequence of int, length m
        Number of neurons (channels) of each layer of model A.
    widths_b : sequence of int, length n
        Number of neurons (channels) of each layer of model B.

    Returns
    -------
    C : (m, n) ndarray, float64
        Costs in [0, 1]; all zero if every width is zero.

    References
    ----------
    Nguyen, Nguyen, Than, Ho, Bui. Model Fusion of Heterogeneous Neural Networks via Cross-Layer
    Alignment. ICASSP 2023.
    """
    wa = np.asarray(list(widths_a), dtype=np.float64).reshape(-1)
    wb = np.asarray(list(widths_b), dtype=np.float64).reshape(-1)
    both = np.concatenate([wa, wb])
    if not np.all(np.isfinite(both)) or np.any(both < 0):
        raise FusionError("Layer widths must be non-negative numbers of neurons.")
    top = both.max() if both.size else 0.0
    diff = np.abs(wa[:, None] - wb[None, :])
    return diff / top if top > 0 else np.zeros_like(diff)


def _check_debiased_samples(n: int) -> None:
    if n < 4:
        raise FusionError(f"Debiased CKA needs at least 4 probe samples (got {n}); use a larger probe batch.")


# ----------------------------------------------------------------------------------------------------
# the cost matrix


def cost_matrix(
    acts_a: Sequence[torch.Tensor],
    acts_b: Sequence[torch.Tensor],
    metric: str,
    *,
    rbf_sigma: float = 0.8,
) -> np.ndarray:
    r"""Layer-to-layer dissimilarity matrix of two models under one metric.

    .. math::
        C_{ij} = d(A_i, B_j) \in [0, 1], \qquad i < m,\; j < n

    with, for layer activations :math:`A_i` (n_samples × p_i) and :math:`B_j` (n_samples × q_j):

    - ``linear_cka``: :math:`1 - \mathrm{CKA}_{lin}` (:func:`linear_cka`); each layer's centred Gram
      matrix is computed once and normalised, and all pairs are one product of the stacked Grams.
    - ``debiased_cka``: :math:`1 - \mathrm{CKA}_u` with the unbiased HSIC (:func:`debiased_cka`).
    - ``rbf_cka``: :math:`1 - \mathrm{CKA}_{rbf}`, bandwidth ``rbf_sigma`` × median distance
      (:func:`rbf_cka`).
    - ``cca``: :math:`1 - \bar\rho^2`, mean squared canonical correlation on the 99 %-variance SVD
      truncation of each layer (:func:`cca_similarity`).
    - ``wasserstein``: :math:`W(A_i, B_j) / \max_{kl} W(A_k, B_l)`, the exact OT cost between the layers'
      RMS-normalised neurons as point clouds (:func:`wasserstein_cost`); all zero if every W is 0.
    - ``width``: :math:`|p_i - q_j| / \max(p, q)` (:func:`layer_widths_cost`); only the shapes are used.

    A layer that is constant over the probe batch has cost 1 to every layer, itself included, under the
    CKA and CCA metrics (its similarity is 0 / 0, defined as 0).

    Parameters
    ----------
    acts_a : sequence of (n_samples, p_i) tensors, length m
        Activations of model A's layers on the probe batch (extra dimensions are flattened per sample).
    acts_b : sequence of (n_samples, q_j) tensors, length n
        Activations of model B's layers on the same probe batch.
    metric : str
        One of :data:`METRICS`.
    rbf_sigma : float, optional (default=0.8)
        Bandwidth factor of ``rbf_cka``; ignored by the other metrics.

    Returns
    -------
    C : (m, n) ndarray, float64
        Dissimilarities in [0, 1], lower = more similar; never NaN or infinite.

    Raises
    ------
    FusionError
        For an unknown metric, activation matrices with different numbers of rows, NaN activations,
        or a probe batch too small for the metric.
    """
    if metric not in METRICS:
        raise FusionError(f"Unknown cost metric {metric!r}; choose one of: {', '.join(METRICS)}.")
    if metric == "rbf_cka":
        rbf_sigma = _checked_sigma(rbf_sigma)
    xs, ys = _prepare(acts_a, acts_b)
    m, n = len(xs), len(ys)
    if metric == "width":
        cost = layer_widths_cost([x.shape[1] for x in xs], [y.shape[1] for y in ys])
    elif m == 0 or n == 0:
        cost = np.zeros((m, n))
    elif metric == "linear_cka":
        cost = 1.0 - _cka_matrix(xs, ys, _linear_feature)
    elif metric == "debiased_cka":
        _check_debiased_samples(xs[0].shape[0])
        cost = 1.0 - np.clip(_cka_matrix(xs, ys, _debiased_feature), 0.0, 1.0)
    elif metric == "rbf_cka":
        cost = 1.0 - _cka_matrix(xs, ys, lambda x: _rbf_feature(x, rbf_sigma))
    elif metric == "cca":
        cost = 1.0 - _cca_matrix(xs, ys)
    else:  # wasserstein
        cost = _wasserstein_matrix(xs, ys)
        top = cost.max()
        cost = cost / top if top > 0 else cost
    # last-resort guard; the guards above already keep every entry finite
    cost = np.nan_to_num(np.asarray(cost, dtype=np.float64), nan=1.0, posinf=1.0, neginf=0.0)
    return np.clip(cost, 0.0, 1.0).reshape(m, n)
