"""Cached wrappers around the library's stages, keyed by what determines each result.

* models — ``st.cache_resource`` keyed by the demo pair, the upload's sha256 or the file's path+mtime;
* datasets — ``st.cache_resource`` keyed by name and root;
* activations — ``st.cache_data`` keyed by the model's key and the probe settings only, so switching the
  cost metric never recomputes them;
* alignments — ``st.cache_data`` keyed by both models' keys and the alignment settings (metric, pins,
  the what-if matching).

Arguments with a leading underscore are the heavy objects themselves and are not hashed: the key
arguments in front of them stand for them. Nothing here calls ``st.*`` inside a cached function (a
cached function's elements are replayed on every hit), so progress of first-time training is shown
around the cache, not inside it.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from torch import nn

from clafusion_core import checkpoints, data, pipeline, train, zoo
from clafusion_core.balancing import balance_methods
from clafusion_core.checkpoints import CheckpointInfo
from clafusion_core.devices import resolve_device
from clafusion_core.many import allowed_references
from clafusion_core.errors import CheckpointError, FusionError
from clafusion_core.pipeline import Alignment, FusionConfig
from clafusion_core.similarity import METRIC_LABELS, METRICS
from clafusion_core.validation import regular_file_stat

from . import state, ui
from .state import ModelRef, Choice

_TRAINING = threading.Lock()


@dataclass
class LoadedPair:
    """Two networks in alignment order: A is the deeper (rows of the cost matrix). For more than two
    networks, the target and the network viewed against it; ``models`` are all of them, in the order given."""

    model_a: nn.Module
    model_b: nn.Module
    ref_a: ModelRef
    ref_b: ModelRef
    swapped: bool
    models: list[nn.Module]
    target: int = 0            # N networks: the target's index in ``models``
    viewed: int = 1            # N networks: the index of the one shown against it

    @property
    def pair(self) -> list[nn.Module]:
        return [self.model_a, self.model_b]


# ---------------------------------------------------------------------------------------------- models

@st.cache_resource(show_spinner=False)
def _demo_store() -> dict[tuple[str, str], tuple[nn.Module, ...]]:
    """Demo pairs and sets loaded in this server process (a dict, so first-time training can show progress)."""
    return {}


def demo_models(kind: str, key: str) -> tuple[nn.Module, ...]:
    """The models of a demo pair (``kind`` "demo") or set ("set"); the first use trains them (with a progress
    bar) or reads the disk cache."""
    store, entry = _demo_store(), (kind, key)
    load = zoo.load_demo_pair if kind == "demo" else zoo.load_demo_set
    if entry not in store:
        with _TRAINING:
            if entry not in store and zoo.is_cached(key, kind == "set"):
                store[entry] = tuple(load(key))  # on disk: instant, no status box
            if entry not in store:
                title = (zoo.DEMO_PAIRS if kind == "demo" else zoo.DEMO_SETS)[key].title
                slot = st.empty()  # the status disappears once the models are there
                with slot.status(f"Loading the demo {'pair' if kind == 'demo' else 'set'} “{title}” — trained once on "
                                 "first use (seconds to a minute), then read from the disk cache…", expanded=True):
                    bar = st.progress(0.0, text="starting")
                    store[entry] = tuple(load(key, progress=ui.progress_callback(bar)))
                slot.empty()
    return store[entry]


@st.cache_resource(max_entries=16, show_spinner="Reading the checkpoint…")
def _checkpoint(key: str, name: str, arch: str | None, dataset: str,
                _source: bytes | str) -> tuple[nn.Module, CheckpointInfo]:
    return checkpoints.load_checkpoint(_source, arch=arch or None, dataset=dataset, name=name)


def upload_key(data_bytes: bytes) -> str:
    return hashlib.sha256(data_bytes).hexdigest()


def path_key(path: str) -> str:
    """A cache key that changes when the file does (absolute path, mtime, size).

    The path must name a regular file: a FIFO would block the server forever and ``/dev/zero``
    would be read until memory runs out, so both are refused here, before anything opens them.
    """
    absolute = os.path.abspath(os.path.expanduser(path))
    stat = regular_file_stat(absolute, "checkpoint", CheckpointError)
    return f"path:{absolute}:{stat.st_mtime_ns}:{stat.st_size}"


def load_model(ref: ModelRef, dataset: str) -> tuple[nn.Module, CheckpointInfo | None]:
    """One network of the choice (raises FusionError subclasses for anything a user can get wrong)."""
    if ref.kind in ("demo", "set"):
        return demo_models(ref.kind, ref.demo)[ref.slot], None
    if ref.kind == "upload":
        source = state.uploaded_bytes(ref.key)
        if source is None:
            raise CheckpointError(f"{ref.name} is no longer in this session; upload it again on the Home page.")
        return _checkpoint(ref.key, ref.name, ref.arch, dataset, source)
    return _checkpoint(ref.key, os.path.basename(ref.path), ref.arch, dataset, ref.path)


def load_networks(choice: Choice) -> list[nn.Module]:
    """Every network of the choice, checked to be fusable with the first (same family, inputs and classes);
    an error names the network that does not fit."""
    models = [load_model(ref, choice.dataset)[0] for ref in choice.refs]
    for ref, model in zip(choice.refs[1:], models[1:]):
        try:
            pipeline.order_pair(models[0], model)
        except FusionError as exc:
            raise type(exc)(f"{ref.name}: {exc}") from None
    return models


def load_pair(choice: Choice) -> LoadedPair:
    """The networks of the choice, and the pair the pairwise views show: both networks of a pair, or the
    target (``many.allowed_references`` under the balancing in use) and the network viewed against it."""
    models = load_networks(choice)
    state.balance_options(balance_methods(models[0]))
    target = state.target(models, allowed_references(models, st.session_state[state.BALANCE])) if choice.many else 0
    viewed = state.viewed(len(models), target) if choice.many else 1
    model_a, model_b, swapped = pipeline.order_pair(models[target], models[viewed])
    ref_a, ref_b = (choice.refs[viewed], choice.refs[target]) if swapped else (choice.refs[target], choice.refs[viewed])
    return LoadedPair(model_a, model_b, ref_a, ref_b, swapped, models, target, viewed)


def path_ref(path: str, arch: str | None, slot: int) -> ModelRef:
    """A local checkpoint as a network of the choice (a path that is not a regular file is refused here)."""
    expanded = str(Path(path).expanduser())
    return ModelRef("path", path, path_key(expanded), arch=arch, slot=slot, path=expanded)


def files_choice(kind: str, refs: list[ModelRef], dataset: str, root: str | None) -> Choice:
    """Uploaded (``kind`` "upload") or local ("paths") networks, two or more, on ``dataset``."""
    names = ", ".join(r.name for r in refs[:-1]) + f" and {refs[-1].name}"
    return Choice(kind, tuple(refs), dataset, root, ("uploaded " if kind == "upload" else "") + names)


def commit(candidate: Choice, uploaded: dict[str, bytes] | None = None) -> bool:
    """Load and check the candidate (models, their compatibility, the dataset); use it if all is well, else
    show the sentence and keep the choice in use."""
    previous = st.session_state.get(state.UPLOADED)
    st.session_state[state.UPLOADED] = {**(previous or {}), **(uploaded or {})}  # load_model reads them here
    ok = False
    with ui.user_errors(stop=False):
        load_networks(candidate)
        splits(candidate.dataset, candidate.data_root)
        ok = True
    if ok:
        state.set_choice(candidate, uploaded)
    else:
        st.session_state[state.UPLOADED] = previous or {}
    return ok


def _linked_paths() -> Choice | None:
    """The local networks a shared link names (``src=paths``), when no choice was made in this session."""
    refs = []
    for slot in range(st.session_state[state.NETWORKS]):
        path = st.session_state[state.PATH_KEYS[slot]].strip()
        if path:
            refs.append(path_ref(path, st.session_state[state.ARCH_KEYS[slot]].strip() or None, slot))
    return files_choice("paths", refs, st.session_state[state.DATASET], state.data_root()) if len(refs) >= 2 else None


def pair_in_use() -> tuple[Choice, LoadedPair]:
    """Every page's start: the networks in use (saying so when they are the default; a shared link's local
    networks are loaded first) and the loaded models; a loading error is one sentence and stops the page."""
    choice, fell_back = state.choice()
    if fell_back and st.session_state[state.SOURCE_KIND] == "paths":
        with ui.user_errors(stop=False):
            linked = _linked_paths()
            if linked is not None and commit(linked):
                choice, fell_back = linked, False
    ui.pair_note(choice, fell_back)
    with ui.user_errors():
        return choice, load_pair(choice)


def private_copies(models: list[nn.Module], device: str) -> list[nn.Module]:
    """The parents to hand to a run: the shared cached models on the CPU, copies for an accelerator
    (evaluation moves a model to the device in place, which would move the cached one too)."""
    return list(models) if resolve_device(device).type == "cpu" else [copy.deepcopy(m) for m in models]


# -------------------------------------------------------------------------------------------- datasets

@st.cache_resource(show_spinner="Loading the dataset…")
def splits(dataset: str, root: str | None) -> data.DataSplits:
    return data.load_dataset(dataset, root or None)


@st.cache_data(show_spinner=False, max_entries=64)
def _test_accuracy(model_key: str, dataset: str, root: str | None, _model: nn.Module,
                   _splits: data.DataSplits) -> float:
    return train.evaluate(_model, _splits.test)


def test_accuracy(ref: ModelRef, model: nn.Module, pair: Choice) -> float:
    return _test_accuracy(ref.key, pair.dataset, pair.data_root, model, splits(pair.dataset, pair.data_root))


# ----------------------------------------------------------------------------- activations, alignment

@st.cache_data(show_spinner="Recording activations on the probe batch…", max_entries=32)
def _activations(model_key: str, probe_key: tuple, _model: nn.Module, _splits: data.DataSplits,
                 _config: FusionConfig):
    probe = pipeline.probe_inputs(_splits, _config)
    return pipeline.compute_activations(_model, probe, _config)


def activations(model_key: str, model: nn.Module, config: FusionConfig):
    """Per-stage unit activations; cached by model and probe settings (not by metric)."""
    return _activations(model_key, config.activations_key(), model, splits(config.probe.dataset, config.probe.data_root), config)


@st.cache_data(show_spinner="Computing the cost matrix…", max_entries=256)
def _alignment(key_a: str, key_b: str, config_key: str, _acts_a, _acts_b, _model_a: nn.Module,
               _config: FusionConfig) -> Alignment:
    return pipeline.compute_alignment(_acts_a, _acts_b, _model_a, _config)


def alignment(loaded: LoadedPair, config: FusionConfig) -> Alignment:
    """Cost matrix and DP alignment (and the what-if matching in ``config.alignment.mapping``, validated).

    The activations come from their own cache first, so a new metric only computes its cost matrix."""
    acts_a = activations(loaded.ref_a.key, loaded.model_a, config)
    acts_b = activations(loaded.ref_b.key, loaded.model_b, config)
    return _alignment(loaded.ref_a.key, loaded.ref_b.key, repr((config.probe, config.alignment)), acts_a, acts_b, loaded.model_a, config)



def every_metric(loaded: LoadedPair, config: FusionConfig, progress) -> tuple[dict[str, Alignment], dict[str, str]]:
    """The alignment under every cost metric, the chosen one first (each cached; the activations are
    shared), and the sentence of each metric that failed."""
    order = [config.alignment.cost] + [m for m in METRICS if m != config.alignment.cost]
    alignments, failed = {}, {}
    for k, metric in enumerate(order):
        progress(k / len(order), f"cost matrix: {METRIC_LABELS[metric]}")
        try:
            alignments[metric] = alignment(loaded, config.replace(cost=metric))
        except FusionError as exc:
            failed[metric] = str(exc)
    return alignments, failed
