"""What every architecture family shares: the arch spec as data, the model's metadata record, and the
:class:`Family` interface each family file implements.

A family (``mlp``, ``vgg``, ``resnet``) is one object that knows everything about its architectures:
how to parse their spec strings, build them, show them as fusable layers, make an identity unit for
balancing, which alignment pins they need, and how to recognise and size their state_dicts. Code
outside :mod:`clafusion_core.families` asks the family instead of testing its name.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ArchError
from ..layers import ModelView
from ..validation import quote

WIDTH_DIGITS = 9   # widths and block counts below a billion; the parameter budget refuses far less


@dataclass(frozen=True)
class ArchSpec:
    """A parsed arch spec: the whole architecture as data.

    ``layers`` holds the MLP hidden widths, the VGG cfg (ints and ``"M"``) or the ResNet blocks per
    stage; ``widths`` holds the ResNet stage widths (empty otherwise); ``classifier`` the VGG
    classifier's hidden widths (``tvhead``: torchvision's, which the flag alone names).
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
        if self.widths:
            body += "@" + "-".join(str(w) for w in self.widths)
        if self.classifier and not self.tvhead:
            body += "/" + "-".join(str(w) for w in self.classifier)
        flags = [name for name, on in (("bn", self.bn), ("nobias", not self.bias),
                                       ("tvhead", self.tvhead), ("tvstem", self.tvstem)) if on]
        return f"{self.family}:{body}" + "".join(f"-{f}" for f in flags)


@dataclass(frozen=True)
class ModelInfo:
    """What a model is beyond its weights — enough to rebuild, describe or export it.

    A frozen record set once by the model's constructor, so it travels with the model (``copy.deepcopy``,
    a checkpoint's metadata) and cannot drift from the layers that were built.
    """

    spec: ArchSpec
    input_shape: tuple[int, int, int]
    num_classes: int


class FamilyModel(nn.Module):
    """Base of every model built here: its :class:`Family` (a class attribute) and its :class:`ModelInfo`.

    ``spec``, ``input_shape`` and ``num_classes`` read the record (read-only): the library, the app,
    the CLI and the tests read them in a hundred places, and foreign modules (which have none) are
    still told apart by ``getattr(model, "spec", None)``.
    """

    family: ClassVar[Family]
    info: ModelInfo

    @property
    def spec(self) -> ArchSpec:
        return self.info.spec

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    @property
    def num_classes(self) -> int:
        return self.info.num_classes


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


@dataclass(frozen=True)
class SpecParts:
    """An arch spec string cut into the pieces every family reads (see :func:`~clafusion_core.models.parse_arch`).

    ``name`` is the part before ``:`` (``vgg11``, ``mlp``), ``body`` the rest up to ``/``, ``tokens``
    its ``-``-separated pieces without the flags, ``tail`` the pieces after ``/`` (VGG classifier
    widths), ``text`` the spec as written (for messages).
    """

    text: str
    name: str
    body: str
    tokens: list[str]
    tail: list[str]
    flags: set[str]
    multiplier: float = 1.0

    def scale(self, width: int) -> int:
        """A width times the spec's multiplier (``resnet18x0.5``), at least 1."""
        return max(1, int(round(width * self.multiplier)))

    def ints(self, tokens: list[str]) -> tuple[int, ...]:
        """Whole numbers written with ASCII digits only (``int`` would also take ``'１２'``, ``'1_0'``, ``'+5'``)."""
        bad = next((t for t in tokens if not re.fullmatch(r"[0-9]+", t)), None)
        if bad is not None:
            raise ArchError(f"'{quote(self.text)}' has a width {quote(bad)} that is not a whole number written with "
                            "the digits 0-9; write widths like mlp:400-200-100.")
        big = next((t for t in tokens if len(t.lstrip("0")) > WIDTH_DIGITS), None)
        if big is not None:
            raise ArchError(f"'{quote(self.text)}' has a width of {len(big.lstrip('0'))} digits, far beyond any model "
                            "that fits in memory; choose widths below a billion, e.g. mlp:400-200-100.")
        values = tuple(int(t) for t in tokens)
        if not values or min(values) < 1:
            raise ArchError(f"'{quote(self.text)}' needs at least one layer and every width ≥ 1, e.g. mlp:400-200-100.")
        return values


