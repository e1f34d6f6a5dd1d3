"""Neuron-interpolation fusion (seed paper 003, its linear variant "K-means fusion") of N models.

The parents M_1..M_K have the same layers (balanced to equal depth; widths may differ). The fused model
F has the reference parent's architecture and widths. One labelled fusion batch D serves every step.
For each weight layer ℓ in forward order:

1. **Design** ``Z ∈ R^{R×d}``: the inputs of layer ℓ in the *current* F on D (the layers below ℓ are
   already fused, so their errors are compensated here), plus a column of ones when the layer has a
   bias or a BatchNorm. A conv gives one row per (sample, output position): its im2col patch; rows are
   subsampled at random to at most :data:`ROWS_PER_COLUMN` per column of Z (and ``R·d`` below
   :data:`MAX_DESIGN_ELEMENTS`), never below one per sample: on the digits CNN pair more rows cost
   time without fusing better.
2. **Targets** ``A = [A_1 | … | A_K] ∈ R^{R×M}``: every parent's own pre-activations of ℓ on D, one
   column per parent neuron. With BatchNorm the target is the BatchNorm's output, i.e. the BatchNorm is
   folded into the layer for the fit (in a residual block: the pre-ReLU sum with the shortcut).
3. **Fit** each parent neuron by ridge regression towards the parent's own weights (:func:`ridge_fit`):
   ``w_j = argmin_w ‖Z w − a_j‖² + λ‖w − w⁰_j‖²``. The prior w⁰_j is the parent's (BN-folded) row with
   its inputs re-indexed onto F's neurons through the grouping of the layer below: every parent input
   feeds the fused neuron it was grouped into, ``w⁰_j[c] = Σ_{i→c} W_j[i]`` — defined for any widths,
   and function-preserving when each group member behaves like its fused neuron. Directions of input
   space that D never visits therefore keep the parent's weights instead of a pseudo-inverse's zeros,
   which matters when |D| is below the fan-in.
4. **Group** the M parent neurons into k = F's width groups (:func:`weighted_kmeans`): importance
   weighted K-means whose centre is ``w̄_c = Σ_{j∈c} s_j w_j / Σ_{j∈c} s_j`` and whose distance is
   ``‖Z w̄_c − a_j‖₂``; or, for two parents, a one-to-one matching (:func:`one_to_one`, Hungarian).
5. **Fused row** c of ℓ is w̄_c. Least squares is linear in its targets, so w̄_c is also the fit of
   the group's importance-weighted mean pre-activation — the "target representation" of the paper.
6. **Logits**: no grouping; class i of every parent forms group i.

Importance s_j is uniform or the neuron's mean |conductance| for the true class
(:func:`neuron_attributions`), normalised to sum to 1 per parent and multiplied by the parent's weight.

*BatchNorm in the fused model* is written in a canonical form: the fitted (folded) weights go into the
conv, the running statistics are the mean and variance of that conv's output on D, and the affine
parameters undo the normalisation (γ = √(var + ε), β = mean + b̄). In eval mode the layer computes exactly
the fit, and recomputing the statistics on training data afterwards changes almost nothing.

*Residual networks*: the layers whose outputs add up to one pre-activation are fitted jointly as one
*unit* (a block's last conv and its downsample conv: Z holds both convs' patches side by side). A
residual stream is written by several units (the stem or a stage's first block, then every identity
block); its first writer chooses the grouping and every later writer keeps it, as OT shares one plan.
A later writer adds its input back unchanged, so its conv fits ``a_j − x_F[c(j)]``: parent neuron j's
block pre-activation minus the fused block input of the group c(j) it belongs to. Importance follows
the first writer.

*Cost*: each layer needs two eigendecompositions of a d×d Gram matrix (the training part's, for the
ridge path, and the whole batch's, for the fit; the Gram matrix itself is computed once), and
K-means runs in an orthonormal basis of the column space of Z (at most min(R, d) coordinates), so the
distances ‖Z w̄_c − a_j‖ never materialise R-long vectors.

References
----------
.. [1] "Model Fusion via Neuron Interpolation" (see ``shared/seeds/003_*.txt``).
.. [2] Dhamdhere, Sundararajan, Yan, "How important is a neuron?" (layer conductance), ICLR 2019.
.. [3] Shrikumar, Greenside, Kundaje, "Learning important features through propagating activation
       differences" (DeepLIFT), ICML 2017.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .data import DataSplits
from .errors import AlignmentError, FusionError
from .layers import WeightLayer, model_view
from .train import Progress
from .otfusion import Transport, correct_input, layer_tensors

GROUPINGS = ("kmeans", "hungarian")
IMPORTANCES = ("uniform", "conductance")
RIDGE_GRID = (0.0, *(float(v) for v in 10.0 ** np.arange(-6.0, 0.25, 0.5)))  # relative ridges tried
HOLDOUT_FRACTION = 0.2          # share of the fusion batch's samples that chooses the ridge
MAX_DESIGN_ELEMENTS = 1 << 24   # R·d bound of a layer's design matrix (128 MiB in float64)
ROWS_PER_COLUMN = 16            # a conv keeps at most this many design rows per column of Z
MIN_SAMPLES = 5
_EIGEN_CUTOFF = 1e-10           # eigenvalues below this share of the largest count as zero


@dataclass(frozen=True)
class InterpOptions:
    """How to fuse by neuron interpolation; every field maps to a CLI flag and an app widget.

    ``fusion_size`` is the number of fusion-batch samples used (the first ones given; the caller draws
    them, e.g. with :func:`fusion_batch`). ``ridge`` is relative, ``λ = ridge · tr(ZᵀZ)/d``; None
    chooses it per layer on a held-out 20 % of the batch. ``interp_seed`` fixes that split, the conv row
    subsample and the K-means restarts.
    """

    fusion_size: int = 1000
    grouping: str = "kmeans"
    importance: str = "uniform"
    ridge: float | None = None
    restarts: int = 3
    iterations: int = 30
    interp_seed: int = 0

    def __post_init__(self):
        for name, allowed in (("grouping", GROUPINGS), ("importance", IMPORTANCES)):
            if getattr(self, name) not in allowed:
                raise AlignmentError(f"Unknown {name} '{getattr(self, name)}'; choose one of {allowed}.")
        if isinstance(self.fusion_size, bool) or not isinstance(self.fusion_size, int) or self.fusion_size < MIN_SAMPLES:
            raise AlignmentError(f"The fusion batch size must be a whole number of at least {MIN_SAMPLES} samples, "
                                 "e.g. 1000 (at least the largest fan-in where the data allows).")
        if self.ridge is not None and not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise AlignmentError("The ridge must be a non-negative number (e.g. 1e-3), or left empty to choose it "
                                 "on held-out fusion samples.")
        if self.restarts < 1 or self.iterations < 1:
            raise AlignmentError("K-means needs at least 1 restart and 1 iteration (defaults: 3 and 30).")

    def ignored(self) -> set[str]:
        """The options these settings bypass: K-means' restarts and iterations under the Hungarian match."""
        return {"restarts", "iterations"} if self.grouping == "hungarian" else set()


