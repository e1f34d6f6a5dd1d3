"""CLAFusion Explorer — Home: pick the two networks and the dataset, see both side by side.

``python3 -m streamlit run app.py``; the three steps are the pages in ``pages/`` (Streamlit's multipage
convention). Every page, this one included, starts with ``app_support.ui.setup_page`` (page config,
session defaults, sidebar navigation), so each also works when opened directly.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import cached, state, ui, views
from app_support.state import ModelRef, PairChoice
from clafusion_core import data, plots, pipeline, zoo
from clafusion_core.checkpoints import MAX_UPLOAD_BYTES

SOURCES = {"demo": "Demo pair", "upload": "Upload checkpoints", "paths": "Local paths"}
DATASET_LABELS = {"digits": "digits — built in, 8×8 (no files needed)", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                  "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
CHECKPOINT_TYPES = ["safetensors", "pt", "pth"]


# ------------------------------------------------------------------------------------------ choosing

def _dataset_inputs() -> tuple[str, str | None]:
    """The dataset widgets for uploaded / local networks."""
    left, right = st.columns([1, 2])
    left.selectbox("Dataset", data.DATASETS, format_func=DATASET_LABELS.get, key=state.DATASET, persist_state="session",
                   help="The dataset both networks were trained on: its test split gives the accuracies, its "
                        "validation split the probe batch.")
    dataset = st.session_state[state.DATASET]
    right.text_input("Dataset folder", key=state.DATA_ROOT, persist_state="session", disabled=dataset == "digits",
                     placeholder="not needed for digits" if dataset == "digits" else "e.g. ~/data",
                     help="A local folder in torchvision's layout (MNIST/raw, FashionMNIST/raw, "
                          "cifar-10-batches-py, cifar-100-python) or the four MNIST-style *-ubyte(.gz) files. "
                          "Nothing is downloaded.")
    root = st.session_state[state.DATA_ROOT].strip() if dataset != "digits" else ""
    return dataset, (str(Path(root).expanduser()) if root else None)


def _demo_candidate() -> PairChoice:
    st.selectbox("Demo pair", list(zoo.DEMO_PAIRS), key=state.DEMO_KEY, persist_state="session",
                 format_func=lambda key: zoo.DEMO_PAIRS[key].title)
    pair = zoo.DEMO_PAIRS[st.session_state[state.DEMO_KEY]]
    st.caption(f"{pair.description} `{pair.arch_a}` vs `{pair.arch_b}`, trained on *{pair.dataset}*. "
               "The first use trains the pair (seconds to a minute); later uses read it from the disk cache.")
    return state.demo_choice(pair.key)


def _upload_candidate() -> tuple[PairChoice | None, dict[str, bytes]]:
    st.caption(f"`.safetensors` (as exported by this app or the CLI) or PyTorch `.pt` / `.pth` state_dicts, "
               f"up to {MAX_UPLOAD_BYTES // 2**20} MB each. Pickled code is never run.")
    refs, uploaded = [], {}
    for slot, (column, upload_key, arch_key) in enumerate(zip(st.columns(2), (state.UPLOAD_A, state.UPLOAD_B),
                                                             (state.ARCH_A, state.ARCH_B))):
        with column:
            file = st.file_uploader(f"Network {slot + 1}", type=CHECKPOINT_TYPES, key=upload_key)
            st.text_input("Arch spec (only if it cannot be read from the file)", key=arch_key, persist_state="session",
                          placeholder="e.g. mlp:400-200-100 or resnet18",
                          help="Needed only for .pt files whose layout is not recognised.")
            if file is not None:
                content = file.getvalue()
                key = cached.upload_key(content)
                uploaded[key] = content
                refs.append(ModelRef("upload", file.name, key, arch=st.session_state[arch_key].strip() or None,
                                     slot=slot))
    dataset, root = _dataset_inputs()
    if len(refs) < 2:
        return None, uploaded
    label = f"uploaded {refs[0].name} and {refs[1].name}"
    return PairChoice("upload", tuple(refs), dataset, root, label), uploaded  # type: ignore[arg-type]


def _paths_candidate() -> PairChoice | None:
    refs = []
    for slot, (column, path_key, arch_key) in enumerate(zip(st.columns(2), (state.PATH_A, state.PATH_B),
                                                           (state.ARCH_A, state.ARCH_B))):
        with column:
            st.text_input(f"Network {slot + 1} — checkpoint path", key=path_key, persist_state="session",
                          placeholder="/path/to/model.safetensors")
            st.text_input("Arch spec (only if it cannot be read from the file)", key=arch_key, persist_state="session",
                          placeholder="e.g. mlp:400-200-100 or resnet18")
            path = st.session_state[path_key].strip()
            if path:
                with ui.user_errors(stop=False):
                    expanded = str(Path(path).expanduser())
                    refs.append(ModelRef("path", path, cached.path_key(expanded),
                                         arch=st.session_state[arch_key].strip() or None, slot=slot, path=expanded))
    dataset, root = _dataset_inputs()
    if len(refs) < 2:
        return None
    return PairChoice("paths", tuple(refs), dataset, root, f"{refs[0].name} and {refs[1].name}")  # type: ignore[arg-type]


def _commit(candidate: PairChoice, uploaded: dict[str, bytes] | None = None) -> bool:
    """Load and check the candidate pair (models, their compatibility, the dataset); use it if all is well.

    On any error the message is shown and the pair in use stays as it was.
    """
    previous = st.session_state.get(state.UPLOADED)
    st.session_state[state.UPLOADED] = {**(previous or {}), **(uploaded or {})}  # load_model reads them here
    ok = False
    with ui.user_errors(stop=False):
        cached.load_pair(candidate)
        cached.splits(candidate.dataset, candidate.data_root)
        ok = True
    if ok:
        state.set_choice(candidate, uploaded)
    else:
        st.session_state[state.UPLOADED] = previous or {}
    return ok


# ---------------------------------------------------------------------------------------- showing

def _model_card(title: str, ref: ModelRef, model, pair: PairChoice) -> None:
    description = pipeline.describe_model(model)
    st.markdown(f"#### {title}")
    st.caption(ref.name)
    c1, c2, c3 = st.columns(3)
    c1.metric("Depth", description["depth"], help="Alignable layers (hidden layers, conv layers or residual blocks).")
    c2.metric("Parameters", f"{description['params']:,}")
    with ui.user_errors(stop=False):
        c3.metric("Test accuracy", ui.percent(cached.test_accuracy(ref, model, pair)))
    st.markdown(f"**Arch** `{description['arch']}`")
    st.markdown(f"**Widths per layer** {views.widths_text(model)}")


def _show_pair(pair: PairChoice) -> None:
    with ui.user_errors():
        loaded = cached.load_pair(pair)
    left, right = st.columns(2, gap="large")
    with left:
        _model_card("A — the deeper network", loaded.ref_a, loaded.model_a, pair)
    with right:
        _model_card("B — the shallower network", loaded.ref_b, loaded.model_b, pair)
    if loaded.swapped:
        st.caption("Network 2 is the deeper one, so it plays model A (the rows of the cost matrix).")
    fig = plots.architecture_diagram(views.stage_widths(loaded.model_a), views.stage_widths(loaded.model_b))
    ui.chart(fig, key="home_architecture")
    st.caption("Each box is one alignable layer, its height growing with the layer's width (the number on it). "
               "Step 1 decides which box of A each box of B is matched to.")


def home() -> None:
    ui.page_header(None, "CLAFusion Explorer",
                   "Fuse two trained neural networks — even of different depth and width — by cross-layer "
                   "alignment, layer balancing and optimal transport, and see every step.")
    ui.explain("How does fusing networks of different depth work?", """
