"""Probe-batch activations through forward hooks.

One forward pass of the probe batch records the output of every module a :class:`~.layers.Probe`
names; each probe then turns that output into a ``[samples, features]`` matrix. Conv maps are either
averaged over space (``conv="pool"``, one feature per channel: the default, cheap and
shift-invariant) or flattened (``conv="flatten"``, C·H·W features).

Both the cost matrix and the activation-based ground metric use these matrices, so they are computed
once per (model, probe batch) and reused (the app caches them; switching the cost metric never
recomputes them).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import ModelView, Probe, model_view

CONV_MODES = ("pool", "flatten")


def _as_matrix(output: torch.Tensor, conv: str) -> torch.Tensor:
    """``[samples, features]``; conv maps pooled (``pool``), flattened (``flatten``) or left as they are (``none``)."""
    if conv == "none":
        return output
    if output.dim() == 4:
        return output.mean(dim=(2, 3)) if conv == "pool" else output.flatten(1)
    return output.flatten(1)


def private_view(module: nn.Module) -> nn.Module:
    """A copy of a module tree that shares its parameters and buffers but none of its mutable state.

    Every module object is copied shallowly with its own submodule, parameter, buffer and hook dicts,
    so hooks registered on the view, or ``eval()`` called on it, never reach the original. Models
    cached by a server are shared between sessions: registering hooks on them directly lets one
    session's forward pass write into another's activations.
    """
    view = copy.copy(module)
    state = dict(module.__dict__)
    for key, value in state.items():
        if "hooks" in key and isinstance(value, dict):
            state[key] = value.copy()
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {name: None if child is None else private_view(child) for name, child in module._modules.items()}
    view.__dict__ = state
    return view


@torch.no_grad()
def record_outputs(model: nn.Module, inputs: torch.Tensor, modules: set[str], batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Run ``inputs`` through ``model`` (eval mode) and return the outputs of the named modules.

    The hooks go on a :func:`private_view` of the model, so concurrent calls on one shared model (two
    app sessions) each see only their own outputs, and the model itself is never changed.
    """
    view = private_view(model).eval()
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    for name in modules:
        view.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs[name].append(out.detach().clone()))
    for start in range(0, len(inputs), batch_size):
        view(inputs[start:start + batch_size])
    return {name: torch.cat(chunks) for name, chunks in outputs.items()}


def probe_matrix(outputs: dict[str, torch.Tensor], probe: Probe, *, pre: bool = False, conv: str = "pool") -> torch.Tensor:
    """The ``[samples, features]`` activation of one probe; ``pre`` skips the ReLU where one exists."""
    out = outputs[probe.module]
    if probe.relu and not (pre and probe.pre_relu):
        out = torch.relu(out)
    return _as_matrix(out, conv)


def unit_activations(model: nn.Module, inputs: torch.Tensor, *, pre: bool = False, conv: str = "pool",
                     view: ModelView | None = None) -> list[list[torch.Tensor]]:
    """Activations of every alignable unit, per stage: ``acts[stage][unit]`` is ``[samples, features]``."""
    view = view or model_view(model)
    outputs = record_outputs(model, inputs, {u.probe.module for u in view.units})
    return [[probe_matrix(outputs, u.probe, pre=pre, conv=conv) for u in stage] for stage in view.stages]


def _positions_as_samples(output: torch.Tensor) -> torch.Tensor:
    """A conv map ``[N, C, H, W]`` as ``[N·H·W, C]``: every sample and position is a row."""
    return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1]) if output.dim() == 4 else output.flatten(1)


def group_activations(model: nn.Module, inputs: torch.Tensor, view: ModelView | None = None, *, pre: bool = False,
                      conv: str = "positions", max_rows: int | None = None) -> dict[str, torch.Tensor]:
    """Activations of every transport group as ``[rows, neurons]`` (post-ReLU unless ``pre``).

    For conv maps ``conv="positions"`` makes every sample *and position* a row, so two channels are
    compared on their whole maps; ``"pool"`` averages each channel over space first. A residual stream
    is seen at several places (after the stem and after each block): their rows are stacked, so the
    stream's neurons are compared on all of them. ``max_rows`` keeps every k-th row (the same rows for
    every model given the same inputs) to bound memory on large maps.
    """
    view = view or model_view(model)
    outputs = record_outputs(model, inputs, {p.module for probes in view.groups.values() for p in probes})
    result = {}
    for group, probes in view.groups.items():
        if not probes:
            continue
        maps = [probe_matrix(outputs, p, pre=pre, conv="none") for p in probes]
        rows = torch.cat([_positions_as_samples(m) if conv == "positions" else _as_matrix(m, "pool") for m in maps])
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[::-(-len(rows) // max_rows)]
        result[group] = rows
    return result


def layer_pre_activations(model: nn.Module, inputs: torch.Tensor, layer_names: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of the named weight layers (before any BatchNorm/ReLU), conv channels pooled."""
    outputs = record_outputs(model, inputs, set(layer_names))
    return {name: _as_matrix(out, "pool") for name, out in outputs.items()}