@dataclass
class InterpResult:
    """The fused model and how it came about.

    ``membership[group][k]`` is parent k's (n_k × n_fused) 0/1 matrix: entry (j, c) is 1 when parent
    neuron j went into fused neuron c (all-zero rows: neurons left out, e.g. unmatched by the Hungarian
    variant or of a parent with weight 0). ``importance[group][k]`` are those neurons' weights s_j.
    """

    model: nn.Module
    membership: dict[str, list[np.ndarray]] = field(default_factory=dict)
    importance: dict[str, list[np.ndarray]] = field(default_factory=dict)
    diagnostics: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- data


def fusion_batch(splits: DataSplits, size: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled, class-balanced fusion batch drawn from the training and validation splits.

    Classes are taken in turn (one random sample of each per round) until ``size`` samples are drawn
    or the data runs out, so the batch is as balanced as the data allows. Never uses the test split.
    """
    inputs = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    labels = torch.cat([splits.train.tensors[1], splits.val.tensors[1]])
    rng = np.random.default_rng(seed)
    label_array = labels.numpy()
    per_class = [rng.permutation(np.flatnonzero(label_array == c)) for c in np.unique(label_array)]
    order = [i for turn in itertools.zip_longest(*per_class) for i in turn if i is not None][:size]
    index = torch.as_tensor(np.array(order, dtype=np.int64))
    return inputs[index].clone(), labels[index].clone()


# ----------------------------------------------------------------------------------- importance


def neuron_attributions(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                        batch_size: int = 256) -> dict[str, torch.Tensor]:
    r"""Gradient × activation of every hidden neuron's pre-activation for the true-class logit.

    .. math::
        \mathrm{attr}_j(x) = z_j(x)\,\frac{\partial f_{y(x)}(x)}{\partial z_j}

    where z_j is neuron j's pre-activation: after BatchNorm, a conv channel summed over positions. For
    a residual block's last conv it is the block's pre-ReLU sum (BatchNorm output plus shortcut), since
    the block adds the shortcut to that tensor in place; the in-place ReLU after it is harmless because
    z·∂f/∂z = relu(z)·∂f/∂relu(z).

    This is layer conductance with a zero baseline in one integration step. On a bias-free ReLU network
    the pre-activations scale linearly along the path αx, the ReLU pattern and so the gradients stay
    fixed, and the one step is exact: it then equals conductance and DeepLIFT's rescale rule, and the
    attributions at any cut through the network sum to the true-class logit (completeness).

    Returns ``{layer name: [samples, neurons]}`` for every layer except the logits.
    """
    layers = [layer for layer in model_view(model).layers if layer.out_group is not None]
    points = {layer.name: layer.bn or layer.name for layer in layers}
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in points}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            captured: dict[str, torch.Tensor] = {}
            handles = [model.get_submodule(point).register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out)) for name, point in points.items()]
            try:
                with torch.enable_grad():
                    x = inputs[start:start + batch_size].detach().requires_grad_(True)
                    logits = model(x)
                    picked = logits.gather(1, labels[start:start + batch_size].to(logits.device)[:, None]).sum()
                    grads = torch.autograd.grad(picked, [captured[name] for name in points])
            finally:
                for handle in handles:
                    handle.remove()
            for name, grad in zip(points, grads):
                attribution = (captured[name].detach() * grad)
                chunks[name].append(attribution.sum((2, 3)) if attribution.dim() == 4 else attribution)
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _importances(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, kind: str,
                 weight: float) -> dict[str, torch.Tensor]:
    """Per hidden layer, the neurons' importance: scores normalised to sum 1, times the parent's weight."""
    widths = {layer.name: model.get_submodule(layer.name).weight.shape[0]
              for layer in model_view(model).layers if layer.out_group is not None}
    if kind == "uniform":
        return {name: torch.full((width,), weight / width, dtype=torch.float64) for name, width in widths.items()}
    out = {}
    for name, attribution in neuron_attributions(model, inputs, labels).items():
        scores = attribution.abs().mean(0).double().cpu()
        if not scores.sum() > 0:
            scores = torch.ones_like(scores)
        scores = scores.clamp_min(1e-6 * scores.mean())  # every group keeps a well-defined weighted mean
        out[name] = weight * scores / scores.sum()
    return out


# ------------------------------------------------------------------------------------------ fit


@dataclass
class RidgeFit:
    """The fitted columns W (d × M), the relative ridge ρ and λ used, and ZᵀZ = V diag(e) Vᵀ of all rows."""

    weights: torch.Tensor
    ridge: float
    lam: float
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def _eigen(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ZᵀZ = V diag(e) Vᵀ`` from the Gram matrix.

    Columns of Z that are identically zero (inputs dead on D) are eigenvectors with e = 0 and are split
    off first: LAPACK's solver can fail to converge on a matrix with many such repeated zeros, and the
    rest is smaller. The rest is scaled to a unit diagonal maximum for the solver's sake.
    """
    d = gram.shape[0]
    seen = gram.diagonal() > 0
    order = torch.cat([seen.nonzero().flatten(), (~seen).nonzero().flatten()])
    e = torch.zeros(d, dtype=gram.dtype, device=gram.device)
    v = torch.zeros(d, d, dtype=gram.dtype, device=gram.device)
    n = int(seen.sum())
    if n:
        scale = gram.diagonal().max()
        e_seen, v_seen = torch.linalg.eigh(gram[seen][:, seen] / scale)
        e[:n] = e_seen.clamp_min(0) * scale
        v[order[:n], :n] = v_seen
    v[order[n:], torch.arange(n, d, device=gram.device)] = 1.0
    return e, v


def _inverse_spectrum(e: torch.Tensor, lam: float) -> torch.Tensor:
    """1 / (e + λ), with 0 where e + λ is numerically zero (those directions keep the prior)."""
    denominator = e + lam
    cutoff = _EIGEN_CUTOFF * float(e.max()) if float(e.max()) > 0 else 0.0
    return torch.where(denominator > cutoff, 1.0 / denominator.clamp_min(1e-300), torch.zeros_like(e))


def ridge_fit(design: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor,
              importance: torch.Tensor | None = None, ridge: float | None = None,
              holdout: torch.Tensor | None = None) -> RidgeFit:
    r"""Ridge regression of every target column towards its prior column.

    .. math::
        w_j = \arg\min_w \|Z w - a_j\|^2 + \lambda \|w - w^0_j\|^2
            = w^0_j + (Z^\top Z + \lambda I)^{-1} Z^\top (a_j - Z w^0_j),
        \qquad \lambda = \rho\,\mathrm{tr}(Z^\top Z)/d

    All columns share one eigendecomposition ``ZᵀZ = V diag(e) Vᵀ``. ρ = 0 is the exact least-squares
    solution nearest the prior (directions with e = 0 keep w⁰). With ``ridge=None`` ρ is the value of
    :data:`RIDGE_GRID` that, fitted on the rows outside ``holdout`` (a boolean row mask), minimises the
    importance-weighted held-out error ``Σ_j s_j ‖Z_h w_j − a_{h,j}‖²``; the final fit uses every row.

    Parameters
    ----------
    design : (R, d) tensor ``Z``
    targets : (R, M) tensor ``A``
    prior : (d, M) tensor ``W⁰``
    importance : (M,) tensor ``s`` or None (uniform)
    ridge : float or None, the relative ridge ρ
    holdout : (R,) bool tensor, required when ``ridge`` is None
    """
    design, targets, prior = design.double(), targets.double(), prior.double()
    d = design.shape[1]
    if ridge is None:
        if holdout is None or not holdout.any() or holdout.all():
            raise FusionError("Choosing the ridge needs held-out rows and training rows; give a ridge value instead.")
        weight = (torch.ones(targets.shape[1], dtype=torch.float64, device=targets.device) if importance is None
                  else importance.double().to(targets.device))
        train_z, held_z = design[~holdout], design[holdout]
        train_gram = train_z.T @ train_z
        gram = train_gram + held_z.T @ held_z
        e, v = _eigen(train_gram)
        scale = float(e.sum()) / d
        projected = held_z @ v                                                  # Z_h V
        coefficients = v.T @ (train_z.T @ (targets[~holdout] - train_z @ prior))  # Vᵀ Z_tᵀ (A_t − Z_t W⁰)
        base = targets[holdout] - held_z @ prior
        errors: dict[float, float] = {}
        for rho in RIDGE_GRID:
            residual = base - projected @ (_inverse_spectrum(e, rho * scale)[:, None] * coefficients)
            errors[rho] = float((residual.pow(2).sum(0) * weight).sum())
        ridge = min(errors, key=errors.get)
    else:
        gram = design.T @ design
    e, v = _eigen(gram)
    lam = ridge * float(e.sum()) / d
    update = v @ (_inverse_spectrum(e, lam)[:, None] * (v.T @ (design.T @ (targets - design @ prior))))
    return RidgeFit(prior + update, float(ridge), lam, e, v)


def _coordinates(fit: RidgeFit, design: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fits, targets and out-of-span residuals in an orthonormal basis of col(Z).

    With ZᵀZ = V diag(e) Vᵀ, Q = Z V e^{-1/2} is orthonormal; ``Z w = Q (e^{1/2} Vᵀ w)`` and
    ``a = Q (e^{-1/2} Vᵀ Zᵀ a) + a⊥``. Returns (t_j), (u_j) as rows (M × r) and ‖a_j⊥‖² (M,), so that
    ``‖Z w̄ − a_j‖² = ‖t̄ − u_j‖² + ‖a_j⊥‖²``.
    """
    e, v = fit.eigenvalues, fit.eigenvectors
    keep = e > _EIGEN_CUTOFF * float(e.max()) if float(e.max()) > 0 else torch.zeros_like(e, dtype=torch.bool)
    root = e[keep].sqrt()
    basis = v[:, keep]
    fits = (fit.weights.T @ basis) * root
    projections = ((design.double().T @ targets.double()).T @ basis) / root
    outside = (targets.double().pow(2).sum(0) - projections.pow(2).sum(1)).clamp_min(0)
    return fits, projections, outside


# ------------------------------------------------------------------------------------- grouping


@dataclass
class Grouping:
    """Group of every neuron (−1: left out), its Σ_j s_j ‖Z w̄_{c(j)} − a_j‖ cost, and whether Lloyd converged."""

    labels: torch.Tensor
    cost: float
    converged: bool = True


def _centres(fits: torch.Tensor, importance: torch.Tensor, labels: torch.Tensor, clusters: int) -> torch.Tensor:
    """Importance-weighted mean of each group's rows (neurons labelled −1 are left out)."""
    kept = labels >= 0
    sums = torch.zeros(clusters, fits.shape[1], dtype=fits.dtype, device=fits.device)
    sums.index_add_(0, labels[kept], fits[kept] * importance[kept, None])
    mass = torch.zeros(clusters, dtype=fits.dtype, device=fits.device).index_add_(0, labels[kept], importance[kept])
    return sums / mass.clamp_min(1e-300)[:, None]


def _squared_distances(centres: torch.Tensor, targets: torch.Tensor, target_norms: torch.Tensor) -> torch.Tensor:
    """``‖t̄_c − u_j‖² + ‖a_j⊥‖²`` for every centre c (rows) and neuron j (columns), given
    ``target_norms = ‖u_j‖² + ‖a_j⊥‖² = ‖a_j‖²``."""
    squared = centres.pow(2).sum(1)[:, None] - 2 * (centres @ targets.T) + target_norms[None, :]
    return squared.clamp_min(0)


def _cost(squared: torch.Tensor, labels: torch.Tensor, importance: torch.Tensor) -> float:
    kept = labels >= 0
    return float((importance[kept] * squared[labels[kept], kept.nonzero().flatten()].sqrt()).sum())


def _farthest_point_labels(fits, targets, target_norms, importance, clusters, first) -> torch.Tensor:
    """Seeds: neuron ``first``, then repeatedly the neuron with the largest s_j · distance to its nearest
    seed; every neuron is labelled with its nearest seed."""
    chosen = torch.zeros(len(fits), dtype=torch.bool, device=fits.device)
    labels = torch.zeros(len(fits), dtype=torch.long, device=fits.device)
    nearest = torch.full((len(fits),), float("inf"), dtype=fits.dtype, device=fits.device)
    seed = first
    for c in range(clusters):
        chosen[seed] = True
        distance = _squared_distances(fits[seed:seed + 1], targets, target_norms)[0]
        closer = distance < nearest
        labels[closer], nearest[closer] = c, distance[closer]
        score = importance * nearest.sqrt()
        score[chosen] = -1.0
        seed = int(score.argmax())
    return labels


def _refill(labels: torch.Tensor, squared: torch.Tensor, importance: torch.Tensor, clusters: int) -> torch.Tensor:
    """Give every empty group the worst-served neuron (largest s_j · distance) of a group with ≥ 2 members."""
    labels = labels.clone()
    counts = torch.bincount(labels, minlength=clusters)
    served = importance * squared[labels, torch.arange(len(labels), device=labels.device)].sqrt()
    for empty in (counts == 0).nonzero().flatten().tolist():
        candidates = torch.where(counts[labels] > 1, served, torch.full_like(served, -1.0))
        j = int(candidates.argmax())
        counts[labels[j]] -= 1
        labels[j], counts[empty], served[j] = empty, 1, -1.0
    return labels


def weighted_kmeans(fits: torch.Tensor, targets: torch.Tensor, outside: torch.Tensor, importance: torch.Tensor,
                    clusters: int, restarts: int = 3, iterations: int = 30, seed: int = 0) -> Grouping:
    r"""Importance-weighted K-means of neurons whose centres are fits and whose points are targets.

    Neuron j has fit t_j, target u_j (coordinates, see :func:`_coordinates`) and out-of-span residual
    r_j = ‖a_j⊥‖²; group c has centre :math:`\bar t_c = \sum_{j\in c} s_j t_j / \sum_{j\in c} s_j`, and

    .. math::
        \min_{c(\cdot)} \sum_j s_j \sqrt{\|\bar t_{c(j)} - u_j\|^2 + r_j}
        \;=\; \sum_j s_j \|Z \bar w_{c(j)} - a_j\|_2

    Lloyd iterations (assign each neuron to its nearest centre, recompute the centres) from a
    farthest-point start: restart 0 begins at the neuron farthest (importance-weighted) from the global
    mean, restart r ≥ 1 at a neuron drawn ∝ s with a generator seeded ``seed + r``. The restart with the
    lowest cost wins; groups left empty are refilled with the worst-served neuron.
    """
    if len(fits) < clusters:
        raise FusionError(f"There are {len(fits)} neurons to group into {clusters}; choose the wider parent as the "
                          "reference or give every parent a positive weight.")
    importance = importance.to(fits)
    target_norms = targets.pow(2).sum(1) + outside
    # Lloyd runs in float32 (twice as fast; an argmin does not need more), the cost is scored in float64
    fits32, targets32, norms32, importance32 = (v.float() for v in (fits, targets, target_norms, importance))
    global_mean = (importance32[:, None] * fits32).sum(0, keepdim=True) / importance32.sum()
    best: Grouping | None = None
    for restart in range(restarts):
        if restart == 0:
            first = int((importance32 * (fits32 - global_mean).pow(2).sum(1).sqrt()).argmax())
        else:
            generator = torch.Generator().manual_seed(seed + restart)
            first = int(torch.multinomial((importance32 / importance32.sum()).cpu(), 1, generator=generator))
        labels = _farthest_point_labels(fits32, targets32, norms32, importance32, clusters, first)
        squared = _squared_distances(_centres(fits32, importance32, labels, clusters), targets32, norms32)
        labels = _refill(labels, squared, importance32, clusters)   # a seed may sit nearer another seed
        converged = False
        for _ in range(iterations):
            squared = _squared_distances(_centres(fits32, importance32, labels, clusters), targets32, norms32)
            updated = _refill(squared.argmin(0), squared, importance32, clusters)
            if torch.equal(updated, labels):
                converged = True
                break
            labels = updated
        squared = _squared_distances(_centres(fits, importance, labels, clusters), targets, target_norms)
        candidate = Grouping(labels, _cost(squared, labels, importance), converged)
        if best is None or candidate.cost < best.cost:
            best = candidate
    return best


def one_to_one(fits: torch.Tensor, targets: torch.Tensor, outside: torch.Tensor, importance: torch.Tensor,
               reference: torch.Tensor, other: torch.Tensor) -> Grouping:
    r"""Match the other parent's neurons one-to-one onto the reference's (Hungarian algorithm).

    Group i is reference neuron i plus at most one partner j of the other parent; unmatched reference
    neurons stay alone, unmatched other neurons are left out (label −1). The matching minimises the same
    cost as :func:`weighted_kmeans`, ``Σ_groups Σ_{j∈group} s_j ‖Z w̄_group − a_j‖``: the pair cost minus the
    cost of the reference neuron alone is solved as a rectangular assignment by
    :func:`scipy.optimize.linear_sum_assignment`.

    ``reference`` / ``other`` are the index tensors of the two parents' neurons in ``fits``.
    """
    importance = importance.to(fits)
    tr, ur, rr, sr = fits[reference], targets[reference], outside[reference], importance[reference]
    to, uo, ro, so = fits[other], targets[other], outside[other], importance[other]
    p = sr[:, None] / (sr[:, None] + so[None, :])
    q = 1 - p
    shared = p.pow(2) * tr.pow(2).sum(1)[:, None] + q.pow(2) * to.pow(2).sum(1)[None, :] + 2 * p * q * (tr @ to.T)
    to_reference = shared - 2 * p * (tr * ur).sum(1)[:, None] - 2 * q * (ur @ to.T) + ur.pow(2).sum(1)[:, None]
    to_other = shared - 2 * p * (tr @ uo.T) - 2 * q * (to * uo).sum(1)[None, :] + uo.pow(2).sum(1)[None, :]
    pair = (sr[:, None] * (to_reference.clamp_min(0) + rr[:, None]).sqrt()
            + so[None, :] * (to_other.clamp_min(0) + ro[None, :]).sqrt())
    alone = sr * ((tr - ur).pow(2).sum(1) + rr).sqrt()
    rows, cols = linear_sum_assignment((pair - alone[:, None]).cpu().numpy())
    labels = torch.full((len(fits),), -1, dtype=torch.long, device=fits.device)
    labels[reference] = torch.arange(len(reference), device=fits.device)
    labels[other[torch.as_tensor(cols, device=fits.device)]] = torch.as_tensor(rows, device=fits.device)
    clusters = len(reference)
    squared = _squared_distances(_centres(fits, importance, labels, clusters), targets, targets.pow(2).sum(1) + outside)
    return Grouping(labels, _cost(squared, labels, importance))


# ------------------------------------------------------------------------------- layer plumbing


def _effective(model: nn.Module, layer: WeightLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer with its BatchNorm (eval mode) folded in: weight [out, in·k] and bias [out] or None.

    ``BN(W x + b) = γ (W x + b − μ)/√(σ² + ε) + β``: weight ``W·γ/√(σ²+ε)``, bias ``(b − μ)·γ/√(σ²+ε) + β``.
    """
    params = {k: v.detach() for k, v in layer_tensors(model, layer).items()}
    weight, bias = params["weight"].reshape(params["weight"].shape[0], -1), params.get("bias")
    if layer.bn:
        scale = params["bn.weight"] / torch.sqrt(params["bn.running_var"] + model.get_submodule(layer.bn).eps)
        shift = (bias if bias is not None else 0.0) - params["bn.running_mean"]
        weight, bias = weight * scale[:, None], shift * scale + params["bn.bias"]
    return weight, bias


def _prior(model: nn.Module, layer: WeightLayer, membership: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The parent's folded weights as columns (d_ℓ × m) in F's input basis (``W · M`` on the input
    neurons) and its folded bias (m,) or None."""
    weight, bias = _effective(model, layer)
    weight = weight.double()
    if membership is not None:
        ones = torch.ones(membership.shape[0], dtype=weight.dtype, device=weight.device)
        weight = correct_input(weight, Transport(membership, ones, membership.sum(0)), "sum")
    return weight.T, None if bias is None else bias.double()


@dataclass(frozen=True)
class _Unit:
    """Weight layers whose outputs add up to one pre-activation, fitted jointly.

    Usually one layer. In a residual network a block's last conv and its downsample shortcut form one
    unit; a block with an identity shortcut adds its input unchanged: ``shortcut`` is then the block's
    first layer, whose input is that identity. All of a unit's layers write the same transport group.
    """

    layers: tuple[WeightLayer, ...]
    shortcut: WeightLayer | None = None

    @property
    def name(self) -> str:
        return self.layers[0].name

    @property
    def out_group(self) -> str | None:
        return self.layers[0].out_group


def _units(layers: list[WeightLayer]) -> list[_Unit]:
    """Group the view's layers into units: consecutive layers writing one group sum their outputs.

    A later writer of a residual stream (a group written by several units) that is a single layer is a
    block with an identity shortcut: its shortcut is the layer that writes its input group (the block's
    first conv), whose own input is the stream the block adds back.
    """
    units: list[_Unit] = []
    for layer in layers:
        if units and layer.out_group is not None and units[-1].out_group == layer.out_group:
            units[-1] = _Unit(units[-1].layers + (layer,))
        else:
            units.append(_Unit((layer,)))
    written: set[str] = set()
    for i, unit in enumerate(units):
        if unit.out_group in written and len(unit.layers) == 1:
            first = next(l for l in layers if l.out_group == unit.layers[0].in_group)
            units[i] = _Unit(unit.layers, shortcut=first)
        if unit.out_group is not None:
            written.add(unit.out_group)
    return units


@dataclass(frozen=True)
class _Tap:
    """Rows ``index`` (sorted, over samples × positions) of a module's input or output tensor, as
    values (one row per sample and position, one column per channel) or, for a Conv2d's input, as the
    im2col patches the conv reads (channel-major like ``weight.reshape(out, -1)``)."""

    module: str
    side: str          # "input" or "output"
    index: torch.Tensor
    positions: int
    patches: bool = False


def _tap_rows(tensor: torch.Tensor, module: nn.Module, tap: _Tap, start: int) -> torch.Tensor:
    """The rows of ``tap`` inside one batch whose first sample is number ``start``."""
    lo, hi = torch.searchsorted(tap.index, torch.tensor([start * tap.positions, (start + len(tensor)) * tap.positions],
                                                        device=tap.index.device)).tolist()
    local = tap.index[lo:hi] - start * tap.positions
    if tap.patches and isinstance(module, nn.Conv2d):
        patches = F.unfold(tensor, module.kernel_size, module.dilation, module.padding, module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])[local]
    if tensor.dim() == 4:
        return tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])[local]
    return tensor.flatten(1)[local]


