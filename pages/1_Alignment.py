"""1 · Alignment — the layer-to-layer cost matrix, its DP alignment, all metrics compared, and a
what-if matching that the Fusion page then uses."""

import streamlit as st

from app_support import cached, state, ui, views
from clafusion_core import plots
from clafusion_core.data import default_probe_size
from clafusion_core.errors import FusionError
from clafusion_core.similarity import METRIC_LABELS, METRICS

PENDING_CLICK = "alignment_pending_click"

ui.setup_page("1 · Alignment")
ui.page_header(1, "Alignment", "Which layer of the deeper network A does each layer of the shallower network B "
                               "correspond to?")
ui.explain("The cost matrix and the dynamic programme", r"""
**The cost matrix.** Both networks see the same *probe batch* of held-out images. For every layer *i* of A and
every layer *j* of B we compare the two layers' activations on that batch: `C[i, j]` is their dissimilarity,
0 when the two layers represent the inputs in the same way (up to a rotation or scaling of the neurons),
1 when they have nothing in common. Dark cells are similar layers. The metrics differ in what counts as
"the same": CKA compares which inputs each layer finds similar to each other, CCA looks for shared linear
directions, Wasserstein matches the neurons themselves, and *width* only looks at the layer sizes
(CLAFusion's default, which needs no data at all).

**The dynamic programme (DP).** We look for the matching `a(j)` — one layer of A for every layer of B — that
keeps the layers in order (`a(0) < a(1) < …`, so information still flows forwards) and has the smallest total
cost `Σ C[a(j), j]`. Trying all matchings grows combinatorially; the DP solves it exactly in `m × n` steps with
`F[i][j] = min(F[i−1][j], F[i−1][j−1] + C[i][j])` — either A's layer *i* is left out, or it is matched to
B's layer *j*. By default the first layers and the last hidden layers are *pinned* to each other. For CNNs
and ResNets the matching is done within each stage (between two poolings / at one resolution).

A's layers that no layer of B is matched to are where the Fusion step inserts identity layers into B.
""")
pair, loaded = cached.pair_in_use()
model_a, model_b = loaded.model_a, loaded.model_b
conv = model_a.family.is_conv

# ------------------------------------------------------------------------------------------- controls
cols = st.columns([2.2, 1.1, 1.4, 1.4] + ([1.4] if conv else []))
cols[0].selectbox("Cost metric", METRICS, format_func=METRIC_LABELS.get, key=state.COST, persist_state="session",
                  help="How the dissimilarity of two layers is measured (lower = more similar).")
cols[1].selectbox("Probe size", state.PROBE_SIZES, key=state.PROBE_SIZE, persist_state="session",
                  format_func=lambda size: f"auto ({default_probe_size(pair.dataset)})" if size is None else str(size),
                  help="Held-out images both networks see; the activations on them are compared. More images give "
                       "steadier alignments and fusions (capped by the validation split's size).")
cols[2].radio("Activations", ["post", "pre"], key=state.ACTIVATION, persist_state="session", horizontal=True,
              format_func={"post": "after ReLU", "pre": "before ReLU"}.get)
with cols[3]:
    st.checkbox("Pin the first layers", key=state.PIN_FIRST, persist_state="session", help="Match the first layers to each other.")
    st.checkbox("Pin the last layers", key=state.PIN_LAST, persist_state="session", help="Match the last hidden layers to each other.")
if conv:
    cols[4].radio("Conv features", ["pool", "flatten"], key=state.CONV_FEATURES, persist_state="session", horizontal=True,
                  format_func={"pool": "average", "flatten": "flatten"}.get,
                  help="Average each channel over space, or keep every position as a feature.")

config = state.alignment_config(pair)
with ui.user_errors():
    dp = cached.alignment(loaded, config)


# ------------------------------------------------------------------------------------ what-if override

def _on_cell_click() -> None:
    """Remember the clicked cell; it is applied below, once the alignment is at hand."""
    points = st.session_state[state.HEATMAP]["selection"]["points"]
    cells = [p["customdata"] for p in points if p.get("customdata") is not None]
    if cells:
        st.session_state[PENDING_CLICK] = tuple(int(v) for v in cells[-1])


def _on_pick(base: list[list[int]], stage: int, unit: int, key: str) -> None:
    mapping = [list(s) for s in base]
    mapping[stage][unit] = st.session_state[key]
    state.set_override(pair, mapping, from_widget=True)


def _reset() -> None:
    state.set_override(pair, None)


click = st.session_state.pop(PENDING_CLICK, None)
if click is not None:
    where = dp.locate_cell(*click)
    if where is None:
        st.warning("That cell pairs layers of different stages, which can never be matched; pick a cell "
                   "inside one of the diagonal blocks.")
    else:
        stage, row, col = where
        mapping = [list(s) for s in (state.override(pair) or dp.optimal)]
        mapping[stage][col] = row
        state.set_override(pair, mapping)

override = state.override(pair)
mine, override_error = None, None
if override is not None:
    try:
        mine = cached.alignment(loaded, config.replace(mapping=override))
    except FusionError as exc:
        override_error = str(exc)

# ------------------------------------------------------------------------------------------- heatmap
names_a, names_b = views.unit_names(model_a), views.unit_names(model_b)
fig = plots.cost_heatmap(dp.full_cost, names_a, names_b, path=dp.global_mapping(dp.optimal),
                         override=dp.global_mapping(override) if override is not None else None,
                         title=f"Cost matrix — {METRIC_LABELS[config.alignment.cost]}",
                         row_widths=views.unit_widths(model_a), col_widths=views.unit_widths(model_b))
