"""3 · Finetune — train the fused model a few epochs (live validation curve), compare, download."""

import json

import streamlit as st

from app_support import cached, state, ui, views
from clafusion_core import pipeline, plots
from clafusion_core.checkpoints import checkpoint_bytes
from clafusion_core.train import OPTIMIZERS

LEARNING_RATES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
TEMPERATURES = [1.0, 2.0, 4.0, 8.0]
OPTIMIZER_LABELS = {"sgd": "SGD (momentum 0.9)", "adam": "Adam"}
RUN_NAMES = {"fused": "fused", "model_a": "model A", "model_b": "model B"}

ui.setup_page("3 · Finetune")
ui.page_header(3, "Finetune", "A few epochs of training recover most of what the one-shot fusion lost.")
ui.explain("Why finetune, and what is a fair comparison?", """
The one-shot fused model starts from a good point — its neurons are aligned and averaged — but averaging is
never perfect, so it usually scores below its parents. A few epochs of ordinary training (*finetuning*) on
the training split repair most of that. We keep the epoch with the best **validation** accuracy (never the
test split, which only reports the final numbers).

**Distillation from the parents.** By default the fused model learns not only from the labels but also
from its parents: the loss mixes cross-entropy with the KL divergence to the parents' averaged outputs,
softened by a temperature *T* (Hinton et al., 2015). The soft outputs carry what the parents know about
the *wrong* classes too — which digit a sloppy 7 resembles — and a few epochs on labels alone cannot teach
that. On the MLP demo pair it lifts the fused model from about 1.5 points below its better parent
(labels only) to level with it. Set the weight to 0 for plain training.

A fair comparison gives the parents the same extra epochs: tick *also finetune the parents* to train each
parent further with the same settings (distillation from the same teacher included). Beating *those* numbers is the real test of fusion; matching one
parent with a single model that carries both parents' knowledge is already useful (e.g. as a compressed
replacement for the ensemble).

The fused model can be downloaded as `.safetensors` (it loads back into this app and the CLI), and the
whole run — cost matrix, alignment, accuracies, timings and settings — as `result.json`.
""")
pair, loaded = cached.pair_in_use()
with ui.user_errors():
    splits = cached.splits(pair.dataset, pair.data_root)

fusion = state.result(pair)
if fusion is None:
    st.info("There is no fused model for this pair yet, so it is fused now with the Fusion page's settings.",
            icon=":material/info:")
    config = state.fusion_config(pair)
    bar = st.progress(0.0, text="fusing")
    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        fusion = pipeline.run_fusion(model_a, model_b, splits, config, progress=ui.progress_callback(bar))
    bar.empty()
    state.store_result(pair, fusion)

# ------------------------------------------------------------------------------------------- controls
left, middle, right = st.columns(3, gap="large")
left.number_input("Epochs", min_value=1, max_value=200, step=1, key=state.FT_EPOCHS, persist_state="session")
middle.select_slider("Learning rate", LEARNING_RATES, key=state.FT_LR, persist_state="session")
right.radio("Optimiser", OPTIMIZERS, format_func=OPTIMIZER_LABELS.get, key=state.FT_OPTIMIZER, persist_state="session", horizontal=True)
left, middle, _ = st.columns(3, gap="large")
left.slider("Distillation from the parents (0 = labels only)", 0.0, 1.0, step=0.1, key=state.FT_DISTILL,
            persist_state="session", help="Weight of the parents' soft outputs in the loss.")
middle.select_slider("Temperature", TEMPERATURES, key=state.FT_TEMPERATURE, persist_state="session",
                     disabled=st.session_state[state.FT_DISTILL] == 0,
                     help="Higher values soften the parents' outputs more, exposing their ranking of the wrong classes.")
st.checkbox("Also finetune the parents for the same epochs (the fair baseline; three times the time)",
            key=state.FT_PARENTS, persist_state="session")

