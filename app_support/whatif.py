"""The Alignment page's what-if matching: the user's own partner for every layer of B, chosen in select
boxes or by clicking a heatmap cell, checked and priced by the library; the Fusion page then uses it."""

from __future__ import annotations

import streamlit as st

from clafusion_core.errors import FusionError
from clafusion_core.pipeline import Alignment, FusionConfig

from . import cached, state, views
from .cached import LoadedPair
from .state import Choice

PENDING_CLICK = "alignment_pending_click"


def on_cell_click() -> None:
    """Remember the clicked cell (the heatmap's ``on_select``); :func:`apply_click` applies it."""
    points = st.session_state[state.HEATMAP]["selection"]["points"]
    cells = [p["customdata"] for p in points if p.get("customdata") is not None]
    if cells:
        st.session_state[PENDING_CLICK] = tuple(int(v) for v in cells[-1])


def apply_click(pair: Choice, dp: Alignment) -> None:
    """Match the clicked cell's pair of layers in the what-if (a cell across stages is refused)."""
    click = st.session_state.pop(PENDING_CLICK, None)
    if click is None or pair.many:
        return
    where = dp.locate_cell(*click)
    if where is None:
        st.warning("That cell pairs layers of different stages, which can never be matched; pick a cell "
                   "inside one of the diagonal blocks.")
        return
    stage, row, col = where
    mapping = [list(s) for s in (state.override(pair) or dp.optimal)]
    mapping[stage][col] = row
    state.set_override(pair, mapping)


def checked(pair: Choice, loaded: LoadedPair, config: FusionConfig) -> tuple[Alignment | None, str | None]:
    """The what-if matching priced on the cost matrix, or the library's sentence why it is not valid."""
    override = state.override(pair)
    if override is None:
        return None, None
    try:
        return cached.alignment(loaded, config.replace(mapping=override)), None
    except FusionError as exc:
        return None, str(exc)


def _on_pick(pair: Choice, base: list[list[int]], stage: int, unit: int, key: str) -> None:
    mapping = [list(s) for s in base]
    mapping[stage][unit] = st.session_state[key]
    state.set_override(pair, mapping, from_widget=True)


def _reset(pair: Choice) -> None:
    state.set_override(pair, None)


def editor(pair: Choice, loaded: LoadedPair, dp: Alignment, mine: Alignment | None, error: str | None) -> None:
    """One select box per layer of B (its partner in A), the matching's cost against the DP's, and a reset."""
    if pair.many:
        st.info("With more than two networks every one is aligned with the target by its own DP: a matching of "
                "your own applies to a pair of networks only.", icon=":material/info:")
        return
    override = state.override(pair)
    current = override if override is not None else dp.optimal
    slots = views.whatif_slots(loaded.model_a, loaded.model_b)
    rev = state.override_rev()
    per_row = max(1, min(len(slots), 4))
    for start in range(0, len(slots), per_row):
        for column, slot in zip(st.columns(per_row), slots[start:start + per_row]):
            key = f"whatif_{rev}_{slot.stage}_{slot.unit}"
            column.selectbox(slot.label, range(len(slot.partners)), index=int(current[slot.stage][slot.unit]), key=key,
                             format_func=slot.partners.__getitem__, on_change=_on_pick,
                             args=(pair, current, slot.stage, slot.unit, key))
    if override is None:
        st.info("Using the DP alignment, the optimum for this metric. Change a partner to try another matching.",
                icon=":material/info:")
    elif error:
        st.error(error, icon=":material/error:")
        st.caption("Until it is valid, the Fusion page cannot use it; fix it or go back to the DP alignment.")
    else:
        m1, m2 = st.columns(2)
        m1.metric("Your matching", f"{mine.total_cost:.3f}", delta=f"{mine.total_cost - mine.optimal_cost:+.3f} vs DP",
                  delta_color="inverse")
        m2.metric("DP optimum", f"{mine.optimal_cost:.3f}")
        if list(map(list, override)) == [list(s) for s in dp.optimal]:
            st.success("Your matching is the DP's.", icon=":material/check:")
    st.button("Back to the DP alignment", on_click=_reset, args=(pair,), disabled=override is None,
              icon=":material/undo:")
