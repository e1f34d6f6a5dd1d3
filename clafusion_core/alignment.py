"""Cross-layer alignment: match each layer of the shallower model to a layer of the deeper one.

Given the cost matrix ``C`` (m × n, rows = the deeper model A's layers, columns = the shallower model
B's layers, from :func:`clafusion_core.similarity.cost_matrix`), the alignment is the strictly
increasing map from B's layers into A's layers of least total cost, found by dynamic programming.
A's layers left out of the map are the ones the balancing step must handle (identity layers inserted
into B, or A's layers merged away).

Conventions: layer indices are 0-based, a mapping is a list ``a`` with ``a[j]`` = the row of A matched
to B's layer j.
"""

from __future__ import annotations

import operator
from typing import Sequence

import numpy as np

from .errors import AlignmentError

__all__ = ["align_layers", "alignment_cost", "validate_mapping", "align_stages", "unmatched_layers"]


def _as_cost(cost) -> np.ndarray:
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise AlignmentError(
            f"The cost matrix must be 2-D (deeper model's layers × shallower model's layers), got shape {c.shape}."
        )
    if not np.all(np.isfinite(c)):
        raise AlignmentError("The cost matrix contains NaN or infinite values; recompute it from finite activations.")
    return c


def _pins(m: int, n: int, pin_first: bool, pin_last: bool) -> tuple[bool, bool]:
    """The pins that apply: with one layer in B and several in A, only the first pin is kept."""
    if n == 1 and m > 1 and pin_first and pin_last:
        return True, False
    return pin_first, pin_last


def _check_depths(m: int, n: int) -> None:
    if m < n:
        raise AlignmentError(
            f"The first model has fewer layers ({m}) than the second ({n}); the deeper model must come first "
            "(rows of the cost matrix): swap the two models."
        )


def _dp(c: np.ndarray) -> list[int]:
    """Unpinned DP on an m × n matrix (m ≥ n ≥ 1); earliest rows on ties. See :func:`align_layers`."""
    m, n = c.shape
    f = np.full((m + 1, n + 1), np.inf)
    f[:, 0] = 0.0
    for i in range(1, m + 1):  # one vectorised row update per row of A
        np.minimum(f[i - 1, 1:], f[i - 1, :-1] + c[i - 1], out=f[i, 1:])
    # Backtrack from (m, n). Skipping row i-1 whenever that is no worse makes each matched row, from the
    # last layer of B backwards, the earliest one among optimal maps.
    mapping = [0] * n
    i, j = m, n
    while j > 0:
        if i > j and f[i - 1, j] <= f[i - 1, j - 1] + c[i - 1, j - 1]:
            i -= 1
        else:
            mapping[j - 1] = i - 1
            i -= 1
            j -= 1
    return mapping


