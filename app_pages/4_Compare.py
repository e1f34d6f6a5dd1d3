"""4 · Compare — fusion methods side by side: loss barriers, accuracy and time per method, what each cost
metric's alignment fuses to, many-model fusion of a demo set, and a run bundle to download."""

import streamlit as st

from app_support import cached, compare_view, controls, runs, state, ui
from clafusion_core import barrier, bundle, compare, many, zoo
from clafusion_core.methods import METHODS
from clafusion_core.similarity import METRIC_LABELS


def render() -> None:
    ui.page_header("compare")
    pair, loaded = cached.pair_in_use()
    with ui.user_errors():
        splits = cached.splits(pair.dataset, pair.data_root)
    config = state.fusion_config(pair)
    st.caption(f"Settings from the Alignment and Fusion pages: **{METRIC_LABELS[config.alignment.cost]}** alignment, "
               f"**{config.balancing.method}** balancing, repair **{'on' if config.repair.statistics else 'off'}**, "
               f"probe seed {config.probe.seed}.")
    controls.compare()
    points, epochs = int(st.session_state[state.CMP_POINTS]), int(st.session_state[state.CMP_EPOCHS])
    key = (pair.id, config.fusion_key())

    st.subheader("Loss barrier")
    if st.button("Draw the loss barrier", type="primary", icon=":material/show_chart:"):
        compare_view.run("barrier", (*key, points), "aligning", lambda progress, live: barrier.barrier_curves(
            *cached.private_copies(loaded, config.device), splits, config, points, progress=progress, on_point=compare_view.live_barrier(live)))
    compare_view.barrier_section(state.compare_result("barrier", (*key, points)))

    st.subheader("Methods side by side")
    st.caption(f"Registered methods: {', '.join(m.title for m in METHODS.values())}; OT runs once per ground metric.")
    if st.button("Compare the methods", type="primary", icon=":material/table_chart:"):
        compare_view.run("methods", (*key, points, epochs), "starting", lambda progress, live: compare.compare_methods(
            *cached.private_copies(loaded, config.device), splits, config, epochs, points, progress=progress, on_row=compare_view.live_rows(live, config, epochs)))
    compare_view.methods_section(state.compare_result("methods", (*key, points, epochs)), epochs)

    st.subheader("What each cost metric's alignment fuses to")
    if st.button("Fuse under every cost metric", icon=":material/grid_on:"):
        compare_view.run("metrics", key, "aligning", lambda progress, live: compare.metric_downstream(
            *cached.private_copies(loaded, config.device), splits, config, progress=progress))
    compare_view.metrics_section(state.compare_result("metrics", key), config.alignment.cost)

    st.subheader("Many-model fusion")
    st.selectbox("Demo set", list(zoo.DEMO_SETS), format_func=lambda k: zoo.DEMO_SETS[k].title, key=state.CMP_SET,
                 persist_state="session")
    demo_set = zoo.DEMO_SETS[st.session_state[state.CMP_SET]]
    st.caption(f"{demo_set.description} " + ", ".join(f"`{a}`" for a in demo_set.archs) +
               f" on *{demo_set.dataset}*, fused with equal weights onto the target (the first, or the deepest).")
    set_config = config.replace(dataset=demo_set.dataset, data_root=None, mapping=None)
    if st.button("Fuse the set", icon=":material/hub:"):
        compare_view.run("many", (demo_set.key, set_config.fusion_key()), "loading the set (trained once on first use)",
                         lambda progress, live: many.fuse_many(
                             zoo.load_demo_set(demo_set.key, progress=lambda f, m: progress(0.5 * f, m)),
                             cached.splits(demo_set.dataset, None), set_config,
                             progress=lambda f, m: progress(0.5 + 0.5 * f, m)))
    compare_view.many_section(state.compare_result("many", (demo_set.key, set_config.fusion_key())))

    st.subheader("Run bundle")
    fusion = runs.current(pair, config)
    if fusion is None:
        st.caption("A bundle documents one fusion run with the settings above: run it here (or on the Fusion page).")
        if st.button("Run the fusion for a bundle", icon=":material/play_arrow:"):
            fusion = runs.fuse(pair, loaded, config)
    if fusion is not None:
        st.download_button("Download run bundle (.zip)", lambda: bundle.bundle_bytes(fusion, [r.name for r in pair.refs]),
                           file_name="clafusion-run.zip", mime="application/zip", icon=":material/folder_zip:",
                           key="download_bundle", help="run.json (the config), result.json, the fused and parent "
                                                       "safetensors and a Markdown model card.")
        st.caption(compare_view.bundle_text(fusion))


render()
