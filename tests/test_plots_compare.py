"""Figures of the Compare page: the traces they carry, drawn from plain numbers."""

import json

import pytest

from clafusion_core import plots

T = [0.0, 0.5, 1.0]


def test_barrier_plot_has_a_loss_and_an_accuracy_line_per_path_and_names_the_heights():
    curves = {"naive": (T, [0.2, 0.9, 0.3], [0.95, 0.6, 0.94]), "ot": (T[:2], [0.2, 0.25], [0.95, 0.94])}
    fig = plots.barrier_plot(curves, heights={"naive": 0.65})
    assert len(fig.data) == 4
    loss, accuracy = fig.data[0], fig.data[1]
    assert list(loss.y) == [0.2, 0.9, 0.3] and list(accuracy.y) == pytest.approx([95, 60, 94])
    assert loss.name == "naive (barrier 0.650)" and fig.data[2].name == "ot"      # a partial curve, no height yet
    assert loss.line.color == accuracy.line.color and accuracy.showlegend is False
    json.loads(fig.to_json())


def test_method_comparison_bars_group_one_shot_and_finetuned_under_the_ceiling():
    fig = plots.method_comparison_bars(["vanilla", "ot"], [0.90, 0.96], [0.93, None], ceiling=0.97, epochs=2)
    one_shot, tuned = fig.data
    assert list(one_shot.y) == pytest.approx([90, 96]) and list(tuned.y)[0] == pytest.approx(93) and tuned.y[1] is None
    assert tuned.name == "after 2 finetuning epochs"
    assert fig.layout.shapes[0].y0 == pytest.approx(97)
    assert len(plots.method_comparison_bars(["ot"], [0.9], [None]).data) == 1   # no finetune, no second series


def test_metric_downstream_bars_mark_the_best_metric_and_the_one_in_use():
    fig = plots.metric_downstream_bars(["cka", "cca"], [0.94, 0.95], ["[0, 1, 4]", "[0, 3, 4]"], chosen="cka")
    (bars,) = fig.data
    assert list(bars.y) == pytest.approx([94, 95])
    assert list(bars.marker.color) == [plots.NEUTRAL_COLOR, plots.ACCENT_COLOR]
    assert list(bars.marker.line.color)[0] == plots.PATH_COLOR
    assert "[0, 3, 4]" in bars.text[1]