Two networks trained on the same task learn similar features, but in different neurons and, if they have
different depths, in different layers. **CLAFusion** fuses them in three steps:

1. **Alignment** — compare every layer of the deeper network *A* with every layer of the shallower *B* on a
   shared batch of inputs (a *cost matrix*), and find by dynamic programming the order-preserving matching of
   B's layers to A's layers with the smallest total cost.
2. **Fusion** — make B as deep as A by inserting *identity layers* where A has an unmatched layer (they
   change nothing), then fuse the two equally deep networks layer by layer with *optimal transport*, which
   pairs up similar neurons before averaging the weights.
3. **Finetune** — a few epochs of training recover most of what the one-shot fusion loses.
""")
    st.subheader("Choose the two networks")
    st.radio("Where do the networks come from?", list(SOURCES), format_func=SOURCES.get, key=state.SOURCE_KIND, persist_state="session",
             horizontal=True)
    kind = st.session_state[state.SOURCE_KIND]
    current, _ = state.choice()
    if kind == "demo":
        candidate = _demo_candidate()
        if st.session_state.get(state.PAIR) is None or candidate.id != current.id:
            _commit(candidate)
    elif kind == "upload":
        candidate, uploaded = _upload_candidate()
        if candidate is not None and candidate.id != current.id:
            _commit(candidate, uploaded)
    else:
        candidate = _paths_candidate()
        if candidate is not None and candidate.id != current.id:
            _commit(candidate)
    pair, _ = state.choice()
    if kind != pair.kind:
        st.caption(f"The app keeps using the {pair.label} until both networks load.")

    ui.sidebar_summary()

    st.subheader("The pair in use")
    st.markdown(f"**{pair.label[0].upper() + pair.label[1:]}** on *{pair.dataset}*")
    _show_pair(pair)
    st.page_link("pages/1_Alignment.py", label="Next: 1 · Alignment — match the layers", icon=":material/arrow_forward:")


# ----------------------------------------------------------------------------------------- the app

ui.setup_page("Home")
home()
