"""4 · Compare — fusion methods side by side: loss barriers, accuracy and time per method, what each cost
metric's alignment fuses to, many-model fusion of a demo set, and a run bundle to download."""

import json

import streamlit as st

from app_support import cached, state, ui
from clafusion_core import barrier, bundle, compare, many, pipeline, plots, zoo
from clafusion_core.methods import METHODS
from clafusion_core.similarity import METRIC_LABELS

POINTS = [3, 5, 7, 11, 21]

ui.setup_page("4 · Compare")
ui.page_header(4, "Compare", "Every fusion method on the pair in use, with the same probe batch and settings: "
                             "loss barriers, accuracy before and after the same short finetune, and time.")
ui.explain("Loss barriers, and why the best-looking alignment may not fuse best", r"""
**Loss barrier.** Walk in a straight line from network A's weights to B's, `θ_t = (1 − t)·θ_A + t·θ_B`, and
measure the test loss along the way. If the loss rises in the middle, the two networks sit in different valleys
of the loss landscape; the **barrier height** is the largest rise above the straight line joining the two ends,
`max_t [L(θ_t) − ((1 − t)·L(θ_A) + t·L(θ_B))]`. Without alignment (*naive*) the path mixes unrelated neurons and
the barrier is high. Re-ordering A's neurons to match B's first (*OT-aligned*) often flattens it, and *repair*
(resetting each neuron's mean and spread at every point) can flatten it further. One alignment serves the whole
curve: the neuron matching does not depend on t.

**Methods.** Each method fuses the same two networks with the same probe batch, alignment and balancing; every
fused model then gets the same short finetune. The ensemble (averaging both networks' outputs) is the ceiling a
single model rarely reaches; vanilla averaging is the floor.

**Cost metrics downstream.** The Alignment page shows which layers each cost metric matches. Here each metric's
matching is fused: the metric whose matching looks cleanest is not always the one that fuses best.
""")
pair, loaded = cached.pair_in_use()
with ui.user_errors():
    splits = cached.splits(pair.dataset, pair.data_root)
config = state.fusion_config(pair)
st.caption(f"Settings from the Alignment and Fusion pages: **{METRIC_LABELS[config.alignment.cost]}** alignment, "
           f"**{config.balancing.method}** balancing, repair **{'on' if config.repair.statistics else 'off'}**, probe seed {config.probe.seed}.")
left, right = st.columns(2)
left.select_slider("Points per barrier curve", POINTS, key=state.CMP_POINTS, persist_state="session",
                   help="Values of t from 0 (model A) to 1 (model B).")
right.number_input("Finetuning epochs per method", min_value=0, max_value=20, step=1, key=state.CMP_EPOCHS,
                   persist_state="session", help="The same short finetune for every fused model (0: one-shot only).")
points, epochs = int(st.session_state[state.CMP_POINTS]), int(st.session_state[state.CMP_EPOCHS])
key = (pair.id, config.fusion_key())


def _json_download(label: str, payload: dict, file_name: str, widget_key: str) -> None:
    st.download_button(label, json.dumps(payload, indent=2), file_name=file_name, mime="application/json",
                       icon=":material/download:", key=widget_key)


def _barrier_figure(curves: dict, heights: bool = True):
    return plots.barrier_plot({c.title: (c.t, c.loss, c.accuracy) for c in curves.values()},
                              heights={c.title: c.height for c in curves.values()} if heights else None)


# -------------------------------------------------------------------------------------------- barrier
st.subheader("Loss barrier")
if st.button("Draw the loss barrier", type="primary", icon=":material/show_chart:"):
    bar, live = st.progress(0.0, text="aligning"), st.empty()
    drawn: dict[str, tuple[list, list, list]] = {}

    def draw(path: str, t: float, loss: float, accuracy: float) -> None:
        ts, losses, accuracies = drawn.setdefault(path, ([], [], []))
        ts.append(t)
        losses.append(loss)
        accuracies.append(accuracy)
        live.plotly_chart(plots.barrier_plot(drawn), width="stretch", theme=None)

    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        result = barrier.barrier_curves(model_a, model_b, splits, config, points, progress=ui.progress_callback(bar),
                                        on_point=draw)
        state.store_compare_result("barrier", (*key, points), result)
    bar.empty()
    live.empty()
