"""The VGG family: torchvision's ``vgg11`` … ``vgg19`` and custom cfgs ``vgg:64-M-128-M-256``.

``M`` is a 2×2 max-pool, ``-bn`` adds BatchNorm, ``/256`` adds classifier hidden layers and
``-tvhead`` uses torchvision's 7×7 pool + 4096-4096 classifier. The convs between two poolings form
a stage, the classifier's hidden layers the last one. Its state_dicts: ours and torchvision's
``vgg*``/``vgg*_bn`` (and the CIFAR VGGs with one ``classifier`` Linear).
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn
from torchvision.models.vgg import cfgs as TORCHVISION_VGG_CFGS

from ..errors import ArchError
from ..layers import ModelView, Probe, Unit, WeightLayer
from ..validation import quote
from .base import ArchSpec, Family, FamilyModel, ModelInfo, ModelSize, SpecParts, linear_parameters
from .keys import indexed, linear_chain, prefix_renames, unknown_layout

VGG_NAMES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
TV_CLASSIFIER = (4096, 4096)
TV_HEAD_POOL = 7 * 7


def vgg_stages(cfg: tuple) -> list[list[int]]:
    """Split a VGG cfg at its poolings: the convs between two poolings form a stage."""
    stages: list[list[int]] = [[]]
    for v in cfg:
        if v == "M":
            stages.append([])
        else:
            stages[-1].append(int(v))
    return stages


class VGGFamily(Family):
    name = "vgg"
    options = frozenset({"bn", "tvhead"})
    examples = ("vgg11/vgg13/vgg16/vgg19", "vgg:64-M-128-...")

    def parse(self, parts: SpecParts) -> ArchSpec:
        if parts.name in VGG_NAMES and not parts.tokens:
            cfg = tuple(TORCHVISION_VGG_CFGS[VGG_NAMES[parts.name]])
        elif parts.name == "vgg" and parts.tokens:
            cfg = tuple("M" if t == "m" else parts.ints([t])[0] for t in parts.tokens)
        else:
            raise ArchError(f"Unknown VGG '{quote(parts.text)}': use vgg11, vgg13, vgg16, vgg19 or vgg:64-M-128-... .")
        cfg = tuple(v if v == "M" else parts.scale(v) for v in cfg)
        if not any(v != "M" for v in cfg):
            raise ArchError(f"'{quote(parts.text)}' has no conv layer; give at least one width, e.g. vgg:32-M-64.")
        tvhead = "tvhead" in parts.flags
        classifier = TV_CLASSIFIER if tvhead else (parts.ints(parts.tail) if parts.tail else ())
        return ArchSpec("vgg", cfg, classifier=classifier, bn="bn" in parts.flags, tvhead=tvhead)

    def with_stage_depths(self, spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
        cfg: list = []
        for stage, widths in enumerate(unit_widths[:-1]):
            if stage:
                cfg.append("M")
            cfg.extend(widths)
        return replace(spec, layers=tuple(cfg), classifier=tuple(unit_widths[-1]))

    def size(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
        """A 3×3 conv ``i → o`` has ``9·i·o`` parameters (+ ``o`` bias without BatchNorm, + ``2·o`` with it)."""
        channels, height, width = input_shape
        params, peak, in_ch, h, w = 0, channels * height * width, channels, height, width
        for v in spec.layers:
            if v == "M":
                h, w = -(-h // 2), -(-w // 2)   # ceil_mode pooling
                continue
            params += 9 * in_ch * v + (2 * v if spec.bn else v)
            peak, in_ch = max(peak, v * h * w), v
        pool = 7 if spec.tvhead else 1
        dims = (in_ch * pool * pool, *spec.classifier)
        params += sum(linear_parameters(i, o) for i, o in zip(dims, dims[1:])) + linear_parameters(dims[-1], num_classes)
        return ModelSize(params, len(spec.layers) + len(spec.classifier), max(peak, *dims))

    def build(self, info: ModelInfo) -> VGG:
        return VGG(info)

    def view(self, model: VGG) -> ModelView:
        stages: list[list[Unit]] = [[]]
        layers, groups = [], {}
        previous = None
        for index, module in enumerate(model.features):
            if isinstance(module, nn.MaxPool2d):
                stages.append([])
                continue
            name = f"features.{index}"
            bn = f"{name}.bn" if module.bn is not None else None
            probe = Probe(bn or f"{name}.conv")
            stages[-1].append(Unit(name, module.conv.out_channels, probe, "conv"))
            layers.append(WeightLayer(f"{name}.conv", bn, previous, name))
            groups[name] = [probe]
            previous = name
        classifier_units = []
        for index, module in enumerate(model.classifier):
            name = f"classifier.{index}"
            probe = Probe(f"{name}.linear")
            classifier_units.append(Unit(name, module.linear.out_features, probe, "linear"))
            layers.append(WeightLayer(f"{name}.linear", None, previous, name))
            groups[name] = [probe]
            previous = name
        layers.append(WeightLayer("head", None, previous, None))
        return ModelView(stages + [classifier_units], layers, groups)

    def infer(self, shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]] | None:
        keys = list(shapes)
        if any(re.fullmatch(r"features\.\d+\.conv\.weight", k) for k in keys):
            return _our_vgg(shapes), {}
        if any(re.fullmatch(r"features\.\d+\.weight", k) and len(shapes[k]) == 4 for k in keys):
            return _torchvision_vgg(shapes)
        return None

    def first_weight(self, keys: list[str]) -> str | None:
        convs = indexed(keys, r"features\.(\d+)\.conv\.weight")
        return f"features.{convs[0]}.conv.weight" if convs else None


FAMILY = VGGFamily()


class ConvUnit(nn.Module):
    """One VGG conv unit: 3×3 conv (+ BatchNorm) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_channels) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return torch.relu(self.bn(x) if self.bn is not None else x)