class _TapsDone(Exception):
    """Raised by the last tap of a batch: the rest of the forward pass is not needed."""


@torch.no_grad()
def _record_rows(model: nn.Module, inputs: torch.Tensor, taps: dict[str, _Tap], batch_size: int) -> dict[str, torch.Tensor]:
    """One eval-mode pass of ``inputs`` in batches, keeping only the rows each tap selects (bounded
    memory). Rows are copied when recorded, before any in-place operation of the model changes them;
    each batch stops as soon as every tap has fired (a layer's design needs only the layers below it)."""
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in taps}
    start = 0

    def hook(name: str, module: nn.Module, tensor: torch.Tensor) -> None:
        rows[name].append(_tap_rows(tensor.detach(), module, taps[name], start).clone())
        if all(len(parts) == len(rows[name]) for parts in rows.values()):
            raise _TapsDone

    handles = []
    for name, tap in taps.items():
        module = model.get_submodule(tap.module)
        if tap.side == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: hook(name, m, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, _args, out, name=name: hook(name, m, out)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            try:
                model(inputs[start:start + batch_size])
            except _TapsDone:
                pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in rows.items()}


def _has_bias(model: nn.Module, unit: _Unit) -> bool:
    return any(model.get_submodule(l.name).bias is not None or l.bn is not None for l in unit.layers)


