"""2 · Fusion — balance the depths, fuse layer by layer with optimal transport, compare with the baselines."""

import streamlit as st

from app_support import cached, state, ui, views
from clafusion_core import pipeline, plots
from clafusion_core.balancing import BALANCE_METHODS
from clafusion_core.devices import DEVICES, cuda_available, device_label, resolve_device
from clafusion_core.interpolation import GROUPINGS, IMPORTANCES
from clafusion_core.methods import METHODS
from clafusion_core.otfusion import GROUND_ACTIVATIONS, GROUND_CONV_FEATURES, GROUND_METRICS, SOLVERS
from clafusion_core.config import INSERTED_WEIGHTS
from clafusion_core.similarity import METRIC_LABELS

SINKHORN_REGS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
BALANCE_LABELS = {"add": "add identity layers to B", "merge": "merge A's extra layers away"}
GROUND_LABELS = {"activations": "activations", "weights": "weights"}
SOLVER_LABELS = {"emd": "exact (EMD)", "sinkhorn": "Sinkhorn (entropic)"}
DEVICE_LABELS = {"auto": "auto", "cpu": "CPU", "cuda": "CUDA"}
INSERTED_LABELS = {"deeper": "keep A's layer", "average": "average with the identity"}
CONV_GROUND_LABELS = {"positions": "every position", "pool": "channel means"}
GROUPING_LABELS = {"kmeans": "K-means", "hungarian": "Hungarian (1:1)"}

ui.setup_page("2 · Fusion")
ui.page_header(2, "Fusion", "Make the two networks equally deep, then fuse them layer by layer with optimal transport.")
ui.explain("Identity layers and transport plans", r"""
**Balancing.** Layer-wise fusion needs two networks of equal depth. With **add**, B gets an *identity layer*
wherever the alignment left a layer of A unmatched: weights = the identity matrix (a conv kernel with a single 1
in the centre), bias 0. Such a layer computes `relu(I·x + 0) = relu(x)`, and because its input comes out of a
ReLU it is never negative, so `relu(x) = x`: the balanced B computes *exactly* what B computed (its accuracy is
the same — see "balanced B" in the chart). For residual networks the identity is a block whose last BatchNorm
is zero, so the block adds nothing to its input. With **merge** (MLPs only), A loses its unmatched layers
instead, each folded into the next one through its average ReLU pattern — an approximation, so A changes.

**Transport plans.** Neuron 5 of A's layer may do what neuron 17 of B's does: averaging weights position by
position mixes unrelated neurons (that is why "vanilla averaging" fails). For every layer, optimal transport
finds the plan `T` that moves A's neurons onto B's at the smallest total distance (distance between their
weights, or between their activations on the probe batch). For equal widths `T` is a permutation; otherwise a
neuron may be split over several partners. A's weights are re-ordered by `T` (and its inputs by the layer
below's plan) and then averaged with B's: `W = (1 − s)·W_A + s·W_B`.

**Neuron interpolation** (the other method) does not average weights at all. Layer by layer, on a labelled
fusion batch, it fits every parent neuron's pre-activation by least squares from the inputs the *fused* network
feeds that layer (so errors of the layers below are compensated), clusters all parents' neurons into the fused
width with K-means on those fits (each neuron weighted by its importance), and makes each fused neuron the fit of
its cluster's weighted mean pre-activation. The chart below then shows which cluster each of A's neurons joined.

**Repair.** Averaging imperfectly matched neurons shrinks their signal; statistics repair rescales each fused
neuron to the mean and spread its parents had on the probe batch. BatchNorm layers get their statistics
recomputed on training data instead.
""")
pair, loaded = cached.pair_in_use()
is_mlp = not loaded.model_a.family.is_conv

# ------------------------------------------------------------------------------------------- controls
balance_options = list(BALANCE_METHODS) if is_mlp else ["add"]
if st.session_state[state.BALANCE] not in balance_options:
    st.session_state[state.BALANCE] = "add"
left, middle, right = st.columns(3, gap="large")
with left:
    st.selectbox("Fusion method", list(METHODS), format_func=lambda name: METHODS[name].title, key=state.METHOD,
                 persist_state="session", help="How the balanced networks are fused into one.")
    st.radio("Balancing", balance_options, format_func=BALANCE_LABELS.get, key=state.BALANCE, persist_state="session",
             help="How the two depths are made equal." + ("" if is_mlp else " Merging is available for MLPs only."))
    st.radio("Inserted layers", INSERTED_WEIGHTS, format_func=INSERTED_LABELS.get, key=state.INSERTED_WEIGHT,
             persist_state="session", horizontal=True, disabled=st.session_state[state.BALANCE] != "add",
             help="Where B got an identity layer, averaging A's real layer with it gives a half-identity neither "
                  "network computed; by default the fused layer there is A's (weight 1).")
