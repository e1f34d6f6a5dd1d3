"""Statistics repair of a fused model (REPAIR, Jordan et al. 2023).

Averaging aligned neurons shrinks their pre-activation variance (two imperfectly matched neurons
partly cancel), so the fused network's signal fades layer by layer. Repair restores, for every hidden
neuron k of a layer without BatchNorm, the statistics interpolated from its parents on the probe batch:

    μ_T[k] = (1 − s)·Σ_i P[i, k] μ_A[i] / β_k + s·μ_B[k]      (σ_T likewise)

and rescales the fused neuron's pre-activation z ↦ (z − μ_F)·σ_T/σ_F + μ_T, i.e.
``W ← W·σ_T/σ_F`` and ``b ← (b − μ_F)·σ_T/σ_F + μ_T`` (scale only when the layer has no bias).
Layers are repaired in forward order so each sees the already repaired layers below it. Layers with
BatchNorm are repaired by recomputing BatchNorm statistics instead (:func:`~.train.reset_batchnorm`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .activations import record_outputs
from .layers import model_view


def _moments(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron mean and std over samples (and positions, for conv maps)."""
    flat = outputs.transpose(0, 1).reshape(outputs.shape[1], -1)
    return flat.mean(1), flat.std(1)


@torch.no_grad()
def repair_statistics(fused: nn.Module, model_a: nn.Module, model_b: nn.Module, plans: dict[str, np.ndarray],
                      probe: torch.Tensor, fusion_weight: float = 0.5) -> list[str]:
    """Repair ``fused`` in place; returns the names of the layers repaired."""
    layers = [l for l in model_view(fused).layers if l.out_group is not None and l.bn is None]
    names = {l.name for l in layers}
    stats_a = {k: _moments(v) for k, v in record_outputs(model_a, probe, names).items()}
    stats_b = {k: _moments(v) for k, v in record_outputs(model_b, probe, names).items()}
    s = fusion_weight
    for layer in layers:
        plan = torch.as_tensor(plans[layer.out_group], dtype=probe.dtype, device=probe.device)
        mixer = (plan / plan.sum(0).clamp_min(1e-12)).T
        (mean_a, std_a), (mean_b, std_b) = stats_a[layer.name], stats_b[layer.name]
        target_mean = (1 - s) * mixer @ mean_a + s * mean_b
        target_std = (1 - s) * mixer @ std_a + s * std_b
        mean_f, std_f = _moments(record_outputs(fused, probe, {layer.name})[layer.name])
        scale = target_std / std_f.clamp_min(1e-6)
        scale = torch.where(std_f > 1e-6, scale, torch.ones_like(scale))  # a dead neuron stays as it is
        module = fused.get_submodule(layer.name)
        module.weight.mul_(scale.view(-1, *[1] * (module.weight.dim() - 1)))
        if module.bias is not None:
            module.bias.copy_((module.bias - mean_f) * scale + target_mean)
    return [l.name for l in layers]
