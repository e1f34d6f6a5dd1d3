"""Model families built from arch spec strings.

An arch spec names a model as data, in the spirit of torchvision's ``cfgs``:

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
from dataclasses import dataclass, replace

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import cfgs as TORCHVISION_VGG_CFGS

from .errors import ArchError

VGG_NAMES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
RESNET_BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
RESNET_WIDTHS = (64, 128, 256, 512)
OPTIONS = {"mlp": {"nobias"}, "vgg": {"bn", "tvhead"}, "resnet": {"tvstem"}}
TV_CLASSIFIER = (4096, 4096)


@dataclass(frozen=True)
class ArchSpec:
    """A parsed arch spec: the whole architecture as data.

    ``layers`` holds the MLP hidden widths, the VGG cfg (ints and ``"M"``) or the ResNet blocks per
    stage; ``widths`` holds the ResNet stage widths (empty otherwise); ``classifier`` the VGG
    classifier's hidden widths.
    """

    family: str
    layers: tuple
    widths: tuple = ()
    classifier: tuple = ()
    bn: bool = False
    bias: bool = True
    tvhead: bool = False
    tvstem: bool = False

    def __str__(self) -> str:
        body = "-".join(str(v) for v in self.layers)
        if self.family == "resnet":
            body += "@" + "-".join(str(w) for w in self.widths)
        if self.family == "vgg" and self.classifier and not self.tvhead:
            body += "/" + "-".join(str(w) for w in self.classifier)
        flags = [name for name, on in (("bn", self.bn), ("nobias", not self.bias),
                                       ("tvhead", self.tvhead), ("tvstem", self.tvstem)) if on]
        return f"{self.family}:{body}" + "".join(f"-{f}" for f in flags)

    @property
    def stage_depths(self) -> list[int]:
        """Number of alignable units per stage."""
        if self.family == "mlp":
            return [len(self.layers)]
        if self.family == "resnet":
            return list(self.layers)
        return [len(s) for s in vgg_stages(self.layers)] + [len(self.classifier)]


def vgg_stages(cfg: tuple) -> list[list[int]]:
    """Split a VGG cfg at its poolings: the convs between two poolings form a stage."""
    stages: list[list[int]] = [[]]
    for v in cfg:
        if v == "M":
            stages.append([])
        else:
            stages[-1].append(int(v))
    return stages


def _ints(tokens: list[str], spec: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in tokens)
    except ValueError:
        raise ArchError(f"'{spec}' has a non-integer width; write widths as whole numbers, e.g. mlp:400-200-100.") from None
    if not values or min(values) < 1:
        raise ArchError(f"'{spec}' needs at least one layer and every width ≥ 1, e.g. mlp:400-200-100.")
    return values


def parse_arch(spec: str) -> ArchSpec:
    """Parse an arch spec string (see the module docstring) into an :class:`ArchSpec`."""
    text = spec.strip().lower()
    mult = 1.0
    match = re.search(r"x(\d*\.?\d+)((?:-[a-z]+)*)$", text)  # "resnet18x0.5" or "resnet18x0.5-tvstem"
    if match:
        text, mult = text[:match.start()] + match.group(2), float(match.group(1))
        if not 0 < mult <= 16:
            raise ArchError(f"Width multiplier in '{spec}' must be between 0 and 16, e.g. resnet18x0.5.")
    name, _, body = text.partition(":")
    if not body and "-" in name:
        name, _, body = name.partition("-")
        body = "-" + body
    family = "mlp" if name == "mlp" else "vgg" if name.startswith("vgg") else "resnet" if name.startswith("resnet") else None
    if family is None:
        raise ArchError(f"Unknown architecture '{spec}': use mlp:W1-W2-..., vgg11/vgg13/vgg16/vgg19, "
                        "vgg:64-M-128-..., resnet18/resnet34 or resnet:B1-B2-B3-B4, optionally with xMULT.")
    body, _, tail = body.partition("/")
    tokens = [t for t in body.split("-") if t]
    tail_tokens = [t for t in tail.split("-") if t and t not in OPTIONS[family]]
    flags = {t for t in tokens + tail.split("-") if t in OPTIONS[family]}
    unknown = {t for t in tokens if t.isalpha() and t not in flags and t != "m"}
    if unknown:
        raise ArchError(f"Unknown option(s) {sorted(unknown)} in '{spec}'; {family} accepts {sorted(OPTIONS[family])}.")
    tokens = [t for t in tokens if t not in flags]
    scale = lambda w: max(1, int(round(w * mult)))  # noqa: E731 - tiny local helper

    if family == "mlp":
        if name != "mlp" or not tokens:
            raise ArchError(f"'{spec}' needs hidden widths, e.g. mlp:400-200-100.")
        return ArchSpec("mlp", tuple(scale(w) for w in _ints(tokens, spec)), bias="nobias" not in flags)

    if family == "vgg":
        if name in VGG_NAMES and not tokens:
            cfg = tuple(TORCHVISION_VGG_CFGS[VGG_NAMES[name]])
        elif name == "vgg" and tokens:
            cfg = tuple("M" if t == "m" else _ints([t], spec)[0] for t in tokens)
        else:
            raise ArchError(f"Unknown VGG '{spec}': use vgg11, vgg13, vgg16, vgg19 or vgg:64-M-128-... .")
        cfg = tuple(v if v == "M" else scale(v) for v in cfg)
        if not any(v != "M" for v in cfg):
            raise ArchError(f"'{spec}' has no conv layer; give at least one width, e.g. vgg:32-M-64.")
        tvhead = "tvhead" in flags
        classifier = TV_CLASSIFIER if tvhead else (_ints(tail_tokens, spec) if tail_tokens else ())
        return ArchSpec("vgg", cfg, classifier=classifier, bn="bn" in flags, tvhead=tvhead)

    widths_text = ""
    if name in RESNET_BLOCKS and not tokens:
        blocks = RESNET_BLOCKS[name]
    elif name == "resnet" and tokens:
        blocks_text, _, widths_text = body.partition("@")
        blocks = _ints([t for t in blocks_text.split("-") if t and t not in flags], spec)
    else:
        raise ArchError(f"Unknown ResNet '{spec}': use resnet10, resnet18, resnet34 or resnet:B1-B2-B3-B4.")
    if len(blocks) != 4:
        raise ArchError(f"'{spec}' must give blocks for exactly 4 stages, e.g. resnet:2-2-2-2.")
    widths = _ints([t for t in widths_text.split("-") if t and t not in flags], spec) if widths_text else RESNET_WIDTHS
    if len(widths) != 4:
        raise ArchError(f"'{spec}' must give 4 stage widths after '@', e.g. resnet:2-2-2-2@16-32-64-128.")
    return ArchSpec("resnet", tuple(blocks), widths=tuple(scale(w) for w in widths), tvstem="tvstem" in flags)


# --------------------------------------------------------------------------------------------- MLP

class MLP(nn.Module):
    """Flatten, then ``hidden`` Linear+ReLU units, then a Linear ``head``."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int, bias: bool = True):
        super().__init__()
        dims = (in_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(i, o, bias=bias) for i, o in zip(dims, dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


# --------------------------------------------------------------------------------------------- VGG

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


class VGG(nn.Module):
    """VGG as in torchvision, with conv units as submodules and pooling that adapts to small inputs.

    Max-pooling uses ``ceil_mode=True`` so a cfg with five poolings still runs on 8×8 digits (a 1×1
    map pools to 1×1); on even sizes it equals torchvision's pooling.
    """

    def __init__(self, cfg: tuple, in_channels: int, num_classes: int, bn: bool = False,
                 classifier: tuple[int, ...] = (), pool: int = 1, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers.append(ConvUnit(channels, int(v), bn))
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool)
        dims = (channels * pool * pool, *classifier)
        self.classifier = nn.Sequential(*(LinearUnit(i, o, dropout) for i, o in zip(dims, dims[1:])))
        self.head = nn.Linear(dims[-1], num_classes)
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


# ------------------------------------------------------------------------------------------ ResNet

class SmallResNet(ResNet):
    """torchvision's ResNet (BasicBlock) with free stage widths and a stem that fits small images.

    The CIFAR-style stem is a 3×3 stride-1 conv without max-pool; ``tvstem`` keeps torchvision's
    ImageNet stem so torchvision checkpoints load unchanged. Module names equal torchvision's.
    """

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], in_channels: int, num_classes: int,
                 tvstem: bool = False):
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        self.inplanes = widths[0]
        if tvstem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            setattr(self, f"layer{stage + 1}", self._make_layer(BasicBlock, width, count, stride=1 if stage == 0 else 2))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# ------------------------------------------------------------------------------------------ builder

