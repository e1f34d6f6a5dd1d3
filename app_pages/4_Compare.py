"""4 · Compare — fusion methods side by side on a pair: loss barriers, accuracy and time per method, what each
cost metric's alignment fuses to, and a run bundle to download."""

import streamlit as st

from app_support import cached, compare_view, controls, runs, state, ui
from clafusion_core import barrier, bundle, compare
from clafusion_core.methods import METHODS
from clafusion_core.similarity import METRIC_LABELS


def render() -> None:
    ui.page_header("compare")
    pair, loaded = cached.pair_in_use()
    with ui.user_errors():
        splits = cached.splits(pair.dataset, pair.data_root)
    config = state.pair_config(pair)
    if pair.many:
        st.caption(f"These comparisons are pairwise: the target, {controls.network_label(pair, loaded.target)}, and "
                   f"{controls.network_label(pair, loaded.viewed)} (choose it on the Alignment page).")
    st.caption(f"Settings from the Alignment and Fusion pages: **{METRIC_LABELS[config.alignment.cost]}** alignment, "
               f"**{config.balancing.method}** balancing, repair **{'on' if config.repair.statistics else 'off'}**, "
               f"probe seed {config.probe.seed}.")
    controls.compare()
    points, epochs = int(st.session_state[state.CMP_POINTS]), int(st.session_state[state.CMP_EPOCHS])
    key = (loaded.ref_a.key, loaded.ref_b.key, pair.dataset, pair.data_root, config.fusion_key())

    st.subheader("Loss barrier")
    if st.button("Draw the loss barrier", type="primary", icon=":material/show_chart:"):
        compare_view.run("barrier", (*key, points), "aligning", lambda progress, live: barrier.barrier_curves(
            *cached.private_copies(loaded.pair, config.device), splits, config, points, progress=progress, on_point=compare_view.live_barrier(live)))
    compare_view.barrier_section(state.compare_result("barrier", (*key, points)))

    st.subheader("Methods side by side")
    st.caption(f"Registered methods: {', '.join(m.title for m in METHODS.values())}; OT runs once per ground metric.")
    if st.button("Compare the methods", type="primary", icon=":material/table_chart:"):
        compare_view.run("methods", (*key, points, epochs), "starting", lambda progress, live: compare.compare_methods(
            *cached.private_copies(loaded.pair, config.device), splits, config, epochs, points, progress=progress, on_row=compare_view.live_rows(live, config, epochs)))
    compare_view.methods_section(state.compare_result("methods", (*key, points, epochs)), epochs)

    st.subheader("What each cost metric's alignment fuses to")
    if st.button("Fuse under every cost metric", icon=":material/grid_on:"):
        compare_view.run("metrics", key, "aligning", lambda progress, live: compare.metric_downstream(
            *cached.private_copies(loaded.pair, config.device), splits, config, progress=progress))
    compare_view.metrics_section(state.compare_result("metrics", key), config.alignment.cost)

    st.subheader("Run bundle")
    run_config = state.fusion_config(pair)
    fusion = runs.current(pair, run_config)
    if fusion is None:
        st.caption("A bundle documents one fusion run of the networks in use with the Fusion page's settings: run it "
                   "here (or on the Fusion page).")
        if st.button("Run the fusion for a bundle", icon=":material/play_arrow:"):
            fusion = runs.fuse(pair, loaded, run_config)
    if fusion is not None:
        st.download_button("Download run bundle (.zip)", lambda: bundle.bundle_bytes(fusion, [r.name for r in pair.refs]),
                           file_name="clafusion-run.zip", mime="application/zip", icon=":material/folder_zip:",
                           key="download_bundle", help="run.json (the config), result.json, the fused and parent "
                                                       "safetensors and a Markdown model card.")
        st.caption(compare_view.bundle_text(fusion))


render()
