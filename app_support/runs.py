"""Fusion runs the pages start: one place runs the library's pipeline with a progress bar, keeps the
result in the session, and says whether a page needs a run first."""

from __future__ import annotations

import streamlit as st

from clafusion_core import pipeline
from clafusion_core.pipeline import FusionConfig, FusionResult

from . import cached, state, ui
from .cached import LoadedPair
from .state import PairChoice


def fuse(pair: PairChoice, loaded: LoadedPair, config: FusionConfig) -> FusionResult:
    """Fuse the pair in use with ``config`` (a progress bar meanwhile; an error is one sentence and stops
    the page) and keep the result for every page."""
    bar = st.progress(0.0, text="starting")
    with ui.user_errors():
        model_a, model_b = cached.private_copies(loaded, config.device)
        fusion = pipeline.run_fusion(model_a, model_b, cached.splits(pair.dataset, pair.data_root), config,
                                     progress=ui.progress_callback(bar))
    bar.empty()
    state.store_result(pair, fusion)
    return fusion


def current(pair: PairChoice, config: FusionConfig) -> FusionResult | None:
    """The session's fusion of this pair if it was run with ``config``'s one-shot settings, else None."""
    fusion = state.result(pair)
    return fusion if fusion is not None and state.same_fusion(fusion.config, config) else None


def any_fusion(pair: PairChoice, loaded: LoadedPair) -> FusionResult:
    """The last fusion of this pair, whatever its settings; without one (the Finetune page needs a fused
    model) the pair is fused now with the Fusion page's settings, and the page says so."""
    fusion = state.result(pair)
    if fusion is None:
        st.info("There is no fused model for this pair yet, so it is fused now with the Fusion page's settings.",
                icon=":material/info:")
        fusion = fuse(pair, loaded, state.fusion_config(pair))
    return fusion
