"""Run bundles of two and of N models: rerunning the bundle's config on its parents (in Python and with
``fuse --config``) gives the same result.json; stable bytes; the card names every parent."""

import io
import json
import zipfile

import pytest
import torch

from clafusion_core.bundle import CARD_FILE, FUSED_FILE, RESULT_FILE, RUN_FILE, bundle_bytes, bundle_files, \
    parent_files, read_bundle, rerun_bundle, result_text, write_bundle
from clafusion_core.checkpoints import load_checkpoint
from clafusion_core.errors import CheckpointError
from clafusion_core.pipeline import run_fusion
from clafusion_core.config import FusionConfig

NAMES = ("shallow.safetensors", "deep.safetensors")
PARENT_FILES = parent_files(2)


def _without_timings(text: bytes | str) -> str:
    payload = json.loads(text)
    payload.pop("timings_s")
    return result_text(payload)


@pytest.fixture(scope="module")
def run(mlp_pair, digits):
    """The shallower model given first (so the run swaps them), non-default settings and a finetune."""
    config = FusionConfig.from_flat(cost="cca", pin_last=False, ground_metric="weights", finetune_epochs=1, seed=3)
    return run_fusion(mlp_pair[1], mlp_pair[0], digits, config)


def test_rerunning_a_bundle_gives_the_same_result_json_apart_from_timings(run, digits, tmp_path):
    path = write_bundle(run, tmp_path / "run.zip", NAMES)
    again = rerun_bundle(path, digits)
    assert _without_timings(result_text(again.to_json())) == _without_timings(read_bundle(path)[RESULT_FILE])
    assert again.swapped and again.accuracy["fused_finetuned"] is not None


def test_a_bundle_holds_the_config_the_result_the_models_and_a_card(run, tmp_path):
    files = read_bundle(write_bundle(run, tmp_path / "folder", NAMES))
    assert set(files) == {RUN_FILE, RESULT_FILE, FUSED_FILE, CARD_FILE, *PARENT_FILES}
    assert FusionConfig.from_dict(json.loads(files[RUN_FILE])) == run.config
    assert files[RESULT_FILE].decode() == result_text(run.to_json())
    fused, _ = load_checkpoint(files[FUSED_FILE])
    inputs = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(inputs), run.fused_finetuned(inputs))
    first, _ = load_checkpoint(files[PARENT_FILES[0]])
    assert str(first.spec) == str(run.model_b.spec)          # the order the parents were given in
    card = files[CARD_FILE].decode()
    for text in (*NAMES, "Optimal transport", f"{100 * run.accuracy['fused']:.2f} %",
                 f"{100 * run.accuracy['fused_finetuned']:.2f} %", "`cost` | `\"cca\"`", "--config run.json"):
        assert text in card, text


def test_one_run_always_gives_the_same_bundle_bytes(run, tmp_path):
    data = bundle_bytes(run, NAMES)
    assert data == bundle_bytes(run, NAMES) == write_bundle(run, tmp_path / "b.zip", NAMES).read_bytes()
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None


def test_a_broken_or_partial_bundle_is_a_clear_error(run, tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable run bundle"):
        read_bundle(tmp_path / "junk.zip")
    folder = write_bundle(run, tmp_path / "partial", NAMES)
    (folder / PARENT_FILES[1]).unlink()
    with pytest.raises(CheckpointError, match=f"lacks {PARENT_FILES[1]}"):
        rerun_bundle(folder)


def test_a_bundle_whose_run_json_is_not_json_is_a_clear_error(run, tmp_path):
    folder = write_bundle(run, tmp_path / "garbled", NAMES)
    (folder / RUN_FILE).write_bytes(b"\xff{ not json")
    with pytest.raises(CheckpointError, match=f"{RUN_FILE} is not valid JSON"):
        rerun_bundle(folder)


MANY_NAMES = ("three.safetensors", "four.safetensors", "five.safetensors")


@pytest.fixture(scope="module")
def many_run(digits):
    """The mixed-depth set given shallowest first (the target is the deepest, the last), unequal weights, a
    non-default metric and a finetune."""
    from clafusion_core.many import fuse_many
    from clafusion_core.zoo import load_demo_set

    config = FusionConfig.from_flat(cost="cca", finetune_epochs=1, seed=3, weights=(1, 2, 1))
    return fuse_many(load_demo_set("mlp-mixed")[::-1], digits, config)


def test_an_n_model_bundle_reruns_with_fuse_config_to_the_same_result_json(many_run, digits, tmp_path):
    from clafusion_core.cli import main

    folder = write_bundle(many_run, tmp_path / "many", MANY_NAMES)
    files = read_bundle(folder)
    parents = [str(folder / f"parent_{k}.safetensors") for k in (1, 2, 3)]
    assert set(files) == {RUN_FILE, RESULT_FILE, FUSED_FILE, CARD_FILE, *(p.split("/")[-1] for p in parents)}
    out = tmp_path / "again.json"
    assert main(["fuse", *parents, "--config", str(folder / RUN_FILE), "--json", str(out)]) == 0
    assert _without_timings(out.read_text()) == _without_timings(files[RESULT_FILE])
    again = rerun_bundle(folder, digits)
    assert _without_timings(result_text(again.to_json())) == _without_timings(files[RESULT_FILE])
    payload = json.loads(files[RESULT_FILE])
    assert payload["reference"] == 2 and payload["config"]["fusion"]["weights"] == [1.0, 2.0, 1.0]
    assert [m["depth"] for m in payload["models"]["parents"]] == [3, 4, 5]


def test_an_n_model_card_names_every_parent_and_the_rerun_command(many_run):
    card = bundle_files(many_run, MANY_NAMES)[CARD_FILE].decode()
    for k, (name, accuracy) in enumerate(zip(MANY_NAMES, many_run.accuracy["parents"])):
        assert f"| {k + 1} | {name} |" in card and f"{100 * accuracy:.2f} %" in card
    assert "| 0.5 |" in card and "| 0.25 (target) |" in card and "ensemble of all 3" in card
    assert "fuse parent_1.safetensors parent_2.safetensors parent_3.safetensors --config run.json" in card


def test_fuse_with_bundle_writes_the_run_it_reports(many_run, tmp_path):
    from clafusion_core.cli import main

    folder = write_bundle(many_run, tmp_path / "given", MANY_NAMES)
    parents = [str(folder / f"parent_{k}.safetensors") for k in (1, 2, 3)]
    out, zipped = tmp_path / "run.json", tmp_path / "run.zip"
    assert main(["fuse", *parents, "--weights", "1,2,1", "--json", str(out), "--bundle", str(zipped)]) == 0
    files = read_bundle(zipped)
    assert files[RESULT_FILE].decode() == out.read_text()
    assert "| 1 | parent_1.safetensors |" in files[CARD_FILE].decode()
    assert main(["fuse", *parents[:2], "--bundle", str(tmp_path / "missing" / "b.zip")]) == 2
