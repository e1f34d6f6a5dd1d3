"""Reading an architecture from state_dict keys and weight shapes: what the families' layouts share.

Keys come from untrusted files, so every index and chain is checked before it sizes anything; a
layout that does not fit is one :class:`~clafusion_core.errors.ArchError` sentence.
"""

from __future__ import annotations

import re

import torch

from ..errors import ArchError

MAX_LAYER_INDEX = 10_000   # the largest layer index a key may carry (``features.N.weight``, ``fc{N}``, ...)


def unknown_layout(detail: str = "") -> ArchError:
    return ArchError("The checkpoint is in a layout we cannot tell the architecture from (its keys" + detail +
                     " match no supported model); pass --arch (or choose the architecture in the app), "
                     "e.g. --arch resnet18 or mlp:400-200-100.")


def indexed(keys: list[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern``'s first group over ``keys`` (ASCII digits).

    An index over :data:`MAX_LAYER_INDEX` is refused: a layout is rebuilt from its indices (pools
    between VGG convs, say), so ``features.100000000.weight`` would otherwise cost a 10⁸-entry list.
    """
    regex = re.compile(pattern.replace(r"\d", "[0-9]"))
    found = sorted({int(m.group(1)) for k in keys if (m := regex.fullmatch(k))})
    if found and found[-1] > MAX_LAYER_INDEX:
        raise unknown_layout(f", one with the layer index {found[-1]:,} (over {MAX_LAYER_INDEX:,}),")
    return found


def prefix_renames(keys: list[str], prefixes: dict[str, str]) -> dict[str, str]:
    """Key renames that replace each old module prefix (``"fc1."``) by a new one (``"hidden.0."``).

    Every prefix is a whole module path, so each key is looked up by its own module path: linear in
    the number of keys, whatever the number of prefixes.
    """
    renames = {}
    for key in keys:
        module = key.rpartition(".")[0] + "."
        new = prefixes.get(module)
        if new is not None and new != module:
            renames[key] = new + key[len(module):]
    return renames


def linear_chain(shapes: dict[str, torch.Size], names: list[str]) -> tuple[tuple[int, ...], bool]:
    """Hidden widths and bias flag of Linear layers ``names`` (last = head) chained in that order."""
    if any(len(shapes.get(f"{n}.weight", ())) != 2 for n in names):
        raise unknown_layout(f", where one of {', '.join(names)} is missing or not a Linear weight,")
    for prev, nxt in zip(names, names[1:]):
        if shapes[f"{nxt}.weight"][1] != shapes[f"{prev}.weight"][0]:
            raise unknown_layout(f", where {nxt} does not take {prev}'s {shapes[f'{prev}.weight'][0]} outputs,")
    widths = tuple(int(shapes[f"{n}.weight"][0]) for n in names[:-1])
    return widths, f"{names[-1]}.bias" in shapes
