"""The ResNet family: torchvision's BasicBlock ResNets ``resnet10``/``resnet18``/``resnet34`` and
``resnet:1-1-1-1@16-32-64-128`` (blocks and widths per stage), with a CIFAR-style 3×3 stem for small
images (``-tvstem``: the ImageNet 7×7 stem and max-pool).

The stem, then one stage of residual blocks per resolution, then the head. Every layer writing into
one residual stream shares its transport group. Its state_dicts: torchvision's keys (ours are the
same), and the common CIFAR ``shortcut``/``linear`` names.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ..errors import ArchError
from ..layers import ModelView, Probe, Unit, WeightLayer
from ..validation import quote
from .base import ArchSpec, Family, FamilyModel, ModelInfo, ModelSize, SpecParts, linear_parameters
from .keys import indexed, prefix_renames

RESNET_BLOCKS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
RESNET_WIDTHS = (64, 128, 256, 512)


def _conv_out(side: int, kernel: int, stride: int, padding: int) -> int:
    return (side + 2 * padding - kernel) // stride + 1


class ResNetFamily(Family):
    name = "resnet"
    options = frozenset({"tvstem"})
    examples = ("resnet18/resnet34", "resnet:B1-B2-B3-B4")
    pins_stage_starts = True
    pin_note = "ResNet stages always match their first blocks (they downsample)."
    head_weight = "fc.weight"

    def parse(self, parts: SpecParts) -> ArchSpec:
        widths_text = ""
        if parts.name in RESNET_BLOCKS and not parts.tokens:
            blocks = RESNET_BLOCKS[parts.name]
        elif parts.name == "resnet" and parts.tokens:
            blocks_text, _, widths_text = parts.body.partition("@")
            blocks = parts.ints([t for t in blocks_text.split("-") if t and t not in parts.flags])
        else:
            raise ArchError(f"Unknown ResNet '{quote(parts.text)}': use resnet10, resnet18, resnet34 or "
                            "resnet:B1-B2-B3-B4.")
        if len(blocks) != 4:
            raise ArchError(f"'{quote(parts.text)}' must give blocks for exactly 4 stages, e.g. resnet:2-2-2-2.")
        widths = (parts.ints([t for t in widths_text.split("-") if t and t not in parts.flags]) if widths_text
                  else RESNET_WIDTHS)
        if len(widths) != 4:
            raise ArchError(f"'{quote(parts.text)}' must give 4 stage widths after '@', e.g. "
                            "resnet:2-2-2-2@16-32-64-128.")
        return ArchSpec("resnet", tuple(blocks), widths=tuple(parts.scale(w) for w in widths),
                        tvstem="tvstem" in parts.flags)

    def with_stage_depths(self, spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
        return replace(spec, layers=tuple(depths))

    def size(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
        """A block has two 3×3 convs and BatchNorms, plus a 1×1 conv and BatchNorm where it changes the
        width or the resolution."""
        channels, height, width = input_shape
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
        params += linear_parameters(in_planes, num_classes)
        return ModelSize(params, sum(spec.layers), peak)

    def build(self, info: ModelInfo) -> SmallResNet:
        return SmallResNet(info)

    def view(self, model: SmallResNet) -> ModelView:
        stem_probe = Probe("bn1")
        layers = [WeightLayer("conv1", "bn1", None, "stream1")]
        groups: dict[str, list[Probe]] = {"stream1": [stem_probe]}
        stages = []
        stream = "stream1"
        for s in range(1, 5):
            stage_units = []
            new_stream = f"stream{s}"
            groups.setdefault(new_stream, [])
            for b, block in enumerate(getattr(model, f"layer{s}")):
                name = f"layer{s}.{b}"
                inner = f"{name}.inner"
                block_probe = Probe(name, relu=False, pre_relu=False)
                stage_units.append(Unit(name, block.conv2.out_channels, block_probe, "block"))
                groups[inner] = [Probe(f"{name}.bn1")]
                groups[new_stream].append(block_probe)
                layers.append(WeightLayer(f"{name}.conv1", f"{name}.bn1", stream, inner))
                layers.append(WeightLayer(f"{name}.conv2", f"{name}.bn2", inner, new_stream))
                if block.downsample is not None:
                    layers.append(WeightLayer(f"{name}.downsample.0", f"{name}.downsample.1", stream, new_stream))
                stream = new_stream
            stages.append(stage_units)
        layers.append(WeightLayer("fc", None, stream, None))
        return ModelView(stages, layers, groups)

    @torch.no_grad()
    def set_identity(self, unit: nn.Module) -> None:
        """A residual block as the identity: torchvision's ``zero_init_residual`` idiom, its last BatchNorm's
        weight and bias 0, so the block computes ``relu(x + 0) = x``."""
        super().set_identity(unit)
        unit.bn2.weight.zero_()
        unit.bn2.bias.zero_()

    def infer(self, shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]] | None:
        if "conv1.weight" in shapes and any(k.startswith("layer1.") for k in shapes):
            return _torchvision_resnet(shapes)
        return None

    def first_weight(self, keys: list[str]) -> str | None:
        return "conv1.weight"


FAMILY = ResNetFamily()


class SmallResNet(FamilyModel, ResNet):
    """torchvision's ResNet (BasicBlock) with free stage widths and a stem that fits small images.

    The CIFAR-style stem is a 3×3 stride-1 conv without max-pool; ``tvstem`` keeps torchvision's
    ImageNet stem so torchvision checkpoints load unchanged. Module names equal torchvision's.
    """

    family = FAMILY

    def __init__(self, info: ModelInfo):
        spec, in_channels, num_classes = info.spec, info.input_shape[0], info.num_classes
        widths = spec.widths
        super().__init__(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        self.info = info
        self.inplanes = widths[0]
        if spec.tvstem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        for stage, (count, width) in enumerate(zip(spec.layers, widths)):
            setattr(self, f"layer{stage + 1}", self._make_layer(BasicBlock, width, count, stride=1 if stage == 0 else 2))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# ------------------------------------------------------------------------------ state_dict layouts

def _torchvision_resnet(shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]]:
    """torchvision's ResNet keys (ours are identical); the common CIFAR ``shortcut``/``linear`` names map too."""
    keys = list(shapes)
    if any(re.fullmatch(r"layer\d+\.\d+\.conv3\.weight", k) for k in keys):
        raise ArchError("The checkpoint is a Bottleneck ResNet (resnet50 and deeper), but only BasicBlock ResNets "
                        "are supported; use a resnet18/resnet34-style checkpoint.")
    stages = indexed(keys, r"layer(\d+)\.\d+\.conv1\.weight")
    if stages != [1, 2, 3, 4]:
        raise ArchError(f"The checkpoint is a ResNet with stages {stages}, but exactly 4 stages of BasicBlocks are "
                        "supported; use a resnet18/resnet34-style checkpoint.")
    blocks = tuple(len(indexed(keys, rf"layer{s}\.(\d+)\.conv1\.weight")) for s in stages)
    widths = tuple(int(shapes[f"layer{s}.0.conv1.weight"][0]) for s in stages)
    spec = ArchSpec("resnet", blocks, widths=widths, tvstem=shapes["conv1.weight"][-1] == 7)
    renames = {k: k.replace(".shortcut.", ".downsample.") for k in keys if ".shortcut." in k}
    renames |= prefix_renames(keys, {"linear.": "fc."})
    return str(spec), renames
