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
    assert payload["config"]["ground_metric"] == "weights"


def test_barrier_with_an_unknown_method_exits_2(same_shape_files, capsys):
    assert main(["barrier", *same_shape_files, "--methods", "nope"]) == 2
    assert "Unknown fusion method 'nope'" in capsys.readouterr().err