class LinearUnit(nn.Module):
    """One classifier hidden unit: Linear + ReLU (+ dropout, torchvision's head only)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear(x))
        return self.dropout(x) if self.dropout is not None else x


class VGG(FamilyModel):
    """VGG as in torchvision, with conv units as submodules and pooling that adapts to small inputs.

    Max-pooling uses ``ceil_mode=True`` so a cfg with five poolings still runs on 8×8 digits (a 1×1
    map pools to 1×1); on even sizes it equals torchvision's pooling. ``-tvhead`` pools to 7×7 and
    drops out like torchvision's classifier.
    """

    family = FAMILY

    def __init__(self, info: ModelInfo):
        super().__init__()
        self.info = info
        spec = info.spec
        pool, dropout = (7, 0.5) if spec.tvhead else (1, 0.0)
        layers: list[nn.Module] = []
        channels = info.input_shape[0]
        for v in spec.layers:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers.append(ConvUnit(channels, int(v), spec.bn))
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        dims = (channels * pool * pool, *spec.classifier)
        self.classifier = nn.Sequential(*(LinearUnit(i, o, dropout) for i, o in zip(dims, dims[1:])))
        self.head = nn.Linear(dims[-1], info.num_classes)
        for m in self.modules():  # torchvision's VGG initialisation: deep plain stacks need it to train
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.head(self.classifier(x))


# ------------------------------------------------------------------------------ state_dict layouts

def _our_vgg_trailing_pool(cfg: list) -> bool:
    """Whether to assume a final max-pool, which leaves no key in our layout.

    Assumed for cfgs whose stages are those of a named VGG (vgg11...vgg19, any width), since every
    named cfg ends with a pool; custom cfgs are taken to end without one. Our own exports carry the
    exact spec in their metadata, so this guess only matters for bare ``torch.save`` state_dicts.
    """
    stages = [len(s) for s in vgg_stages(tuple(cfg))]
    named = [[len(s) for s in vgg_stages(tuple(TORCHVISION_VGG_CFGS[c][:-1]))] for c in VGG_NAMES.values()]
    return stages in named


def _vgg_head(shapes: dict[str, torch.Size], linears: list[str], channels: int) -> tuple[tuple[int, ...], bool]:
    """Classifier hidden widths and whether it is torchvision's 7×7-pool 4096-4096 head."""
    widths, _ = linear_chain(shapes, linears)
    tvhead = widths == (4096, 4096) and shapes[f"{linears[0]}.weight"][1] == channels * TV_HEAD_POOL
    return widths, tvhead


