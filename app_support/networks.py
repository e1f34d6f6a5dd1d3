"""Choosing the networks (a demo pair or set, uploads, local paths: two to six) and showing them side by
side (Home).

A candidate choice is loaded and checked (``cached.commit``: models, their compatibility, the dataset)
before it replaces the one in use; on any error the message is shown and the choice in use stays as it was.
"""

from __future__ import annotations

import streamlit as st

from clafusion_core import data, pipeline, plots, zoo
from clafusion_core.checkpoints import MAX_UPLOAD_BYTES

from . import cached, labels, state, ui, views
from .state import ModelRef, Choice


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
    elif kind == "set":
        candidate = _set_candidate()
    else:
        candidate, uploaded = _files_candidate(kind)
    first = st.session_state.get(state.CHOICE) is None
    if candidate is not None and (first or candidate.id != current.id) and cached.commit(candidate, uploaded):
        st.rerun()
    pair, _ = state.choice()
    if kind != pair.kind:
        st.caption(f"The app keeps using the {pair.label} until at least two networks load.")


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
    return dataset, state.data_root()


def _demo_candidate() -> Choice:
    st.selectbox("Demo pair", list(zoo.DEMO_PAIRS), key=state.DEMO_KEY, persist_state="session",
                 format_func=lambda key: zoo.DEMO_PAIRS[key].title)
    pair = zoo.DEMO_PAIRS[st.session_state[state.DEMO_KEY]]
    st.caption(f"{pair.description} `{pair.arch_a}` vs `{pair.arch_b}`, trained on *{pair.dataset}*. "
               "The first use trains the pair (seconds to a minute); later uses read it from the disk cache.")
    return state.demo_choice(pair.key)


def _set_candidate() -> Choice:
    st.selectbox("Demo set", list(zoo.DEMO_SETS), key=state.SET_KEY, persist_state="session",
                 format_func=lambda key: zoo.DEMO_SETS[key].title)
    demo = zoo.DEMO_SETS[st.session_state[state.SET_KEY]]
    st.caption(f"{demo.description} " + ", ".join(f"`{a}`" for a in demo.archs) + f", trained on *{demo.dataset}*. "
               "The first use trains the set (seconds); later uses read it from the disk cache.")
    return state.demo_set_choice(demo.key)


def _files_candidate(kind: str) -> tuple[Choice | None, dict[str, bytes]]:
    """Uploads (``kind`` "upload") or local paths ("paths"): one slot per network, two to
    :data:`state.MAX_NETWORKS`; the filled slots (at least two) are the candidate."""
    if kind == "upload":
        st.caption(f"`.safetensors` (as exported by this app or the CLI) or PyTorch `.pt` / `.pth` state_dicts, "
                   f"up to {MAX_UPLOAD_BYTES // 2**20} MB each. Pickled code is never run.")
    count, refs, uploaded = st.session_state[state.NETWORKS], [], {}
    for start in range(0, count, 3):
        for column, slot in zip(st.columns(3), range(start, min(count, start + 3))):
            with column:
                ref, content = _slot(kind, slot)
            if ref is not None:
                refs.append(ref)
                if content is not None:
                    uploaded[ref.key] = content
    add, remove, _ = st.columns([1, 1, 2])
    add.button("Add a network", icon=":material/add:", on_click=_resize, args=(1,),
               disabled=count >= state.MAX_NETWORKS, help=f"Fuse up to {state.MAX_NETWORKS} networks onto one target.")
    remove.button("Remove the last", icon=":material/remove:", on_click=_resize, args=(-1,), disabled=count <= 2)
    dataset, root = _dataset_inputs()
    return (cached.files_choice(kind, refs, dataset, root) if len(refs) >= 2 else None), uploaded


def _resize(step: int) -> None:
    st.session_state[state.NETWORKS] += step


def _slot(kind: str, slot: int) -> tuple[ModelRef | None, bytes | None]:
    """One network's widgets (a file uploader or a path, and its optional arch spec) and what they name."""
    arch_key = state.ARCH_KEYS[slot]
    if kind == "upload":
        file = st.file_uploader(f"Network {slot + 1}", type=labels.CHECKPOINT_TYPES, key=state.UPLOAD_KEYS[slot])
    else:
        st.text_input(f"Network {slot + 1} — checkpoint path", key=state.PATH_KEYS[slot], persist_state="session",
                      placeholder="/path/to/model.safetensors")
    st.text_input(labels.ARCH_SPEC, key=arch_key, persist_state="session", placeholder=labels.ARCH_PLACEHOLDER,
                  help="Needed only for .pt files whose layout is not recognised.")
    arch = st.session_state[arch_key].strip() or None
    if kind == "upload":
        if file is None:
            return None, None
        content = file.getvalue()
        return ModelRef("upload", file.name, cached.upload_key(content), arch=arch, slot=slot), content
    path = st.session_state[state.PATH_KEYS[slot]].strip()
    if path:
        with ui.user_errors(stop=False):
            return cached.path_ref(path, arch, slot), None
    return None, None


# ---------------------------------------------------------------------------------------- showing

def _model_card(title: str, ref: ModelRef, model, choice: Choice) -> None:
    description = pipeline.describe_model(model)
    st.markdown(f"#### {title}")
    st.caption(ref.name)
    c1, c2, c3 = st.columns(3)
    c1.metric("Depth", description["depth"], help="Alignable layers (hidden layers, conv layers or residual blocks).")
    c2.metric("Parameters", f"{description['params']:,}")
    with ui.user_errors(stop=False):
        c3.metric("Test accuracy", ui.percent(cached.test_accuracy(ref, model, choice)))
    st.markdown(f"**Arch** `{description['arch']}`")
    st.markdown(f"**Widths per layer** {views.widths_text(model)}")


def show(choice: Choice) -> None:
    """The networks side by side (arch, depth, widths, parameters, test accuracy); for a pair, their boxes."""
    with ui.user_errors():
        loaded = cached.load_pair(choice)
    if choice.many:
        for start in range(0, len(choice.refs), 2):   # two cards a row, as wide as a pair's
            for column, k in zip(st.columns(2, gap="large"), range(start, min(len(choice.refs), start + 2))):
                with column:
                    _model_card(f"Network {k + 1}", choice.refs[k], loaded.models[k], choice)
        st.caption("Each network is aligned and balanced onto one target (the first, or the deepest, by default; "
                   "choose it and the weights on the Fusion page) and then averaged with the others.")
        return
    left, right = st.columns(2, gap="large")
    with left:
        _model_card("A — the deeper network", loaded.ref_a, loaded.model_a, choice)
    with right:
        _model_card("B — the shallower network", loaded.ref_b, loaded.model_b, choice)
    if loaded.swapped:
        st.caption("Network 2 is the deeper one, so it plays model A (the rows of the cost matrix).")
    fig = plots.architecture_diagram(views.stage_widths(loaded.model_a), views.stage_widths(loaded.model_b))
    ui.chart(fig, key="home_architecture")
    st.caption("Each box is one alignable layer, its height growing with the layer's width (the number on it). "
               "Step 1 decides which box of A each box of B is matched to.")
