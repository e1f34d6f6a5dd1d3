"""Layer balancing: give two aligned models the same depth before layer-wise fusion.

``add`` (default) makes the shallower model B as deep as A by inserting an *identity unit* wherever A
has a unit the alignment left unmatched. After a ReLU every input is non-negative, so

    Linear:  relu(I·x + 0) = x
    Conv:    a 3×3 kernel with 1 at the centre of channel c → c, 0 elsewhere
    BN:      weight 1, bias 0, running_mean 0, running_var 1 − eps  ⇒  BN(x) = x (eval mode)
    Block:   torchvision's ``zero_init_residual`` idiom: last BN weight = bias = 0 ⇒ relu(x + 0) = x

and the balanced B computes exactly what B computed (each family makes its units so:
``Family.set_identity`` in :mod:`clafusion_core.families`). The one inexact case is an identity unit placed
before the model's first unit (only possible when the first layer is not pinned), whose input is the raw,
possibly negative, data; the result says so.

``merge`` (MLPs: ``Family.merge_balancing``) makes A as shallow as B instead: each unmatched hidden layer ℓ is removed and folded
into the next kept layer through its average ReLU gate D = diag(P[z_ℓ > 0]) measured on the probe
batch:  W_next ← W_next · D · W_ℓ,  b_next ← W_next · D · b_ℓ + b_next.  This is lossy; the pipeline
reports the accuracy it costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import record_outputs
from .alignment import unmatched_layers
from .errors import AlignmentError
from .layers import model_view
from .models import rebuild, with_stage_depths

BALANCE_METHODS = ("add", "merge")
#: How wide an inserted identity unit is: ``input`` — the width flowing into it (CLAFusion's identity),
#: ``deeper`` — the width of the deeper model's unit it stands in for where that is wider (an identity
#: padded with dead channels, ``[I; 0]``, and the next unit reading them through zero weights: still exact).
IDENTITY_WIDTHS = ("deeper", "input")


def balance_methods(model: nn.Module) -> tuple[str, ...]:
    """The balancings a model's family allows: ``merge`` folds fully connected layers, so MLPs only."""
    return BALANCE_METHODS if model.family.merge_balancing else ("add",)


@dataclass
class Balanced:
    """Two models of equal depth, ready for layer-wise fusion, and what balancing did to get there."""

    model_a: nn.Module
    model_b: nn.Module
    inserted: list[tuple[int, int]] = field(default_factory=list)  # (stage, position) identity units in B
    removed: list[tuple[int, int]] = field(default_factory=list)   # (stage, position) units of A merged away
    exact: bool = True
    notes: list[str] = field(default_factory=list)


def _copy_state(source: nn.Module, target: nn.Module, rename: dict[str, str]) -> None:
    """Copy every tensor of ``source``'s state into ``target``, mapping unit prefixes by ``rename``.

    A target tensor larger than its source (a unit reading a widened identity unit's extra, always-zero
    channels) gets the source in its leading slice and zeros elsewhere, so those channels are never read.
    """
    target_state = target.state_dict()
    for key, value in source.state_dict().items():
        prefix = next((p for p in rename if key.startswith(p + ".")), None)
        new_key = rename[prefix] + key[len(prefix):] if prefix else key
        if new_key not in target_state:
            continue
        wanted = target_state[new_key]
        if wanted.shape == value.shape:
            target_state[new_key] = value.clone()
        else:
            padded = torch.zeros_like(wanted)
            padded[tuple(slice(0, n) for n in value.shape)] = value
            target_state[new_key] = padded
    target.load_state_dict(target_state)


def _check_alignment(mappings: list[list[int]], depths_a: list[int], depths_b: list[int]) -> None:
    if len(depths_a) != len(depths_b) or len(mappings) != len(depths_b):
        raise AlignmentError(f"The models have {len(depths_a)} and {len(depths_b)} stages; "
                             "fuse models of the same family with the same number of stages (poolings).")
    for stage, (mapping, m, n) in enumerate(zip(mappings, depths_a, depths_b)):
        if len(mapping) != n or any(not 0 <= a < m for a in mapping) or list(mapping) != sorted(set(mapping)):
            raise AlignmentError(f"The matching of stage {stage} is not a strictly increasing map into "
                                 f"{m} layers; recompute the alignment.")