curves = state.compare_result("barrier", (*key, points))
if curves is None:
    st.caption("Press the button: the curves draw point by point (about a second on the demo MLPs).")
else:
    ui.chart(_barrier_figure(curves.curves), key="compare_barrier")
    st.dataframe([{"path": c.title, "barrier height (loss)": round(c.height, 4),
                   "accuracy drop (pp)": round(100 * c.accuracy_drop, 2), "seconds": round(c.seconds, 2)}
                  for c in curves.curves.values()], hide_index=True)
    for reason in curves.skipped.values():
        st.caption(f"Note: {reason}")
    _json_download("Download barrier.json", curves.to_json(), "barrier.json", "download_barrier")

# -------------------------------------------------------------------------------------------- methods
st.subheader("Methods side by side")
st.caption(f"Registered methods: {', '.join(m.title for m in METHODS.values())}; OT runs once per ground metric.")
if st.button("Compare the methods", type="primary", icon=":material/table_chart:"):
    bar, live = st.progress(0.0, text="starting"), st.empty()
    rows: list = []

    def fill(row) -> None:
        rows.append(row)
        live.dataframe(compare.comparison_records(compare.Comparison(rows, {}, config, epochs)), hide_index=True)

    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        comparison = compare.compare_methods(model_a, model_b, splits, config, epochs, points,
                                             progress=ui.progress_callback(bar), on_row=fill)
        state.store_compare_result("methods", (*key, points, epochs), comparison)
    bar.empty()
    live.empty()
comparison = state.compare_result("methods", (*key, points, epochs))
if comparison is None:
    st.caption("Press the button to fuse the pair with every method (seconds on the demo MLPs, plus the finetunes).")
else:
    st.dataframe(compare.comparison_records(comparison), hide_index=True, key="compare_table")
    fused = [r for r in comparison.rows if r.kind in ("method", "baseline")]
    ceiling = next((r.one_shot for r in comparison.rows if r.kind == "ceiling"), None)
    ui.chart(plots.method_comparison_bars([r.title for r in fused], [r.one_shot for r in fused],
                                          [r.finetuned for r in fused], ceiling=ceiling, epochs=epochs),
             key="compare_methods")
    if comparison.curves:
        ui.chart(_barrier_figure(comparison.curves), key="compare_method_curves")
    for note in comparison.notes:
        st.caption(f"Note: {note}")
    _json_download("Download compare.json", comparison.to_json(), "compare.json", "download_compare")

# -------------------------------------------------------------------------------------- cost metrics
st.subheader("What each cost metric's alignment fuses to")
if st.button("Fuse under every cost metric", icon=":material/grid_on:"):
    bar = st.progress(0.0, text="aligning")
    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        rows = compare.metric_downstream(model_a, model_b, splits, config, progress=ui.progress_callback(bar))
        state.store_compare_result("metrics", key, rows)
    bar.empty()
metric_rows = state.compare_result("metrics", key)
if metric_rows is None:
    st.caption("Each metric aligns the pair; each distinct alignment is fused once (one-shot).")
else:
    ui.chart(plots.metric_downstream_bars([r.label for r in metric_rows], [r.fused for r in metric_rows],
                                          [str(r.alignment) for r in metric_rows], chosen=METRIC_LABELS[config.alignment.cost]),
             key="compare_metrics")
    best = max(metric_rows, key=lambda r: r.fused)
    chosen = next(r for r in metric_rows if r.metric == config.alignment.cost)
    if len({tuple(r.alignment) for r in metric_rows}) == 1:
        st.caption(f"Every metric aligns this pair the same way ({chosen.alignment}), so they all fuse alike.")
    else:
        st.caption(f"The metric in use, {chosen.label}, leads to {ui.percent(chosen.fused)}; the best fusion here "
                   f"comes from {best.label}'s alignment {best.alignment} ({ui.percent(best.fused)}).")
    st.dataframe(compare.metric_records(metric_rows), hide_index=True)

