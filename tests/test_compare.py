"""Methods side by side: every variant present, numbers equal to the pipeline's own, metric sharing exact."""

import json

import pytest

from clafusion_core import compare
from clafusion_core.barrier import barrier_curves
from clafusion_core.compare import compare_methods, method_variants, metric_downstream
from clafusion_core.methods import METHODS
from clafusion_core.otfusion import GROUND_METRICS
from clafusion_core.pipeline import run_fusion
from clafusion_core.config import FusionConfig
from clafusion_core.similarity import METRICS
from model_utils import count_calls


def test_every_registered_method_is_a_variant_and_ot_has_one_per_ground_metric():
    keys = [v.key for v in method_variants()]
    assert [k for k in keys if k.startswith("ot-")] == [f"ot-{m}" for m in GROUND_METRICS]
    assert set(keys) - {f"ot-{m}" for m in GROUND_METRICS} == set(METHODS) - {"ot"}


@pytest.fixture(scope="module")
def same_shape_comparison(same_shape_pair, digits):
    return compare_methods(*same_shape_pair, digits, finetune_epochs=1, points=3)


def test_the_comparison_holds_parents_ceiling_vanilla_and_every_variant(same_shape_comparison):
    rows = {r.key: r for r in same_shape_comparison.rows}
    assert list(rows)[:4] == ["model_a", "model_b", "ensemble", "vanilla"]
    assert set(rows) >= {v.key for v in method_variants()}
    for variant in method_variants():
        row = rows[variant.key]
        assert row.finetuned is not None and row.seconds > 0 and row.finetune_seconds > 0
        assert row.finetuned >= row.one_shot - 0.02      # best validation epoch kept (the start included)
    json.dumps(same_shape_comparison.to_json())          # exportable as it is


def test_comparison_numbers_are_the_pipelines_and_the_barrier_modules(same_shape_comparison, same_shape_pair, digits):
    rows = {r.key: r for r in same_shape_comparison.rows}
    for metric in GROUND_METRICS:
        fused = run_fusion(*same_shape_pair, digits, FusionConfig.from_flat(ground_metric=metric)).accuracy
        assert rows[f"ot-{metric}"].one_shot == pytest.approx(fused["fused"])
    assert rows["vanilla"].one_shot == pytest.approx(fused["vanilla"])
    assert rows["ensemble"].one_shot == pytest.approx(fused["ensemble"])
    barrier = barrier_curves(*same_shape_pair, digits, points=3).heights     # its own alignment, default metric
    assert rows["vanilla"].barrier == pytest.approx(barrier["naive"], abs=1e-6)
    assert rows["ot-activations"].barrier == pytest.approx(barrier["ot"], abs=1e-6)
    assert rows["ot-activations"].barrier_repaired == pytest.approx(barrier["ot+repair"], abs=1e-6)


def test_a_different_depth_pair_has_no_vanilla_row_and_says_why(mlp_pair, digits):
    comparison = compare_methods(*mlp_pair, digits, finetune_epochs=0, points=0)
    assert "vanilla" not in {r.key for r in comparison.rows} and not comparison.curves
    assert any("differ in shape" in note for note in comparison.notes)
    assert all(r.finetuned is None for r in comparison.rows)


def test_each_metric_gets_the_accuracy_its_own_alignment_fuses_to(mlp_pair, digits, monkeypatch):
    activations = count_calls(monkeypatch, compare, "compute_activations")
    fusions = count_calls(monkeypatch, compare, "run_fusion")
    rows = metric_downstream(*mlp_pair, digits)
    assert [r.metric for r in rows] == list(METRICS)
    distinct = {tuple(r.alignment) for r in rows}
    assert (len(activations), len(fusions)) == (2, len(distinct))
    for row in rows:      # the oracle: a fusion run under that metric alone
        alone = run_fusion(*mlp_pair, digits, FusionConfig.from_flat(cost=row.metric))
        assert alone.alignment.global_mapping() == row.alignment
        assert alone.accuracy["fused"] == pytest.approx(row.fused)
        assert set(row.same_as) == {r.metric for r in rows if r.alignment == row.alignment} - {row.metric}