def _row_plan(model: nn.Module, units: list[_Unit], samples: int, generator: torch.Generator
              ) -> dict[str, tuple[torch.Tensor, int]]:
    """Per unit, the design rows used (sorted indices over samples × output positions) and the
    positions per sample: all rows, or a random subset when a conv has many positions (at least one
    row per sample, at most ``min(MAX_DESIGN_ELEMENTS / d, ROWS_PER_COLUMN · d)``)."""
    shapes: dict[str, torch.Size] = {}
    handles = [model.get_submodule(unit.name).register_forward_hook(
        lambda _m, _i, out, name=unit.name: shapes.__setitem__(name, out.shape)) for unit in units]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *model.input_shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    plan = {}
    for unit in units:
        fan_in = sum(model.get_submodule(l.name).weight[0].numel() for l in unit.layers) + _has_bias(model, unit)
        shape = shapes[unit.name]
        positions = shape[2] * shape[3] if len(shape) == 4 else 1
        total = samples * positions
        rows = min(total, max(samples, min(MAX_DESIGN_ELEMENTS // fan_in, ROWS_PER_COLUMN * fan_in)))
        index = torch.arange(total) if rows == total else torch.randperm(total, generator=generator)[:rows].sort().values
        plan[unit.name] = (index, positions)
    return plan


def _batch_size(row_width: int) -> int:
    """Samples per forward batch so that one batch's recorded rows hold about 2^24 numbers."""
    return max(1, min(1024, (1 << 24) // max(1, row_width)))


def _parent_targets(parent: nn.Module, units: list[_Unit], inputs: torch.Tensor,
                    plan: dict[str, tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """A parent's pre-activation of every unit at the planned rows, in one pass: the sum of its layers'
    outputs (after BatchNorm), plus the block input for an identity shortcut."""
    device = next(parent.parameters()).device
    taps, parts = {}, {}
    for unit in units:
        index, positions = plan[unit.name][0].to(device), plan[unit.name][1]
        parts[unit.name] = [l.name for l in unit.layers] + ([f"{unit.name}/shortcut"] if unit.shortcut else [])
        for layer in unit.layers:
            taps[layer.name] = _Tap(layer.bn or layer.name, "output", index, positions)
        if unit.shortcut:
            taps[f"{unit.name}/shortcut"] = _Tap(unit.shortcut.name, "input", index, positions)
    widest = max(parent.get_submodule(u.name).weight.shape[0] * plan[u.name][1] for u in units)
    rows = _record_rows(parent, inputs, taps, _batch_size(2 * widest))
    return {unit: sum(rows[name] for name in names) for unit, names in parts.items()}


@torch.no_grad()
def _write_layer(fused: nn.Module, layer: WeightLayer, weight: torch.Tensor, bias: torch.Tensor | None,
                 design: torch.Tensor) -> None:
    """Write fused rows (weight [k, d_ℓ], bias [k] or None) into F; BatchNorm in the canonical form,
    its statistics those of the layer's output on the rows ``design`` (Z's columns for this layer)."""
    module = fused.get_submodule(layer.name)
    module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight))
    if layer.bn:
        bn = fused.get_submodule(layer.bn)
        output = design @ weight.T
        mean, var = output.mean(0), output.var(0, unbiased=False)
        bn.running_mean.copy_(mean.to(bn.running_mean))
        bn.running_var.copy_(var.to(bn.running_var))
        bn.weight.copy_(torch.sqrt(var + bn.eps).to(bn.weight))
        bn.bias.copy_((mean + (bias if bias is not None else 0.0)).to(bn.bias))
        if module.bias is not None:
            module.bias.zero_()
    elif module.bias is not None:
        module.bias.copy_(bias.to(module.bias) if bias is not None else torch.zeros_like(module.bias))


def _check_parents(parents: list[nn.Module], reference: int, weights: list[float], inputs: torch.Tensor,
                   labels: torch.Tensor) -> None:
    if not parents:
        raise AlignmentError("Give at least one parent model to fuse.")
    if not 0 <= reference < len(parents):
        raise AlignmentError(f"The reference index {reference} is not one of the {len(parents)} parents.")
    if len(weights) != len(parents) or any(not np.isfinite(w) or w < 0 for w in weights) \
            or abs(sum(weights) - 1) > 1e-6:
        raise AlignmentError(f"Give one non-negative fusion weight per parent ({len(parents)}), summing to 1.")
    views = [model_view(p) for p in parents]
    names = [[layer.name for layer in view.layers] for view in views]
    if any(n != names[0] for n in names) or len({p.spec.family for p in parents}) > 1:
        raise AlignmentError("The parents do not have the same layers; balance them to equal depth first "
                             "(they must be of the same family).")
    if len({(p.input_shape, p.num_classes) for p in parents}) > 1:
        raise AlignmentError("The parents disagree on input shape or classes; fuse models trained on the same dataset.")
    for layer in views[0].layers:
        if len({p.get_submodule(layer.name).bias is None for p in parents}) > 1:
            raise AlignmentError(f"The parents disagree on whether {layer.name} has a bias; fuse models of one kind "
                                 "(all with biases or all without).")
    if len(inputs) != len(labels):
        raise AlignmentError(f"The fusion batch has {len(inputs)} inputs but {len(labels)} labels; give one label per input.")
    if len(inputs) < MIN_SAMPLES:
        raise FusionError(f"Neuron interpolation needs a fusion batch of at least {MIN_SAMPLES} samples "
                          f"(got {len(inputs)}); choose a larger fusion size, e.g. 1000.")
    for module in parents[0].modules():
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise FusionError("Neuron interpolation supports only plain convolutions (groups = 1, zero padding); use --method ot.")


# ------------------------------------------------------------------------------------- the method


def interpolation_fuse(parents: list[nn.Module], reference: int, weights: list[float], inputs: torch.Tensor,
                       labels: torch.Tensor, options: InterpOptions = InterpOptions(),
                       progress: Progress | None = None) -> InterpResult:
    """Fuse N balanced parents by neuron interpolation (see the module docstring for the maths).

    Parameters
    ----------
    parents : models with the same layers (same family and depth; widths may differ)
    reference : index of the parent whose architecture and widths the fused model takes
    weights : per-parent fusion weights (non-negative, sum 1); they scale the importance scores, and a
        parent with weight 0 takes no part
    inputs, labels : the labelled fusion batch (training/validation data, never test; see
        :func:`fusion_batch`); the first ``options.fusion_size`` samples are used
    options : :class:`InterpOptions`
    progress : optional callback ``(fraction, message)``, called once per fused layer

    Returns
    -------
    InterpResult
        The fused model (a deep copy of ``parents[reference]`` with its weights overwritten), the
        grouping of every transport group per parent, per-layer diagnostics and warnings.
    """
    _check_parents(parents, reference, weights, inputs, labels)
    if options.grouping == "hungarian" and (len(parents) != 2 or min(weights) <= 0):
        raise AlignmentError("The Hungarian grouping matches exactly two parents with positive weights; "
                             "use K-means for other numbers.")
    inputs, labels = inputs[:options.fusion_size], labels[:options.fusion_size]
    active = [k for k, w in enumerate(weights) if w > 0]
    importance = {k: _importances(parents[k], inputs, labels, options.importance, weights[k]) for k in active}
    generator = torch.Generator().manual_seed(options.interp_seed)
    held_samples = torch.zeros(len(inputs), dtype=torch.bool)
    held_samples[torch.randperm(len(inputs), generator=generator)[:max(1, round(HOLDOUT_FRACTION * len(inputs)))]] = True
    fused = copy.deepcopy(parents[reference])
    units = _units(model_view(fused).layers)
    plan = _row_plan(fused, units, len(inputs), generator)
    targets = {k: _parent_targets(parents[k], units, inputs, plan) for k in active}
    result = InterpResult(fused)
    memberships: dict[str, dict[int, torch.Tensor]] = {}   # group -> active parent -> (n_k × n_fused)
    group_scores: dict[str, dict[int, torch.Tensor]] = {}  # group -> active parent -> importance
    for position, unit in enumerate(units):
        if progress:
            progress(position / len(units), f"fitting {unit.name}")
        start = time.perf_counter()
        group = unit.out_group
        if group is None:   # logits: the parent's weight, shared by its classes
            scores = {k: torch.full((fused.num_classes,), weights[k] / fused.num_classes, dtype=torch.float64)
                      for k in active}
        else:               # a residual stream keeps the weighting of its first writer
            scores = group_scores.setdefault(group, {k: importance[k][unit.name] for k in active})
        problem = _unit_problem(fused, [parents[k] for k in active], unit, inputs, plan[unit.name],
                                [targets[k].pop(unit.name) for k in active], active, memberships,
                                torch.cat([scores[k] for k in active]), held_samples)
        fixed = memberships.get(group) if group is not None else None
        if unit.shortcut is not None and fixed is None:
            raise FusionError("This residual network starts a stream with an identity block, which neuron "
                              "interpolation does not support; use --method ot.")
        if fixed is not None:   # later writers of a stream: its grouping is fixed, remove the fused shortcut
            fixed_labels = torch.cat([_labels_of(fixed[k]) for k in active])
            problem.targets -= problem.offset[:, fixed_labels.clamp_min(0)]
        fit = ridge_fit(problem.design, problem.targets, problem.prior, problem.importance, options.ridge,
                        problem.holdout)
        if group is None:       # logits: class i of every parent is group i
            grouping = Grouping(torch.cat([torch.arange(w) for w in problem.widths]).to(fit.weights.device), float("nan"))
        elif fixed is not None:
            grouping = Grouping(fixed_labels, float("nan"))
        else:
            grouping = _group(problem, fit, options, active.index(reference) if reference in active else None)
        clusters = problem.clusters
        centres = _centres(fit.weights.T, problem.importance, grouping.labels, clusters)
        column = 0
        for layer, width in zip(unit.layers, problem.layer_columns):
            bias = centres[:, -1] if problem.has_bias and layer is unit.layers[0] else None
            _write_layer(fused, layer, centres[:, column:column + width], bias, problem.design[:, column:column + width])
            column += width
        mean_target = problem.targets @ _mixer(grouping.labels, problem.importance, clusters)
        diagnostics = {
            "layer": unit.name, "layers": [l.name for l in unit.layers], "group": group,
            "rows": len(problem.design), "fan_in": problem.design.shape[1], "ridge": fit.ridge, "ridge_lambda": fit.lam,
            "fit_residual": _relative(problem.design @ fit.weights - problem.targets, problem.targets),
            "fused_residual": _relative(problem.design @ centres.T - mean_target, mean_target),
        }
        if group is not None:
            if fixed is None:
                members = {k: F.one_hot(lab.clamp_min(0), clusters).double() * (lab >= 0)[:, None]
                           for k, lab in zip(active, torch.split(grouping.labels, problem.widths))}
                memberships[group] = members
                widths = [p.get_submodule(unit.name).weight.shape[0] for p in parents]
                result.membership[group] = [members[k].cpu().numpy() if k in members
                                            else np.zeros((widths[k], clusters)) for k in range(len(parents))]
                result.importance[group] = [scores[k].cpu().numpy() if k in scores else np.zeros(widths[k])
                                            for k in range(len(parents))]
            parents_per_group = sum((m.sum(0) > 0).long() for m in memberships[group].values())
            diagnostics.update(cluster_sizes=torch.bincount(grouping.labels[grouping.labels >= 0],
                                                            minlength=clusters).tolist(),
                               grouping_cost=grouping.cost, converged=grouping.converged, shared_grouping=fixed is not None,
                               mixed_groups=int((parents_per_group > 1).sum()))
        diagnostics["seconds"] = time.perf_counter() - start
        result.diagnostics.append(diagnostics)
    if progress:
        progress(1.0, "done")
    fan_in, name = max((d["fan_in"], d["layer"]) for d in result.diagnostics)
    if len(inputs) < fan_in:
        result.warnings.append(f"The fusion batch has {len(inputs)} samples, fewer than the fan-in of {name} ({fan_in}): "
                               "there the fit leans on the parents' weights; use at least that many samples.")
    return result


@dataclass
class _UnitProblem:
    """One unit's fit: design Z (R × d, the unit's layers' columns side by side, then the ones column),
    targets A (R × M), prior W⁰ (d × M), importance s (M,), the active parents' widths, the held-out
    rows, the identity shortcut's fused values (R × k) or None, and F's width."""

    design: torch.Tensor
    targets: torch.Tensor
    prior: torch.Tensor
    importance: torch.Tensor
    widths: list[int]
    holdout: torch.Tensor
    has_bias: bool
    layer_columns: list[int]
    offset: torch.Tensor | None
    clusters: int


def _unit_problem(fused: nn.Module, parents: list[nn.Module], unit: _Unit, inputs: torch.Tensor,
                  rows: tuple[torch.Tensor, int], targets: list[torch.Tensor], active: list[int],
                  memberships: dict[str, dict[int, torch.Tensor]], importance: torch.Tensor,
                  held_samples: torch.Tensor) -> _UnitProblem:
    """Z (and the identity shortcut) from the current fused model, the parents' targets and priors."""
    index, positions = rows
    device = fused.get_submodule(unit.name).weight.device
    index = index.to(device)
    taps = {l.name: _Tap(l.name, "input", index, positions, patches=True) for l in unit.layers}
    if unit.shortcut:
        taps["shortcut"] = _Tap(unit.shortcut.name, "input", index, positions)
    columns = [fused.get_submodule(l.name).weight[0].numel() for l in unit.layers]
    recorded = _record_rows(fused, inputs, taps, _batch_size(sum(columns) * positions))
    blocks = [recorded[l.name].double() for l in unit.layers]
    has_bias = _has_bias(fused, unit)
    if has_bias:
        blocks.append(torch.ones(len(blocks[0]), 1, dtype=torch.float64, device=device))
    priors = []
    for k, parent in zip(active, parents):
        parts = [_prior(parent, l, memberships[l.in_group][k] if l.in_group is not None else None) for l in unit.layers]
        column = [w for w, _ in parts]
        if has_bias:
            biases = [b for _, b in parts if b is not None]
            column.append(sum(biases)[None, :])
        priors.append(torch.cat(column, 0))
    return _UnitProblem(torch.cat(blocks, 1), torch.cat(targets, 1).double().to(device), torch.cat(priors, 1).to(device),
                        importance.to(device), [t.shape[1] for t in targets], held_samples.to(device)[index // positions],
                        has_bias, columns, recorded["shortcut"].double() if unit.shortcut else None,
                        fused.get_submodule(unit.name).weight.shape[0])


def _labels_of(membership: torch.Tensor) -> torch.Tensor:
    """The group of every parent neuron from its 0/1 membership rows (−1 for an all-zero row)."""
    return torch.where(membership.sum(1) > 0, membership.argmax(1), torch.full_like(membership[:, 0], -1).long())


def _group(problem: _UnitProblem, fit: RidgeFit, options: InterpOptions, reference: int | None) -> Grouping:
    """Step 4: which fused neuron each parent neuron goes to, by K-means or the Hungarian matching.

    ``reference`` is the reference's position among the active parents (None when it takes no part)."""
    device = problem.design.device
    fits, projections, outside = _coordinates(fit, problem.design, problem.targets)
    if options.grouping == "hungarian":
        spans = torch.split(torch.arange(len(fits), device=device), problem.widths)
        return one_to_one(fits, projections, outside, problem.importance, spans[reference], spans[1 - reference])
    return weighted_kmeans(fits, projections, outside, problem.importance, problem.clusters, options.restarts,
                           options.iterations, options.interp_seed)


def _mixer(labels: torch.Tensor, importance: torch.Tensor, clusters: int) -> torch.Tensor:
    """(M × k) matrix taking the targets to each group's importance-weighted mean target."""
    kept = labels >= 0
    mixer = torch.zeros(len(labels), clusters, dtype=importance.dtype, device=importance.device)
    mixer[kept.nonzero().flatten(), labels[kept]] = importance[kept]
    return mixer / mixer.sum(0).clamp_min(1e-300)


def _relative(residual: torch.Tensor, reference: torch.Tensor) -> float:
    """‖residual‖_F / ‖reference − its column means‖_F (0 when the reference is constant)."""
    spread = (reference - reference.mean(0)).norm()
    return float(residual.norm() / spread) if spread > 0 else 0.0


class NeuronInterpolation:
    """Neuron interpolation behind the fusion-method interface (:mod:`~clafusion_core.methods`)."""

    name = "interp"
    title = "Neuron interpolation (K-means fusion)"
    options_type = InterpOptions
    aligns = False        # it builds a new model from the parents' fits, with no aligned copy of each

    def batch(self, splits: DataSplits, probe, options: InterpOptions):
        """Its own labelled, class-balanced fusion batch of ``options.fusion_size`` train/val samples
        (the probe batch is validation images only, fewer than a fan-in on small datasets)."""
        from .methods import FusionBatch

        return FusionBatch(*fusion_batch(splits, options.fusion_size, options.interp_seed))

    def fuse(self, parents, reference, weights, batch, options=InterpOptions(), layer_weights=None):
        from .methods import FusionOutput, check_parents

        check_parents(parents, reference, weights)
        if batch.labels is None:
            raise AlignmentError("Neuron interpolation needs the labels of its fusion batch.")
        result = interpolation_fuse(list(parents), reference, list(weights), batch.inputs, batch.labels, options)
        warnings = list(result.warnings)
        if layer_weights:   # the fits already follow each parent's own layers; per-layer weights do not apply
            warnings.append("Neuron interpolation fits every layer to the parents' own neurons; the per-layer "
                            "weights at inserted layers apply to OT only.")
        return FusionOutput(result.model, result.membership, None, warnings, result.diagnostics)
