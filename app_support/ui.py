"""Small UI pieces every page shares: headings, the collapsed explanations, errors and progress bars."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import plotly.graph_objects as go
import streamlit as st

from clafusion_core.errors import FusionError

from clafusion_core.devices import device_label

from . import state
from .state import PairChoice

LOG = logging.getLogger("clafusion_app")

PAGES = [("app.py", "Home", ":material/home:"),
         ("pages/1_Alignment.py", "1 · Alignment", ":material/grid_on:"),
         ("pages/2_Fusion.py", "2 · Fusion", ":material/merge:"),
         ("pages/3_Finetune.py", "3 · Finetune", ":material/trending_up:"),
         ("pages/4_Compare.py", "4 · Compare", ":material/compare_arrows:")]


def setup_page(title: str) -> None:
    """First call of every page (and Home): page config, the session's defaults, the sidebar navigation.

    Every page does this itself, so a page opened directly (a bookmark, a fresh session) works on its own;
    a shared link's settings are read here, before any widget is drawn.
    """
    st.set_page_config(page_title=f"{title} · CLAFusion Explorer", page_icon=":material/merge:", layout="wide",
                       initial_sidebar_state="expanded")
    state.init()
    state.sync_url()
    ignored = st.session_state.pop(state.URL_IGNORED, None)
    if ignored:
        st.warning(f"This link's {', '.join(ignored)} could not be used, so the defaults stand in for "
                   f"{'it' if len(ignored) == 1 else 'them'}.", icon=":material/link_off:")
    with st.sidebar:
        st.markdown("### CLAFusion Explorer")
        for path, label, icon in PAGES:
            st.page_link(path, label=label, icon=icon)
        st.divider()


def sidebar_summary() -> None:
    """The pair in use and the compute device, at the bottom of the sidebar."""
    pair, fell_back = state.choice()
    with st.sidebar:
        st.caption("In use" + (" — the default, until you choose on Home" if fell_back else ""))
        st.markdown(f"{pair.label[0].upper() + pair.label[1:]} · *{pair.dataset}*")
        st.caption(f"Compute: {device_label()}")


def page_header(step: int | None, title: str, caption: str) -> None:
    st.title(f"{step} · {title}" if step is not None else title)
    st.caption(caption)


def explain(title: str, body: str) -> None:
    """A plain-language explanation of the page's step, collapsed by default."""
    with st.expander(f"What is this? {title}", expanded=False, icon=":material/school:"):
        st.markdown(body)


def pair_note(pair: PairChoice, fell_back: bool) -> None:
    """Say which pair the page works on; a page opened first (bookmark, fresh session) says it uses
    the default demo pair."""
    sidebar_summary()
    if fell_back:
        st.info(f"No networks were chosen yet, so this page uses the default {pair.label} on *{pair.dataset}*. "
                "Choose other networks on the Home page.", icon=":material/info:")


@contextmanager
def user_errors(stop: bool = True) -> Iterator[None]:
    """Show a library error as one ``st.error`` sentence (never a traceback); stop the page by default.

    ``FusionError`` messages say what to do. Anything else is a bug in the library or the app: the
    user gets one sentence and the traceback goes to the server log.
    """
    try:
        yield
    except FusionError as exc:
        st.error(str(exc), icon=":material/error:")
        if stop:
            st.stop()
    except Exception as exc:  # noqa: BLE001 — never show a traceback on the page
        LOG.exception("unexpected error in the app")
        st.error(f"Something unexpected went wrong ({type(exc).__name__}: {exc}); try other settings, and "
                 "please report it with the server log.", icon=":material/bug_report:")
        if stop:
            st.stop()


def progress_callback(bar, start: float = 0.0, end: float = 1.0) -> Callable[[float, str], None]:
    """A library progress callback that drives ``st.progress`` ``bar`` (updates at most every 1 %)."""
    last = {"value": -1.0, "text": None}

    def report(fraction: float, message: str) -> None:
        value = start + (end - start) * min(max(float(fraction), 0.0), 1.0)
        if value - last["value"] >= 0.01 or message != last["text"] and value >= last["value"]:
            last.update(value=value, text=message)
            bar.progress(value, text=message)

    return report


def chart(fig: go.Figure, **kwargs):
    """``st.plotly_chart`` with the app's defaults (full width, plotly's own colours, modebar on hover)."""
    kwargs.setdefault("theme", None)
    kwargs.setdefault("config", {"displaylogo": False})
    return st.plotly_chart(fig, width="stretch", **kwargs)


def accuracy_axis(fig: go.Figure, values: list[float]) -> go.Figure:
    """Show a curve of accuracies (fractions) as percentages on a range around them (not 0..1.5)."""
    if values:
        low, high = min(values), max(values)
        pad = max(0.01, 0.15 * (high - low))
        fig.update_yaxes(tickformat=".1%", range=[max(0.0, low - pad), min(1.0, high + pad) + 0.002])
    return fig


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
