"""More than two networks in the app (AppTest): chosen from local paths, uploads or a demo set; the target,
the weights, the pairwise heatmap against a chosen network, and bad uploads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_support import labels, state
from clafusion_core.checkpoints import checkpoint_bytes, save_checkpoint
from clafusion_core.config import FusionConfig
from clafusion_core.many import fuse_many
from clafusion_core.models import build_model
from clafusion_core.zoo import load_demo_set

ROOT = Path(__file__).resolve().parents[1]
ALIGNMENT, FUSION = labels.PAGES["alignment"].file, labels.PAGES["fusion"].file


def fresh(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.query_params.update(query or {})
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click().run()
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def mixed():
    """5, 4 and 3 hidden layers (the demo set "mlp-mixed")."""
    return load_demo_set("mlp-mixed")


@pytest.fixture(scope="module")
def mixed_files(mixed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    paths = [folder / f"net{k}.safetensors" for k in range(3)]
    for model, path in zip(mixed, paths):
        save_checkpoint(model, path, dataset="digits")
    return [str(p) for p in paths]


def three_from_paths(files) -> AppTest:
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("paths").run()
    click(at, "Add a network")
    for key, path in zip(state.PATH_KEYS, files):
        at.text_input(key=key).set_value(path)
    at.run()
    assert_clean(at)
    return at


def heatmap_shape(at: AppTest) -> tuple[int, int]:
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if any(t.get("name") == "cells" for t in json.loads(c.proto.spec)["data"]))
    z = spec["data"][0]["z"]
    if isinstance(z, dict):        # plotly's typed-array form: {"dtype", "bdata", "shape": "5, 4"}
        return tuple(int(n) for n in z["shape"].split(","))
    return len(z), len(z[0])


def test_three_local_networks_are_shown_and_fused_onto_the_deepest(mixed, mixed_files, digits):
    at = three_from_paths(mixed_files)
    choice = at.session_state[state.CHOICE]
    assert choice.kind == "paths" and [r.path for r in choice.refs] == mixed_files
    assert [m.value for m in at.metric if m.label == "Depth"] == ["5", "4", "3"]
    assert dict(at.query_params)["c"] == mixed_files[2]          # the third path travels in the link
    at.switch_page(FUSION).run()
    assert_clean(at)
    assert at.slider(key=state.FUSION_WEIGHT).proto.disabled     # s is for two networks
    click(at, "Run fusion")
    result = at.session_state[state.RESULT][1]
    library = fuse_many(mixed, digits, FusionConfig())
    assert result.reference == 0 and result.weights == pytest.approx([1 / 3] * 3)
    assert result.accuracy == library.accuracy                   # every parent, the 3-way ensemble, the fused model
    bars = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if "Test accuracy" in json.dumps(json.loads(c.proto.spec)["layout"].get("title")))
    assert list(bars["data"][0]["x"])[:5] == ["network 1 (target)", "network 2", "network 3", "ensemble", "vanilla average"]
    assert at.metric[0].label == "Fused (one-shot)" and [m.label for m in at.metric[1:4]] == [
        "Best parent", "Ensemble", "Vanilla average"]


def test_the_heatmap_shows_the_target_against_the_chosen_network(mixed_files):
    at = three_from_paths(mixed_files)
    at.switch_page(ALIGNMENT).run()
    assert_clean(at)
    assert heatmap_shape(at) == (5, 4)                            # the target (5 layers) × network 2 (4)
    at.selectbox(key=state.VIEW).set_value(2).run()
    assert_clean(at)
    assert heatmap_shape(at) == (5, 3)                            # × network 3
    assert at.selectbox(key=state.VIEW).options == [controls_label(at, 1), controls_label(at, 2)]
    assert not [s for s in at.selectbox if s.label.startswith("partner of B")]   # the what-if is for pairs


def controls_label(at: AppTest, index: int) -> str:
    return f"Network {index + 1} — {at.session_state[state.CHOICE].refs[index].name}"


def test_weights_and_target_reach_the_run_and_the_link(mixed_files):
    at = three_from_paths(mixed_files)
    at.switch_page(FUSION).run()
    at.number_input(key=state.WEIGHT_KEYS[0]).set_value(2.0).run()
    assert_clean(at)
    click(at, "Run fusion")
    result = at.session_state[state.RESULT][1]
    assert result.weights == pytest.approx([0.5, 0.25, 0.25]) and result.config.fusion.weights == (2.0, 1.0, 1.0)
    link = dict(at.query_params)
    assert link["weights"] == "2,1,1"
    # merge balancing: the target must be a shallowest network; the choice offers exactly those
    at.radio(key=state.BALANCE).set_value("merge").run()
    assert_clean(at)
    assert at.selectbox(key=state.REFERENCE).options[1:] == [controls_label(at, 2)]
    at.selectbox(key=state.REFERENCE).set_value(2).run()
    click(at, "Run fusion")
    assert at.session_state[state.RESULT][1].reference == 2
    shared = fresh(link)
    shared.switch_page(FUSION).run()
    assert_clean(shared)
    assert [shared.number_input(key=k).value for k in state.WEIGHT_KEYS[:3]] == [2.0, 1.0, 1.0]
    assert len(shared.session_state[state.CHOICE].refs) == 3


def test_a_demo_set_is_a_source_and_travels_in_the_link():
    at = fresh({"src": "set", "set": "mlp-same"})
    at.run()
    assert_clean(at)
    assert len(at.session_state[state.CHOICE].refs) == 3
    assert [m.value for m in at.metric if m.label == "Depth"] == ["3", "3", "3"]
    assert dict(at.query_params) == {"src": "set", "set": "mlp-same"}


@pytest.mark.parametrize("case, message", [("other-family", "Cannot fuse a mlp with a vgg"),
                                           ("other-classes", "predicts 5 classes but digits has 10")])
def test_a_third_upload_that_does_not_fit_is_one_sentence_and_keeps_the_choice(mixed, case, message):
    bad = build_model("vgg:8-M-16", (1, 8, 8), 10) if case == "other-family" else build_model("mlp:64-32", (1, 8, 8), 5)
    at = fresh().run()
    before = at.session_state[state.CHOICE]
    at.radio(key=state.SOURCE_KIND).set_value("upload").run()
    click(at, "Add a network")
    for key, (name, model) in zip(state.UPLOAD_KEYS, [("a.safetensors", mixed[0]), ("b.safetensors", mixed[1]),
                                                      ("bad.safetensors", bad)]):
        at.file_uploader(key=key).set_value((name, checkpoint_bytes(model, dataset="digits"), "application/octet-stream"))
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and message in errors[0] and errors[0].startswith("bad.safetensors"), errors
    assert at.session_state[state.CHOICE] == before


def test_the_compare_page_bundles_a_run_of_three_networks():
    import io
    import zipfile

    from clafusion_core.bundle import CARD_FILE, bundle_bytes

    at = fresh({"src": "set", "set": "mlp-mixed", "weights": "1,2,1"})
    at.switch_page(labels.PAGES["compare"].file).run()
    assert_clean(at)
    assert any("These comparisons are pairwise" in c.value for c in at.caption)
    click(at, "Run the fusion for a bundle")
    result = at.session_state[state.RESULT][1]
    assert result.config.fusion.weights == (1.0, 2.0, 1.0) and len(result.models) == 3
    assert any(d.proto.label == "Download run bundle (.zip)" for d in at.get("download_button"))
    assert any("fuse parent_1.safetensors parent_2.safetensors parent_3.safetensors --config run.json" in c.value
               for c in at.caption)
    names = [r.name for r in at.session_state[state.CHOICE].refs]
    files = zipfile.ZipFile(io.BytesIO(bundle_bytes(result, names)))
    assert {"parent_1.safetensors", "parent_2.safetensors", "parent_3.safetensors"} <= set(files.namelist())
    card = files.read(CARD_FILE).decode()
    assert all(f"| {k + 1} | {name} |" in card for k, name in enumerate(names))


def test_all_zero_weights_are_refused_in_one_sentence_and_put_back():
    at = fresh({"src": "set", "set": "mlp-mixed", "weights": "1,2,1"})
    at.switch_page(FUSION).run()
    at.number_input(key=state.WEIGHT_KEYS[0]).set_value(0.0).run()
    at.number_input(key=state.WEIGHT_KEYS[2]).set_value(0.0).run()
    assert_clean(at)
    at.number_input(key=state.WEIGHT_KEYS[1]).set_value(0.0).run()
    assert not at.exception
    assert any("cannot all be zero" in w.value for w in at.warning), [w.value for w in at.warning]
    assert [at.number_input(key=k).value for k in state.WEIGHT_KEYS[:3]] == [0.0, 2.0, 0.0]
    assert state.WEIGHTS in at.session_state and at.session_state[state.WEIGHTS] == (0.0, 2.0, 0.0)


def test_finetuning_three_networks_distils_from_all_and_matches_the_library(mixed, digits):
    """The Finetune page opened first fuses the set with the Fusion page's settings, then finetunes the fused
    model alone (the parents' baseline is for pairs): what ``fuse_many`` gives with the same epochs."""
    at = fresh({"src": "set", "set": "mlp-mixed"})
    at.switch_page(labels.PAGES["finetune"].file).run()
    assert_clean(at)
    assert any("fused now" in i.value for i in at.info)
    assert at.checkbox(key=state.FT_PARENTS).proto.disabled
    at.number_input(key=state.FT_EPOCHS).set_value(1).run()
    click(at, "Finetune")
    result = at.session_state[state.RESULT][1]
    library = fuse_many(mixed, digits, FusionConfig.from_flat(finetune_epochs=1))
    assert result.histories == library.histories and result.accuracy == library.accuracy
    assert [m.label for m in at.metric] == ["Fused + finetuned", "Fused (one-shot)", "Best parent"]
    assert {d.proto.label for d in at.get("download_button")} == {"Fused model (finetuned) · .safetensors",
                                                                  "Result · result.json"}
