"""Cross-layer alignment by dynamic programming: optimality against brute force, pins, ties, errors."""

import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clafusion_core.alignment import (
    align_layers,
    align_stages,
    alignment_cost,
    unmatched_layers,
    validate_mapping,
)
from clafusion_core.errors import AlignmentError, FusionError

PINS = [(False, False), (True, False), (False, True), (True, True)]
PIN_IDS = ["free", "pin-first", "pin-last", "pin-both"]


def _allowed(combo, m, n, pin_first, pin_last):
    if n == 1 and m > 1 and pin_first and pin_last:  # documented: only the first pin applies
        pin_last = False
    if n and pin_first and combo[0] != 0:
        return False
    if n and pin_last and combo[-1] != m - 1:
        return False
    return True


def brute_force(cost, pin_first, pin_last):
    """(optimal cost, lexicographically first optimal mapping) over all increasing maps."""
    m, n = cost.shape
    best, best_map = np.inf, None
    for combo in itertools.combinations(range(m), n):  # lexicographic order
        if not _allowed(combo, m, n, pin_first, pin_last):
            continue
        total = float(sum(cost[a, j] for j, a in enumerate(combo)))
        if total < best:
            best, best_map = total, list(combo)
    return best, best_map


def _check_optimal(cost, pin_first, pin_last):
    m, n = cost.shape
    mapping = align_layers(cost, pin_first=pin_first, pin_last=pin_last)
    validate_mapping(mapping, m, n, pin_first=pin_first, pin_last=pin_last)
    best, _ = brute_force(cost, pin_first, pin_last)
    assert alignment_cost(cost, mapping) == pytest.approx(best, rel=1e-12, abs=1e-12)
    return mapping


@pytest.mark.parametrize(("pin_first", "pin_last"), PINS, ids=PIN_IDS)
def test_dp_matches_brute_force_on_random_matrices(pin_first, pin_last):
    rng = np.random.default_rng(1234 + 2 * pin_first + pin_last)
    for _ in range(100):
        m = int(rng.integers(1, 10))
        n = int(rng.integers(1, m + 1))
        cost = rng.random((m, n)) if rng.random() < 0.5 else rng.normal(size=(m, n)) * 10
        _check_optimal(cost, pin_first, pin_last)


@pytest.mark.parametrize(("pin_first", "pin_last"), PINS, ids=PIN_IDS)
def test_ties_pick_the_earliest_rows(pin_first, pin_last):
    # small integer costs: many exact ties; the documented rule returns the componentwise-smallest
    # optimal map, which is the lexicographically first optimal combination
    rng = np.random.default_rng(99 + 2 * pin_first + pin_last)
    for _ in range(100):
        m = int(rng.integers(1, 10))
        n = int(rng.integers(1, m + 1))
        cost = rng.integers(0, 3, size=(m, n)).astype(float)
        mapping = _check_optimal(cost, pin_first, pin_last)
        assert mapping == brute_force(cost, pin_first, pin_last)[1]


def test_all_equal_costs_give_earliest_rows():
    assert align_layers(np.zeros((6, 3)), pin_first=False, pin_last=False) == [0, 1, 2]
    assert align_layers(np.zeros((6, 3))) == [0, 1, 5]
    assert align_layers(np.ones((6, 3)), pin_first=True, pin_last=False) == [0, 1, 2]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda m: st.tuples(
            st.just(m),
            st.integers(1, m),
            st.lists(st.floats(-100, 100, allow_nan=False), min_size=m * m, max_size=m * m),
        )
    ),
    st.sampled_from(PINS),
)
def test_dp_is_optimal_property(shape_and_values, pins):
    m, n, values = shape_and_values
    cost = np.asarray(values[: m * n]).reshape(m, n)
    _check_optimal(cost, *pins)


@pytest.mark.parametrize(("pin_first", "pin_last"), PINS, ids=PIN_IDS)
@pytest.mark.parametrize("m", [1, 2, 5, 9])
def test_square_cost_gives_identity(m, pin_first, pin_last):
    cost = np.random.default_rng(m).random((m, m))
    assert align_layers(cost, pin_first=pin_first, pin_last=pin_last) == list(range(m))


def test_single_column_with_both_pins_uses_first_pin_only():
    cost = np.array([[9.0], [5.0], [0.0], [7.0]])  # row 2 is cheapest, but the first pin wins
    assert align_layers(cost) == [0]
    assert align_layers(cost, pin_first=False, pin_last=True) == [3]
    assert align_layers(cost, pin_first=False, pin_last=False) == [2]
    assert align_layers(np.array([[3.0]])) == [0]
    validate_mapping([0], 4, 1)
    with pytest.raises(AlignmentError, match="first"):
        validate_mapping([3], 4, 1)


