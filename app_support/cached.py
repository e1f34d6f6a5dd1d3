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

import streamlit as st
from torch import nn

from clafusion_core import checkpoints, data, pipeline, train, zoo
from clafusion_core.checkpoints import CheckpointInfo
from clafusion_core.devices import resolve_device
from clafusion_core.errors import CheckpointError, FusionError
from clafusion_core.pipeline import Alignment, FusionConfig
from clafusion_core.similarity import METRIC_LABELS, METRICS
from clafusion_core.validation import regular_file_stat

from . import state, ui
from .state import ModelRef, PairChoice

_TRAINING = threading.Lock()


@dataclass
class LoadedPair:
    """The pair in alignment order: A is the deeper network (rows of the cost matrix)."""

    model_a: nn.Module
    model_b: nn.Module
    ref_a: ModelRef
    ref_b: ModelRef
    swapped: bool
    info: tuple[CheckpointInfo | None, CheckpointInfo | None] = (None, None)


# ---------------------------------------------------------------------------------------------- models

@st.cache_resource(show_spinner=False)
def _demo_store() -> dict[str, tuple[nn.Module, nn.Module]]:
    """Demo pairs loaded in this server process (a dict, so first-time training can show progress)."""
    return {}


def demo_pair(key: str) -> tuple[nn.Module, nn.Module]:
    """The two models of a demo pair; the first use trains them (with a progress bar) or reads the disk cache."""
    store = _demo_store()
    if key not in store:
        with _TRAINING:
            if key not in store and zoo.is_cached(key):
                store[key] = zoo.load_demo_pair(key)  # on disk: instant, no status box
            if key not in store:
                pair = zoo.DEMO_PAIRS[key]
                slot = st.empty()  # the status disappears once the pair is there
                with slot.status(f"Loading the demo pair “{pair.title}” — trained once on first use (seconds to "
                                 "a minute), then read from the disk cache…", expanded=True):
                    bar = st.progress(0.0, text="starting")
                    store[key] = zoo.load_demo_pair(key, progress=ui.progress_callback(bar))
                slot.empty()
    return store[key]


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
    """One network of a pair (raises FusionError subclasses for anything a user can get wrong)."""
    if ref.kind == "demo":
        return demo_pair(ref.demo)[ref.slot], None
    if ref.kind == "upload":
        source = state.uploaded_bytes(ref.key)
        if source is None:
            raise CheckpointError(f"{ref.name} is no longer in this session; upload it again on the Home page.")
        return _checkpoint(ref.key, ref.name, ref.arch, dataset, source)
    return _checkpoint(ref.key, os.path.basename(ref.path), ref.arch, dataset, ref.path)


def load_pair(pair: PairChoice) -> LoadedPair:
    """Both networks, checked to be fusable (same family, inputs and classes), the deeper one first."""
    (first, info_first), (second, info_second) = (load_model(ref, pair.dataset) for ref in pair.refs)
    model_a, model_b, swapped = pipeline.order_pair(first, second)
    ref_a, ref_b = pair.refs[::-1] if swapped else pair.refs
    infos = (info_second, info_first) if swapped else (info_first, info_second)
    return LoadedPair(model_a, model_b, ref_a, ref_b, swapped, infos)


def pair_in_use() -> tuple[PairChoice, LoadedPair]:
    """Every page's start: the pair in use (saying so when it is the default) and its loaded models; a
    loading error is one sentence and stops the page."""
    pair, fell_back = state.choice()
    ui.pair_note(pair, fell_back)
    with ui.user_errors():
        return pair, load_pair(pair)


def private_copies(loaded: LoadedPair, device: str) -> tuple[nn.Module, nn.Module]:
    """The parents to hand to a run: the shared cached models on the CPU, copies for an accelerator
    (evaluation moves a model to the device in place, which would move the cached one too)."""
    if resolve_device(device).type == "cpu":
        return loaded.model_a, loaded.model_b
    return copy.deepcopy(loaded.model_a), copy.deepcopy(loaded.model_b)


# -------------------------------------------------------------------------------------------- datasets

@st.cache_resource(show_spinner="Loading the dataset…")
def splits(dataset: str, root: str | None) -> data.DataSplits:
    return data.load_dataset(dataset, root or None)


@st.cache_data(show_spinner=False, max_entries=64)
def _test_accuracy(model_key: str, dataset: str, root: str | None, _model: nn.Module,
                   _splits: data.DataSplits) -> float:
    return train.evaluate(_model, _splits.test)


def test_accuracy(ref: ModelRef, model: nn.Module, pair: PairChoice) -> float:
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
