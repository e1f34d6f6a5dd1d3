"""Layer-wise optimal-transport fusion (OTFusion, Singh & Jaggi 2020) of models of equal depth.

OT fusion is *align, then average*: every parent is re-expressed in the neuron basis of a target
(the reference parent), then the aligned parents are averaged. The plans never depend on the
averaging weights, so one alignment serves every weight (the s slider, a loss-barrier curve, N-model
fusion). For each weight layer ℓ in forward order, with T_ℓ the (n_A × n_B) transport plan of the
group ℓ writes to and α, β its marginals:

1. **Input correction** — A's incoming weights are re-indexed by the plan of the layer below:
   ``W_A ← W_A · T_{ℓ−1} · diag(1/β_{ℓ−1})`` (``input_scaling="average"``, the reference behaviour)
   or ``W_A ← W_A · diag(1/α_{ℓ−1}) · T_{ℓ−1}`` (``"sum"``). For equal widths both turn a permuted copy
   back into the original. The first layer reads the data (T = I).
2. **Ground metric** ``M[i, k]`` — Euclidean distance between neuron i of A and neuron k of B:
   their corrected weight rows with bias and BatchNorm parameters appended (``"weights"``), or their
   activation vectors on the probe batch (``"activations"``; a conv channel's vector holds its value at
   every sample *and position*, which matches channels far better than their spatial means).
3. **Transport** — ``T = argmin_{T ∈ Π(α, β)} ⟨T, M⟩``: exact (POT ``ot.emd``) or entropic (POT
   ``ot.sinkhorn`` in the log domain, regularisation relative to ``M / max M``).
4. **Align** — ``Ŵ_A = diag(1/β) · Tᵀ · W_A`` (bias and every BatchNorm vector alike): :func:`align_onto`.
5. **Average** — ``W_F = Σ_k w_k Ŵ_k`` with per-layer weights where wanted: :func:`weighted_average`.

The logits layer gets the input correction only (classes are never permuted). Layers writing into one
residual stream share its plan: the first writer computes it, the others reuse it.

Matrix work runs on the models' device; POT's exact solver runs on the CPU over the small cost
matrix only.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import ot
import torch
from torch import nn

from .errors import AlignmentError
from .layers import WeightLayer, model_view

GROUND_METRICS = ("activations", "weights")
SOLVERS = ("emd", "sinkhorn")
INPUT_SCALINGS = ("average", "sum")
MARGINALS = ("uniform", "importance")
GROUND_ACTIVATIONS = ("post", "pre")
GROUND_CONV_FEATURES = ("positions", "pool")
GROUND_ACTIVATION_CHOICES = ("conv", "validation", "fixed")
MAX_GROUND_ROWS = 50_000   # samples × positions kept for one group's activation distances (bounded memory)


@dataclass(frozen=True)
class OTOptions:
    """How OT aligns neurons; every field maps to a CLI flag, and all but ``squared`` and ``input_correction``
    to an app widget.

    ``ground_activation`` and ``ground_conv_features`` choose the activations of the ``activations`` ground metric
    (independent of the alignment's cost matrix): post- or pre-ReLU, and for conv maps every position
    as a sample (``positions``) or the spatial mean per channel (``pool``). Neither activation fuses best
    everywhere, so ``ground_activation_choice`` lets the pipeline fuse with both and keep the one better on
    the validation split (:func:`clafusion_core.pipeline.fuse_and_repair`; ties keep ``ground_activation``):
    ``validation`` always, ``conv`` (the default) for conv families only — on MLPs it doubled the fusion
    for little gain (``benchmarks/README.md``, *Quality*) —, ``fixed`` never. A direct :func:`fuse_models` or
    method call has no validation split and uses ``ground_activation``. ``squared`` squares the Euclidean
    ground costs (plain distances fused 3 pp better one-shot on MNIST MLPs: 96.0 vs 92.8 %);
    ``input_correction`` off shows why the correction is needed (the fused model is then wrong).
    """

    ground_metric: str = "activations"
    solver: str = "emd"
    sinkhorn_reg: float = 0.01
    input_scaling: str = "average"
    marginals: str = "uniform"
    ground_activation: str = "post"
    ground_conv_features: str = "positions"
    squared: bool = False
    input_correction: bool = True
    ground_activation_choice: str = "conv"

    def __post_init__(self):
        for name, allowed in (("ground_metric", GROUND_METRICS), ("solver", SOLVERS),
                              ("input_scaling", INPUT_SCALINGS), ("marginals", MARGINALS),
                              ("ground_activation", GROUND_ACTIVATIONS),
                              ("ground_conv_features", GROUND_CONV_FEATURES),
                              ("ground_activation_choice", GROUND_ACTIVATION_CHOICES)):
            if getattr(self, name) not in allowed:
                raise AlignmentError(f"Unknown {name.replace('_', ' ')} '{getattr(self, name)}'; choose one of {allowed}.")
        if self.sinkhorn_reg <= 0:
            raise AlignmentError("The Sinkhorn regularisation must be positive, e.g. 0.01.")

    def ignored(self) -> set[str]:
        """The options these settings bypass: the regularisation under the exact solver, the ground
        metric's activation choices under the weights metric."""
        unused = set() if self.solver == "sinkhorn" else {"sinkhorn_reg"}
        return unused | (set() if self.ground_metric == "activations" else
                         {"ground_activation", "ground_conv_features", "ground_activation_choice"})


@dataclass
class Transport:
    """One group's transport plan with its marginals (torch, on the fusion device)."""

    plan: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


@dataclass
class AlignedModel:
    """A parent re-expressed in the target's neuron basis (the target's architecture and widths)."""

    model: nn.Module
    plans: dict[str, np.ndarray] = field(default_factory=dict)   # group -> plan (n_parent × n_target)
    warnings: list[str] = field(default_factory=list)


#: Sinkhorn's iterations per attempt are capped at ``SINKHORN_WORK / (n·m + SINKHORN_OVERHEAD)``, run in
#: chunks of ``SINKHORN_CHUNK``: bounded whatever the regularisation, and deterministic (the same problem,
#: the same iterations). The overhead term is the fixed cost of one iteration, in plan entries (measured:
#: ~0.4 ms per iteration on a 60×40 plan, ~5 ms on 400×400, on a busy 2-core CPU).
SINKHORN_WORK = 200_000_000
SINKHORN_OVERHEAD = 20_000
SINKHORN_CHUNK = 100
SINKHORN_MAX_ITERATIONS = 20_000
#: Below this regularisation (of the cost normalised to [0, 1]) Sinkhorn needs ~1/reg iterations, each
#: slower too (~25 ms on 400×400): the exact plan, its limit as reg → 0, is used instead.
SINKHORN_MIN_REG = 1e-4
#: A plan whose row or column sums are off from α, β by more than this (relative) is not used.
MARGINAL_TOLERANCE = 1e-3
CONVERGED = 1e-6
FALLBACK_FACTOR = 10


def marginal_error(plan: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> float:
    """``max(|T·1 − α| / α, |Tᵀ·1 − β| / β)``, the worst relative error of the plan's marginals (inf for NaN)."""
    if not torch.isfinite(plan).all():
        return math.inf
    rows = ((plan.sum(1) - alpha).abs() / alpha).max()
    cols = ((plan.sum(0) - beta).abs() / beta).max()
    return float(torch.maximum(rows, cols))


def _off_by(error: float) -> str:
    return "gave NaN" if math.isinf(error) else f"its marginals were off by {error:.1%}"


def _sinkhorn(alpha: torch.Tensor, beta: torch.Tensor, cost: torch.Tensor,
              reg: float) -> tuple[torch.Tensor, int, float]:
    """Log-domain Sinkhorn (POT), warm-started chunk after chunk (identical to one long run), within the cap.

    It stops when POT's own criterion is met, at the cap, or — deterministically, from the numbers alone —
    when the marginal error's decay over the last chunk, continued, would not reach
    :data:`MARGINAL_TOLERANCE` within the cap (an optimistic forecast: Sinkhorn slows down as it goes).
    Returns the plan, the iterations run and the plan's :func:`marginal_error`.
    """
    cap = int(min(SINKHORN_MAX_ITERATIONS, max(50, SINKHORN_WORK // (cost.numel() + SINKHORN_OVERHEAD))))
    chunks = max(1, math.ceil(cap / SINKHORN_CHUNK))
    warm, previous, iterations = None, None, 0
    for done in range(1, chunks + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # convergence is judged by the marginals instead
            plan, log = ot.sinkhorn(alpha, beta, cost, reg, method="sinkhorn_log", numItermax=SINKHORN_CHUNK,
                                    stopThr=1e-9, warn=False, log=True, warmstart=warm)
        iterations += int(log["niter"]) + 1
        error = marginal_error(plan, alpha, beta)
        if log["niter"] < SINKHORN_CHUNK - 1 or math.isinf(error):
            break
        if error > MARGINAL_TOLERANCE and previous is not None:
            rate = error / previous
            if rate >= 1 or done + math.log(MARGINAL_TOLERANCE / error) / math.log(rate) > chunks:
                break
        warm, previous = (log["log_u"], log["log_v"]), error
    return plan, iterations, error


def _emd(alpha: torch.Tensor, beta: torch.Tensor, cost: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    plan, log = ot.emd(alpha.cpu().numpy(), beta.cpu().numpy(), cost.cpu().numpy(), numItermax=10_000_000, log=True)
    return torch.as_tensor(plan, dtype=torch.float64, device=cost.device), log.get("warning")


def transport_plan(cost: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, solver: str = "emd",
                   reg: float = 0.01) -> tuple[torch.Tensor, str | None]:
    """Solve ``min_{T ∈ Π(α, β)} ⟨T, M⟩`` (optionally ``+ reg·⟨T, log T⟩``) for ``M = cost / max cost``.

    Returns the plan (same device and dtype as ``cost``) and a message for the user, else None.
    Sinkhorn's time is bounded (:data:`SINKHORN_WORK`, :data:`SINKHORN_MIN_REG`), and its plan is used
    only if its marginals are within :data:`MARGINAL_TOLERANCE` of α and β: at a small regularisation
    it converges too slowly (or underflows), and a plan off by 100× would silently rescale the fused
    weights. Such a plan is solved again at ``10 · reg``, then exactly, and the message says which.
    """
    cost = cost.detach()
    scale = cost.max()
    normalised = (cost / scale if scale > 0 else cost).double()
    alpha, beta = alpha.double(), beta.double()
    if solver == "emd":
        plan, message = _emd(alpha, beta, normalised)
        return plan.to(cost.dtype), message
    if not reg >= SINKHORN_MIN_REG:   # NaN included
        plan, message = _emd(alpha, beta, normalised)
        note = (f"Sinkhorn at regularisation {reg:g} cannot converge in bounded time (below {SINKHORN_MIN_REG:g} it "
                "needs ~1/reg iterations), so the exact solver, its limit as the regularisation goes to 0, was used "
                "instead.")
        return plan.to(cost.dtype), note + (f" {message}" if message else "")
    errors = []
    for attempt in (reg, reg * FALLBACK_FACTOR):
        plan, iterations, error = _sinkhorn(alpha, beta, normalised, attempt)
        if error <= MARGINAL_TOLERANCE:
            if errors:
                return plan.to(cost.dtype), (f"Sinkhorn at regularisation {reg:g} did not converge within its "
                                             f"iteration limit ({_off_by(errors[0])}), so {attempt:g} was used "
                                             "instead.")
            if error > CONVERGED:
                return plan.to(cost.dtype), (f"Sinkhorn stopped at its limit of {iterations} iterations before "
                                             f"converging; its marginals are off by at most {error:.2g} (relative).")
            return plan.to(cost.dtype), None
        errors.append(error)
    plan, message = _emd(alpha, beta, normalised)
    note = (f"Sinkhorn at regularisation {reg:g} ({_off_by(errors[0])}) and at {reg * FALLBACK_FACTOR:g} "
            f"({_off_by(errors[1])}) did not converge within its iteration limit, so the exact solver was used "
            "instead.")
    return plan.to(cost.dtype), note + (f" {message}" if message else "")


def layer_tensors(model: nn.Module, layer: WeightLayer) -> dict[str, torch.Tensor]:
    """The layer's parameters and buffers by role: weight [out, in, k], bias and BatchNorm vectors [out].

    These are the module's own tensors (not copies), so fusion writes through them.
    """
    module = model.get_submodule(layer.name)
    out = {"weight": module.weight}
    if module.bias is not None:
        out["bias"] = module.bias
    if layer.bn:
        bn = model.get_submodule(layer.bn)
        out.update({"bn.weight": bn.weight, "bn.bias": bn.bias,
                    "bn.running_mean": bn.running_mean, "bn.running_var": bn.running_var})
    return out


def layer_rows(model: nn.Module, layer: WeightLayer) -> dict[str, torch.Tensor]:
    """:func:`layer_tensors` as ``[out, -1]`` values (a copy when the memory layout needs one, e.g.
    channels_last): one row per output neuron."""
    return {k: v.detach().reshape(v.shape[0], -1) for k, v in layer_tensors(model, layer).items()}


def correct_input(weight: torch.Tensor, transport: Transport, scaling: str) -> torch.Tensor:
    """``W · T · diag(1/β)`` (average) or ``W · diag(1/α) · T`` (sum) on the input axis of [out, in·k].

    The input axis is channel-major (a conv's in-channels × kernel, or a flattened C×H×W map), so the
    plan acts on the channel index with each channel's k entries carried along.
    """
    w = weight.reshape(weight.shape[0], transport.plan.shape[0], -1)
    if scaling == "average":
        mixer = transport.plan / transport.beta[None, :]
    else:
        mixer = transport.plan / transport.alpha[:, None]
    return torch.einsum("oik,ij->ojk", w, mixer).reshape(weight.shape[0], -1)


def _marginal(rows: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.full((rows.shape[0],), 1.0 / rows.shape[0], dtype=rows.dtype, device=rows.device)
    importance = rows.abs().sum(1) + 1e-12   # neuron importance: L1 norm of its incoming weights
    return importance / importance.sum()


def _check_same_layers(models: Sequence[nn.Module]) -> list[WeightLayer]:
    views = [model_view(m) for m in models]
    names = [l.name for l in views[0].layers]
    if any([l.name for l in v.layers] != names for v in views[1:]):
        raise AlignmentError("The models do not have the same layers after balancing; "
                             "balance them first (they must be of the same family and depth).")
    return views[0].layers


def ground_activations(model: nn.Module, probe: torch.Tensor, options: OTOptions) -> dict[str, torch.Tensor]:
    """Each transport group's ``[rows, neurons]`` activations for the ``activations`` ground metric."""
    from .activations import group_activations

    return group_activations(model, probe, pre=options.ground_activation == "pre", conv=options.ground_conv_features,
                             max_rows=MAX_GROUND_ROWS)


@torch.no_grad()
def align_onto(model: nn.Module, target: nn.Module, options: OTOptions = OTOptions(), *,
               acts: dict[str, torch.Tensor] | None = None,
               acts_target: dict[str, torch.Tensor] | None = None) -> AlignedModel:
    """Re-express ``model`` in ``target``'s neuron basis (steps 1–4 of the module docstring).

    The result has the target's architecture and widths; for equal widths it computes exactly what
    ``model`` computes (T is then a scaled permutation). ``acts`` / ``acts_target`` map each transport
    group to its ``[rows, neurons]`` activations (:func:`ground_activations`) and are required for the
    ``activations`` ground metric.
    """
    layers = _check_same_layers([model, target])
    if options.ground_metric == "activations" and (acts is None or acts_target is None):
        raise AlignmentError("The activations ground metric needs probe activations of both models.")
    aligned = copy.deepcopy(target)
    transports: dict[str, Transport] = {}
    plans, messages = {}, []
    for layer in layers:
        pa, pb = layer_rows(model, layer), layer_rows(target, layer)
        if layer.in_group is not None and options.input_correction:
            pa["weight"] = correct_input(pa["weight"], transports[layer.in_group], options.input_scaling)
        if pa["weight"].shape[1] != pb["weight"].shape[1]:
            raise AlignmentError(f"Layer {layer.name} reads {pa['weight'].shape[1]} inputs in one model but "
                                 f"{pb['weight'].shape[1]} in the other; turn the input correction on.")
        if layer.out_group is not None:
            transport = transports.get(layer.out_group)
            if transport is None:
                transport, message = _group_transport(layer.out_group, pa, pb, options, acts, acts_target)
                transports[layer.out_group] = transport
                plans[layer.out_group] = transport.plan.cpu().numpy()
                if message:
                    messages.append(f"{layer.out_group}: {message}")
            mixer = (transport.plan / transport.beta[None, :]).T     # diag(1/β) · Tᵀ
            pa = {k: mixer @ v for k, v in pa.items()}
        for key, tensor in layer_tensors(aligned, layer).items():
            tensor.copy_(pa[key].reshape(tensor.shape))
    return AlignedModel(aligned, plans, messages)


def _group_transport(group: str, rows_a: dict[str, torch.Tensor], rows_b: dict[str, torch.Tensor], options: OTOptions,
                     acts_a: dict[str, torch.Tensor] | None,
                     acts_b: dict[str, torch.Tensor] | None) -> tuple[Transport, str | None]:
    """The plan of one group from its first writer: ground metric, marginals, solver."""
    flat_a = torch.cat([v for k, v in rows_a.items() if "running" not in k], 1).double()
    flat_b = torch.cat([v for k, v in rows_b.items() if "running" not in k], 1).double()
    if options.ground_metric == "weights":
        cost = torch.cdist(flat_a, flat_b)
    else:
        cost = torch.cdist(acts_a[group].T.double(), acts_b[group].T.double())
    if options.squared:
        cost = cost ** 2
    alpha, beta = _marginal(flat_a, options.marginals), _marginal(flat_b, options.marginals)
    plan, message = transport_plan(cost, alpha, beta, options.solver, options.sinkhorn_reg)
    plan = plan.float()
    return Transport(plan, alpha.float(), plan.sum(0)), message


def state_keys_by_layer(model: nn.Module) -> dict[str, str]:
    """``state_dict`` key → the weight layer it belongs to (its weight, bias and BatchNorm tensors)."""
    keys = {}
    for layer in model_view(model).layers:
        for role in layer_tensors(model, layer):
            keys[f"{layer.bn}.{role[3:]}" if role.startswith("bn.") else f"{layer.name}.{role}"] = layer.name
    return keys


@torch.no_grad()
def weighted_average(models: Sequence[nn.Module], weights: Sequence[float],
                     layer_weights: dict[str, Sequence[float]] | None = None) -> nn.Module:
    """``θ_F = Σ_k w_k θ_k`` over models of one architecture (already aligned onto one basis).

    ``layer_weights`` overrides the weights for the named weight layers (their weight, bias and
    BatchNorm tensors), e.g. to keep the deeper model's layer where balancing inserted an identity.
    Integer buffers (BatchNorm's batch counter) are taken from the first model.
    """
    if len(models) != len(weights) or not models:
        raise AlignmentError(f"Got {len(models)} models and {len(weights)} weights; give one weight per model.")
    states = [m.state_dict() for m in models]
    owner = state_keys_by_layer(models[0]) if layer_weights else {}
    averaged = copy.deepcopy(models[0])
    merged = {}
    for key, value in states[0].items():
        if not value.is_floating_point():
            merged[key] = value
            continue
        w = layer_weights.get(owner.get(key), weights) if layer_weights else weights
        merged[key] = sum(float(wk) * state[key] for wk, state in zip(w, states))
    averaged.load_state_dict(merged)
    return averaged


def fuse_models(model_a: nn.Module, model_b: nn.Module, options: OTOptions = OTOptions(), *,
                weight_b: float = 0.5, layer_weights: dict[str, Sequence[float]] | None = None,
                acts_a: dict[str, torch.Tensor] | None = None,
                acts_b: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, AlignedModel]:
    """Fuse two balanced models of equal depth: ``(1 − s)·align_onto(A, B) + s·B``, B's widths.

    Returns the fused model and the aligned A (its plans included).
    """
    if not 0.0 <= weight_b <= 1.0:
        raise AlignmentError("The fusion weight s must lie between 0 (all A) and 1 (all B).")
    aligned = align_onto(model_a, model_b, options, acts=acts_a, acts_target=acts_b)
    return weighted_average([aligned.model, model_b], [1 - weight_b, weight_b], layer_weights), aligned
