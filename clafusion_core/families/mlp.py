"""The MLP family: ``mlp:400-200-100`` (hidden widths; inputs and classes from the dataset), ``-nobias``.

One stage of units, the hidden Linear layers. Its state_dicts: ours (``hidden.N``/``head``),
``nn.Sequential`` MLPs (``0.weight``, ``2.weight``, …) and the reference OTFusion/CLAFusion
``fc1``/``fc2``/… MLPs.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import torch
from torch import nn

from ..errors import ArchError
from ..layers import ModelView, Probe, Unit, WeightLayer
from ..validation import quote
from .base import ArchSpec, Family, FamilyModel, ModelInfo, ModelSize, SpecParts, linear_parameters
from .keys import indexed, linear_chain, prefix_renames, unknown_layout


class MLPFamily(Family):
    name = "mlp"
    options = frozenset({"nobias"})
    examples = ("mlp:W1-W2-...",)
    is_conv = False
    merge_balancing = True

    def recognises(self, name: str) -> bool:
        return name == "mlp"

    def parse(self, parts: SpecParts) -> ArchSpec:
        if not parts.tokens:
            raise ArchError(f"'{quote(parts.text)}' needs hidden widths, e.g. mlp:400-200-100.")
        return ArchSpec("mlp", tuple(parts.scale(w) for w in parts.ints(parts.tokens)), bias="nobias" not in parts.flags)

    def with_stage_depths(self, spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
        return replace(spec, layers=tuple(unit_widths[0]))

    def size(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
        dims = (math.prod(input_shape), *spec.layers)
        params = sum(linear_parameters(i, o, spec.bias) for i, o in zip(dims, dims[1:]))
        return ModelSize(params + linear_parameters(dims[-1], num_classes, spec.bias), len(spec.layers), max(dims))

    def build(self, info: ModelInfo) -> MLP:
        return MLP(info)

    def view(self, model: MLP) -> ModelView:
        units, layers, groups = [], [], {}
        previous = None
        for i, linear in enumerate(model.hidden):
            name = f"hidden.{i}"
            probe = Probe(name)
            units.append(Unit(name, linear.out_features, probe, "linear"))
            layers.append(WeightLayer(name, None, previous, name))
            groups[name] = [probe]
            previous = name
        layers.append(WeightLayer("head", None, previous, None))
        return ModelView([units], layers, groups)

    def infer(self, shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]] | None:
        keys = list(shapes)
        if "hidden.0.weight" in shapes and "head.weight" in shapes:
            return _mlp(shapes, [f"hidden.{i}" for i in indexed(keys, r"hidden\.(\d+)\.weight")] + ["head"])
        if keys and all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in keys):
            return _sequential_mlp(shapes)
        if "fc1.weight" in shapes and all(re.fullmatch(r"fc\d+\.(weight|bias)", k) for k in keys):
            return _fc_mlp(shapes)
        return None

    def first_weight(self, keys: list[str]) -> str | None:
        return "hidden.0.weight"

    def guess_input_shape(self, inputs: int) -> tuple[int, int, int] | None:
        """A square grayscale image (1×s×s) when the input count is a square."""
        side = math.isqrt(inputs)
        return (1, side, side) if side and side * side == inputs else None


FAMILY = MLPFamily()


class MLP(FamilyModel):
    """Flatten, then ``hidden`` Linear+ReLU units, then a Linear ``head``."""

    family = FAMILY

    def __init__(self, info: ModelInfo):
        super().__init__()
        self.info = info
        bias = info.spec.bias
        dims = (math.prod(info.input_shape), *info.spec.layers)
        self.hidden = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(dims, dims[1:]))
        self.head = nn.Linear(dims[-1], info.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


# ------------------------------------------------------------------------------ state_dict layouts

def _mlp(shapes: dict[str, torch.Size], names: list[str]) -> tuple[str, dict[str, str]]:
    """Our MLP spec and the renames from Linear layers ``names`` (last = head) to our layout."""
    if len(names) < 2:
        raise unknown_layout(", with fewer than two Linear layers,")
    widths, bias = linear_chain(shapes, names)
    ours = {f"{n}.": f"hidden.{i}." for i, n in enumerate(names[:-1])} | {f"{names[-1]}.": "head."}
    return str(ArchSpec("mlp", widths, bias=bias)), prefix_renames(list(shapes), ours)


def _sequential_mlp(shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]]:
    """``nn.Sequential(Linear, ReLU, Linear, ...)``, possibly after a leading ``nn.Flatten`` (index 0).

    Index gaps hold the parameter-free layers; they are assumed to be ReLUs, so two Linears with
    adjacent indices (no activation between them) are refused.
    """
    indices = indexed(list(shapes), r"(\d+)\.weight")
    if any(b - a < 2 for a, b in zip(indices, indices[1:])):
        raise unknown_layout(", with two Linear layers in a row without an activation,")
    return _mlp(shapes, [str(i) for i in indices])


def _fc_mlp(shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]]:
    """The reference OTFusion/CLAFusion ``MlpNetBase``: ``fc1``, ``fc2``, ... (usually bias-free)."""
    numbers = indexed(list(shapes), r"fc(\d+)\.weight")
    if numbers != list(range(1, len(numbers) + 1)):
        raise unknown_layout(", with fc layers not numbered fc1, fc2, ...,")
    return _mlp(shapes, [f"fc{i}" for i in numbers])
