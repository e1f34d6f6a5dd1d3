"""The settings widgets of the pages, over the session keys of :mod:`state`.

Every widget of a run-config setting uses that setting's flat name as its key and ``state.OPTIONS`` as
its options, so the page, the config built from it and a shared link agree. A widget whose setting
changes nothing under the others (``state.ignored``: the library's rule) is disabled, not hidden.
"""

from __future__ import annotations

import streamlit as st

from clafusion_core.balancing import balance_methods
from clafusion_core.data import default_probe_size
from clafusion_core.devices import cuda_available, device_label
from clafusion_core.many import allowed_references
from clafusion_core.methods import METHODS
from clafusion_core.similarity import METRIC_LABELS

from . import labels, state
from .cached import LoadedPair
from .state import OPTIONS, Choice


def alignment(pair: Choice, loaded: LoadedPair) -> None:
    """Cost metric, probe size, activations, pins and (for conv models) how conv maps become features."""
    off = state.ignored(pair, loaded.model_a.spec.family)
    conv = state.CONV_FEATURES not in off     # the models have feature maps
    cols = st.columns([2.2, 1.1, 1.4, 1.4] + ([1.4] if conv else []))
    cols[0].selectbox("Cost metric", OPTIONS[state.COST], format_func=METRIC_LABELS.get, key=state.COST,
                      persist_state="session", help="How the dissimilarity of two layers is measured (lower = more similar).")
    cols[1].selectbox("Probe size", OPTIONS[state.PROBE_SIZE], key=state.PROBE_SIZE, persist_state="session",
                      format_func=lambda size: f"auto ({default_probe_size(pair.dataset)})" if size == state.AUTO else str(size),
                      help="Held-out images both networks see; the activations on them are compared. More images "
                           "give steadier alignments and fusions (capped by the validation split's size).")
    cols[2].radio("Activations", OPTIONS[state.ACTIVATION], key=state.ACTIVATION, persist_state="session",
                  horizontal=True, format_func=labels.ACTIVATION_LABELS.get)
    with cols[3]:
        st.checkbox("Pin the first layers", key=state.PIN_FIRST, persist_state="session",
                    help="Match the first layers to each other.")
        st.checkbox("Pin the last layers", key=state.PIN_LAST, persist_state="session",
                    help="Match the last hidden layers to each other.")
    if conv:
        cols[4].radio("Conv features", OPTIONS[state.CONV_FEATURES], key=state.CONV_FEATURES, persist_state="session",
                      horizontal=True, format_func=labels.CONV_FEATURE_LABELS.get,
                      help="Average each channel over space, or keep every position as a feature.")


