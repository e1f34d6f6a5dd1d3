"""Fusion runs the pages start: one place runs the library's pipeline with a progress bar, keeps the
result in the session, and says whether a page needs a run first."""

from __future__ import annotations

import streamlit as st

from clafusion_core import many, pipeline
from clafusion_core.pipeline import FusionConfig

from . import cached, state, ui
from .cached import LoadedPair
from .state import Choice


def fuse(choice: Choice, loaded: LoadedPair, config: FusionConfig):
    """Fuse the networks in use with ``config`` — a pair with the pipeline, more onto their target with
    ``many.fuse_many`` — with a progress bar meanwhile (an error is one sentence and stops the page), and
    keep the result for every page."""
    bar = st.progress(0.0, text="starting")
    splits = cached.splits(choice.dataset, choice.data_root)
    with ui.user_errors():
        if choice.many:
            fusion = many.fuse_many(cached.private_copies(loaded.models, config.device), splits, config,
                                    progress=ui.progress_callback(bar))
        else:
            fusion = pipeline.run_fusion(*cached.private_copies(loaded.pair, config.device),
                                         splits, config, progress=ui.progress_callback(bar))
    bar.empty()
    state.store_result(choice, fusion)
    return fusion


def current(pair: Choice, config: FusionConfig):
    """The session's fusion of these networks if it was run with ``config``'s one-shot settings, else None."""
    fusion = state.result(pair)
    return fusion if fusion is not None and state.same_fusion(fusion.config, config) else None


def any_fusion(pair: Choice, loaded: LoadedPair):
    """The last fusion of this pair, whatever its settings; without one (the Finetune page needs a fused
    model) the pair is fused now with the Fusion page's settings, and the page says so."""
    fusion = state.result(pair)
    if fusion is None:
        st.info("There is no fused model of these networks yet, so they are fused now with the Fusion page's "
                "settings.",
                icon=":material/info:")
        fusion = fuse(pair, loaded, state.fusion_config(pair))
    return fusion