def align_layers(cost: np.ndarray, *, pin_first: bool = True, pin_last: bool = True) -> list[int]:
    r"""Least-cost strictly increasing alignment of the shallower model's layers into the deeper's.

    For a cost matrix :math:`C \in \mathbb{R}^{m \times n}`, :math:`m \ge n`, solves

    .. math::
        \min_{a} \sum_{j=0}^{n-1} C_{a(j),\, j}
        \quad \text{s.t.} \quad 0 \le a(0) < a(1) < \dots < a(n-1) \le m - 1

    plus :math:`a(0) = 0` if ``pin_first`` and :math:`a(n-1) = m-1` if ``pin_last``. With
    :math:`F_{i,j}` the least cost of placing B's first j layers into A's first i layers:

    .. math::
        F_{i,j} = \min\big(F_{i-1,j},\; F_{i-1,j-1} + C_{i-1,j-1}\big), \qquad
        F_{i,0} = 0, \qquad F_{i,j} = \infty \text{ for } j > i,

    the optimum is :math:`F_{m,n}` and the map is recovered by backtracking (O(mn) time and memory; one
    vectorised numpy update per row). Pins are applied by fixing the pinned pairs and solving the DP on
    the remaining block of C.

    Special cases: ``n == 0`` gives ``[]``. When ``n == 1 < m`` and both pins are asked for, they cannot
    both hold; only the first pin applies, so the result is ``[0]``. The first layer is the safe one to
    keep: an identity layer inserted *before* a model's first layer would read raw (possibly negative)
    inputs and break exact balancing, and a ResNet stage's first block carries its downsampling.

    Ties: among optimal maps the one matching the earliest rows is returned: a(n−1) is as small as
    possible, then a(n−2), and so on (with exact arithmetic this is the componentwise-smallest optimal
    map, which always exists). E.g. an all-zero cost gives ``[0, 1, ..., n-1]`` when unpinned.

    Parameters
    ----------
    cost : (m, n) array-like, float64
        Layer dissimilarities, rows = the deeper model A, columns = the shallower model B.
    pin_first : bool, optional (default=True)
        Match the first layers of the two models to each other.
    pin_last : bool, optional (default=True)
        Match the last layers of the two models to each other.

    Returns
    -------
    mapping : list of int, length n
        ``mapping[j]`` is the row (layer of A) matched to B's layer j; strictly increasing.

    Raises
    ------
    AlignmentError
        If m < n (the models are in the wrong order), or the cost matrix is not a finite 2-D matrix.

    References
    ----------
    Nguyen, Nguyen, Than, Ho, Bui. Model Fusion of Heterogeneous Neural Networks via Cross-Layer
    Alignment. ICASSP 2023.
    """
    c = _as_cost(cost)
    m, n = c.shape
    if n == 0:
        return []
    _check_depths(m, n)
    pin_first, pin_last = _pins(m, n, pin_first, pin_last)
    head = [0] if pin_first else []
    tail = [m - 1] if pin_last and not (pin_first and n == 1) else []  # n == m == 1: one pair
    r0, r1 = len(head), m - len(tail)  # free rows [r0, r1)
    c0, c1 = len(head), n - len(tail)  # free columns [c0, c1)
    middle = []
    if c1 > c0:
        middle = [r0 + i for i in _dp(c[r0:r1, c0:c1])]
    return head + middle + tail


def alignment_cost(cost: np.ndarray, mapping: Sequence[int]) -> float:
    r"""Total cost of a mapping: :math:`\sum_j C_{a(j),\, j}`.

    Parameters
    ----------
    cost : (m, n) array-like, float64
        Layer dissimilarities, rows = the deeper model A, columns = the shallower model B.
    mapping : sequence of int, length n
        ``mapping[j]`` is the row matched to column j (need not be increasing here).

    Returns
    -------
    total : float
        The summed cost (0.0 for an empty mapping).

    Raises
    ------
    AlignmentError
        If the mapping's length is not n or an index is outside the rows of C.
    """
    c = _as_cost(cost)
    m, n = c.shape
    idx = _as_indices(mapping)
    if len(idx) != n:
        raise AlignmentError(f"The mapping has {len(idx)} entries but the cost matrix has {n} columns; give one row per column.")
    bad = [a for a in idx if not 0 <= a < m]
    if bad:
        raise AlignmentError(f"Mapping entry {bad[0]} is not a row of the cost matrix; use indices 0 to {m - 1}.")
    if n == 0:
        return 0.0
    return float(c[np.asarray(idx), np.arange(n)].sum())


def _as_indices(mapping: Sequence[int]) -> list[int]:
    try:
        return [operator.index(a) for a in mapping]
    except TypeError:
        raise AlignmentError(
            "The matched layer indices must be whole numbers (0-based layer indices of the deeper model)."
        ) from None


