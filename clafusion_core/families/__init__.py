"""Architecture families, one file each, and the registry keyed by family name.

A family is an instance, not a subclass to pick by name (as the fusion methods in
:mod:`clafusion_core.methods`): ``FAMILIES["vgg"].parse(...)``, or ``model.family`` for a built model.
Adding an architecture family is one more file with a :class:`Family` and its model class, listed here.
"""

from __future__ import annotations

from ..errors import ArchError
from . import mlp, resnet, vgg
from .base import ArchSpec, Family, FamilyModel, ModelInfo, ModelSize, SpecParts

#: In the order a spec name and a state_dict's keys are tried.
FAMILIES: dict[str, Family] = {family.name: family for family in (mlp.FAMILY, vgg.FAMILY, resnet.FAMILY)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ArchError(f"Unknown architecture family '{name}'; choose one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


__all__ = ["FAMILIES", "ArchSpec", "Family", "FamilyModel", "ModelInfo", "ModelSize", "SpecParts", "get_family"]
