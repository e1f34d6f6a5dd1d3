"""Loss barriers: closed forms, a model with itself, a model with its permuted copy, one alignment per curve."""

import copy

import pytest

from clafusion_core import methods, pipeline
from clafusion_core.barrier import barrier_curves, barrier_height, grid, loss_and_accuracy
from clafusion_core.errors import FusionError
from clafusion_core.config import FusionConfig
from model_utils import count_calls, permuted_copy, random_model


def test_barrier_height_is_the_largest_rise_above_the_chord():
    t = grid(5)
    assert t == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier_height(t, [1.0, 1.5, 2.0, 2.5, 3.0]) == pytest.approx(0.0)          # on the chord
    assert barrier_height(t, [1.0, 2.0, 4.0, 2.5, 3.0]) == pytest.approx(4.0 - 2.0)    # chord at 0.5 is 2
    assert barrier_height(t, [1.0, 0.5, 0.2, 0.5, 1.0]) == pytest.approx(0.0)          # below the chord: no barrier
    with pytest.raises(FusionError):
        grid(1)


@pytest.mark.parametrize("spec", ["mlp:40-30-20", "vgg:8-M-16-16-M-24-bn/20"])
def test_the_barrier_of_a_model_with_itself_is_zero_everywhere(spec, digits):
    """Pre-ReLU ground activations: after the ReLU, the random CNN's dead channels are all zero and tie,
    so OT may swap them (harmless on the probe batch, not on the test split)."""
    model = random_model(spec, seed=3)
    config = FusionConfig.from_flat(ground_activation="pre", ground_activation_choice="fixed")   # pre only
    result = barrier_curves(model, copy.deepcopy(model), digits, config, points=5)
    assert set(result.curves) >= {"naive", "ot"}
    flat = result.curves["naive"].loss[0]
    for curve in result.curves.values():
        assert curve.loss == pytest.approx([flat] * 5, abs=1e-5), curve.key
        assert abs(curve.height) < 1e-5


def test_the_ot_path_to_a_permuted_copy_is_flat_while_the_naive_path_is_not(same_shape_pair, digits):
    model = same_shape_pair[0]
    result = barrier_curves(model, permuted_copy(model, seed=7), digits, points=5)
    loss, _ = loss_and_accuracy(model, digits.test)
    assert result.curves["ot"].loss == pytest.approx([loss] * 5, abs=1e-4)
    assert result.curves["ot+repair"].loss == pytest.approx([loss] * 5, abs=1e-3)
    assert abs(result.heights["ot"]) < 1e-4
    assert result.heights["naive"] > 0.1           # the raw midpoint averages unrelated neurons
    assert abs(result.curves["ot"].accuracy_drop) < 1e-6 < result.curves["naive"].accuracy_drop


def test_every_path_starts_and_ends_at_the_parents_losses(same_shape_pair, digits):
    model_a, model_b = same_shape_pair
    result = barrier_curves(model_a, model_b, digits, points=3)
    ends = [loss_and_accuracy(m, digits.test)[0] for m in (model_a, model_b)]
    assert [result.parents[k]["test_loss"] for k in ("model_a", "model_b")] == pytest.approx(ends, abs=1e-6)
    for key, tolerance in (("naive", 1e-6), ("ot", 1e-4), ("ot+repair", 1e-3)):
        loss = result.curves[key].loss
        assert [loss[0], loss[-1]] == pytest.approx(ends, abs=tolerance), key


def test_one_alignment_serves_a_whole_curve_and_its_repaired_twin(same_shape_pair, digits, monkeypatch):
    alignments = count_calls(monkeypatch, methods, "align_onto")
    dps = count_calls(monkeypatch, pipeline, "compute_alignment")
    points, progress = [], []
    config = FusionConfig.from_flat(bn_reset=False, ground_activation_choice="fixed")   # one ground activation
    result = barrier_curves(*same_shape_pair, digits, config, methods=["ot"],
                            on_point=lambda key, t, loss, acc: points.append((key, t)),
                            progress=lambda fraction, message: progress.append(fraction))
    assert (len(alignments), len(dps)) == (1, 1)
    assert all(len(c.t) == 11 for c in result.curves.values())
    assert points == [(key, t) for key in ("naive", "ot", "ot+repair") for t in grid(11)]
    assert progress[-1] == pytest.approx(1.0) and progress == sorted(progress)


def test_a_different_depth_pair_runs_between_the_balanced_parents(mlp_pair, digits):
    model_a, model_b = mlp_pair
    result = barrier_curves(model_b, model_a, digits, points=3)     # shallower first: ordered as the fusion does
    assert result.swapped and "naive" in result.skipped and "naive" not in result.curves
    assert result.parents["model_a"]["depth"] == 5
    loss_b, accuracy_b = loss_and_accuracy(model_b, digits.test)
    for curve in result.curves.values():    # t = 1 is the balanced B, which computes exactly what B does
        assert curve.loss[-1] == pytest.approx(loss_b, abs=1e-4)
        assert curve.accuracy[-1] == pytest.approx(accuracy_b)
    payload = result.to_json()
    assert set(payload["barrier_heights"]) == {"ot", "ot+repair"} and payload["config"]["balancing"]["method"] == "add"


class _RefitMethod:
    """A stand-in for a method that fits a new model per weight (no aligned parents), e.g. interpolation."""

    name, title, options_type, aligns = "refit", "Refit per weight", methods.OTOptions, False

    def fuse(self, parents, reference, weights, batch, options, layer_weights=None):
        output = methods.METHODS["ot"].fuse(parents, reference, weights, batch, options, layer_weights)
        return methods.FusionOutput(output.model, output.correspondence, None)


def test_every_registered_method_gets_a_curve_when_it_has_aligned_parents_and_a_reason_when_not(
        same_shape_pair, digits, monkeypatch):
    monkeypatch.setitem(methods.METHODS, "refit", _RefitMethod())
    monkeypatch.setitem(methods.METHODS, "ot-again", methods.OTFusion())     # a second aligning method
    result = barrier_curves(*same_shape_pair, digits, FusionConfig.from_flat(repair=False), points=3)
    assert set(result.curves) == {"naive", "ot", "ot-again"}
    assert "no aligned parents" in result.skipped["refit"]
    assert result.curves["ot-again"].loss == pytest.approx(result.curves["ot"].loss)


def test_with_the_ground_activation_choice_the_ot_path_runs_through_the_pipelines_fused_model(
        same_shape_pair, digits, monkeypatch):
    """The choice costs one alignment per candidate, none per point, and the OT curve's midpoint is the
    model run_fusion fuses (before repair and BatchNorm reset: the plain path; oracle: its aligned parents)."""
    from clafusion_core.pipeline import run_fusion

    config = FusionConfig.from_flat(bn_reset=False, repair=False, ground_activation_choice="validation")
    fused = run_fusion(*same_shape_pair, digits, config)
    alignments = count_calls(monkeypatch, methods, "align_onto")
    result = barrier_curves(*same_shape_pair, digits, config, methods=["ot"], points=3)
    assert len(alignments) == 2                                  # post and pre, whatever the points
    midpoint, _ = loss_and_accuracy(fused.fused.model, digits.test)
    assert result.curves["ot"].loss[1] == pytest.approx(midpoint, abs=1e-5)