def validate_mapping(
    mapping: Sequence[int], m: int, n: int, *, pin_first: bool = True, pin_last: bool = True
) -> None:
    """Check a user-given matching of the shallower model's n layers into the deeper model's m layers.

    A valid mapping ``a`` has length n, entries in ``0 .. m-1``, is strictly increasing
    (:math:`a(0) < a(1) < \\dots`), and honours the pins: ``a[0] == 0`` if ``pin_first`` and
    ``a[-1] == m - 1`` if ``pin_last`` (with ``n == 1 < m`` and both pins, only the first pin applies,
    as in :func:`align_layers`).

    Parameters
    ----------
    mapping : sequence of int
        ``mapping[j]`` is the layer of the deeper model matched to the shallower model's layer j.
    m : int
        Number of layers of the deeper model.
    n : int
        Number of layers of the shallower model.
    pin_first : bool, optional (default=True)
        Require the first layers to be matched.
    pin_last : bool, optional (default=True)
        Require the last layers to be matched.

    Raises
    ------
    AlignmentError
        With one sentence naming the first problem found: the models' order, the length, an index out
        of range, an index that does not increase, or a violated pin.
    """
    _check_depths(m, n)
    idx = _as_indices(mapping)
    if len(idx) != n:
        raise AlignmentError(
            f"The matching has {len(idx)} entries but the shallower model has {n} layers; match every one of its layers exactly once."
        )
    for j, a in enumerate(idx):
        if not 0 <= a < m:
            raise AlignmentError(
                f"Layer {j} is matched to layer {a}, which does not exist; the deeper model's layers are 0 to {m - 1}."
            )
    for j in range(1, n):
        if idx[j] <= idx[j - 1]:
            raise AlignmentError(
                f"Layers {j - 1} and {j} are matched to layers {idx[j - 1]} and {idx[j]}; the matched layers must be "
                "strictly increasing (keep the layer order and use each layer at most once)."
            )
    first, last = _pins(m, n, pin_first, pin_last)
    if n and first and idx[0] != 0:
        raise AlignmentError(
            f"The first layer is matched to layer {idx[0]} but the first layers are pinned; match it to layer 0 "
            "or unpin the first layers."
        )
    if n and last and idx[-1] != m - 1:
        raise AlignmentError(
            f"The last layer is matched to layer {idx[-1]} but the last layers are pinned; match it to layer {m - 1} "
            "or unpin the last layers."
        )


def align_stages(
    costs: Sequence[np.ndarray], *, pin_first: bool = True, pin_last: bool = True
) -> list[list[int]]:
    """Cross-layer alignment of staged models: :func:`align_layers` on each stage's cost matrix.

    For models made of stages (VGG blocks between poolings, ResNet resolutions), layers are aligned
    within a stage only; stage s of the deeper model is matched to stage s of the shallower one, and
    the pins apply to every stage.

    Parameters
    ----------
    costs : sequence of (m_s, n_s) array-like
        One cost matrix per stage, rows = the deeper model's layers in that stage.
    pin_first : bool, optional (default=True)
        Match the first layers of each stage to each other.
    pin_last : bool, optional (default=True)
        Match the last layers of each stage to each other.

    Returns
    -------
    mappings : list of list of int
        ``mappings[s][j]`` is the layer (within stage s) of the deeper model matched to layer j.

    Raises
    ------
    AlignmentError
        If a stage cannot be aligned; the message names the stage.
    """
    out = []
    for s, cost in enumerate(costs):
        try:
            out.append(align_layers(cost, pin_first=pin_first, pin_last=pin_last))
        except AlignmentError as err:
            raise AlignmentError(f"Stage {s}: {err}") from None
    return out


def unmatched_layers(mapping: Sequence[int], m: int) -> list[int]:
    """The deeper model's layers that no layer of the shallower model is matched to, sorted.

    .. math::
        U = \\{0, \\dots, m-1\\} \\setminus \\{a(0), \\dots, a(n-1)\\}

    Parameters
    ----------
    mapping : sequence of int
        ``mapping[j]`` is the deeper model's layer matched to the shallower model's layer j.
    m : int
        Number of layers of the deeper model.

    Returns
    -------
    rows : list of int
        The unmatched layer indices in increasing order.

    Raises
    ------
    AlignmentError
        If the mapping names a layer outside ``0 .. m-1``.
    """
    idx = _as_indices(mapping)
    bad = [a for a in idx if not 0 <= a < m]
    if bad:
        raise AlignmentError(f"The mapping names layer {bad[0]}, which does not exist; use indices 0 to {m - 1}.")
    used = set(idx)
    return [i for i in range(m) if i not in used]