if st.button("Finetune", type="primary", icon=":material/play_arrow:"):
    bar = st.progress(0.0, text="finetuning")
    live = st.empty()
    curves: dict[str, list[float]] = {}

    def on_epoch(name: str, epoch: int, accuracy: float) -> None:
        curves.setdefault(RUN_NAMES.get(name, name), []).append(accuracy)
        figure = plots.training_curves(curves, title="Validation accuracy — live")
        ui.accuracy_axis(figure, [v for run in curves.values() for v in run])
        figure.update_xaxes(range=[-0.5, epochs + 0.5])
        live.plotly_chart(figure, width="stretch", theme=None, key=f"live_curve_{sum(map(len, curves.values()))}")

    epochs = int(st.session_state[state.FT_EPOCHS])
    with ui.user_errors():
        pipeline.finetune_result(fusion, splits, epochs=epochs,
                                 lr=float(st.session_state[state.FT_LR]),
                                 optimizer=st.session_state[state.FT_OPTIMIZER],
                                 parents=bool(st.session_state[state.FT_PARENTS]),
                                 distill=float(st.session_state[state.FT_DISTILL]),
                                 temperature=float(st.session_state[state.FT_TEMPERATURE]),
                                 progress=ui.progress_callback(bar), on_epoch=on_epoch)
    bar.empty()
    live.empty()
    state.store_result(pair, fusion)

# -------------------------------------------------------------------------------------------- results
acc = fusion.accuracy
tuned = fusion.fused_finetuned is not None
parents_tuned = tuned and fusion.config.finetune.parents and acc.get("model_a_finetuned") is not None
m = st.columns(4)
if tuned:
    m[0].metric("Fused + finetuned", ui.percent(acc["fused_finetuned"]),
                delta=f"{100 * (acc['fused_finetuned'] - acc['fused']):+.1f} pp vs one-shot")
else:
    m[0].metric("Fused + finetuned", "—", help="Press Finetune.")
m[1].metric("Fused (one-shot)", ui.percent(acc["fused"]))
if parents_tuned:
    m[2].metric("A + finetuned", ui.percent(acc["model_a_finetuned"]),
                delta=f"{100 * (acc['model_a_finetuned'] - acc['model_a']):+.1f} pp")
    m[3].metric("B + finetuned", ui.percent(acc["model_b_finetuned"]),
                delta=f"{100 * (acc['model_b_finetuned'] - acc['model_b']):+.1f} pp")
else:
    m[2].metric("Model A", ui.percent(acc["model_a"]))
    m[3].metric("Model B", ui.percent(acc["model_b"]))
if tuned:
    config = fusion.config
    teacher = (f"distilled from the parents (weight {config.finetune.distill:g}, T = {config.finetune.temperature:g})"
               if config.finetune.distill > 0 else "labels only")
    st.caption(f"{config.finetune.epochs} epoch(s), learning rate {config.finetune.lr}, "
               f"{OPTIMIZER_LABELS[config.finetune.optimizer]}, {teacher}; the best validation epoch is kept.")
else:
    st.info("Choose the epochs and press **Finetune**: the validation curve is drawn live, epoch by epoch.",
            icon=":material/info:")

left, right = st.columns(2, gap="large")
with left:
    keys = ["model_a", "model_b"] + (["model_a_finetuned", "model_b_finetuned"] if parents_tuned else []) \
        + ["fused"] + (["fused_finetuned"] if tuned else [])
    ui.chart(plots.accuracy_bars(views.accuracy_view(fusion, keys),
                                 title="Test accuracy, before and after" if tuned else "Test accuracy before finetuning"),
             key="finetune_accuracy")
with right:
    if tuned:
        histories = {RUN_NAMES.get(k, k): v for k, v in fusion.histories.items() if k == "fused" or parents_tuned}
        figure = plots.training_curves(histories)
        ui.chart(ui.accuracy_axis(figure, [v for run in histories.values() for v in run]), key="finetune_curves")
        st.caption("Validation accuracy after each epoch (the test split is only used for the final numbers).")

# ------------------------------------------------------------------------------------------- download
st.subheader("Download")
model = fusion.fused_finetuned if tuned else fusion.fused.model
which = "finetuned" if tuned else "one-shot"
d1, d2 = st.columns(2)
with d1:
    st.download_button(f"Fused model ({which}) · .safetensors", icon=":material/download:", on_click="ignore",
                       data=lambda: checkpoint_bytes(model, dataset=pair.dataset, extra={"fused": which}),
                       file_name=f"fused-{which}.safetensors", mime="application/octet-stream")
    st.caption("Loads back into this app (Home → Upload checkpoints) and the CLI.")
with d2:
    st.download_button("Result · result.json", icon=":material/download:", on_click="ignore",
                       data=lambda: json.dumps(fusion.to_json(), indent=2), file_name="result.json",
                       mime="application/json")
    st.caption("Cost matrix, alignment, accuracies, timings and every setting needed to rerun it.")