def add_identity_units(model_b: nn.Module, mappings: list[list[int]], depths_a: list[int],
                       widths_a: list[list[int]] | None = None) -> Balanced:
    """Make B as deep as A: stage s of the result has ``depths_a[s]`` units, B's unit j at position
    ``mappings[s][j]`` and an identity unit at every other position.

    An identity unit is as wide as its input, or — given ``widths_a`` (A's unit widths per stage) — as
    wide as A's unit at its position where that is wider (``[I; 0]``: the extra channels are always zero).
    Families whose units take their stage's width (ResNet) keep that width either way.
    """
    view = model_view(model_b)
    _check_alignment(mappings, depths_a, [len(s) for s in view.stages])
    unit_widths, rename, identity_positions, exact = [], {}, [], True
    width = None  # the width flowing into the next unit (None: the raw input)
    for stage, (units, mapping, depth) in enumerate(zip(view.stages, mappings, depths_a)):
        source = {pos: unit for pos, unit in zip(mapping, units)}
        widths = []
        for position in range(depth):
            if position in source:
                width = source[position].width
            else:
                identity_positions.append((stage, position))
                if width is None:
                    exact = False
                    width = model_b.family.input_width(model_b.input_shape)
                if widths_a is not None:
                    width = max(width, widths_a[stage][position])
            widths.append(width)
        unit_widths.append(widths)
    new_spec = with_stage_depths(model_b.spec, depths_a, unit_widths)
    balanced = rebuild(model_b, new_spec)
    new_view = model_view(balanced)
    for stage, (units, mapping) in enumerate(zip(view.stages, mappings)):
        for unit, position in zip(units, mapping):
            rename[unit.name] = new_view.stages[stage][position].name
    _copy_state(model_b, balanced, rename)  # layers outside units (head, stem) keep their names
    for stage, position in identity_positions:
        balanced.family.set_identity(balanced.get_submodule(new_view.stages[stage][position].name))
    notes = []
    if not exact:
        notes.append("An identity layer was inserted before the first layer, where inputs can be negative, "
                     "so the balanced model differs from the original; pin the first layer for an exact balance.")
    return Balanced(model_a=None, model_b=balanced, inserted=identity_positions, exact=exact, notes=notes)


@torch.no_grad()
def merge_units(model_a: nn.Module, mapping: list[int], probe: torch.Tensor) -> Balanced:
    """Make an MLP A as shallow as its partner by folding each unmatched hidden layer into the next."""
    if "merge" not in balance_methods(model_a):
        raise AlignmentError("Merge balancing supports MLPs only; choose 'add' balancing for CNNs and ResNets.")
    view = model_view(model_a)
    depth = len(view.stages[0])
    removed = unmatched_layers(mapping, depth)
    outputs = record_outputs(model_a, probe, {f"hidden.{i}" for i in removed})
    gates = {i: (outputs[f"hidden.{i}"] > 0).float().mean(0) for i in removed}

    kept_layers = [model_a.hidden[i] for i in mapping] + [model_a.head]
    new_spec = with_stage_depths(model_a.spec, [len(mapping)], [[model_a.hidden[i].out_features for i in mapping]])
    merged = rebuild(model_a, new_spec)
    targets = list(merged.hidden) + [merged.head]
    pending_w, pending_b = None, None  # the affine map of removed layers since the last kept one
    kept = iter(zip(kept_layers, targets))
    for i in range(depth + 1):
        layer = model_a.hidden[i] if i < depth else model_a.head
        if i in gates:
            w = gates[i][:, None] * layer.weight
            b = gates[i] * layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
            pending_w, pending_b = (w, b) if pending_w is None else (w @ pending_w, w @ pending_b + b)
            continue
        source, target = next(kept)
        weight, bias = source.weight, source.bias
        if pending_w is not None:
            bias = (weight @ pending_b) + (bias if bias is not None else 0)
            weight = weight @ pending_w
            pending_w = pending_b = None
        target.weight.copy_(weight)
        if target.bias is not None:
            target.bias.copy_(bias)
    return Balanced(model_a=merged, model_b=None, removed=[(0, i) for i in removed], exact=False,
                    notes=[f"Merged {len(removed)} layer(s) of the deeper model into their successors (lossy)."])


def balance(model_a: nn.Module, model_b: nn.Module, mappings: list[list[int]], method: str = "add",
            probe: torch.Tensor | None = None, identity_width: str = "deeper") -> Balanced:
    """Balance A (deeper) and B (shallower) under the per-stage alignment ``mappings``.

    ``identity_width`` (``add`` only): see :data:`IDENTITY_WIDTHS`.
    """
    if identity_width not in IDENTITY_WIDTHS:
        raise AlignmentError(f"Unknown identity width '{identity_width}'; choose one of {IDENTITY_WIDTHS}.")
    stages_a = model_view(model_a).stages
    depths_a = [len(s) for s in stages_a]
    if method == "add":
        widths_a = [[unit.width for unit in stage] for stage in stages_a] if identity_width == "deeper" else None
        result = add_identity_units(model_b, mappings, depths_a, widths_a)
        result.model_a = model_a
        return result
    if method == "merge":
        if probe is None:
            raise AlignmentError("Merge balancing needs a probe batch to estimate which units are active.")
        result = merge_units(model_a, mappings[0], probe)
        result.model_b = model_b
        return result
    raise AlignmentError(f"Unknown balancing '{method}'; choose one of {BALANCE_METHODS}.")