def test_pins_are_enforced_even_when_expensive():
    cost = np.zeros((5, 3))
    cost[0, 0] = cost[4, 2] = 100.0
    assert align_layers(cost, pin_first=False, pin_last=False) == [1, 2, 3]
    assert align_layers(cost) == [0, 1, 4]
    assert align_layers(cost, pin_first=False, pin_last=True) == [1, 2, 4]


def test_empty_shallower_model_gives_empty_mapping():
    assert align_layers(np.zeros((4, 0))) == []
    assert align_layers(np.zeros((0, 0))) == []
    assert alignment_cost(np.zeros((4, 0)), []) == 0.0


def test_fewer_rows_than_columns_raises():
    with pytest.raises(AlignmentError, match="swap"):
        align_layers(np.zeros((2, 3)))
    with pytest.raises(FusionError):  # AlignmentError is a FusionError
        validate_mapping([0, 1, 2], 2, 3)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 2, 2)), np.array([[0.0, np.nan], [1.0, 2.0]]),
                                 np.array([[np.inf]])])
def test_bad_cost_matrix_raises(bad):
    with pytest.raises(AlignmentError):
        align_layers(bad)


def test_width_cost_alignment_matches_clafusion_example():
    # 400-200-100-50-25 vs 400-200-100 with width costs: the free middle layer goes to A's 200
    wa, wb = np.array([400, 200, 100, 50, 25]), np.array([400, 200, 100])
    cost = np.abs(wa[:, None] - wb[None, :]) / 400
    assert align_layers(cost) == [0, 1, 4]
    assert align_layers(cost, pin_last=False) == [0, 1, 2]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ([0, 4], "entries"),  # too short
        ([0, 1, 2, 4], "entries"),  # too long
        ([0, 5, 4], "does not exist"),  # out of range
        ([0, -1, 4], "does not exist"),  # negative
        ([0, 3, 2], "strictly increasing"),  # decreasing
        ([0, 2, 2], "strictly increasing"),  # repeated
        ([1, 2, 4], "first"),  # first pin violated
        ([0, 1, 3], "last"),  # last pin violated
        ([0, 1.5, 4], "whole numbers"),  # not an index
    ],
)
def test_validate_mapping_rejects_bad_mappings(mapping, message):
    with pytest.raises(AlignmentError, match=message):
        validate_mapping(mapping, 5, 3)


def test_validate_mapping_accepts_valid_and_unpinned_mappings():
    validate_mapping([0, 2, 4], 5, 3)
    validate_mapping(np.array([0, 2, 4]), 5, 3)
    validate_mapping([1, 2, 4], 5, 3, pin_first=False)
    validate_mapping([0, 1, 3], 5, 3, pin_last=False)
    validate_mapping([1, 2, 3], 5, 3, pin_first=False, pin_last=False)
    validate_mapping([], 5, 0)


def test_alignment_cost_sums_matched_entries():
    cost = np.arange(15, dtype=float).reshape(5, 3)
    assert alignment_cost(cost, [0, 2, 4]) == 0 + 7 + 14
    with pytest.raises(AlignmentError):
        alignment_cost(cost, [0, 2])
    with pytest.raises(AlignmentError):
        alignment_cost(cost, [0, 2, 5])


def test_align_stages_aligns_each_stage_and_names_the_failing_one():
    rng = np.random.default_rng(7)
    costs = [rng.random((4, 2)), rng.random((3, 3)), rng.random((5, 1))]
    maps = align_stages(costs)
    assert maps == [align_layers(c) for c in costs]
    assert maps[1] == [0, 1, 2] and maps[2] == [0]
    assert align_stages(costs, pin_first=False, pin_last=False) == [
        align_layers(c, pin_first=False, pin_last=False) for c in costs
    ]
    assert align_stages([]) == []
    with pytest.raises(AlignmentError, match="Stage 1"):
        align_stages([rng.random((3, 2)), rng.random((2, 3))])


def test_unmatched_layers():
    assert unmatched_layers([0, 2, 4], 6) == [1, 3, 5]
    assert unmatched_layers([4, 0], 5) == [1, 2, 3]
    assert unmatched_layers([0, 1, 2], 3) == []
    assert unmatched_layers([], 2) == [0, 1]
    with pytest.raises(AlignmentError):
        unmatched_layers([0, 7], 3)


def test_dp_is_fast_on_large_matrices():
    cost = np.random.default_rng(0).random((1000, 500))
    align_layers(cost)  # warm-up
    start = time.perf_counter()
    mapping = align_layers(cost)
    elapsed = time.perf_counter() - start
    validate_mapping(mapping, 1000, 500)
    assert elapsed < 0.5, f"DP on 1000x500 took {elapsed:.3f} s"
