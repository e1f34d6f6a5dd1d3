"""Layer-wise optimal-transport fusion (OTFusion, Singh & Jaggi 2020) of two models of equal depth.

Model A is aligned onto model B and the two are averaged; the fused model has B's widths. For each
weight layer ℓ in forward order, with T_ℓ the (n_A × n_B) transport plan of the group ℓ writes to and
α, β its marginals:

1. **Input correction** — A's incoming weights are re-indexed by the plan of the layer below:
   ``W_A ← W_A · T_{ℓ−1} · diag(1/β_{ℓ−1})`` (``input_scaling="average"``, the reference behaviour)
   or ``W_A ← W_A · diag(1/α_{ℓ−1}) · T_{ℓ−1}`` (``"sum"``). For equal widths both turn a permuted copy
   back into the original. The first layer reads the data (T = I).
2. **Ground metric** ``M[i, k]`` — Euclidean distance between neuron i of A and neuron k of B:
   their corrected weight rows with bias and BatchNorm parameters appended (``"weights"``), or their
   activation vectors on the probe batch (``"activations"``).
3. **Transport** — ``T = argmin_{T ∈ Π(α, β)} ⟨T, M⟩``: exact (POT ``ot.emd``) or entropic (POT
   ``ot.sinkhorn`` in the log domain, regularisation relative to ``M / max M``).
4. **Align and fuse** — ``Ŵ_A = diag(1/β) · Tᵀ · W_A`` (bias and every BatchNorm vector alike), then
   ``W_F = (1 − s)·Ŵ_A + s·W_B``.

The logits layer gets the input correction only (classes are never permuted). Layers writing into one
residual stream share its plan: the first writer computes it, the others reuse it.

Matrix work runs on the models' device; POT's exact solver runs on the CPU over the small cost
matrix only.
"""

from __future__ import annotations

import copy
import math
import warnings
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


@dataclass(frozen=True)
class OTOptions:
    """How to fuse; every field maps to a CLI flag and an app widget."""

    ground_metric: str = "activations"
    solver: str = "emd"
    sinkhorn_reg: float = 0.01
    fusion_weight: float = 0.5        # s, the weight of model B
    input_scaling: str = "average"
    marginals: str = "uniform"
    squared: bool = False
    input_correction: bool = True     # off only to demonstrate why it is needed

    def __post_init__(self):
        for name, allowed in (("ground_metric", GROUND_METRICS), ("solver", SOLVERS),
                              ("input_scaling", INPUT_SCALINGS), ("marginals", MARGINALS)):
            if getattr(self, name) not in allowed:
                raise AlignmentError(f"Unknown {name.replace('_', ' ')} '{getattr(self, name)}'; choose one of {allowed}.")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise AlignmentError("The fusion weight s must lie between 0 (all A) and 1 (all B).")
        if self.sinkhorn_reg <= 0:
            raise AlignmentError("The Sinkhorn regularisation must be positive, e.g. 0.01.")


@dataclass
class Transport:
    """One group's transport plan with its marginals (torch, on the fusion device)."""

    plan: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor


@dataclass
class FusedModel:
    model: nn.Module
    plans: dict[str, np.ndarray] = field(default_factory=dict)   # group -> plan (n_A × n_B)
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


def _params(model: nn.Module, layer: WeightLayer) -> dict[str, torch.Tensor]:
    """The layer's tensors, weight first: weight [out, in, k], bias and BatchNorm vectors [out]."""
    module = model.get_submodule(layer.name)
    out = {"weight": module.weight.detach().reshape(module.weight.shape[0], -1)}
    if module.bias is not None:
        out["bias"] = module.bias.detach()
    if layer.bn:
        bn = model.get_submodule(layer.bn)
        out.update({"bn.weight": bn.weight.detach(), "bn.bias": bn.bias.detach(),
                    "bn.running_mean": bn.running_mean, "bn.running_var": bn.running_var})
    return out


def _correct_input(weight: torch.Tensor, transport: Transport, scaling: str) -> torch.Tensor:
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


@torch.no_grad()
def fuse_models(model_a: nn.Module, model_b: nn.Module, options: OTOptions = OTOptions(), *,
                acts_a: dict[str, torch.Tensor] | None = None,
                acts_b: dict[str, torch.Tensor] | None = None) -> FusedModel:
    """Fuse two balanced models of equal depth; the result has B's architecture and widths.

    ``acts_a`` / ``acts_b`` map each transport group to its ``[samples, neurons]`` activations and are
    required for the ``activations`` ground metric (see :func:`~.activations.group_activations`).
    """
    view_a, view_b = model_view(model_a), model_view(model_b)
    if [l.name for l in view_a.layers] != [l.name for l in view_b.layers]:
        raise AlignmentError("The two models do not have the same layers after balancing; "
                             "balance them first (they must be of the same family and depth).")
    if options.ground_metric == "activations" and (acts_a is None or acts_b is None):
        raise AlignmentError("The activations ground metric needs probe activations of both models.")
    fused = copy.deepcopy(model_b)
    s = options.fusion_weight
    transports: dict[str, Transport] = {}
    plans, messages = {}, []
    for layer in view_a.layers:
        pa, pb = _params(model_a, layer), _params(model_b, layer)
        weight_a = pa["weight"]
        if layer.in_group is not None and options.input_correction:
            weight_a = _correct_input(weight_a, transports[layer.in_group], options.input_scaling)
        pa["weight"] = weight_a
        if weight_a.shape[1] != pb["weight"].shape[1]:
            raise AlignmentError(f"Layer {layer.name} reads {weight_a.shape[1]} inputs in A but "
                                 f"{pb['weight'].shape[1]} in B; turn the input correction on.")
        if layer.out_group is None:
            aligned = pa
        else:
            transport = transports.get(layer.out_group)
            if transport is None:
                rows_a = torch.cat([v.reshape(v.shape[0], -1) for k, v in pa.items() if "running" not in k], 1)
                rows_b = torch.cat([v.reshape(v.shape[0], -1) for k, v in pb.items() if "running" not in k], 1)
                if options.ground_metric == "weights":
                    cost = torch.cdist(rows_a.double(), rows_b.double())
                else:
                    cost = torch.cdist(acts_a[layer.out_group].T.double(), acts_b[layer.out_group].T.double())
                if options.squared:
                    cost = cost ** 2
                alpha = _marginal(rows_a.double(), options.marginals)
                beta = _marginal(rows_b.double(), options.marginals)
                plan, message = transport_plan(cost, alpha, beta, options.solver, options.sinkhorn_reg)
                if message:
                    messages.append(f"{layer.out_group}: {message}")
                transport = Transport(plan.float(), alpha.float(), plan.float().sum(0))
                transports[layer.out_group] = transport
                plans[layer.out_group] = plan.cpu().numpy()
            mixer = (transport.plan / transport.beta[None, :]).T     # diag(1/β) · Tᵀ
            aligned = {k: mixer @ v.reshape(v.shape[0], -1) for k, v in pa.items()}
        target = _params(fused, layer)
        for key, value_b in pb.items():
            target[key].copy_((1 - s) * aligned[key].reshape(value_b.shape) + s * value_b)
    return FusedModel(fused, plans, messages)
