"""The uniform "fusable layer" view of a model.

Alignment, balancing and fusion never look at a model's classes; they see this view:

* **stages** of **units** — the layers cross-layer alignment matches (MLP hidden layers; VGG conv
  layers between two poolings, then the classifier's hidden layers; ResNet blocks per resolution);
* **weight layers** in forward order — every Linear/Conv2d with its BatchNorm, the transport group its
  input comes from and the group its output writes to. A *group* is a set of neurons that share one
  transport plan: a hidden layer's outputs, or a whole residual stream (the stem, each block's last
  conv and the shortcut all write into the same stream, so they must be permuted together);
* **probes** — where each unit's and each group's activations are read (forward-hook points).

Each architecture family builds this view of its models (``Family.view`` in
:mod:`clafusion_core.families`), so a new family is one more file there.
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


def model_view(model: nn.Module) -> ModelView:
    """The fusable-layer view of a model built by :func:`clafusion_core.models.build_model`: its family's."""
    family = getattr(model, "family", None)
    if family is None:
        raise ArchError("This model was not built from an arch spec; load it through clafusion_core.checkpoints.")
    return family.view(model)