def fusion(pair: Choice, loaded: LoadedPair) -> None:
    """Method, balancing, inserted layers; the method's options; weight, device, repair and BatchNorm reset."""
    balancings = state.balance_options(balance_methods(loaded.model_a))
    off = state.ignored(pair, loaded.model_a.spec.family)
    left, middle, right = st.columns(3, gap="large")
    with left:
        st.selectbox("Fusion method", OPTIONS[state.METHOD], format_func=lambda name: METHODS[name].title,
                     key=state.METHOD, persist_state="session", help="How the balanced networks are fused into one.")
        st.radio("Balancing", balancings, format_func=labels.BALANCE_LABELS.get, key=state.BALANCE,
                 persist_state="session", help="How the depths are made equal." +
                 ("" if "merge" in balancings else " Merging is available for MLPs only."))
        st.radio("Inserted layers", OPTIONS[state.INSERTED_WEIGHT], format_func=labels.INSERTED_LABELS.get,
                 key=state.INSERTED_WEIGHT, persist_state="session", horizontal=True,
                 disabled=state.INSERTED_WEIGHT in off,
                 help="Where B got an identity layer, averaging A's real layer with it gives a half-identity neither "
                      "network computed; by default the fused layer there is A's (weight 1).")
        st.radio("Inserted identity width", OPTIONS[state.IDENTITY_WIDTH], format_func=labels.IDENTITY_WIDTH_LABELS.get,
                 key=state.IDENTITY_WIDTH, persist_state="session", horizontal=True,
                 disabled=state.IDENTITY_WIDTH in off,
                 help="Where A's layer is wider than B's identity's input, the identity is padded with always-zero "
                      "channels to A's width (still exact), so OT does not squeeze A's neurons onto fewer.")
    with middle:
        if state.INTERP_SIZE not in off:
            st.select_slider("Fusion batch (interp)", OPTIONS[state.INTERP_SIZE], key=state.INTERP_SIZE,
                             persist_state="session", help="Labelled, class-balanced training/validation images the "
                             "layers are fitted on; at least the largest fan-in where the data allows.")
            st.radio("Grouping (interp)", OPTIONS[state.INTERP_GROUPING], format_func=labels.GROUPING_LABELS.get,
                     key=state.INTERP_GROUPING, persist_state="session", horizontal=True,
                     help="K-means clusters all parents' neurons into the fused width; Hungarian matches them one "
                          "to one.")
            st.radio("Neuron importance (interp)", OPTIONS[state.INTERP_IMPORTANCE], key=state.INTERP_IMPORTANCE,
                     persist_state="session", horizontal=True,
                     help="Weights of the neurons in the clustering: uniform, or their mean |conductance| for the "
                          "true class on the fusion batch.")
        st.radio("Ground metric", OPTIONS[state.GROUND_METRIC], format_func=labels.GROUND_LABELS.get,
                 key=state.GROUND_METRIC, persist_state="session", horizontal=True, disabled=state.GROUND_METRIC in off,
                 help="The distance between two neurons: of their activations on the probe batch, or of their weights.")
        st.radio("Ground-metric activations", OPTIONS[state.GROUND_ACTIVATION], format_func=labels.ACTIVATION_LABELS.get,
                 key=state.GROUND_ACTIVATION, persist_state="session", horizontal=True,
                 disabled=state.GROUND_ACTIVATION in off,
                 help="The OT ground metric's own choice (the cost matrix has its own on the Alignment page).")
        st.radio("Try the other activation, keep the better on validation", OPTIONS[state.GROUND_ACTIVATION_CHOICE],
                 format_func=labels.GROUND_CHOICE_LABELS.get, key=state.GROUND_ACTIVATION_CHOICE,
                 persist_state="session", horizontal=True, disabled=state.GROUND_ACTIVATION_CHOICE in off,
                 help="Fuses with both after- and before-ReLU activations and keeps the fusion better on the "
                      "validation split (twice the time); by default for conv networks only.")
        if state.CONV_FEATURES not in off:
            st.radio("Ground-metric conv maps", OPTIONS[state.GROUND_CONV_FEATURES],
                     format_func=labels.CONV_GROUND_LABELS.get, key=state.GROUND_CONV_FEATURES, persist_state="session",
                     horizontal=True, disabled=state.GROUND_CONV_FEATURES in off,
                     help="Compare channels on every position of their maps, or on their spatial means.")
        st.radio("Transport solver", OPTIONS[state.SOLVER], format_func=labels.SOLVER_LABELS.get, key=state.SOLVER,
                 persist_state="session", horizontal=True, disabled=state.SOLVER in off)
        st.select_slider("Sinkhorn regularisation", OPTIONS[state.SINKHORN_REG], key=state.SINKHORN_REG,
                         persist_state="session", disabled=state.SINKHORN_REG in off,
                         help="Relative to the normalised cost: larger = smoother, less permutation-like plans.")
    with right:
        st.slider("Fusion weight s (share of B)", 0.0, 1.0, step=0.05, key=state.FUSION_WEIGHT, persist_state="session",
                  disabled=state.FUSION_WEIGHT in off,
                  help="W = (1 − s)·aligned A + s·B; s = 0 gives the aligned A, s = 1 gives B. More than two networks "
                       "take their weights below instead.")
        st.radio("Device", OPTIONS[state.DEVICE], format_func=labels.DEVICE_LABELS.get, key=state.DEVICE,
                 persist_state="session", horizontal=True, help="auto = CUDA when present.")
        st.caption(f"{'✅' if cuda_available() else '—'} {device_label()}")
        st.toggle("Statistics repair", key=state.REPAIR, persist_state="session",
                  help="Move each fused neuron's mean and spread to its parents' (adding biases where the layers have "
                       "none); kept only if it improves validation accuracy.")
        st.toggle("Reset BatchNorm statistics", key=state.BN_RESET, persist_state="session",
                  help="Recompute BatchNorm running statistics of the fused model on training data.")
        st.number_input("Seed", *state.LIMITS[state.SEED], step=1, key=state.SEED, persist_state="session",
                        help="The run's seed (`seed` in result.json): it fixes the finetuning's batch order, on the "
                             "Finetune and Compare pages; the one-shot fusion itself does not draw random numbers.")


