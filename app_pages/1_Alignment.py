"""1 · Alignment — the layer-to-layer cost matrix, its DP alignment, all metrics compared, and a
what-if matching that the Fusion page then uses."""

import streamlit as st

from app_support import cached, controls, labels, state, ui, views, whatif
from clafusion_core import plots
from clafusion_core.similarity import METRIC_LABELS


def render() -> None:
    ui.page_header("alignment")
    pair, loaded = cached.pair_in_use()
    controls.alignment(pair, loaded)
    if pair.many:
        controls.viewed(pair, loaded)
    config = state.alignment_config(pair)
    with ui.user_errors():
        dp = cached.alignment(loaded, config)
    whatif.apply_click(pair, dp)
    override = state.override(pair)
    mine, override_error = whatif.checked(pair, loaded, config)

    names_a, names_b = views.unit_names(loaded.model_a), views.unit_names(loaded.model_b)
    fig = plots.cost_heatmap(dp.full_cost, names_a, names_b, path=dp.global_mapping(dp.optimal),
                             override=dp.global_mapping(override) if override is not None else None,
                             title=f"Cost matrix — {METRIC_LABELS[config.alignment.cost]}",
                             row_widths=views.unit_widths(loaded.model_a), col_widths=views.unit_widths(loaded.model_b))
    ui.chart(fig, key=state.HEATMAP, on_select=whatif.on_cell_click, selection_mode="points")
    st.caption("Rows: layers of A (deeper); columns: layers of B. Dark = similar. Red: the DP alignment"
               + ("; orange dashed: your matching" if override is not None else "")
               + ". Hover a cell for both layers, their widths and the cost; click a cell to match that pair.")
    for note in dp.notes:
        st.caption(note)

    table_col, whatif_col = st.columns([1, 1], gap="large")
    with table_col:
        st.subheader("Matched pairs")
        in_use = mine if mine is not None else dp
        st.dataframe(views.pairs_table(dp, loaded.model_a, loaded.model_b, in_use.mappings), hide_index=True,
                     width="stretch")
        st.metric("Total cost of the matching in use", f"{in_use.total_cost:.3f}",
                  help="The sum of the matched cells; the DP alignment is the smallest possible.")
        st.caption("Used by the Fusion page: " + ("your matching." if mine is not None else "the DP alignment."))
    with whatif_col:
        st.subheader("What-if: match the layers yourself")
        st.caption("Choose the partner in A of each layer of B, or click a heatmap cell. The matching must keep the "
                   "layer order (strictly increasing) and respect the pinned ends.")
        whatif.editor(pair, loaded, dp, mine, override_error)

    st.subheader("Compare metrics")
    st.toggle("Show every metric side by side", key=state.COMPARE, persist_state="session",
              help="Computes the cost matrix of every metric (each is cached; the activations are shared).")
    if st.session_state[state.COMPARE]:
        bar = st.progress(0.0, text="cost matrices")
        alignments, failed = cached.every_metric(loaded, config, ui.progress_callback(bar))
        bar.empty()
        if alignments:
            fig = plots.metric_comparison({m: a.full_cost for m, a in alignments.items()},
                                          {m: a.global_mapping(a.optimal) for m, a in alignments.items()},
                                          names_a, names_b, labels=labels.SHORT_METRIC_LABELS)
            ui.chart(fig, key="metric_comparison")
            st.dataframe(views.metric_rows(alignments, names_a, config.alignment.cost), hide_index=True, width="stretch")
            st.caption("Each metric's own DP alignment on its own cost matrix; where a path differs from the chosen "
                       "metric's, the metrics disagree about which layers correspond.")
        for metric, message in failed.items():
            st.error(f"{METRIC_LABELS[metric]}: {message}", icon=":material/error:")
    ui.next_page("fusion")


render()
