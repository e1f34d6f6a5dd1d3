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
from .validation import (MAX_ACTIVATION_VALUES, MAX_INPUT_VALUES, MAX_PARAMETERS, MAX_SPEC_CHARS, MAX_UNITS,
                         quote)

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


WIDTH_DIGITS = 9   # widths and block counts below a billion; the parameter budget refuses far less


def _ints(tokens: list[str], spec: str) -> tuple[int, ...]:
    """Whole numbers written with ASCII digits only (``int`` would also take ``'１２'``, ``'1_0'``, ``'+5'``)."""
    bad = next((t for t in tokens if not re.fullmatch(r"[0-9]+", t)), None)
    if bad is not None:
        raise ArchError(f"'{quote(spec)}' has a width {quote(bad)} that is not a whole number written with the "
                        "digits 0-9; write widths like mlp:400-200-100.")
    big = next((t for t in tokens if len(t.lstrip("0")) > WIDTH_DIGITS), None)
    if big is not None:
        raise ArchError(f"'{quote(spec)}' has a width of {len(big.lstrip('0'))} digits, far beyond any model that "
                        "fits in memory; choose widths below a billion, e.g. mlp:400-200-100.")
    values = tuple(int(t) for t in tokens)
    if not values or min(values) < 1:
        raise ArchError(f"'{quote(spec)}' needs at least one layer and every width ≥ 1, e.g. mlp:400-200-100.")
    return values


def parse_arch(spec: str) -> ArchSpec:
    """Parse an arch spec string (see the module docstring) into an :class:`ArchSpec`."""
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
    family = "mlp" if name == "mlp" else "vgg" if name.startswith("vgg") else "resnet" if name.startswith("resnet") else None
    if family is None:
        raise ArchError(f"Unknown architecture '{quote(spec)}': use mlp:W1-W2-..., vgg11/vgg13/vgg16/vgg19, "
                        "vgg:64-M-128-..., resnet18/resnet34 or resnet:B1-B2-B3-B4, optionally with xMULT.")
    body, _, tail = body.partition("/")
    tokens = [t for t in body.split("-") if t]
    tail_tokens = [t for t in tail.split("-") if t and t not in OPTIONS[family]]
    flags = {t for t in tokens + tail.split("-") if t in OPTIONS[family]}
    unknown = {t for t in tokens if t.isalpha() and t not in flags and t != "m"}
    if unknown:
        raise ArchError(f"Unknown option(s) {quote(sorted(unknown))} in '{quote(spec)}'; {family} accepts {sorted(OPTIONS[family])}.")
    tokens = [t for t in tokens if t not in flags]
    scale = lambda w: max(1, int(round(w * mult)))  # noqa: E731 - tiny local helper

    if family == "mlp":
        if name != "mlp" or not tokens:
            raise ArchError(f"'{quote(spec)}' needs hidden widths, e.g. mlp:400-200-100.")
        return ArchSpec("mlp", tuple(scale(w) for w in _ints(tokens, spec)), bias="nobias" not in flags)

    if family == "vgg":
        if name in VGG_NAMES and not tokens:
            cfg = tuple(TORCHVISION_VGG_CFGS[VGG_NAMES[name]])
        elif name == "vgg" and tokens:
            cfg = tuple("M" if t == "m" else _ints([t], spec)[0] for t in tokens)
        else:
            raise ArchError(f"Unknown VGG '{quote(spec)}': use vgg11, vgg13, vgg16, vgg19 or vgg:64-M-128-... .")
        cfg = tuple(v if v == "M" else scale(v) for v in cfg)
        if not any(v != "M" for v in cfg):
            raise ArchError(f"'{quote(spec)}' has no conv layer; give at least one width, e.g. vgg:32-M-64.")
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
        raise ArchError(f"Unknown ResNet '{quote(spec)}': use resnet10, resnet18, resnet34 or resnet:B1-B2-B3-B4.")
    if len(blocks) != 4:
        raise ArchError(f"'{quote(spec)}' must give blocks for exactly 4 stages, e.g. resnet:2-2-2-2.")
    widths = _ints([t for t in widths_text.split("-") if t and t not in flags], spec) if widths_text else RESNET_WIDTHS
    if len(widths) != 4:
        raise ArchError(f"'{quote(spec)}' must give 4 stage widths after '@', e.g. resnet:2-2-2-2@16-32-64-128.")
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

