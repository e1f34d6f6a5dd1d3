"""Choosing the networks (a demo pair, uploads, local paths) and showing them side by side (Home).

A candidate choice is loaded and checked (models, their compatibility, the dataset) before it replaces
the one in use; on any error the message is shown and the choice in use stays as it was.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from clafusion_core import data, pipeline, plots, zoo
from clafusion_core.checkpoints import MAX_UPLOAD_BYTES

from . import cached, labels, state, ui, views
from .state import ModelRef, PairChoice


def choose() -> None:
    """The source radio and its widgets; a new valid choice becomes the one in use (and the app reruns, so
    the sidebar and the URL show it)."""
    st.radio("Where do the networks come from?", list(labels.SOURCES), format_func=labels.SOURCES.get,
             key=state.SOURCE_KIND, persist_state="session", horizontal=True)
    kind = st.session_state[state.SOURCE_KIND]
    current, _ = state.choice()
    uploaded: dict[str, bytes] = {}
    if kind == "demo":
        candidate = _demo_candidate()
    elif kind == "upload":
        candidate, uploaded = _upload_candidate()
    else:
        candidate = _paths_candidate()
    first = st.session_state.get(state.PAIR) is None
    if candidate is not None and (first or candidate.id != current.id) and _commit(candidate, uploaded):
        st.rerun()
    pair, _ = state.choice()
    if kind != pair.kind:
        st.caption(f"The app keeps using the {pair.label} until both networks load.")


def _dataset_inputs() -> tuple[str, str | None]:
    """The dataset widgets for uploaded / local networks."""
    left, right = st.columns([1, 2])
    left.selectbox("Dataset", data.DATASETS, format_func=labels.DATASET_LABELS.get, key=state.DATASET,
                   persist_state="session",
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
            file = st.file_uploader(f"Network {slot + 1}", type=labels.CHECKPOINT_TYPES, key=upload_key)
            st.text_input(labels.ARCH_SPEC, key=arch_key, persist_state="session",
                          placeholder=labels.ARCH_PLACEHOLDER,
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
            st.text_input(labels.ARCH_SPEC, key=arch_key, persist_state="session",
                          placeholder=labels.ARCH_PLACEHOLDER)
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


def _commit(candidate: PairChoice, uploaded: dict[str, bytes]) -> bool:
    """Load and check the candidate (models, their compatibility, the dataset); use it if all is well."""
    previous = st.session_state.get(state.UPLOADED)
    st.session_state[state.UPLOADED] = {**(previous or {}), **uploaded}  # load_model reads them here
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


def show(pair: PairChoice) -> None:
    """Both networks side by side (arch, depth, widths, parameters, test accuracy) and their boxes."""
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