is_ot = st.session_state[state.METHOD] == "ot"
with middle:
    if not is_ot:
        st.select_slider("Fusion batch (interp)", [200, 500, 1000, 2000, 4000], key=state.INTERP_SIZE,
                         persist_state="session", help="Labelled, class-balanced training/validation images the "
                         "layers are fitted on; at least the largest fan-in where the data allows.")
        st.radio("Grouping (interp)", GROUPINGS, format_func=GROUPING_LABELS.get, key=state.INTERP_GROUPING,
                 persist_state="session", horizontal=True,
                 help="K-means clusters all parents' neurons into the fused width; Hungarian matches them one to one.")
        st.radio("Neuron importance (interp)", IMPORTANCES, key=state.INTERP_IMPORTANCE, persist_state="session",
                 horizontal=True, help="Weights of the neurons in the clustering: uniform, or their mean |conductance| "
                                       "for the true class on the fusion batch.")
    st.radio("Ground metric", GROUND_METRICS, format_func=GROUND_LABELS.get, key=state.GROUND_METRIC, persist_state="session", horizontal=True, disabled=not is_ot,
             help="The distance between two neurons: of their activations on the probe batch, or of their weights.")
    activations_metric = is_ot and st.session_state[state.GROUND_METRIC] == "activations"
    st.radio("Ground-metric activations", GROUND_ACTIVATIONS, format_func={"post": "after ReLU", "pre": "before ReLU"}.get,
             key=state.GROUND_ACTIVATION, persist_state="session", horizontal=True, disabled=not activations_metric,
             help="The OT ground metric's own choice (the cost matrix has its own on the Alignment page).")
    if not is_mlp:
        st.radio("Ground-metric conv maps", GROUND_CONV_FEATURES, format_func=CONV_GROUND_LABELS.get,
                 key=state.GROUND_CONV_FEATURES, persist_state="session", horizontal=True, disabled=not activations_metric,
                 help="Compare channels on every position of their maps, or on their spatial means.")
    st.radio("Transport solver", SOLVERS, format_func=SOLVER_LABELS.get, key=state.SOLVER, persist_state="session",
             horizontal=True, disabled=not is_ot)
    st.select_slider("Sinkhorn regularisation", SINKHORN_REGS, key=state.SINKHORN_REG, persist_state="session",
                     disabled=not is_ot or st.session_state[state.SOLVER] != "sinkhorn",
                     help="Relative to the normalised cost: larger = smoother, less permutation-like plans.")
with right:
    st.slider("Fusion weight s (share of B)", 0.0, 1.0, step=0.05, key=state.FUSION_WEIGHT, persist_state="session",
              help="W = (1 − s)·aligned A + s·B; s = 0 gives the aligned A, s = 1 gives B.")
    st.radio("Device", DEVICES, format_func=DEVICE_LABELS.get, key=state.DEVICE, persist_state="session", horizontal=True,
             help="auto = CUDA when present.")
    st.caption(f"{'✅' if cuda_available() else '—'} {device_label()}")
    st.toggle("Statistics repair", key=state.REPAIR, persist_state="session",
              help="Move each fused neuron's mean and spread to its parents' (adding biases where the layers have "
                   "none); kept only if it improves validation accuracy.")
    st.toggle("Reset BatchNorm statistics", key=state.BN_RESET, persist_state="session", help="Recompute BatchNorm running statistics "
                                                                     "of the fused model on training data.")

config = state.fusion_config(pair)
device_ok = True
with ui.user_errors(stop=False):
    device_ok = False
    resolve_device(config.device)
    device_ok = True
if config.alignment.mapping is not None:
    st.caption("Matching: **your matching** from the Alignment page "
               f"({METRIC_LABELS[config.alignment.cost]} costs).")
else:
    st.caption(f"Matching: the DP alignment under **{METRIC_LABELS[config.alignment.cost]}** (change it on the Alignment page).")

if st.button("Run fusion", type="primary", icon=":material/play_arrow:", disabled=not device_ok):
    bar = st.progress(0.0, text="starting")
    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        fusion = pipeline.run_fusion(model_a, model_b, cached.splits(pair.dataset, pair.data_root), config,
                                     progress=ui.progress_callback(bar))
    bar.empty()
    state.store_result(pair, fusion)

# -------------------------------------------------------------------------------------------- results
fusion = state.result(pair)
if fusion is None:
    st.info("Choose the options and press **Run fusion**. On the demo pairs it takes a few seconds.",
            icon=":material/info:")
    st.stop()