# ---------------------------------------------------------------------------------- many-model fusion
st.subheader("Many-model fusion")
st.selectbox("Demo set", list(zoo.DEMO_SETS), format_func=lambda k: zoo.DEMO_SETS[k].title, key=state.CMP_SET,
             persist_state="session")
demo_set = zoo.DEMO_SETS[st.session_state[state.CMP_SET]]
st.caption(f"{demo_set.description} " + ", ".join(f"`{a}`" for a in demo_set.archs) +
           f" on *{demo_set.dataset}*, fused with equal weights onto the target (the first, or the deepest).")
if st.button("Fuse the set", icon=":material/hub:"):
    bar = st.progress(0.0, text="loading the set (trained once on first use)")
    with ui.user_errors():
        models = zoo.load_demo_set(demo_set.key, progress=ui.progress_callback(bar, 0.0, 0.5))
        set_config = config.replace(dataset=demo_set.dataset, data_root=None, mapping=None)
        outcome = many.fuse_many(models, cached.splits(demo_set.dataset, None), set_config,
                                 progress=ui.progress_callback(bar, 0.5, 1.0))
        state.store_compare_result("many", (demo_set.key, set_config.fusion_key()), outcome)
    bar.empty()
outcome = state.compare_result("many", (demo_set.key, config.replace(dataset=demo_set.dataset, data_root=None,
                                                                      mapping=None).fusion_key()))
if outcome is not None:
    accuracy = outcome.accuracy
    shown = {f"model {k + 1}" + (" (target)" if k == outcome.reference else ""): a
             for k, a in enumerate(accuracy["parents"])}
    shown.update({"ensemble": accuracy["ensemble"], "vanilla": accuracy["vanilla"], "fused": accuracy["fused"]})
    ui.chart(plots.accuracy_bars(shown, title=f"{len(outcome.models)} models fused into one"), key="compare_many")
    _json_download("Download many.json", outcome.to_json(), "many.json", "download_many")

# ---------------------------------------------------------------------------------------- run bundle
st.subheader("Run bundle")
fusion = state.result(pair)
if fusion is None or not state.same_fusion(fusion.config, config):
    st.caption("A bundle documents one fusion run with the settings above: run it here (or on the Fusion page).")
    if st.button("Run the fusion for a bundle", icon=":material/play_arrow:"):
        bar = st.progress(0.0, text="fusing")
        with ui.user_errors():
            model_a, model_b = cached.private_copies(loaded, config.device)
            state.store_result(pair, pipeline.run_fusion(model_a, model_b, splits, config,
                                                         progress=ui.progress_callback(bar)))
        bar.empty()
        fusion = state.result(pair)
if fusion is not None and state.same_fusion(fusion.config, config):
    names = [ref.name for ref in pair.refs]
    st.download_button("Download run bundle (.zip)", lambda: bundle.bundle_bytes(fusion, names),
                       file_name="clafusion-run.zip", mime="application/zip", icon=":material/folder_zip:",
                       key="download_bundle", help="run.json (the config), result.json, the fused and parent "
                                                   "safetensors and a Markdown model card.")
    st.caption(f"Fused one-shot {ui.percent(fusion.accuracy['fused'])}"
               + (f", finetuned {ui.percent(fusion.accuracy['fused_finetuned'])}"
                  if fusion.accuracy.get("fused_finetuned") is not None else "")
               + ". `python -m clafusion_core fuse parent_1.safetensors parent_2.safetensors --config run.json` reruns it.")