def finetune(pair: Choice, family: str) -> None:
    """Epochs, learning rate, optimiser, distillation (weight, temperature), the parents' fair baseline."""
    off = state.ignored(pair, family)
    left, middle, right = st.columns(3, gap="large")
    left.number_input("Epochs", *state.LIMITS[state.FT_EPOCHS], step=1, key=state.FT_EPOCHS, persist_state="session")
    middle.select_slider("Learning rate", OPTIONS[state.FT_LR], key=state.FT_LR, persist_state="session")
    right.radio("Optimiser", OPTIONS[state.FT_OPTIMIZER], format_func=labels.OPTIMIZER_LABELS.get,
                key=state.FT_OPTIMIZER, persist_state="session", horizontal=True)
    left, middle, right = st.columns(3, gap="large")
    left.slider("Distillation from the parents (0 = labels only)", 0.0, 1.0, step=0.1, key=state.FT_DISTILL,
                persist_state="session", help="Weight of the parents' soft outputs in the loss.")
    middle.select_slider("Temperature", OPTIONS[state.FT_TEMPERATURE], key=state.FT_TEMPERATURE, persist_state="session",
                         disabled=state.FT_TEMPERATURE in off,
                         help="Higher values soften the parents' outputs more, exposing their ranking of the wrong "
                              "classes.")
    right.select_slider("Gradient-norm clip (0 = off)", OPTIONS[state.FT_CLIP], key=state.FT_CLIP, persist_state="session",
                        help="Each step's gradient is rescaled to at most this norm: a fused model's first steps can "
                             "otherwise knock it far from where fusion put it.")
    st.checkbox("Also finetune the parents for the same epochs (the fair baseline; three times the time)",
                key=state.FT_PARENTS, persist_state="session", disabled=state.FT_PARENTS in off,
                help="For two networks; with more, the fused model alone is finetuned.")


def compare() -> None:
    """Points per barrier curve and the short finetune every method gets."""
    left, right = st.columns(2)
    left.select_slider("Points per barrier curve", OPTIONS[state.CMP_POINTS], key=state.CMP_POINTS,
                       persist_state="session", help="Values of t from 0 (model A) to 1 (model B).")
    right.number_input("Finetuning epochs per method", *state.LIMITS[state.CMP_EPOCHS], step=1, key=state.CMP_EPOCHS,
                       persist_state="session", help="The same short finetune for every fused model (0: one-shot only).")


def network_label(choice: Choice, index: int, target: int | None = None) -> str:
    """"Network 2 — name", marked when it is the target."""
    return f"Network {index + 1} — {choice.refs[index].name}" + (" (target)" if index == target else "")


def viewed(choice: Choice, loaded: LoadedPair) -> None:
    """More than two networks: which one the pairwise views show against the target."""
    others = [k for k in range(len(choice.refs)) if k != loaded.target]
    st.selectbox("Network shown against the target", others, key=state.VIEW, persist_state="session",
                 format_func=lambda k: network_label(choice, k),
                 help=f"The heatmap, the balanced architecture and the plans are pairwise: the target, "
                      f"{network_label(choice, loaded.target)}, and the network chosen here.")


def target_and_weights(choice: Choice, loaded: LoadedPair) -> None:
    """More than two networks: the target (the networks balancing allows, or auto) and each one's weight."""
    allowed = allowed_references(loaded.models, st.session_state[state.BALANCE])
    st.selectbox("Target (the fused model takes its architecture)", [state.AUTO, *allowed], key=state.REFERENCE,
                 persist_state="session",
                 format_func=lambda k: f"auto — {network_label(choice, allowed[0])}" if k == state.AUTO
                 else network_label(choice, k),
                 help="Balancing brings every network to the target's depth: a deepest one with 'add', a shallowest "
                      "with 'merge'.")
    if st.session_state.pop(state.WEIGHTS_REFUSED, False):
        st.warning("The weights cannot all be zero; give at least one network a positive weight (they are back "
                   "as they were).", icon=":material/warning:")
    weights = state.network_weights(len(choice.refs)) or (1.0,) * len(choice.refs)
    for start in range(0, len(choice.refs), 3):
        for column, k in zip(st.columns(3), range(start, min(len(choice.refs), start + 3))):
            column.number_input(f"Weight of network {k + 1}", min_value=0.0, value=weights[k], step=0.5,
                                key=state.WEIGHT_KEYS[k], on_change=state.weights_changed, args=(len(choice.refs),),
                                help="Shares of the networks in the average (normalised; equal by default).")
