"""The app's frame (router, sidebar) and the small UI pieces every page shares: headings with their
collapsed explanations, errors and progress bars."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import plotly.graph_objects as go
import streamlit as st

from clafusion_core import plots
from clafusion_core.devices import device_label
from clafusion_core.errors import FusionError

from . import labels, state
from .state import Choice

LOG = logging.getLogger("clafusion_app")


def router():
    """The app's frame, run once per rerun by ``app.py`` before the page: the registered pages
    (``labels.PAGES``, each at its own URL path), page config, the session's defaults, a shared link's
    settings and the sidebar. Returns the page to run.

    A page opened directly (a bookmark, a fresh session) goes through here too, so it works on its own;
    a shared link's settings are read before any widget is drawn.
    """
    pages = [st.Page(page.file, title=page.title, icon=page.icon, url_path=page.url_path or None,
                     default=key == "home") for key, page in labels.PAGES.items()]
    current = st.navigation(pages, position="sidebar")
    st.set_page_config(page_title=f"{current.title} · {labels.APP_NAME}", page_icon=labels.APP_ICON, layout="wide",
                       initial_sidebar_state="expanded")
    state.init()
    state.sync_url()
    ignored = st.session_state.pop(state.URL_IGNORED, None)
    if ignored:
        st.warning(f"This link's {', '.join(ignored)} could not be used, so the defaults stand in for "
                   f"{'it' if len(ignored) == 1 else 'them'}.", icon=":material/link_off:")
    _sidebar_summary()
    return current


def _sidebar_summary() -> None:
    """The pair in use and the compute device, in the sidebar under the navigation."""
    pair, fell_back = state.choice()
    with st.sidebar:
        st.caption("In use" + (" — the default, until you choose on Home" if fell_back else ""))
        st.markdown(f"{capitalised(pair.label)} · *{pair.dataset}*")
        st.caption(f"Compute: {device_label()}")


def page_header(key: str) -> None:
    """The page's title, its one-line caption and its collapsed explanation (``labels.PAGES[key]``)."""
    page = labels.PAGES[key]
    st.title(page.heading or page.title)
    st.caption(page.caption)
    with st.expander(f"What is this? {page.explain_title}", expanded=False, icon=":material/school:"):
        st.markdown(page.explain)


def next_page(key: str) -> None:
    """The link to the next step at the bottom of a page."""
    page = labels.PAGES[key]
    st.page_link(page.file, label=page.next_label, icon=":material/arrow_forward:")


def pair_note(pair: Choice, fell_back: bool) -> None:
    """Say which pair the page works on; a page opened first (bookmark, fresh session) says it uses
    the default demo pair."""
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


def live_curves(slot, epochs: int) -> Callable[[str, int, float], None]:
    """A finetune's ``on_epoch`` callback that redraws the validation curves in ``slot`` after every epoch."""
    curves: dict[str, list[float]] = {}

    def on_epoch(name: str, epoch: int, accuracy: float) -> None:
        curves.setdefault(labels.RUN_NAMES.get(name, name), []).append(accuracy)
        figure = accuracy_axis(plots.training_curves(curves, title="Validation accuracy — live"),
                               [v for run in curves.values() for v in run])
        figure.update_xaxes(range=[-0.5, epochs + 0.5])
        slot.plotly_chart(figure, width="stretch", theme=None, key=f"live_curve_{sum(map(len, curves.values()))}")

    return on_epoch


def capitalised(text: str) -> str:
    """``text`` with its first letter upper case (labels that open a line)."""
    return text[:1].upper() + text[1:]


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
