"""The comparison commands end to end: barrier, many-model fuse, compare, run bundles."""

import json

import pytest

from clafusion_core.checkpoints import save_checkpoint
from clafusion_core.cli import main


@pytest.fixture(scope="module")
def same_shape_files(same_shape_pair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    paths = [folder / f"{name}.safetensors" for name in ("a", "b")]
    for model, path in zip(same_shape_pair, paths):
        save_checkpoint(model, path, dataset="digits")
    return [str(p) for p in paths]


def test_barrier_writes_curves_heights_and_config(same_shape_files, tmp_path):
    out = tmp_path / "barrier.json"
    assert main(["barrier", *same_shape_files, "--points", "5", "--ground-metric", "weights", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(payload["curves"]) == set(payload["barrier_heights"]) == {"naive", "ot", "ot+repair"}
    assert all(len(curve["loss"]) == len(curve["accuracy"]) == 5 for curve in payload["curves"].values())
    assert payload["barrier_heights"]["ot"] < payload["barrier_heights"]["naive"]
    assert payload["config"]["fusion"]["options"]["ground_metric"] == "weights"


def test_barrier_with_an_unknown_method_exits_2(same_shape_files, capsys):
    assert main(["barrier", *same_shape_files, "--methods", "nope"]) == 2
    assert "Unknown fusion method 'nope'" in capsys.readouterr().err


def _without_timings(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "timings_s"}


def test_fuse_of_two_models_is_the_pairwise_fusion_and_weights_set_s(same_shape_files, tmp_path):
    plain, weighted, skewed = (tmp_path / f"{name}.json" for name in ("plain", "weighted", "skewed"))
    assert main(["fuse", *same_shape_files, "--json", str(plain)]) == 0
    assert main(["fuse", *same_shape_files, "--weights", "1,1", "--json", str(weighted)]) == 0
    assert main(["fuse", *same_shape_files, "--weights", "3,1", "--json", str(skewed)]) == 0
    assert _without_timings(json.loads(plain.read_text())) == _without_timings(json.loads(weighted.read_text()))
    assert "cost_matrix" in json.loads(plain.read_text())          # the two-model result.json contract
    assert json.loads(skewed.read_text())["config"]["fusion"]["weight"] == 0.25


def test_fuse_of_three_models_with_weights_and_a_reference(same_shape_files, same_shape_pair, tmp_path):
    third = tmp_path / "c.safetensors"
    save_checkpoint(same_shape_pair[0], third, dataset="digits")
    out, fused = tmp_path / "many.json", tmp_path / "fused.safetensors"
    assert main(["fuse", *same_shape_files, str(third), "--weights", "1,1,2", "--reference", "1",
                 "--json", str(out), "--out", str(fused)]) == 0
    payload = json.loads(out.read_text())
    assert payload["reference"] == 1 and payload["weights"] == [0.25, 0.25, 0.5]
    assert len(payload["models"]["parents"]) == len(payload["accuracy"]["parents"]) == 3
    assert payload["alignments"][1] is None and fused.exists()


def test_demo_set_fuses_a_mixed_depth_set(tmp_path):
    out = tmp_path / "set.json"
    assert main(["demo", "--set", "mlp-mixed", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [m["arch"] for m in payload["models"]["parents"]] == ["mlp:400-200-100-50-25", "mlp:400-200-100-50",
                                                                 "mlp:400-200-100"]
    assert payload["reference"] == 0 and payload["accuracy"]["ensemble"] > 0.9


@pytest.mark.parametrize("count, extra, message", [(1, [], "at least two checkpoints"),
                                                   (2, ["--weights", "x,y"], "comma-separated"),
                                                   (2, ["--reference", "5"], "one of the 2 models")])
def test_fuse_user_errors_exit_2(same_shape_files, capsys, count, extra, message):
    try:
        code = main(["fuse", *same_shape_files[:count], *extra])
    except SystemExit as exit_:      # argparse rejects a malformed --weights itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_compare_writes_the_method_table_and_the_metric_view(same_shape_files, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert main(["compare", *same_shape_files, "--finetune-epochs", "1", "--points", "3", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    keys = [row["key"] for row in payload["rows"]]
    assert keys[:4] == ["model_a", "model_b", "ensemble", "vanilla"] and "ot-weights" in keys
    assert payload["finetune_epochs"] == 1 and payload["config"]["finetune"]["epochs"] == 1
    assert {"naive", "ot-activations", "ot-weights"} <= set(payload["barrier_heights"])
    assert [row["metric"] for row in payload["metrics"]][0] == "linear_cka"
    printed = capsys.readouterr().out
    assert "| Vanilla averaging (no alignment) |" in printed and "\\|width difference\\|" in printed


def test_demo_compare_defaults_to_a_short_finetune(tmp_path):
    out = tmp_path / "compare.json"
    assert main(["demo", "--pair", "mlp-same", "--compare", "--points", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["finetune_epochs"] == 2
