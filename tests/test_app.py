"""The Streamlit app under ``streamlit.testing.v1.AppTest``: Home and every page, on the default demo pair.

The demo pair comes from the default disk cache (trained once, on first use), so these tests share it
with the library's tests instead of training their own.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]

from app_support import labels, state
from clafusion_core import checkpoints, pipeline
from clafusion_core.checkpoints import checkpoint_bytes, load_checkpoint
from clafusion_core.config import FinetuneConfig
from clafusion_core.devices import cuda_available
from clafusion_core.models import build_model

APP = ROOT / "app.py"
HOME = labels.PAGES["home"].file
PAGES = [labels.PAGES[key].file for key in ("alignment", "fusion", "finetune")]
TIMEOUT = 240


def fresh() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return values[0]


def heatmap_spec(at: AppTest) -> dict:
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(c for c in charts if any(t.get("name") == "cells" for t in c["data"]))


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.fixture(scope="module")
def home() -> AppTest:
    at = fresh().run()
    assert_clean(at)
    return at


# ------------------------------------------------------------------------------------------------ Home

def test_home_shows_the_default_demo_pair_side_by_side(home):
    assert not at_errors(home)
    pair = home.session_state[state.CHOICE]
    assert pair.kind == "demo" and pair.refs[0].demo == "mlp"
    depths = [m.value for m in home.metric if m.label == "Depth"]
    accuracies = [m.value for m in home.metric if m.label == "Test accuracy"]
    assert depths == ["5", "3"]
    assert len(accuracies) == 2 and all(a.endswith("%") and float(a[:-2]) > 80 for a in accuracies)
    assert any("mlp:400-200-100-50-25" in m for m in texts(home.markdown))
    assert not any("default demo pair" in i for i in texts(home.info))  # Home makes the choice itself


def at_errors(at: AppTest) -> list[str]:
    return texts(at.error)


def test_choosing_another_demo_pair_persists_across_pages():
    at = fresh().run()
    at.selectbox(key=state.DEMO_KEY).set_value("mlp-same").run()
    assert_clean(at)
    assert [m.value for m in at.metric if m.label == "Depth"] == ["3", "3"]
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    assert at.session_state[state.CHOICE].refs[0].demo == "mlp-same"
    assert len(heatmap_spec(at)["data"][0]["z"]) == 3  # a 3 x 3 cost matrix
    at.switch_page(HOME).run()
    assert at.selectbox(key=state.DEMO_KEY).value == "mlp-same"


# --------------------------------------------------------------------------------- pages opened directly

@pytest.mark.parametrize("page", PAGES)
def test_page_opened_directly_falls_back_to_the_default_pair(page):
    at = fresh()
    at.switch_page(page).run()
    assert_clean(at)
    assert not at_errors(at)
    assert any("default demo pair" in i for i in texts(at.info)), texts(at.info)
    assert any("the default, until you choose on Home" in c for c in texts(at.sidebar.caption))  # the router's sidebar
    assert at.get("plotly_chart") or page.endswith("2_Fusion.py")  # Fusion waits for its Run button

    assert at.title[0].value.startswith(page.split("/")[1][0])   # "1 · Alignment", ...


# ------------------------------------------------------------------------------------------ Alignment

def test_a_different_metric_gives_a_different_matrix_without_new_activations(home, monkeypatch):
    at = home
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    before = heatmap_spec(at)
    calls = []
    original = pipeline.compute_activations
    monkeypatch.setattr(pipeline, "compute_activations", lambda *a, **k: calls.append(1) or original(*a, **k))
    at.selectbox(key=state.COST).set_value("width").run()
    assert_clean(at)
    after = heatmap_spec(at)
    assert after["data"][0]["z"] != before["data"][0]["z"]
    assert "width" in after["layout"]["title"]["text"]
    assert calls == []  # the activations came from the cache
    at.selectbox(key=state.COST).set_value("linear_cka").run()


def test_compare_metrics_shows_every_metric(home):
    at = home
    at.switch_page(PAGES[0]).run()
    at.toggle(key=state.COMPARE).set_value(True).run()
    assert_clean(at)
    tables = at.dataframe
    assert any(len(t.value) == 6 for t in tables), [len(t.value) for t in tables]
    at.toggle(key=state.COMPARE).set_value(False).run()


def test_what_if_matching_is_checked_priced_and_used_by_fusion():
    at = fresh().run()
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    pickers = [s for s in at.selectbox if s.label.startswith("partner of B")]
    assert [p.value for p in pickers] == [0, 1, 4]  # the DP's matching under linear CKA
    pickers[1].set_value(3).run()                      # hidden.1 of B -> hidden.3 of A
    assert_clean(at)
    assert not at_errors(at)
    assert state.OVERRIDE in at.session_state
    assert float(metric(at, "Your matching")) >= float(metric(at, "DP optimum"))

    invalid = [s for s in at.selectbox if s.label.startswith("partner of B")]
    invalid[1].set_value(0).run()                      # not strictly increasing
    assert_clean(at)
    assert any("strictly increasing" in e for e in at_errors(at))

    at.session_state["alignment_pending_click"] = (2, 1)  # what a click on cell (A hidden.2, B hidden.1) sends
    at.run()
    assert_clean(at)
    assert not at_errors(at)
    assert at.session_state[state.OVERRIDE][1] == ((0, 2, 4),)
    assert [s.value for s in at.selectbox if s.label.startswith("partner of B")] == [0, 2, 4]

    at.switch_page(PAGES[1]).run()
    assert any("your matching" in c for c in texts(at.caption))
    button(at, "Run fusion").click().run()
    assert_clean(at)
    fusion = at.session_state[state.RESULT][1]
    assert fusion.config.alignment.mapping == ((0, 2, 4),)
    assert fusion.alignment.mappings == [[0, 2, 4]]


# ------------------------------------------------------------------------------------ end to end

def test_demo_pair_end_to_end_alignment_fusion_finetune(home, tmp_path):
    at = home
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    at.switch_page(PAGES[1]).run()
    assert_clean(at)
    button(at, "Run fusion").click().run()
    assert_clean(at)
    assert not at_errors(at)
    fused = float(metric(at, "Fused (one-shot)")[:-2])
    assert 50 < fused <= 100
    assert len(at.get("plotly_chart")) >= 4   # accuracy, timings, architecture, transport plan
    plan_choices = at.selectbox(key=state.PLAN_GROUP).options
    assert len(plan_choices) == 5             # one plan per hidden layer of the balanced pair
    at.selectbox(key=state.PLAN_GROUP).set_value(at.selectbox(key=state.PLAN_GROUP).options[2]).run()
    assert_clean(at)

    at.switch_page(PAGES[2]).run()
    assert_clean(at)
    at.number_input(key=state.FT_EPOCHS).set_value(1).run()
    button(at, "Finetune").click().run()
    assert_clean(at)
    assert not at_errors(at)
    fusion = at.session_state[state.RESULT][1]
    assert fusion.fused_finetuned is not None and fusion.accuracy["fused_finetuned"] is not None
    assert len(fusion.histories["fused"]) == 2   # the start and one epoch
    assert metric(at, "Fused + finetuned").endswith("%")
    labels = [e.proto.label for e in at.get("download_button")]
    assert any(".safetensors" in label for label in labels) and any("result.json" in label for label in labels)

    # what the download buttons serve: a checkpoint that loads back, and the JSON contract
    blob = checkpoint_bytes(fusion.fused_finetuned, dataset="digits")
    model, info = load_checkpoint(blob)
    assert info.arch == str(fusion.fused.model.spec)
    result = json.loads(json.dumps(fusion.to_json()))
    assert result["accuracy"]["fused_finetuned"] is not None and result["alignment"] == [0, 1, 4]


def test_a_downloaded_fused_model_loads_back_into_the_app(mlp_pair, digits):
    model_a, _ = mlp_pair
    fused = pipeline.run_fusion(*mlp_pair, digits)
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("upload").run()
    at.file_uploader(key=state.UPLOAD_KEYS[0]).set_value(
        ("fused.safetensors", checkpoint_bytes(fused.fused.model, dataset="digits"), "application/octet-stream"))
    at.file_uploader(key=state.UPLOAD_KEYS[1]).set_value(
        ("a.safetensors", checkpoint_bytes(model_a, dataset="digits"), "application/octet-stream"))
    at.run()
    assert_clean(at)
    assert not at_errors(at)
    pair = at.session_state[state.CHOICE]
    assert pair.kind == "upload" and {r.name for r in pair.refs} == {"fused.safetensors", "a.safetensors"}
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    assert not at_errors(at)


def test_a_pt_state_dict_uploads_with_its_arch_inferred(mlp_pair):
    model_a, model_b = mlp_pair
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("upload").run()
    at.file_uploader(key=state.UPLOAD_KEYS[0]).set_value(("a.pt", _pt_bytes(model_a.state_dict()), "application/octet-stream"))
    at.file_uploader(key=state.UPLOAD_KEYS[1]).set_value(("b.pt", _pt_bytes(model_b.state_dict()), "application/octet-stream"))
    at.run()
    assert_clean(at)
    assert not at_errors(at)
    assert at.session_state[state.CHOICE].kind == "upload"
    assert [m.value for m in at.metric if m.label == "Depth"] == ["5", "3"]


def test_sinkhorn_fusion_then_finetuning_the_parents_too(home):
    at = home
    at.switch_page(PAGES[1]).run()
    at.radio(key=state.SOLVER).set_value("sinkhorn").run()
    at.select_slider(key=state.SINKHORN_REG).set_value(0.05).run()
    button(at, "Run fusion").click().run()
    assert_clean(at)
    assert not at_errors(at)
    fusion = at.session_state[state.RESULT][1]
    assert fusion.config.fusion.options.solver == "sinkhorn" and fusion.config.fusion.options.sinkhorn_reg == 0.05
    at.switch_page(PAGES[2]).run()
    at.number_input(key=state.FT_EPOCHS).set_value(1).run()
    at.checkbox(key=state.FT_PARENTS).check().run()
    button(at, "Finetune").click().run()
    assert_clean(at)
    assert metric(at, "A + finetuned").endswith("%") and metric(at, "B + finetuned").endswith("%")
    at.checkbox(key=state.FT_PARENTS).uncheck().run()
    at.switch_page(PAGES[1]).run()
    at.radio(key=state.SOLVER).set_value("emd").run()



def test_distillation_controls_reach_the_finetune(home):
    """The weight and temperature chosen on the page are what the finetune runs with, and the caption says so."""
    at = home
    at.switch_page(PAGES[2]).run()
    assert at.slider(key=state.FT_DISTILL).value == FinetuneConfig.distill
    at.number_input(key=state.FT_EPOCHS).set_value(1).run()
    at.slider(key=state.FT_DISTILL).set_value(0.0).run()
    assert at.select_slider(key=state.FT_TEMPERATURE).proto.disabled   # no teacher, no temperature
    button(at, "Finetune").click().run()
    assert_clean(at)
    assert at.session_state[state.RESULT][1].config.finetune.distill == 0.0
    assert any("labels only" in c.value for c in at.caption)
    at.slider(key=state.FT_DISTILL).set_value(0.5).run()
    at.select_slider(key=state.FT_TEMPERATURE).set_value(2.0).run()
    button(at, "Finetune").click().run()
    assert_clean(at)
    config = at.session_state[state.RESULT][1].config
    assert (config.finetune.distill, config.finetune.temperature) == (0.5, 2.0)
    assert any("weight 0.5, T = 2" in c.value for c in at.caption)
    at.slider(key=state.FT_DISTILL).set_value(FinetuneConfig.distill).run()
    at.select_slider(key=state.FT_TEMPERATURE).set_value(FinetuneConfig.temperature).run()

# ------------------------------------------------------------------------------------------------ errors

def _pt_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _bad_uploads() -> dict[str, tuple[bytes, str]]:
    mnist_mlp = build_model("mlp:32", (1, 28, 28), 10)
    five_classes = build_model("mlp:64-32", (1, 8, 8), 5)
    nan_model = build_model("mlp:64-32", (1, 8, 8), 10)
    with torch.no_grad():
        nan_model.hidden[0].weight[0, 0] = float("nan")
    runs_badly = {name: dict(build_model("mlp:64-32", (1, 8, 8), 10).state_dict()) for name in ("c", "s", "z")}
    runs_badly["c"]["hidden.0.weight"] = runs_badly["c"]["hidden.0.weight"].to(torch.complex64)
    runs_badly["s"]["hidden.0.weight"] = runs_badly["s"]["hidden.0.weight"].to_sparse()
    runs_badly["z"]["hidden.0.weight"] = torch.zeros(1).expand(32, 64)
    return {
        "complex-tensors": (_pt_bytes(runs_badly["c"]), "complex tensor"),
        "sparse-tensors": (_pt_bytes(runs_badly["s"]), "sparse tensor"),
        "zero-stride": (_pt_bytes(runs_badly["z"]), "zero-stride"),
        "garbage": (b"this is not a checkpoint at all" * 10, "not a readable"),
        "unsupported-layout": (_pt_bytes({"encoder.attn.weight": torch.randn(4, 4)}), ""),
        "mismatched-classes": (checkpoint_bytes(five_classes, dataset="digits"), ""),
        "other-dataset": (checkpoint_bytes(mnist_mlp, dataset="mnist"), ""),
        "nan-weights": (checkpoint_bytes(nan_model, dataset="digits"), ""),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_bad_upload_gives_one_error_and_keeps_the_pair(case, mlp_pair):
    content, expected = _bad_uploads()[case]
    good = checkpoint_bytes(mlp_pair[1], dataset="digits")
    at = fresh().run()
    before = at.session_state[state.CHOICE]
    at.radio(key=state.SOURCE_KIND).set_value("upload").run()
    at.file_uploader(key=state.UPLOAD_KEYS[0]).set_value((f"{case}.pt", content, "application/octet-stream"))
    at.file_uploader(key=state.UPLOAD_KEYS[1]).set_value(("good.safetensors", good, "application/octet-stream"))
    at.run()
    assert_clean(at)
    errors = at_errors(at)
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert "Traceback" not in errors[0]
    assert at.session_state[state.CHOICE] == before          # the pair in use is kept
    assert [m.value for m in at.metric if m.label == "Depth"] == ["5", "3"]
    at.switch_page(PAGES[0]).run()                          # and the app keeps working
    assert_clean(at)


def test_too_large_upload_is_refused(monkeypatch, mlp_pair):
    monkeypatch.setattr(checkpoints, "MAX_UPLOAD_BYTES", 10_000)
    content = checkpoint_bytes(mlp_pair[1], dataset="digits")
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("upload").run()
    at.file_uploader(key=state.UPLOAD_KEYS[0]).set_value(("big.safetensors", content, "application/octet-stream"))
    at.file_uploader(key=state.UPLOAD_KEYS[1]).set_value(("big2.safetensors", content + b"", "application/octet-stream"))
    at.run()
    assert_clean(at)
    assert any("upload limit" in e for e in at_errors(at)), at_errors(at)


def test_missing_dataset_root_says_where_to_put_the_files(tmp_path):
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("paths").run()
    for slot, key in enumerate((state.PATH_KEYS[0], state.PATH_KEYS[1])):
        path = tmp_path / f"m{slot}.safetensors"
        torch.manual_seed(slot)
        path.write_bytes(checkpoint_bytes(build_model("mlp:32" if slot else "mlp:64-32", (1, 28, 28), 10),
                                          dataset="mnist"))
        at.text_input(key=key).set_value(str(path))
    at.selectbox(key=state.DATASET).set_value("mnist").run()
    at.text_input(key=state.DATA_ROOT).set_value(str(tmp_path / "nowhere")).run()
    assert_clean(at)
    errors = at_errors(at)
    assert len(errors) == 1 and "MNIST" in errors[0], errors
    assert at.session_state[state.CHOICE].kind == "demo"


def test_missing_local_path_is_an_error_not_a_traceback(tmp_path):
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("paths").run()
    at.text_input(key=state.PATH_KEYS[0]).set_value(str(tmp_path / "missing.safetensors")).run()
    assert_clean(at)
    assert any("does not exist" in e for e in at_errors(at))


@pytest.mark.timeout(120)
def test_local_paths_that_are_not_files_are_refused_without_opening_them(tmp_path):
    """A FIFO would block the server forever and /dev/zero fill its memory: both are refused by their kind."""
    os.mkfifo(tmp_path / "pipe")
    at = fresh().run()
    at.radio(key=state.SOURCE_KIND).set_value("paths").run()
    for first, second, messages in ((tmp_path / "pipe", "/dev/zero", ("named pipe", "device")),
                                    (tmp_path, str(tmp_path / "a\x00b"), ("folder", "NUL byte"))):
        at.text_input(key=state.PATH_KEYS[0]).set_value(str(first))
        at.text_input(key=state.PATH_KEYS[1]).set_value(str(second)).run()
        assert_clean(at)
        errors = at_errors(at)
        assert len(errors) == 2 and all(m in e for m, e in zip(messages, errors)), errors
        assert at.session_state[state.CHOICE].kind == "demo"


@pytest.mark.timeout(240)
def test_two_concurrent_sessions_get_the_results_of_one(monkeypatch):
    """Two sessions record activations of the one cached demo model at the same time (a barrier holds each
    session's first forward pass until the other's is running too); each must get what it gets alone."""
    sizes = (200, 100)   # each session its own probe batch, so neither is served from the other's cache
    barrier, seen = threading.Barrier(2), set()

    def rendezvous(module, args):
        frame = sys._getframe()
        while frame is not None and frame.f_code.co_name != "record":
            frame = frame.f_back
        if frame is not None and threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            barrier.wait(timeout=60)

    def session(size, results, failures):
        try:
            at = fresh()
            at.session_state[state.PROBE_SIZE] = size
            at.switch_page(PAGES[0]).run()
            assert_clean(at)
            assert not at_errors(at) and at.selectbox(key=state.PROBE_SIZE).value == size
            results[size] = heatmap_spec(at)["data"][0]["z"]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    concurrent, failures = {}, []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(rendezvous)
    try:
        threads = [threading.Thread(target=session, args=(size, concurrent, failures)) for size in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handle.remove()
    assert not failures, failures
    assert len(seen) == 2                      # both sessions were inside the model at once
    st.cache_data.clear()                      # recompute each alone
    alone = {}
    for size in sizes:
        session(size, alone, failures)
    assert not failures and concurrent == alone


@pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_an_error_and_run_is_disabled(home):
    at = home
    at.switch_page(PAGES[1]).run()
    at.radio(key=state.DEVICE).set_value("cuda").run()
    assert_clean(at)
    errors = at_errors(at)
    assert len(errors) == 1 and "CUDA" in errors[0]
    assert button(at, "Run fusion").disabled
    at.radio(key=state.DEVICE).set_value("auto").run()
    assert not at_errors(at) and not button(at, "Run fusion").disabled


def test_merge_balancing_is_offered_for_mlps_and_runs(home):
    at = home
    at.switch_page(PAGES[1]).run()
    assert any(option.startswith("merge") for option in at.radio(key=state.BALANCE).options)
    at.radio(key=state.BALANCE).set_value("merge").run()
    button(at, "Run fusion").click().run()
    assert_clean(at)
    assert not at_errors(at)
    fusion = at.session_state[state.RESULT][1]
    assert fusion.balanced.removed and fusion.accuracy["balanced_a"] is not None
    at.radio(key=state.BALANCE).set_value("add").run()


def test_widgets_of_settings_that_change_nothing_are_disabled(home):
    """The library's rule (``FusionConfig.ignored``) decides: the regularisation only matters for Sinkhorn, the
    inserted-layer rule only where balancing inserts identities, the other method's options not at all."""
    at = home
    at.switch_page(PAGES[1]).run()
    assert at.select_slider(key=state.SINKHORN_REG).proto.disabled and not at.radio(key=state.SOLVER).proto.disabled
    at.radio(key=state.SOLVER).set_value("sinkhorn").run()
    assert not at.select_slider(key=state.SINKHORN_REG).proto.disabled
    at.radio(key=state.BALANCE).set_value("merge").run()
    assert at.radio(key=state.INSERTED_WEIGHT).proto.disabled
    at.selectbox(key=state.METHOD).set_value("interp").run()
    assert_clean(at)
    assert at.radio(key=state.SOLVER).proto.disabled and at.select_slider(key=state.INTERP_SIZE)
    for key, value in ((state.METHOD, "ot"), (state.BALANCE, "add"), (state.SOLVER, "emd")):
        (at.selectbox if key == state.METHOD else at.radio)(key=key).set_value(value).run()


