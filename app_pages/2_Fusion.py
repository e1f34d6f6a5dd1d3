"""2 · Fusion — balance the depths, fuse layer by layer, compare with the baselines."""

import streamlit as st

from app_support import cached, controls, labels, runs, state, ui, views
from clafusion_core import plots
from clafusion_core.devices import resolve_device
from clafusion_core.similarity import METRIC_LABELS


def render() -> None:
    ui.page_header("fusion")
    pair, loaded = cached.pair_in_use()
    controls.fusion(pair, loaded)
    config = state.fusion_config(pair)
    device_ok = False
    with ui.user_errors(stop=False):
        resolve_device(config.device)
        device_ok = True
    metric = METRIC_LABELS[config.alignment.cost]
    st.caption(f"Matching: **your matching** from the Alignment page ({metric} costs)." if config.alignment.mapping
               else f"Matching: the DP alignment under **{metric}** (change it on the Alignment page).")
    if st.button("Run fusion", type="primary", icon=":material/play_arrow:", disabled=not device_ok):
        runs.fuse(pair, loaded, config)

    fusion = state.result(pair)
    if fusion is None:
        st.info("Choose the options and press **Run fusion**. On the demo pairs it takes a few seconds.",
                icon=":material/info:")
        return
    if runs.current(pair, config) is None:
        st.caption("The results below come from an earlier run with other settings; press **Run fusion** to update them.")
    acc = fusion.accuracy
    m = st.columns(5)
    m[0].metric("Fused (one-shot)", ui.percent(acc["fused"]),
                delta=f"{100 * (acc['fused'] - max(acc['model_a'], acc['model_b'])):+.1f} pp vs best parent")
    m[1].metric("Model A", ui.percent(acc["model_a"]))
    m[2].metric("Model B", ui.percent(acc["model_b"]))
    m[3].metric("Ensemble", ui.percent(acc["ensemble"]), help="Mean of both models' softmax outputs (needs both at test time).")
    m[4].metric("Vanilla average", ui.percent(acc["vanilla"]), help="Plain weight averaging; only for identical shapes.")
    for warning in fusion.to_json()["warnings"]:
        st.caption(f"Note: {warning}")

    left, right = st.columns([3, 2], gap="large")
    with left:
        ui.chart(plots.accuracy_bars(views.fusion_accuracies(fusion), title="Test accuracy"), key="fusion_accuracy")
        st.caption("Parents, the balanced B (identical to B when balancing is exact), the output ensemble, vanilla "
                   "averaging (n/a for different shapes) and the fused model, before and after repair.")
    with right:
        ui.chart(plots.stage_timings(fusion.timings_s), key="fusion_timings")
        st.caption("Seconds per pipeline stage of this run.")

    st.subheader("The balanced architecture")
    balanced = fusion.balanced
    ui.chart(plots.architecture_diagram(views.stage_widths(fusion.model_a), views.stage_widths(fusion.model_b),
                                        inserted=balanced.inserted, removed=balanced.removed,
                                        mapping=fusion.alignment.mappings, names=("A", "B")), key="fusion_architecture")
    st.caption(views.balancing_text(balanced, fusion.layer_weights))

    title, caption = labels.CORRESPONDENCE[fusion.config.fusion.name]
    st.subheader(title)
    plans = fusion.fused.plans(0)
    if plans:
        if st.session_state.get(state.PLAN_GROUP) not in plans:
            st.session_state[state.PLAN_GROUP] = next(iter(plans))
        st.selectbox("Layer", list(plans), key=state.PLAN_GROUP, persist_state="session",
                     format_func=lambda g: views.plan_label(g, plans[g].shape))
        group = st.session_state[state.PLAN_GROUP]
        ui.chart(plots.transport_plan_heatmap(plans[group], title=group), key="fusion_plan")
        st.caption(caption)
        for note in views.diagnostics_text(fusion.fused.diagnostics, group):
            st.caption(note)
    else:
        st.caption("This run produced no transport plans.")
    ui.next_page("finetune")


render()