def build_model(spec: ArchSpec | str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build an untrained model for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs.

    The returned module carries ``spec`` (its :class:`ArchSpec`), ``input_shape`` and ``num_classes``
    as attributes, so every later stage can rebuild or describe it.
    """
    spec = parse_arch(spec) if isinstance(spec, str) else spec
    channels, height, width = input_shape
    if spec.family == "mlp":
        model: nn.Module = MLP(channels * height * width, spec.layers, num_classes, bias=spec.bias)
    elif spec.family == "vgg":
        model = VGG(spec.layers, channels, num_classes, bn=spec.bn, classifier=spec.classifier,
                    pool=7 if spec.tvhead else 1, dropout=0.5 if spec.tvhead else 0.0)
    else:
        model = SmallResNet(spec.layers, spec.widths, channels, num_classes, tvstem=spec.tvstem)
    model.spec = spec
    model.input_shape = tuple(input_shape)
    model.num_classes = num_classes
    model.eval()
    return model


def rebuild(model: nn.Module, spec: ArchSpec) -> nn.Module:
    """An untrained model of another spec with the same input shape and classes.

    Its weights are to be overwritten, so the initialisation draws from a forked RNG: the caller's
    global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        return build_model(spec, model.input_shape, model.num_classes)


def with_stage_depths(spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
    """The spec with each stage holding ``depths[s]`` units of the given widths (used by balancing)."""
    if spec.family == "mlp":
        return replace(spec, layers=tuple(unit_widths[0]))
    if spec.family == "resnet":
        return replace(spec, layers=tuple(depths))
    cfg: list = []
    for stage, widths in enumerate(unit_widths[:-1]):
        if stage:
            cfg.append("M")
        cfg.extend(widths)
    return replace(spec, layers=tuple(cfg), classifier=tuple(unit_widths[-1]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
