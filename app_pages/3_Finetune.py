"""3 · Finetune — train the fused model a few epochs (live validation curve), compare, download."""

import streamlit as st

from app_support import cached, controls, runs, state, ui, views
from clafusion_core import bundle, pipeline, plots
from clafusion_core.checkpoints import checkpoint_bytes


def render() -> None:
    ui.page_header("finetune")
    pair, loaded = cached.pair_in_use()
    with ui.user_errors():
        splits = cached.splits(pair.dataset, pair.data_root)
    fusion = runs.any_fusion(pair, loaded)
    controls.finetune(pair, loaded.model_a.spec.family)
    if st.button("Finetune", type="primary", icon=":material/play_arrow:"):
        settings = state.finetune_settings()
        bar, live = st.progress(0.0, text="finetuning"), st.empty()
        with ui.user_errors():
            pipeline.finetune_result(fusion, splits, **settings, progress=ui.progress_callback(bar),
                                     on_epoch=ui.live_curves(live, settings["epochs"]))
        bar.empty()
        live.empty()
        state.store_result(pair, fusion)

    acc, tuned = fusion.accuracy, views.finetuned(fusion)
    m = st.columns(4)
    m[0].metric("Fused + finetuned", ui.percent(acc["fused_finetuned"]) if tuned else "—",
                delta=f"{100 * (acc['fused_finetuned'] - acc['fused']):+.1f} pp vs one-shot" if tuned else None,
                help=None if tuned else "Press Finetune.")
    m[1].metric("Fused (one-shot)", ui.percent(acc["fused"]))
    for column, (label, value, change) in zip(m[2:], views.finetune_parent_metrics(fusion)):
        column.metric(ui.capitalised(label), ui.percent(value), delta=None if change is None else f"{100 * change:+.1f} pp")
    if tuned:
        st.caption(views.finetune_text(fusion.config))
    else:
        st.info("Choose the epochs and press **Finetune**: the validation curve is drawn live, epoch by epoch.",
                icon=":material/info:")

    left, right = st.columns(2, gap="large")
    with left:
        ui.chart(plots.accuracy_bars(views.finetune_accuracies(fusion),
                                     title="Test accuracy, before and after" if tuned else "Test accuracy before finetuning"),
                 key="finetune_accuracy")
    with right:
        if tuned:
            histories = views.histories(fusion)
            ui.chart(ui.accuracy_axis(plots.training_curves(histories), [v for run in histories.values() for v in run]),
                     key="finetune_curves")
            st.caption("Validation accuracy after each epoch (the test split is only used for the final numbers).")

    st.subheader("Download")
    model, which = (fusion.fused_finetuned, "finetuned") if tuned else (fusion.fused.model, "one-shot")
    d1, d2 = st.columns(2)
    with d1:
        st.download_button(f"Fused model ({which}) · .safetensors", icon=":material/download:", on_click="ignore",
                           data=lambda: checkpoint_bytes(model, dataset=pair.dataset, extra={"fused": which}),
                           file_name=f"fused-{which}.safetensors", mime="application/octet-stream")
        st.caption("Loads back into this app (Home → Upload checkpoints) and the CLI.")
    with d2:
        st.download_button("Result · result.json", icon=":material/download:", on_click="ignore",
                           data=lambda: bundle.result_text(fusion.to_json()), file_name="result.json",
                           mime="application/json")
        st.caption("Cost matrix, alignment, accuracies, timings and every setting needed to rerun it.")


render()
