"""2 · Fusion — balance the depths, fuse layer by layer, compare with the baselines."""

import streamlit as st

from app_support import cached, controls, labels, runs, state, ui, views
from clafusion_core import plots
from clafusion_core.devices import resolve_device
from clafusion_core.similarity import METRIC_LABELS


def render() -> None:
    ui.page_header("fusion")
    choice, loaded = cached.pair_in_use()
    controls.fusion(choice, loaded)
    if choice.many:
        st.subheader(f"{len(choice.refs)} networks: the target and the weights")
        controls.target_and_weights(choice, loaded)
    config = state.fusion_config(choice)
    device_ok = False
    with ui.user_errors(stop=False):
        resolve_device(config.device)
        device_ok = True
    metric = METRIC_LABELS[config.alignment.cost]
    st.caption(f"Matching: **your matching** from the Alignment page ({metric} costs)." if config.alignment.mapping
               else f"Matching: the DP alignment under **{metric}** (change it on the Alignment page).")
    if st.button("Run fusion", type="primary", icon=":material/play_arrow:", disabled=not device_ok):
        runs.fuse(choice, loaded, config)

    fusion = state.result(choice)
    if fusion is None:
        st.info("Choose the options and press **Run fusion**. On the demo networks it takes a few seconds.",
                icon=":material/info:")
        return
    if runs.current(choice, config) is None:
        st.caption("The results below come from an earlier run with other settings; press **Run fusion** to update them.")
    acc, parents = fusion.accuracy, views.parent_accuracies(fusion)
    shown = parents if len(parents) == 2 else {"best parent": max(parents.values())}
    m = st.columns(2 + len(shown) + 1)
    m[0].metric("Fused (one-shot)", ui.percent(acc["fused"]),
                delta=f"{100 * (acc['fused'] - max(parents.values())):+.1f} pp vs best parent")
    for column, (label, value) in zip(m[1:], shown.items()):
        column.metric(ui.capitalised(label), ui.percent(value))
    m[-2].metric("Ensemble", ui.percent(acc["ensemble"]), help="Mean of the networks' softmax outputs (needs all at test time).")
    m[-1].metric("Vanilla average", ui.percent(acc["vanilla"]), help="Plain weight averaging; only for identical shapes.")
    for warning in fusion.to_json()["warnings"]:
        st.caption(f"Note: {warning}")
    if chosen := views.ground_choice_text(fusion.repair):
        st.caption(chosen)

    left, right = st.columns([3, 2], gap="large")
    with left:
        ui.chart(plots.accuracy_bars(views.fusion_accuracies(fusion), title="Test accuracy"), key="fusion_accuracy")
        st.caption("Parents, the balanced models, the output ensemble, vanilla averaging (n/a for different shapes) "
                   "and the fused model, before and after repair.")
    with right:
        ui.chart(plots.stage_timings(fusion.timings_s), key="fusion_timings")
        st.caption("Seconds per pipeline stage of this run.")

    st.subheader("The balanced architecture")
    if choice.many:
        controls.viewed(choice, loaded)
    view = views.balanced_view(fusion, loaded.viewed)
    ui.chart(plots.architecture_diagram(views.stage_widths(view.model_a), views.stage_widths(view.model_b),
                                        inserted=view.balanced.inserted, removed=view.balanced.removed,
                                        mapping=view.mappings, names=("A", "B")), key="fusion_architecture")
    st.caption(views.balancing_text(view, choice.many))

    title, caption = labels.CORRESPONDENCE[fusion.config.fusion.name]
    st.subheader(title)
    plans = fusion.fused.plans(view.parent)
    if plans:
        if st.session_state.get(state.PLAN_GROUP) not in plans:
            st.session_state[state.PLAN_GROUP] = next(iter(plans))
        st.selectbox("Layer", list(plans), key=state.PLAN_GROUP, persist_state="session",
                     format_func=lambda g: views.plan_label(g, plans[g].shape))
        group = st.session_state[state.PLAN_GROUP]
        ui.chart(plots.transport_plan_heatmap(plans[group], title=group), key="fusion_plan")
        st.caption(caption + (f" Here the rows are network {loaded.viewed + 1}'s neurons, the columns the target's."
                              if choice.many else ""))
        for note in views.diagnostics_text(fusion.fused.diagnostics, group):
            st.caption(note)
    else:
        st.caption("This run produced no transport plans.")
    ui.next_page("finetune")


render()