ui.chart(fig, key=state.HEATMAP, on_select=_on_cell_click, selection_mode="points")
st.caption("Rows: layers of A (deeper); columns: layers of B. Dark = similar. Red: the DP alignment"
           + ("; orange dashed: your matching" if override is not None else "")
           + ". Hover a cell for both layers, their widths and the cost; click a cell to match that pair.")
for note in dp.notes:
    st.caption(note)

# ----------------------------------------------------------------------------------- matched pairs
table_col, whatif_col = st.columns([1, 1], gap="large")
with table_col:
    st.subheader("Matched pairs")
    in_use = mine.mappings if mine is not None else dp.optimal
    st.dataframe(views.pairs_table(dp, model_a, model_b, in_use), hide_index=True, width="stretch")
    total = mine.total_cost if mine is not None else dp.optimal_cost
    st.metric("Total cost of the matching in use", f"{total:.3f}",
              help="The sum of the matched cells; the DP alignment is the smallest possible.")
    st.caption("Used by the Fusion page: " + ("your matching." if mine is not None else "the DP alignment."))

with whatif_col:
    st.subheader("What-if: match the layers yourself")
    st.caption("Choose the partner in A of each layer of B, or click a heatmap cell. The matching must keep the "
               "layer order (strictly increasing) and respect the pinned ends.")
    current = override if override is not None else dp.optimal
    stages_a, stages_b = views.stage_units(model_a), views.stage_units(model_b)
    staged = sum(1 for units in stages_b if units) > 1
    slots = [(stage, j, name, units_a) for stage, (units_a, units_b) in enumerate(zip(stages_a, stages_b))
             for j, name in enumerate(units_b)]
    rev = state.override_rev()
    per_row = max(1, min(len(slots), 4))
    for start in range(0, len(slots), per_row):
        for column, (stage, j, name, units_a) in zip(st.columns(per_row), slots[start:start + per_row]):
            key = f"whatif_{rev}_{stage}_{j}"
            column.selectbox(f"partner of B {name}" + (f" (stage {stage})" if staged else ""), range(len(units_a)),
                             index=int(current[stage][j]), key=key, format_func=units_a.__getitem__,
                             on_change=_on_pick, args=(current, stage, j, key))
    if override is None:
        st.info("Using the DP alignment, the optimum for this metric. Change a partner to try another matching.",
                icon=":material/info:")
    elif override_error:
        st.error(override_error, icon=":material/error:")
        st.caption("Until it is valid, the Fusion page cannot use it; fix it or go back to the DP alignment.")
    else:
        m1, m2 = st.columns(2)
        m1.metric("Your matching", f"{mine.total_cost:.3f}", delta=f"{mine.total_cost - mine.optimal_cost:+.3f} vs DP",
                  delta_color="inverse")
        m2.metric("DP optimum", f"{mine.optimal_cost:.3f}")
        if list(map(list, override)) == [list(s) for s in dp.optimal]:
            st.success("Your matching is the DP's.", icon=":material/check:")
    st.button("Back to the DP alignment", on_click=_reset, disabled=override is None, icon=":material/undo:")

# ---------------------------------------------------------------------------------- compare metrics
st.subheader("Compare metrics")
st.toggle("Show every metric side by side", key=state.COMPARE, persist_state="session",
          help="Computes the cost matrix of every metric (each is cached; the activations are shared).")
if st.session_state[state.COMPARE]:
    order = [config.alignment.cost] + [m for m in METRICS if m != config.alignment.cost]
    bar = st.progress(0.0, text="cost matrices")
    alignments, failed = {}, {}
    for k, metric in enumerate(order):
        bar.progress(k / len(order), text=f"cost matrix: {METRIC_LABELS[metric]}")
        try:
            alignments[metric] = cached.alignment(loaded, config.replace(cost=metric))
        except FusionError as exc:
            failed[metric] = str(exc)
    bar.empty()
    if alignments:
        fig = plots.metric_comparison({m: a.full_cost for m, a in alignments.items()},
                                      {m: a.global_mapping(a.optimal) for m, a in alignments.items()},
                                      names_a, names_b, labels=views.SHORT_METRIC_LABELS)
        ui.chart(fig, key="metric_comparison")
        reference = alignments[order[0]].global_mapping(alignments[order[0]].optimal) if order[0] in alignments else None
        rows = [{"metric": METRIC_LABELS[m],
                 "matching (A layer of each B layer)": " · ".join(names_a[i] for i in a.global_mapping(a.optimal)),
                 "its cost": round(a.optimal_cost, 4),
                 f"agrees with {METRIC_LABELS[order[0]]}": a.global_mapping(a.optimal) == reference}
                for m, a in alignments.items()]
        st.dataframe(rows, hide_index=True, width="stretch")
        st.caption("Each metric's own DP alignment on its own cost matrix; where a path differs from the chosen "
                   "metric's, the metrics disagree about which layers correspond.")
    for metric, message in failed.items():
        st.error(f"{METRIC_LABELS[metric]}: {message}", icon=":material/error:")

st.page_link("pages/2_Fusion.py", label="Next: 2 · Fusion — balance and fuse", icon=":material/arrow_forward:")
