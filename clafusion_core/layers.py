"""The uniform "fusable layer" view of a model.

Alignment, balancing and fusion never look at a model's classes; they see this view:

* **stages** of **units** — the layers cross-layer alignment matches (MLP hidden layers; VGG conv
  layers between two poolings, then the classifier's hidden layers; ResNet blocks per resolution);
* **weight layers** in forward order — every Linear/Conv2d with its BatchNorm, the transport group its
  input comes from and the group its output writes to. A *group* is a set of neurons that share one
  transport plan: a hidden layer's outputs, or a whole residual stream (the stem, each block's last
  conv and the shortcut all write into the same stream, so they must be permuted together);
* **probes** — where each unit's and each group's activations are read (forward-hook points).

A new architecture family is one more ``_view_*`` function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import ArchError


@dataclass(frozen=True)
class Probe:
    """Where to read an activation: the output of ``module``, passed through ReLU if ``relu``.

    ``pre_relu`` says whether the pre-activation exists separately (False for residual blocks, whose
    output is already the post-ReLU sum).
    """

    module: str
    relu: bool = True
    pre_relu: bool = True


@dataclass(frozen=True)
class Unit:
    """An alignable unit: its module path, output width and activation probe."""

    name: str
    width: int
    probe: Probe
    kind: str  # "linear", "conv" or "block"


@dataclass(frozen=True)
class WeightLayer:
    """A Linear/Conv2d with its BatchNorm and the transport groups of its input and output.

    ``in_group`` None means the model input (identity transport); ``out_group`` None means the logits
    (identity: classes are never permuted). A Linear reading a flattened C×H×W map has C input
    neurons, each carrying H·W weights (see :func:`~.otfusion.fuse_models`).
    """

    name: str
    bn: str | None
    in_group: str | None
    out_group: str | None


@dataclass
class ModelView:
    stages: list[list[Unit]]
    layers: list[WeightLayer]
    groups: dict[str, list[Probe]] = field(default_factory=dict)

    @property
    def units(self) -> list[Unit]:
        return [u for stage in self.stages for u in stage]

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _view_mlp(model: nn.Module) -> ModelView:
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


def _view_vgg(model: nn.Module) -> ModelView:
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


def _view_resnet(model: nn.Module) -> ModelView:
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


_VIEWS = {"mlp": _view_mlp, "vgg": _view_vgg, "resnet": _view_resnet}


def model_view(model: nn.Module) -> ModelView:
    """The fusable-layer view of a model built by :func:`clafusion_core.models.build_model`."""
    spec = getattr(model, "spec", None)
    if spec is None or spec.family not in _VIEWS:
        raise ArchError("This model was not built from an arch spec; load it through clafusion_core.checkpoints.")
    return _VIEWS[spec.family](model)