def _vgg_spec(cfg: list, classifier: tuple[int, ...], bn: bool, tvhead: bool) -> str:
    head = TV_CLASSIFIER if tvhead else classifier
    return str(ArchSpec("vgg", tuple(cfg), classifier=head, bn=bn, tvhead=tvhead))


def _our_vgg(shapes: dict[str, torch.Size]) -> str:
    keys = list(shapes)
    convs = indexed(keys, r"features\.(\d+)\.conv\.weight")
    cfg: list = ["M"] * convs[0]
    for prev, idx in zip([None] + convs, convs):
        cfg += ["M"] * (0 if prev is None else idx - prev - 1) + [int(shapes[f"features.{idx}.conv.weight"][0])]
    linears = [f"classifier.{i}.linear" for i in indexed(keys, r"classifier\.(\d+)\.linear\.weight")] + ["head"]
    classifier, tvhead = _vgg_head(shapes, linears, cfg[-1])
    if _our_vgg_trailing_pool(cfg):
        cfg.append("M")
    bn = any(k.startswith(f"features.{convs[0]}.bn.") for k in keys)
    return _vgg_spec(cfg, classifier, bn, tvhead)


def _torchvision_features(shapes: dict[str, torch.Size], convs: list[int], bn: bool) -> tuple[list, dict[str, str]]:
    """Our cfg and renames from torchvision's ``features`` indices (Conv, [BN], ReLU per conv; MaxPool per M).

    A gap in the indices beyond the conv's own modules is a max-pool. The last pool leaves no key;
    every torchvision cfg (and the common CIFAR VGGs built from them) ends with one, so it is assumed.
    """
    per_conv = 3 if bn else 2
    cfg: list = ["M"] * convs[0]
    prefixes: dict[str, str] = {}
    for prev, idx in zip([None] + convs, convs):
        pools = 0 if prev is None else idx - prev - per_conv
        if pools < 0:
            raise unknown_layout(f", where features.{prev} and features.{idx} are too close for Conv, BN, ReLU,")
        cfg += ["M"] * pools
        ours = len(cfg)
        cfg.append(int(shapes[f"features.{idx}.weight"][0]))
        prefixes[f"features.{idx}."] = f"features.{ours}.conv."
        if bn:
            prefixes[f"features.{idx + 1}."] = f"features.{ours}.bn."
    return cfg + ["M"], prefix_renames(list(shapes), prefixes)


def _torchvision_vgg(shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]]:
    """torchvision's ``VGG``/``make_layers`` (and the CIFAR VGGs with a single ``classifier`` Linear)."""
    keys = list(shapes)
    convs = [i for i in indexed(keys, r"features\.(\d+)\.weight") if len(shapes[f"features.{i}.weight"]) == 4]
    with_bn = [f"features.{i + 1}.running_mean" in shapes for i in convs]
    if len(set(with_bn)) != 1:
        raise unknown_layout(", with BatchNorm after only some convs,")
    cfg, renames = _torchvision_features(shapes, convs, with_bn[0])
    if "classifier.weight" in shapes:
        linears = ["classifier"]
    else:
        linears = [f"classifier.{i}" for i in indexed(keys, r"classifier\.(\d+)\.weight")]
    if not linears:
        raise unknown_layout(", with VGG features but no classifier,")
    classifier, tvhead = _vgg_head(shapes, linears, cfg[-2])
    ours = {f"{n}.": f"classifier.{i}.linear." for i, n in enumerate(linears[:-1])} | {f"{linears[-1]}.": "head."}
    return _vgg_spec(cfg, classifier, with_bn[0], tvhead), renames | prefix_renames(keys, ours)
