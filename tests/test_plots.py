"""Figure builders in clafusion_core.plots: the traces each figure carries, and that all of them serialise."""

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from clafusion_core import plots

ROWS = [f"hidden.{i} ({w})" for i, w in enumerate([400, 200, 100, 50, 25])]
COLS = [f"hidden.{j} ({w})" for j, w in enumerate([400, 200, 100])]
PATH = [0, 2, 4]


@pytest.fixture
def cost():
    return np.random.default_rng(0).random((len(ROWS), len(COLS)))


def _named(fig: go.Figure, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def _heatmaps(fig: go.Figure) -> list:
    return [t for t in fig.data if t.type == "heatmap"]


# ------------------------------------------------------------------------------------------ cost_heatmap


def test_cost_heatmap_shows_the_matrix_and_the_path(cost):
    fig = plots.cost_heatmap(cost, ROWS, COLS, path=PATH, title="linear CKA")
    (heatmap,) = _heatmaps(fig)
    np.testing.assert_array_equal(np.asarray(heatmap.z), cost)
    (path,) = _named(fig, "DP alignment")
    assert list(path.x) == [0, 1, 2] and list(path.y) == PATH
    assert "lines" in path.mode and "markers" in path.mode
    assert list(fig.layout.yaxis.ticktext) == ROWS and list(fig.layout.xaxis.ticktext) == COLS
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # row 0 at the top
    assert fig.layout.template.layout.paper_bgcolor is not None and fig.layout.title.text == "linear CKA"


def test_cost_heatmap_cells_overlay_covers_every_cell_with_its_indices(cost):
    fig = plots.cost_heatmap(cost, ROWS, COLS, path=PATH)
    (cells,) = _named(fig, "cells")
    m, n = cost.shape
    pairs = [tuple(c) for c in cells.customdata]
    assert sorted(pairs) == [(i, j) for i in range(m) for j in range(n)]
    assert all(cells.x[k] == j and cells.y[k] == i for k, (i, j) in enumerate(pairs))
    assert cells.marker.opacity <= 0.05
    assert cells.hoverinfo != "skip"  # plotly fires no click/select events for "skip" traces
    assert fig.data[-1] is cells  # on top, so a click on a cell reaches it


def test_cost_heatmap_hover_names_both_layers_widths_and_cost(cost):
    fig = plots.cost_heatmap(cost, ROWS, COLS, row_widths=[400, 200, 100, 50, 25], col_widths=[400, 200, 100])
    (heatmap,) = _heatmaps(fig)
    text = heatmap.hovertext[2][1]
    assert ROWS[2] in text and COLS[1] in text and "width 100" in text and "width 200" in text
    assert f"{cost[2, 1]:.3f}" in text
    (cells,) = _named(fig, "cells")
    k = [tuple(c) for c in cells.customdata].index((2, 1))
    assert cells.hovertext[k] == text and cells.hovertemplate == heatmap.hovertemplate


def test_cost_heatmap_override_drawn_only_when_given(cost):
    assert not _named(plots.cost_heatmap(cost, ROWS, COLS, path=PATH), "your matching")
    fig = plots.cost_heatmap(cost, ROWS, COLS, path=PATH, override=[1, 2, 3])
    (mine,) = _named(fig, "your matching")
    (dp,) = _named(fig, "DP alignment")
    assert list(mine.y) == [1, 2, 3] and mine.line.dash == "dash" and mine.line.color != dp.line.color


def test_cost_heatmap_values_written_only_for_small_full_size_figures(cost):
    assert _heatmaps(plots.cost_heatmap(cost, ROWS, COLS))[0].texttemplate
    assert not _heatmaps(plots.cost_heatmap(cost, ROWS, COLS, show_values=False))[0].texttemplate
    big = np.zeros((13, 4))
    assert not _heatmaps(plots.cost_heatmap(big, [str(i) for i in range(13)], list("abcd")))[0].texttemplate


def test_cost_heatmap_compact_has_no_values_legend_or_annotations(cost):
    fig = plots.cost_heatmap(cost, ROWS, COLS, path=PATH, compact=True)
    assert not _heatmaps(fig)[0].texttemplate
    assert not fig.layout.annotations
    assert fig.layout.showlegend is False and fig.layout.height <= 240
    assert fig.layout.height < plots.cost_heatmap(cost, ROWS, COLS, path=PATH).layout.height


@pytest.mark.parametrize("bad", [[0, 2], [0, 2, 5], [-1, 0, 1]])
def test_cost_heatmap_rejects_a_path_that_does_not_fit(cost, bad):
    with pytest.raises(ValueError):
        plots.cost_heatmap(cost, ROWS, COLS, path=bad)


def test_cost_heatmap_tolerates_nan_costs(cost):
    cost[1, 1] = np.nan
    fig = plots.cost_heatmap(cost, ROWS, COLS, path=PATH)
    assert "n/a" in _heatmaps(fig)[0].hovertext[1][1]
    json.loads(fig.to_json())


# ------------------------------------------------------------------------------------- metric_comparison


def test_metric_comparison_one_heatmap_per_metric_with_titles(cost):
    costs = {"linear_cka": cost, "cca": cost[::-1].copy(), "width": cost / 2}
    paths = {"linear_cka": PATH, "cca": [1, 2, 4], "width": PATH}
    labels = {"linear_cka": "linear CKA", "cca": "CCA", "width": "width"}
    fig = plots.metric_comparison(costs, paths, ROWS, COLS, labels=labels)
    heatmaps = _heatmaps(fig)
    assert len(heatmaps) == 3
    for heatmap, key in zip(heatmaps, costs):
        np.testing.assert_array_equal(np.asarray(heatmap.z), costs[key])
    assert len({h.xaxis for h in heatmaps}) == 3
    assert fig.layout.yaxis2.matches == "y" and fig.layout.yaxis3.matches == "y"  # shared y
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "linear CKA" and titles[1].startswith("CCA") and titles[2] == "width"


def test_metric_comparison_marks_paths_that_differ_from_the_first(cost):
    costs = {"a": cost, "b": cost, "c": cost}
    fig = plots.metric_comparison(costs, {"a": PATH, "b": [1, 2, 4], "c": PATH}, ROWS, COLS)
    lines = [t for t in fig.data if t.type == "scatter"]
    assert [list(t.y) for t in lines] == [PATH, [1, 2, 4], PATH]
    colors = [t.line.color for t in lines]
    assert colors[0] == colors[2] != colors[1]
    assert "differs" in fig.layout.annotations[1].text and "differs" not in fig.layout.annotations[2].text


def test_metric_comparison_rejects_mismatched_shapes(cost):
    with pytest.raises(ValueError):
        plots.metric_comparison({"a": cost, "b": cost[:4]}, {}, ROWS, COLS)


# --------------------------------------------------------------------------------------- transport plans


@pytest.mark.parametrize("shape,max_cells", [((600, 300), 256), ((100, 1000), 64), ((50, 40), 256), ((257, 5), 256)])
def test_downsampling_preserves_mass_and_bounds_the_size(shape, max_cells):
    plan = np.random.default_rng(1).random(shape)
    small, rb, cb = plots.downsample_plan(plan, max_cells)
    assert small.shape[0] <= max_cells and small.shape[1] <= max_cells
    assert small.sum() == pytest.approx(plan.sum())
    assert small[0, 0] == pytest.approx(plan[:rb, :cb].sum())
    if max(shape) <= max_cells:
        np.testing.assert_array_equal(small, plan)


def test_transport_plan_heatmap_downsamples_large_plans_and_says_so():
    plan = np.full((600, 300), 1 / (600 * 300))
    fig = plots.transport_plan_heatmap(plan, title="hidden.0", max_cells=100)
    z = np.asarray(_heatmaps(fig)[0].z)
    assert z.shape[0] <= 100 and z.shape[1] <= 100 and z.sum() == pytest.approx(1.0)
    assert "600×300" in fig.layout.title.text and "block-summed" in fig.layout.title.subtitle.text
    heatmap = _heatmaps(fig)[0]
    assert list(heatmap.y[:3]) == [0, 6, 12] and list(heatmap.x[:3]) == [0, 3, 6]  # block starts, in neurons
    assert heatmap.hovertemplate.startswith("A neurons %{y}…+5 → B neurons %{x}…+2: %{z")
    small = plots.transport_plan_heatmap(np.eye(4) / 4)
    assert np.asarray(_heatmaps(small)[0].z).shape == (4, 4)
    assert "block-summed" not in small.layout.title.subtitle.text
    assert _heatmaps(small)[0].hovertemplate.startswith("A neuron %{y} → B neuron %{x}: %{z")


def test_permutation_likeness_is_one_for_permutations_and_low_for_uniform_plans():
    perm = np.eye(5)[[2, 0, 4, 1, 3]] / 5
    assert plots.permutation_likeness(perm) == pytest.approx(1.0)
    assert plots.permutation_likeness(np.full((5, 10), 0.02)) == pytest.approx(0.1)
    assert plots.permutation_likeness(np.zeros((3, 3))) == 0.0
    fig = plots.transport_plan_heatmap(perm)
    assert "1.00" in fig.layout.title.subtitle.text


# ------------------------------------------------------------------------------------ results and timing


ACCURACIES = {"model A": 0.97, "model B": 0.96, "balanced B": 0.96, "ensemble": 0.98, "vanilla": None,
              "fused (one-shot)": 0.885, "fused + finetune": 0.973}


def test_accuracy_bars_show_percentages_and_na():
    fig = plots.accuracy_bars(ACCURACIES)
    (bars,) = fig.data
    assert list(bars.x) == list(ACCURACIES)
    assert bars.y[0] == pytest.approx(97.0) and bars.y[4] is None
    assert bars.text[0] == "97.0 %" and bars.text[5] == "88.5 %"
    assert [a.text for a in fig.layout.annotations] == ["n/a"] and fig.layout.annotations[0].x == "vanilla"
    low, high = fig.layout.yaxis.range
    assert 0 <= low < 88.5 and low > 50 and high == 100


def test_accuracy_bars_accept_percentages_and_all_missing():
    fig = plots.accuracy_bars({"a": 97.0, "b": 95.5})
    assert fig.data[0].text == ("97.0 %", "95.5 %")
    empty = plots.accuracy_bars({"a": None})
    assert empty.layout.annotations[0].text == "n/a" and empty.layout.yaxis.range == (0, 100)


def test_training_curves_one_line_per_run_from_epoch_zero():
    fig = plots.training_curves({"fused": [0.9, 0.95, 0.97], "model A (same epochs)": [0.97, 0.975]})
    assert [t.name for t in fig.data] == ["fused", "model A (same epochs)"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[1].y) == [0.97, 0.975]
    assert all("markers" in t.mode for t in fig.data)


@pytest.mark.parametrize("seconds,label", [(0.0004, "0.4 ms"), (0.0123, "12 ms"), (3.456, "3.46 s"), (75, "75.0 s")])
def test_format_seconds(seconds, label):
    assert plots.format_seconds(seconds) == label


def test_stage_timings_horizontal_bars_with_labels():
    fig = plots.stage_timings({"activations": 0.012, "fusion": 1.6})
    (bars,) = fig.data
    assert bars.orientation == "h" and list(bars.y) == ["activations", "fusion"]
    assert list(bars.x) == [0.012, 1.6] and list(bars.text) == ["12 ms", "1.60 s"]
    assert "1.61 s" in fig.layout.title.text


# ---------------------------------------------------------------------------------- architecture diagram


def _bars(fig, name):
    (bar,) = _named(fig, name)
    return bar


def test_architecture_diagram_draws_units_and_matching_lines():
    fig = plots.architecture_diagram([[400, 200, 100, 50, 25]], [[400, 200, 100]], mapping=[[0, 2, 4]])
    a, b = _bars(fig, "A units"), _bars(fig, "B units")
    assert len(a.x) == 5 and len(b.x) == 3
    assert list(b.x) == [a.x[0], a.x[2], a.x[4]]  # B's units sit under their matches
    assert a.y[0] > a.y[4]  # box height grows with width
    lines = _bars(fig, "matched")
    assert len(lines.x) == 9 and lines.x[3] == a.x[2]
    labels = _named(fig, "widths")[0].text
    assert list(labels) == ["400", "200", "100", "50", "25", "400", "200", "100"]


def test_architecture_diagram_inserted_identity_units_are_hatched_and_labelled():
    fig = plots.architecture_diagram([[400, 200, 100, 50, 25]], [[400, 200, 100]], inserted=[(0, 3), (0, 4)])
    ids = _bars(fig, "identity (inserted)")
    a = _bars(fig, "A units")
    assert list(ids.x) == [a.x[3], a.x[4]] and ids.marker.pattern.shape == "/"
    assert list(_named(fig, "widths")[0].text).count("id") == 2
    assert list(_bars(fig, "B units").x) == [a.x[0], a.x[1], a.x[2]]  # mapping implied by the insertions


def test_architecture_diagram_removed_units_are_crossed_out():
    fig = plots.architecture_diagram([[400, 200, 100, 50, 25]], [[400, 200, 100]], removed=[(0, 2), (0, 3)],
                                     mapping=[[0, 1, 4]])
    assert len(_bars(fig, "A units").x) == 3 and len(_bars(fig, "merged away").x) == 2
    assert _named(fig, "removed")[0].marker.symbol.startswith("x")


def test_architecture_diagram_separates_stages():
    fig = plots.architecture_diagram([[64], [128, 128], [256, 256]], [[64], [128], [256]],
                                     names=("resnet18", "resnet10"))
    xs = list(_bars(fig, "resnet18 units").x)
    assert xs[1] - xs[0] > 1 and xs[3] - xs[2] > 1  # a gap between stages
    assert [a.text for a in fig.layout.annotations] == ["stage 0", "stage 1", "stage 2"]
    assert list(fig.layout.yaxis.ticktext) == ["resnet18", "resnet10"]


def test_architecture_diagram_rejects_stage_count_mismatch():
    with pytest.raises(ValueError):
        plots.architecture_diagram([[4], [4]], [[4]])


# ------------------------------------------------------------------------------------------ all of them


_COST = np.random.default_rng(2).random((5, 3))
FIGURES = {
    "cost_heatmap": lambda: plots.cost_heatmap(_COST, ROWS, COLS, path=PATH, override=[0, 1, 4], title="t"),
    "compact": lambda: plots.cost_heatmap(_COST, ROWS, COLS, path=PATH, compact=True),
    "metric_comparison": lambda: plots.metric_comparison({"a": _COST, "b": _COST * 3}, {"a": PATH, "b": [1, 2, 3]},
                                                         ROWS, COLS),
    "transport_plan": lambda: plots.transport_plan_heatmap(np.random.default_rng(3).random((300, 20)), max_cells=64),
    "accuracy_bars": lambda: plots.accuracy_bars(ACCURACIES),
    "training_curves": lambda: plots.training_curves({"fused": [0.9, 0.95]}),
    "stage_timings": lambda: plots.stage_timings({"fusion": 1.6}),
    "architecture": lambda: plots.architecture_diagram([[64], [128, 128]], [[64], [128]], inserted=[(1, 1)]),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figures_serialise_with_the_shared_template(name):
    fig = FIGURES[name]()
    assert isinstance(fig, go.Figure)
    data = json.loads(fig.to_json())
    assert data["data"] and fig.layout.template.layout.plot_bgcolor == "white"
