"""Probe-batch activations through forward hooks, reduced as the batch streams through.

The probe batch goes through the model in chunks; a forward hook on each recorded module reduces its
chunk of output to what the caller keeps (a :class:`Reading`) before the next chunk runs, so the peak
memory is one chunk's forward pass plus the reduced results — never every layer at full resolution:

* ``pool`` — conv maps averaged over space, ``[samples, channels]`` (the default: cheap and
  shift-invariant); ``flatten`` — C·H·W features per sample;
* ``positions`` — every sample *and position* a row, ``[samples·H·W, channels]``, optionally every
  k-th row only (the same rows for every model given the same inputs);
* ``moments`` — each channel's mean and (unbiased) standard deviation over samples and positions,
  accumulated in float64 as running sums: what statistics repair needs, in ``[2, channels]``;
* ``none`` — the output as it is (small models and tests only).

Both the cost matrix and the activation-based ground metric use these matrices, so they are computed
once per (model, probe batch) and reused (the app caches them; switching the cost metric never
recomputes them).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import ModelView, model_view

CONV_MODES = ("pool", "flatten")

#: Values of the recorded outputs one chunk of the probe batch may produce (float32: 64 MiB). The chunk
#: size follows from it: a 200-image probe is one chunk for an MLP, ~70 images for a full ResNet-18.
CHUNK_VALUES = 2 ** 24


@dataclass(frozen=True)
class Reading:
    """What to keep of one module's output: ``reduce`` (see the module docstring) after a ReLU if ``relu``.

    Readings that share a ``cap_group`` (``positions`` or ``pool``) are capped together by ``record``'s
    ``max_rows``: their rows, stacked in the order given, keep every k-th row with one k for the group.
    """

    module: str
    reduce: str = "pool"
    relu: bool = False
    cap_group: str | None = None


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


def _positions_as_samples(output: torch.Tensor) -> torch.Tensor:
    """A conv map ``[N, C, H, W]`` as ``[N·H·W, C]``: every sample and position is a row."""
    return output.permute(0, 2, 3, 1).reshape(-1, output.shape[1]) if output.dim() == 4 else output.flatten(1)


class _Reducer:
    """Folds the chunks of one reading's output into its result."""

    def __init__(self, reading: Reading, stride: int = 1, offset: int = 0):
        self.reading, self.stride, self.seen = reading, stride, offset
        self.chunks: list[torch.Tensor] = []
        self.sums = self.squares = None
        self.count = 0

    def add(self, out: torch.Tensor) -> None:
        out = torch.relu(out) if self.reading.relu else out
        kind = self.reading.reduce
        if kind == "moments":
            flat = out.transpose(0, 1).reshape(out.shape[1], -1).double()
            sums, squares = flat.sum(1), (flat * flat).sum(1)
            self.sums = sums if self.sums is None else self.sums + sums
            self.squares = squares if self.squares is None else self.squares + squares
            self.count += flat.shape[1]
        elif kind == "none":
            self.chunks.append(out.detach().clone())
        else:
            if kind == "positions":
                rows = _positions_as_samples(out)
            else:
                rows = out.mean(dim=(2, 3)) if kind == "pool" and out.dim() == 4 else out.flatten(1)
            first = -self.seen % self.stride
            self.seen += len(rows)
            self.chunks.append(rows[first::self.stride].clone())

    def result(self) -> torch.Tensor:
        if self.reading.reduce != "moments":
            return torch.cat(self.chunks)
        mean = self.sums / self.count
        var = (self.squares - self.count * mean * mean).clamp_min(0) / max(self.count - 1, 1)
        return torch.stack([mean, var.sqrt()]).float()


def _feeding(reducers: list[_Reducer]):
    """A forward hook handing the module's output to each of ``reducers``."""
    def hook(_module, _inputs, output):
        for reducer in reducers:
            reducer.add(output)
    return hook


class _Enough(Exception):
    """Raised by the hook of the last recorded module: the rest of the forward pass is not needed."""


def _stop(_module, _inputs, _output):
    raise _Enough


def _per_sample_shapes(view: nn.Module, sample: torch.Tensor, modules: set[str]) -> tuple[dict[str, torch.Size], list[str]]:
    """The output shape of each module for one sample (one forward pass of one input), and the order in
    which the modules ran (a module that runs twice, e.g. a shared ReLU, appears twice)."""
    shapes: dict[str, torch.Size] = {}
    order: list[str] = []

    def seen(name, out):
        shapes[name] = out.shape[1:]
        order.append(name)

    handles = [view.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: seen(name, out))
               for name in modules]
    view(sample)
    for handle in handles:
        handle.remove()
    return shapes, order