if not state.same_fusion(fusion.config, config):
    st.caption("The results below come from an earlier run with other settings; press **Run fusion** to update them.")

acc = fusion.accuracy
best_parent = max(acc["model_a"], acc["model_b"])
m = st.columns(5)
m[0].metric("Fused (one-shot)", ui.percent(acc["fused"]), delta=f"{100 * (acc['fused'] - best_parent):+.1f} pp vs best parent")
m[1].metric("Model A", ui.percent(acc["model_a"]))
m[2].metric("Model B", ui.percent(acc["model_b"]))
m[3].metric("Ensemble", ui.percent(acc["ensemble"]), help="Mean of both models' softmax outputs (needs both at test time).")
m[4].metric("Vanilla average", ui.percent(acc["vanilla"]), help="Plain weight averaging; only for identical shapes.")
for warning in fusion.to_json()["warnings"]:
    st.caption(f"Note: {warning}")

left, right = st.columns([3, 2], gap="large")
with left:
    keys = ["model_a", "model_b", "balanced_a", "balanced_b", "ensemble", "vanilla", "fused_plain", "fused"]
    shown = {k: v for k, v in views.accuracy_view(fusion, keys).items()
             if v is not None or k in (views.ACCURACY_LABELS["vanilla"],)}
    ui.chart(plots.accuracy_bars(shown, title="Test accuracy"), key="fusion_accuracy")
    st.caption("Parents, the balanced B (identical to B when balancing is exact), the output ensemble, vanilla "
               "averaging (n/a for different shapes) and the fused model, before and after repair.")
with right:
    ui.chart(plots.stage_timings(fusion.timings_s), key="fusion_timings")
    st.caption("Seconds per pipeline stage of this run.")

st.subheader("The balanced architecture")
balanced = fusion.balanced
fig = plots.architecture_diagram(views.stage_widths(fusion.model_a), views.stage_widths(fusion.model_b),
                                 inserted=balanced.inserted, removed=balanced.removed,
                                 mapping=fusion.alignment.mappings, names=("A", "B"))
ui.chart(fig, key="fusion_architecture")
if balanced.inserted:
    st.caption(f"{len(balanced.inserted)} identity layer(s) (hatched) were inserted into B under the layers of A "
               "that nothing was matched to; lines join matched layers. " +
               ("Exact: the balanced B computes what B computed." if balanced.exact else "Not exact here (see the notes)."))
elif balanced.removed:
    st.caption(f"{len(balanced.removed)} layer(s) of A (crossed out) were merged into their successors.")
else:
    st.caption("Both networks were already equally deep: nothing was inserted or removed.")
if fusion.layer_weights:
    st.caption("Per-layer weights (A, B) where they differ from (1 − s, s): " + ", ".join(
        f"`{layer}` {weights[0]:g} / {weights[1]:g}" for layer, weights in fusion.layer_weights.items()) +
        " — the fused layer under each inserted identity is A's own.")

interp = fusion.config.fusion.name == "interp"
st.subheader("Cluster membership" if interp else "Transport plans")
plans = fusion.fused.plans(0)
if plans:
    groups = list(plans)
    if st.session_state.get(state.PLAN_GROUP) not in groups:
        st.session_state[state.PLAN_GROUP] = groups[0]
    st.selectbox("Layer", groups, key=state.PLAN_GROUP, persist_state="session",
                 format_func=lambda g: views.plan_label(g, plans[g].shape))
    group = st.session_state[state.PLAN_GROUP]
    ui.chart(plots.transport_plan_heatmap(plans[group], title=group), key="fusion_plan")
    st.caption("Row i, column k: A's neuron i went into fused neuron k (each fused neuron is the fit of its "
               "cluster's weighted mean pre-activation; B's neurons are clustered too)." if interp else
               "Row i, column k: how much of A's neuron i is moved onto B's neuron k. One dark cell per row is a "
               "permutation (a clean one-to-one match); spread-out rows mean A's neuron is shared.")
    if interp:
        diagnostics = {d["group"]: d for d in fusion.fused.diagnostics if d.get("group")}
        if group in diagnostics:
            d = diagnostics[group]
            st.caption(f"Fit residual {d['fit_residual']:.3g} (relative), ridge {d['ridge']:.3g}, "
                       f"{len(d['cluster_sizes'])} clusters of sizes {min(d['cluster_sizes'])}–{max(d['cluster_sizes'])}, "
                       f"{d['mixed_groups']} mixing both parents.")
else:
    st.caption("This run produced no transport plans.")

st.page_link("pages/3_Finetune.py", label="Next: 3 · Finetune — recover the accuracy", icon=":material/arrow_forward:")