def linear_parameters(inputs: int, outputs: int, bias: bool = True) -> int:
    """Parameters of a Linear ``inputs → outputs``: ``i·o (+ o)``."""
    return inputs * outputs + (outputs if bias else 0)


class Family(ABC):
    """Everything one architecture family knows; subclasses fill in the abstract hooks, one instance per family.

    Class attributes: ``name`` (the spec prefix), ``options`` (the spec flags it accepts),
    ``examples`` (spec forms named in error messages), ``is_conv`` (inputs are images read by
    convolutions, not flattened pixels), ``merge_balancing`` (an unmatched unit can be folded into the
    next, see :func:`~clafusion_core.balancing.merge_units`), ``pins_stage_starts`` (every stage's
    first unit is always matched, with ``pin_note`` saying why), ``head_weight`` (the state_dict key
    of the logits layer's weight).
    """

    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()
    examples: ClassVar[tuple[str, ...]] = ()
    is_conv: ClassVar[bool] = True
    merge_balancing: ClassVar[bool] = False
    pins_stage_starts: ClassVar[bool] = False
    pin_note: ClassVar[str] = ""
    head_weight: ClassVar[str] = "head.weight"

    # ---------------------------------------------------------------------------------- spec strings
    def recognises(self, name: str) -> bool:
        """Whether an arch name (the part before ``:``) is one of this family's."""
        return name.startswith(self.name)

    @abstractmethod
    def parse(self, parts: SpecParts) -> ArchSpec:
        """The spec from its parts, every width scaled by the multiplier; a malformed spec is an ArchError."""

    @abstractmethod
    def with_stage_depths(self, spec: ArchSpec, depths: list[int], unit_widths: list[list[int]]) -> ArchSpec:
        """The spec with each stage holding ``depths[s]`` units of the given widths (used by balancing)."""

    # ------------------------------------------------------------------------------------- building
    @abstractmethod
    def size(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> ModelSize:
        """Parameters, units and largest feature map of :meth:`build`, in closed form (nothing is built)."""

    @abstractmethod
    def build(self, info: ModelInfo) -> FamilyModel:
        """An untrained model of ``info.spec`` for ``info.input_shape`` and ``info.num_classes``."""

    @abstractmethod
    def view(self, model: FamilyModel) -> ModelView:
        """The fusable-layer view of one of this family's models."""

    def input_width(self, input_shape: tuple[int, int, int]) -> int:
        """Neurons of the raw input as the first layer reads them: channels (conv), or every value (flattened)."""
        return input_shape[0] if self.is_conv else math.prod(input_shape)

    @torch.no_grad()
    def set_identity(self, unit: nn.Module) -> None:
        """Turn a freshly built unit into the identity on non-negative inputs (see :mod:`~clafusion_core.balancing`).

        Linear: ``W = I``, bias 0. Conv: 1 at the kernel centre of channel c → c, 0 elsewhere. BatchNorm:
        weight 1, bias 0, running mean 0, running variance ``1 − eps`` (so eval-mode BN is the identity).
        """
        for module in unit.modules():
            if isinstance(module, nn.Linear):
                nn.init.eye_(module.weight)
            elif isinstance(module, nn.Conv2d):
                module.weight.zero_()
                centre_h, centre_w = module.kernel_size[0] // 2, module.kernel_size[1] // 2
                channels = torch.arange(min(module.in_channels, module.out_channels))
                module.weight[channels, channels, centre_h, centre_w] = 1.0
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
            else:
                continue
            if module.bias is not None:
                module.bias.zero_()

    # ------------------------------------------------------------------------------- state_dicts
    @abstractmethod
    def infer(self, shapes: dict[str, torch.Size]) -> tuple[str, dict[str, str]] | None:
        """The arch spec and the key renames onto our layout of a state_dict in one of this family's
        layouts (None when its keys are in none of them). Widths come from the weight shapes."""

    @abstractmethod
    def first_weight(self, keys: list[str]) -> str | None:
        """The state_dict key of the first layer's weight (None when the keys have none)."""

    def guess_input_shape(self, inputs: int) -> tuple[int, int, int] | None:
        """The input shape a first layer of ``inputs`` input neurons implies, where it does (None: unknown)."""
        return None