def _rows_per_sample(shape: torch.Size) -> int:
    return shape[1] * shape[2] if len(shape) == 3 else 1


@torch.no_grad()
def record(model: nn.Module, inputs: torch.Tensor, readings: Sequence[Reading], *, max_rows: int | None = None,
           batch_size: int = 1024) -> dict[Reading, torch.Tensor]:
    """Stream ``inputs`` through ``model`` (eval mode) and return each reading's reduced output.

    The hooks go on a :func:`private_view` of the model, so concurrent calls on one shared model (two
    app sessions) each see only their own outputs, and the model itself is never changed. Chunks hold
    at most ``batch_size`` inputs and :data:`CHUNK_VALUES` recorded values. When every recorded module
    runs once per forward pass, each chunk's pass stops after the last of them (repair reads one layer
    at a time: the layers above it are never run).
    """
    view = private_view(model).eval()
    modules = {r.module for r in readings}
    shapes, order = _per_sample_shapes(view, inputs[:1], modules)
    strides, offsets, totals = {}, {}, {}
    for reading in readings:   # each capped group's total rows, then every reading's offset within it
        if reading.cap_group is not None:
            rows = _rows_per_sample(shapes[reading.module]) if reading.reduce == "positions" else 1
            offsets[reading] = totals.get(reading.cap_group, 0)
            totals[reading.cap_group] = offsets[reading] + len(inputs) * rows
    for reading in offsets:
        total = totals[reading.cap_group]
        strides[reading] = -(-total // max_rows) if max_rows is not None and total > max_rows else 1
    reducers = {r: _Reducer(r, strides.get(r, 1), offsets.get(r, 0)) for r in dict.fromkeys(readings)}
    for name in modules:
        view.get_submodule(name).register_forward_hook(_feeding([d for r, d in reducers.items() if r.module == name]))
    if len(order) == len(modules):
        view.get_submodule(order[-1]).register_forward_hook(_stop)
    per_sample = sum(shapes[name].numel() for name in modules)
    chunk = max(1, min(batch_size, CHUNK_VALUES // max(per_sample, 1)))
    for start in range(0, len(inputs), chunk):
        try:
            view(inputs[start:start + chunk])
        except _Enough:
            pass
    return {reading: reducer.result() for reading, reducer in reducers.items()}


def record_outputs(model: nn.Module, inputs: torch.Tensor, modules: set[str], batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """The full outputs of the named modules (small models: every value is kept)."""
    results = record(model, inputs, [Reading(name, "none") for name in modules], batch_size=batch_size)
    return {reading.module: value for reading, value in results.items()}


def unit_activations(model: nn.Module, inputs: torch.Tensor, *, pre: bool = False, conv: str = "pool",
                     view: ModelView | None = None) -> list[list[torch.Tensor]]:
    """Activations of every alignable unit, per stage: ``acts[stage][unit]`` is ``[samples, features]``
    (post-ReLU unless ``pre`` and the unit has a separate pre-activation)."""
    view = view or model_view(model)
    readings = {u.name: Reading(u.probe.module, conv, relu=u.probe.relu and not (pre and u.probe.pre_relu))
                for u in view.units}
    results = record(model, inputs, list(readings.values()))
    return [[results[readings[u.name]] for u in stage] for stage in view.stages]


def group_activations(model: nn.Module, inputs: torch.Tensor, view: ModelView | None = None, *, pre: bool = False,
                      conv: str = "positions", max_rows: int | None = None) -> dict[str, torch.Tensor]:
    """Activations of every transport group as ``[rows, neurons]`` (post-ReLU unless ``pre``).

    For conv maps ``conv="positions"`` makes every sample *and position* a row, so two channels are
    compared on their whole maps; ``"pool"`` averages each channel over space first. A residual stream
    is seen at several places (after the stem and after each block): their rows are stacked, so the
    stream's neurons are compared on all of them. ``max_rows`` keeps every k-th row of the stack (the
    same rows for every model given the same inputs) to bound memory on large maps.
    """
    view = view or model_view(model)
    reduce = "positions" if conv == "positions" else "pool"
    readings = {group: [Reading(p.module, reduce, relu=p.relu and not (pre and p.pre_relu), cap_group=group)
                        for p in probes] for group, probes in view.groups.items() if probes}
    results = record(model, inputs, [r for group in readings.values() for r in group], max_rows=max_rows)
    return {group: torch.cat([results[r] for r in group_readings]) for group, group_readings in readings.items()}
