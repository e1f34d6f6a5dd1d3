"""Fusion methods behind one interface, and the registry keyed by method name.

A fusion method takes N parents balanced to equal depth (same layers; widths may differ), the index
of the *reference* parent whose architecture the fused model takes, one weight per parent, the fusion
(probe) batch and its own options, and returns a :class:`FusionOutput`:

* the fused model;
* a per-parent **correspondence** for every transport group: an ``(n_parent × n_fused)`` matrix saying
  how much of each parent neuron went into each fused neuron (OT: the transport plan; neuron
  interpolation: the cluster membership; the reference parent's own is the identity). Repair and the
  plots consume it, whatever the method;
* the parents re-expressed in the reference's neuron basis, when the method has them (OT does: the
  fused model is then exactly ``Σ_k w_k · aligned_k``, so a weight slider or a loss-barrier curve needs
  one alignment, not one per weight).

Methods are instances, not subclasses (as in mergekit's registry): ``METHODS["ot"].fuse(...)``. Each
declares its options as a frozen dataclass (``options_type``); the CLI flags and the app widgets are
drawn from its fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .errors import AlignmentError
from .layers import model_view
from .otfusion import OTOptions, align_onto, ground_activations, weighted_average


@dataclass(frozen=True)
class FusionBatch:
    """The batch a method fits to: inputs, and labels where the method uses them (importance scores)."""

    inputs: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> FusionBatch:
        return FusionBatch(self.inputs.to(device), None if self.labels is None else self.labels.to(device))


@dataclass
class FusionOutput:
    model: nn.Module
    correspondence: dict[str, list[np.ndarray]]      # group -> per parent (n_parent × n_fused)
    aligned: list[nn.Module] | None = None           # parents in the reference's basis, when the method has them
    warnings: list[str] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)

    def plans(self, parent: int = 0) -> dict[str, np.ndarray]:
        """One parent's correspondence per group (the transport plans, for OT)."""
        return {group: matrices[parent] for group, matrices in self.correspondence.items()}


class FusionMethod(Protocol):
    name: str
    title: str
    options_type: type
    aligns: bool          # whether ``fuse`` returns the parents aligned onto the reference (a straight path)

    def batch(self, splits, probe: FusionBatch, options) -> FusionBatch:
        """The batch the method fits to: the shared probe batch, or one of its own drawn from ``splits``."""

    def fuse(self, parents: Sequence[nn.Module], reference: int, weights: Sequence[float], batch: FusionBatch,
             options, layer_weights: dict[str, Sequence[float]] | None = None) -> FusionOutput: ...


def check_parents(parents: Sequence[nn.Module], reference: int, weights: Sequence[float]) -> None:
    """The arguments every method shares: ≥ 2 parents, a valid reference, non-negative weights summing to 1."""
    if len(parents) < 2:
        raise AlignmentError("Fusion needs at least two models.")
    if not 0 <= reference < len(parents):
        raise AlignmentError(f"The reference model must be one of the {len(parents)} models (0 to {len(parents) - 1}).")
    if len(weights) != len(parents) or min(weights) < 0 or abs(sum(weights) - 1) > 1e-6:
        raise AlignmentError(f"Give {len(parents)} non-negative fusion weights that sum to 1.")


def identity_correspondence(model: nn.Module) -> dict[str, np.ndarray]:
    """Every group of ``model`` mapped onto itself (the reference parent's correspondence)."""
    widths = {l.out_group: model.get_submodule(l.name).weight.shape[0]
              for l in model_view(model).layers if l.out_group is not None}
    return {group: np.eye(width, dtype=np.float32) / width for group, width in widths.items()}


class OTFusion:
    """Layer-wise optimal transport (:mod:`~clafusion_core.otfusion`): align every parent onto the
    reference, then average."""

    name = "ot"
    title = "Optimal transport (OTFusion)"
    options_type = OTOptions
    aligns = True

    def batch(self, splits, probe: FusionBatch, options: OTOptions) -> FusionBatch:
        return probe

    def align(self, parents: Sequence[nn.Module], reference: int, batch: FusionBatch,
              options: OTOptions) -> tuple[list[nn.Module], dict[str, list[np.ndarray]], list[str]]:
        """The parents re-expressed in the reference's basis, the plans per group, the solver warnings."""
        target = parents[reference]
        acts = [ground_activations(p, batch.inputs, options) if options.ground_metric == "activations" else None
                for p in parents]
        aligned, plans, warnings = [], {g: [] for g in identity_correspondence(target)}, []
        for index, parent in enumerate(parents):
            if index == reference:
                aligned.append(target)
                for group, plan in identity_correspondence(target).items():
                    plans[group].append(plan)
                continue
            result = align_onto(parent, target, options, acts=acts[index], acts_target=acts[reference])
            aligned.append(result.model)
            for group, plan in result.plans.items():
                plans[group].append(plan)
            warnings += result.warnings
        return aligned, plans, warnings

    def fuse(self, parents, reference, weights, batch, options=OTOptions(), layer_weights=None) -> FusionOutput:
        check_parents(parents, reference, weights)
        aligned, plans, warnings = self.align(parents, reference, batch, options)
        return FusionOutput(weighted_average(aligned, weights, layer_weights), plans, aligned, warnings)


def _registered() -> dict[str, FusionMethod]:
    from .interpolation import NeuronInterpolation

    return {method.name: method for method in (OTFusion(), NeuronInterpolation())}


METHODS: dict[str, FusionMethod] = _registered()


def get_method(name: str) -> FusionMethod:
    if name not in METHODS:
        raise AlignmentError(f"Unknown fusion method '{name}'; choose one of {sorted(METHODS)}.")
    return METHODS[name]