@dataclass(frozen=True)
class ModelSize:
    """What building a model would cost, computed from its spec alone (no module is created).

    ``parameters`` counts every trainable value (BatchNorm buffers excluded), ``units`` the alignable
    layers plus VGG poolings (one module each), ``activation_values`` the largest feature map of one
    sample (its channels × height × width; an MLP's widest layer).
    """

    parameters: int
    units: int
    activation_values: int


def _conv_out(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


def model_size(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
    """Parameters, units and largest feature map of ``build_model(spec, input_shape, num_classes)``.

    Closed forms of the builders below: a Linear ``i → o`` has ``i·o (+ o)`` parameters, a 3×3 conv
    ``i → o`` has ``9·i·o`` (+ ``o`` without BatchNorm), a BatchNorm ``2·o``; a ResNet block two convs
    and BatchNorms, plus a 1×1 conv and BatchNorm where it changes the width or the resolution.
    """
    channels, height, width = input_shape
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    if spec.family == "mlp":
        dims = (channels * height * width, *spec.layers)
        params = sum(linear(i, o, spec.bias) for i, o in zip(dims, dims[1:])) + linear(dims[-1], num_classes, spec.bias)
        return ModelSize(params, len(spec.layers), max(dims))
    if spec.family == "vgg":
        params, peak, in_ch, h, w = 0, channels * height * width, channels, height, width
        for v in spec.layers:
            if v == "M":
                h, w = -(-h // 2), -(-w // 2)   # ceil_mode pooling
                continue
            params += 9 * in_ch * v + (2 * v if spec.bn else v)
            peak, in_ch = max(peak, v * h * w), v
        pool = 7 if spec.tvhead else 1
        dims = (in_ch * pool * pool, *spec.classifier)
        params += sum(linear(i, o) for i, o in zip(dims, dims[1:])) + linear(dims[-1], num_classes)
        return ModelSize(params, len(spec.layers) + len(spec.classifier), max(peak, *dims))
    kernel, stride, padding = (7, 2, 3) if spec.tvstem else (3, 1, 1)
    h, w = _conv_out(height, kernel, stride, padding), _conv_out(width, kernel, stride, padding)
    stem = spec.widths[0]
    params, peak = kernel * kernel * channels * stem + 2 * stem, max(channels * height * width, stem * h * w)
    if spec.tvstem:
        h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
    in_planes = stem
    for stage, (blocks, planes) in enumerate(zip(spec.layers, spec.widths)):
        if stage:
            h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        params += 9 * in_planes * planes + 9 * planes * planes + 4 * planes      # the first block
        if stage or in_planes != planes:
            params += in_planes * planes + 2 * planes                              # its 1×1 shortcut
        params += (blocks - 1) * (18 * planes * planes + 4 * planes)              # the others
        in_planes = planes
        peak = max(peak, planes * max(h, 1) * max(w, 1))
    params += linear(in_planes, num_classes)
    return ModelSize(params, sum(spec.layers), peak)


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


def build_model(spec: ArchSpec | str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build an untrained model for inputs of shape ``(C, H, W)`` and ``num_classes`` outputs.

    The returned module carries ``spec`` (its :class:`ArchSpec`), ``input_shape`` and ``num_classes``
    as attributes, so every later stage can rebuild or describe it. A model over the budgets of
    :func:`check_model_size` is refused before any layer is created.
    """
    spec = parse_arch(spec) if isinstance(spec, str) else spec
    check_model_size(spec, input_shape, num_classes)
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
