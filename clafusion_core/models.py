"""Models from arch spec strings: the public entry points, each answered by the model's family.

What an architecture family knows lives in its own file under :mod:`clafusion_core.families`; this
module reads the parts of a spec every family shares and hands the rest to the family. An arch spec
names a model as data, in the spirit of torchvision's ``cfgs``:

=============================  ==============================================================
``mlp:400-200-100``            MLP with these hidden widths (input size and classes come from
                               the dataset); ``-nobias`` drops every bias (OTFusion's setup)
``vgg11`` ... ``vgg19``        torchvision's VGG configurations A, B, D, E
``vgg:64-M-128-M-256``         a custom VGG cfg (``M`` = 2×2 max-pool); ``-bn`` adds BatchNorm,
                               ``-tvhead`` uses torchvision's 7×7 pool + 4096-4096 classifier
``resnet18``, ``resnet34``     torchvision BasicBlock ResNets with a CIFAR-style 3×3 stem;
``resnet:1-1-1-1``             custom blocks per stage; ``-tvstem`` = ImageNet 7×7 stem + max-pool
``...x0.5``                    a width multiplier (conv widths / stage widths)
=============================  ==============================================================

Every model is made of *units* — the layers that cross-layer alignment matches and that balancing may
insert: an MLP's hidden layers, a VGG's conv layers and classifier hidden layers, a ResNet's residual
blocks. Each unit is one submodule with a dotted path (``hidden.2``, ``features.3``, ``layer2.1``), so
a balanced model is simply a model built from a spec with more units, its weights copied unit by unit.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .errors import ArchError
from .families import FAMILIES, ArchSpec, Family, FamilyModel, ModelInfo, ModelSize, SpecParts, get_family
from .validation import MAX_ACTIVATION_VALUES, MAX_INPUT_VALUES, MAX_PARAMETERS, MAX_SPEC_CHARS, MAX_UNITS, quote


def _family_of_name(name: str, spec: str) -> Family:
    """The family whose arch names include ``name`` (the part of a spec before ``:``)."""
    family = next((f for f in FAMILIES.values() if f.recognises(name)), None)
    if family is None:
        forms = [form for f in FAMILIES.values() for form in f.examples]
        raise ArchError(f"Unknown architecture '{quote(spec)}': use {', '.join(forms[:-1])} or {forms[-1]}, "
                        "optionally with xMULT.")
    return family


def parse_arch(spec: str) -> ArchSpec:
    """Parse an arch spec string (see the module docstring) into an :class:`ArchSpec`.

    The parts every family shares (width multiplier, name, flags) are read here; the family reads the rest.
    """
    if not isinstance(spec, str) or len(spec) > MAX_SPEC_CHARS:
        raise ArchError(f"The arch spec {quote(spec)} is not a string of at most {MAX_SPEC_CHARS:,} characters; "
                        "write it as e.g. mlp:400-200-100 or resnet18.")
    text = spec.strip().lower()
    mult = 1.0
    match = re.search(r"x([0-9]*\.?[0-9]+)((?:-[a-z]+)*)$", text)  # "resnet18x0.5" or "resnet18x0.5-tvstem"
    if match:
        text, mult = text[:match.start()] + match.group(2), float(match.group(1))
        if not 0 < mult <= 16:
            raise ArchError(f"Width multiplier in '{quote(spec)}' must be between 0 and 16, e.g. resnet18x0.5.")
    name, _, body = text.partition(":")
    if not body and "-" in name:
        name, _, body = name.partition("-")
        body = "-" + body
    family = _family_of_name(name, spec)
    body, _, tail = body.partition("/")
    tokens = [t for t in body.split("-") if t]
    tail_tokens = [t for t in tail.split("-") if t and t not in family.options]
    flags = {t for t in tokens + tail.split("-") if t in family.options}
    unknown = {t for t in tokens if t.isalpha() and t not in flags and t != "m"}
    if unknown:
        raise ArchError(f"Unknown option(s) {quote(sorted(unknown))} in '{quote(spec)}'; {family.name} accepts "
                        f"{sorted(family.options)}.")
    tokens = [t for t in tokens if t not in flags]
    return family.parse(SpecParts(spec, name, body, tokens, tail_tokens, flags, mult))


def model_size(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
    """Parameters, units and largest feature map of ``build_model(spec, input_shape, num_classes)``.

    Closed forms of the family's builder: a Linear ``i → o`` has ``i·o (+ o)`` parameters, a 3×3 conv
    ``i → o`` has ``9·i·o`` (+ ``o`` without BatchNorm), a BatchNorm ``2·o``.
    """
    return get_family(spec.family).size(spec, tuple(input_shape), num_classes)


def check_model_size(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
    """Refuse, before anything is built, a model over the budgets of :mod:`.validation`.

    An arch spec or an input shape from a file's metadata is untrusted: ``resnet:999999999-1-1-1``
    would take hours to build and ``mlp:4000000000`` terabytes, so both are refused in microseconds.
    """
    channels, height, width = (int(v) for v in input_shape)
    if min(channels, height, width) < 1 or channels * height * width > MAX_INPUT_VALUES or num_classes < 1:
        raise ArchError(f"Inputs of shape {channels}×{height}×{width} with {num_classes} classes cannot be built: "
                        f"every size must be ≥ 1 and an input at most {MAX_INPUT_VALUES:,} values; choose the "
                        "dataset the model was trained on.")
    size = model_size(spec, (channels, height, width), int(num_classes))
    name = quote(str(spec))
    if size.units > MAX_UNITS:
        raise ArchError(f"{name} has {size.units:,} layers, over the limit of {MAX_UNITS:,}; choose a shallower "
                        "architecture.")
    if size.parameters > MAX_PARAMETERS:
        raise ArchError(f"{name} on {channels}×{height}×{width} inputs would have {size.parameters:,} parameters, "
                        f"over the limit of {MAX_PARAMETERS:,}; choose a smaller architecture.")
    if size.activation_values > MAX_ACTIVATION_VALUES:
        raise ArchError(f"{name} on {channels}×{height}×{width} inputs would hold {size.activation_values:,} values "
                        f"in one feature map of one image, over the limit of {MAX_ACTIVATION_VALUES:,}; choose "
                        "narrower layers or smaller images.")
    return size


def build_model(spec: ArchSpec | str, input_shape: tuple[int, int, int], num_classes: int) -> FamilyModel:
    """Build an untrained model for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs, in eval mode.

    The model carries its :class:`ModelInfo` (``model.info``: spec, input shape, classes), so every later
    stage can rebuild or describe it. A model over the budgets of :func:`check_model_size` is refused
    before any layer is created.
    """
    spec = parse_arch(spec) if isinstance(spec, str) else spec
    check_model_size(spec, input_shape, num_classes)
    info = ModelInfo(spec, tuple(int(v) for v in input_shape), int(num_classes))
    return get_family(spec.family).build(info).eval()


def rebuild(model: FamilyModel, spec: ArchSpec) -> FamilyModel:
    """An untrained model of another spec with the same input shape and classes.

    Its weights are to be overwritten, so the initialisation draws from a forked RNG: the caller's
    global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        return build_model(spec, model.input_shape, model.num_classes)


def with_stage_depths(spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
    """The spec with each stage holding ``depths[s]`` units of the given widths (used by balancing)."""
    return get_family(spec.family).with_stage_depths(spec, depths, unit_widths)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
