"""Run bundles: rerunning the bundle's config on its parents gives the same result.json; stable bytes; the card."""

import io
import json
import zipfile

import pytest
import torch

from clafusion_core.bundle import CARD_FILE, FUSED_FILE, PARENT_FILES, RESULT_FILE, RUN_FILE, bundle_bytes, \
    read_bundle, rerun_bundle, result_text, write_bundle
from clafusion_core.checkpoints import load_checkpoint
from clafusion_core.errors import CheckpointError
from clafusion_core.pipeline import run_fusion
from clafusion_core.config import FusionConfig

NAMES = ("shallow.safetensors", "deep.safetensors")


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