def test_a_cnn_pair_offers_add_balancing_only_even_from_a_link():
    at = fresh()
    at.query_params.update({"pair": "cnn", "balance": "merge"})
    at.switch_page(PAGES[1]).run()
    assert_clean(at)
    assert at.radio(key=state.BALANCE).options == [labels.BALANCE_LABELS["add"]]
    assert at.session_state[state.BALANCE] == "add"


@pytest.mark.parametrize("pair, chooses", [("cnn", True), ("mlp", False)])
def test_the_fusion_page_says_which_ground_activation_validation_chose(pair, chooses):
    """By default the choice runs for conv networks only; the page names the chosen one with both scores."""
    at = fresh()
    at.query_params.update({"pair": pair})
    at.switch_page(PAGES[1]).run()
    button(at, "Run fusion").click().run()
    assert_clean(at)
    result = at.session_state[state.RESULT][1]
    captions = [c for c in texts(at.caption) if "chosen on the validation split" in c]
    assert bool(captions) == chooses == ("ground_activation" in result.repair)
    if chooses:
        chosen = labels.ACTIVATION_LABELS[result.repair["ground_activation"]["chosen"]]
        assert f"**{chosen}**" in captions[0] and "after ReLU" in captions[0] and "before ReLU" in captions[0]


def test_the_identity_width_and_ground_choice_widgets_reach_the_run():
    at = fresh()
    at.query_params.update({"pair": "cnn"})
    at.switch_page(PAGES[1]).run()
    at.radio(key=state.IDENTITY_WIDTH).set_value("input")
    at.radio(key=state.GROUND_ACTIVATION_CHOICE).set_value("fixed").run()
    button(at, "Run fusion").click().run()
    assert_clean(at)
    config = at.session_state[state.RESULT][1].config
    assert (config.balancing.identity_width, config.fusion.options.ground_activation_choice) == ("input", "fixed")
    assert dict(at.query_params)["identity_width"] == "input"
