"""Statistics repair of a fused model (REPAIR, Jordan et al. 2023).

Averaging aligned neurons shrinks their pre-activation variance (two imperfectly matched neurons
partly cancel), so the fused network's signal fades layer by layer. Repair restores, for every hidden
neuron k of a layer without BatchNorm, the statistics interpolated from the parent neurons that went
into it on the probe batch. With parent weights w_p (per layer) and each parent's correspondence
``P_p`` (n_p × n_F: a transport plan, or a cluster membership) normalised per fused neuron,

    μ_T[k] = Σ_p w_p · Σ_i P_p[i, k] μ_p[i] / Σ_i P_p[i, k]      (σ_T likewise)

and every fused neuron's pre-activation is moved onto its target, z ↦ (z − μ_F)·σ_T/σ_F + μ_T, i.e.
``W ← W·σ_T/σ_F`` and ``b ← (b − μ_F)·σ_T/σ_F + μ_T``.

The shift needs a bias. In a bias-free ReLU network a rescale alone never changes which inputs make a
neuron fire and moves its mean away from the target, so :func:`with_biases` gives such a model
zero biases first (the same function) and repair then sets them: the repaired model has biases where
its parents had none. Layers are repaired in forward order so each sees the already repaired layers
below it. Layers with BatchNorm are repaired by recomputing BatchNorm statistics instead
(:func:`~.train.reset_batchnorm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .activations import Reading, record
from .layers import WeightLayer, model_view
from .models import rebuild


def moments(model: nn.Module, probe: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each layer's per-neuron ``[mean, std]`` over the probe samples (and positions, for conv maps),
    streamed: the full outputs are never held."""
    readings = {name: Reading(name, "moments") for name in layers}
    results = record(model, probe, list(readings.values()))
    return {name: results[reading] for name, reading in readings.items()}


def repairable_layers(model: nn.Module) -> list[WeightLayer]:
    """The hidden weight layers repair acts on: those without BatchNorm."""
    return [l for l in model_view(model).layers if l.out_group is not None and l.bn is None]


@torch.no_grad()
def with_biases(model: nn.Module) -> nn.Module:
    """``model`` itself when its repairable layers have biases, else a copy with zero biases (same function)."""
    if model.spec.bias:
        return model
    biased = rebuild(model, replace(model.spec, bias=True))
    state = {k: torch.zeros_like(v) for k, v in biased.state_dict().items()}
    state.update({k: v.clone() for k, v in model.state_dict().items()})   # only the new biases stay 0
    biased.load_state_dict(state)
    return biased


@torch.no_grad()
def repair_targets(parents: Sequence[nn.Module], correspondence: dict[str, Sequence[np.ndarray]],
                   weights: Sequence[float], layer_weights: dict[str, Sequence[float]] | None,
                   probe: torch.Tensor, layers: list[WeightLayer]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The interpolated target (mean, std) of every fused neuron of ``layers`` (formula above)."""
    stats = [moments(parent, probe, [l.name for l in layers]) for parent in parents]
    targets = {}
    for layer in layers:
        w = (layer_weights or {}).get(layer.name, weights)
        mean = std = 0
        for parent_stats, plan, wp in zip(stats, correspondence[layer.out_group], w):
            plan = torch.as_tensor(plan, dtype=probe.dtype, device=probe.device)
            mixer = (plan / plan.sum(0).clamp_min(1e-12)).T
            mean = mean + wp * mixer @ parent_stats[layer.name][0]
            std = std + wp * mixer @ parent_stats[layer.name][1]
        targets[layer.name] = (mean, std)
    return targets


@torch.no_grad()
def repair_statistics(fused: nn.Module, parents: Sequence[nn.Module], correspondence: dict[str, Sequence[np.ndarray]],
                      weights: Sequence[float], probe: torch.Tensor,
                      layer_weights: dict[str, Sequence[float]] | None = None) -> list[str]:
    """Repair ``fused`` in place (it must have biases, see :func:`with_biases`); returns the layers repaired.

    ``correspondence[group][p]`` maps parent p's neurons onto the fused ones (the reference parent's
    is the identity); ``weights`` (or ``layer_weights[layer]``) are the parents' shares.
    """
    layers = repairable_layers(fused)
    targets = repair_targets(parents, correspondence, weights, layer_weights, probe, layers)
    for layer in layers:
        target_mean, target_std = targets[layer.name]
        mean_f, std_f = moments(fused, probe, [layer.name])[layer.name]
        scale = target_std / std_f.clamp_min(1e-6)
        scale = torch.where(std_f > 1e-6, scale, torch.ones_like(scale))  # a dead neuron stays as it is
        module = fused.get_submodule(layer.name)
        module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)))
        if module.bias is not None:
            module.bias.copy_((module.bias - mean_f) * scale + target_mean)
    return [l.name for l in layers]
