"""The Compare page's sections: each runs one library comparison with a progress bar (and a live view),
keeps its result for what determined it, and draws it with its JSON download."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from clafusion_core import bundle, compare, plots
from clafusion_core.config import FusionConfig
from clafusion_core.similarity import METRIC_LABELS

from . import state, ui


def run(section: str, determinant: tuple, first: str, work: Callable) -> None:
    """``work(progress, live)`` with a progress bar and an empty slot for a live view; its result is kept
    as ``section``'s for ``determinant`` (an error is one sentence and stops the page)."""
    bar, live = st.progress(0.0, text=first), st.empty()
    with ui.user_errors():
        state.store_compare_result(section, determinant, work(ui.progress_callback(bar), live))
    bar.empty()
    live.empty()


def live_barrier(live) -> Callable[[str, float, float, float], None]:
    """An ``on_point`` callback that redraws the barrier curves in ``live`` point by point."""
    drawn: dict[str, tuple[list, list, list]] = {}

    def draw(path: str, t: float, loss: float, accuracy: float) -> None:
        for values, value in zip(drawn.setdefault(path, ([], [], [])), (t, loss, accuracy)):
            values.append(value)
        live.plotly_chart(plots.barrier_plot(drawn), width="stretch", theme=None)

    return draw


def live_rows(live, config: FusionConfig, epochs: int) -> Callable:
    """An ``on_row`` callback that redraws the method table in ``live`` row by row."""
    rows: list = []

    def fill(row) -> None:
        rows.append(row)
        live.dataframe(compare.comparison_records(compare.Comparison(rows, {}, config, epochs)), hide_index=True)

    return fill


def _json_download(label: str, payload: dict, file_name: str, widget_key: str) -> None:
    st.download_button(label, bundle.result_text(payload), file_name=file_name, mime="application/json",
                       icon=":material/download:", key=widget_key)


def _barrier_figure(curves: dict):
    return plots.barrier_plot({c.title: (c.t, c.loss, c.accuracy) for c in curves.values()},
                              heights={c.title: c.height for c in curves.values()})


def barrier_section(curves) -> None:
    if curves is None:
        st.caption("Press the button: the curves draw point by point (about a second on the demo MLPs).")
        return
    ui.chart(_barrier_figure(curves.curves), key="compare_barrier")
    st.dataframe([{"path": c.title, "barrier height (loss)": round(c.height, 4),
                   "accuracy drop (pp)": round(100 * c.accuracy_drop, 2), "seconds": round(c.seconds, 2)}
                  for c in curves.curves.values()], hide_index=True)
    for reason in curves.skipped.values():
        st.caption(f"Note: {reason}")
    _json_download("Download barrier.json", curves.to_json(), "barrier.json", "download_barrier")


def methods_section(comparison, epochs: int) -> None:
    if comparison is None:
        st.caption("Press the button to fuse the pair with every method (seconds on the demo MLPs, plus the finetunes).")
        return
    st.dataframe(compare.comparison_records(comparison), hide_index=True, key="compare_table")
    fused = [r for r in comparison.rows if r.kind in ("method", "baseline")]
    ceiling = next((r.one_shot for r in comparison.rows if r.kind == "ceiling"), None)
    ui.chart(plots.method_comparison_bars([r.title for r in fused], [r.one_shot for r in fused],
                                          [r.finetuned for r in fused], ceiling=ceiling, epochs=epochs),
             key="compare_methods")
    if comparison.curves:
        ui.chart(_barrier_figure(comparison.curves), key="compare_method_curves")
    for note in comparison.notes:
        st.caption(f"Note: {note}")
    _json_download("Download compare.json", comparison.to_json(), "compare.json", "download_compare")


def metrics_section(rows, chosen_metric: str) -> None:
    if rows is None:
        st.caption("Each metric aligns the pair; each distinct alignment is fused once (one-shot).")
        return
    ui.chart(plots.metric_downstream_bars([r.label for r in rows], [r.fused for r in rows],
                                          [str(r.alignment) for r in rows], chosen=METRIC_LABELS[chosen_metric]),
             key="compare_metrics")
    best = max(rows, key=lambda r: r.fused)
    chosen = next(r for r in rows if r.metric == chosen_metric)
    if len({tuple(r.alignment) for r in rows}) == 1:
        st.caption(f"Every metric aligns this pair the same way ({chosen.alignment}), so they all fuse alike.")
    else:
        st.caption(f"The metric in use, {chosen.label}, leads to {ui.percent(chosen.fused)}; the best fusion here "
                   f"comes from {best.label}'s alignment {best.alignment} ({ui.percent(best.fused)}).")
    st.dataframe(compare.metric_records(rows), hide_index=True)


def bundle_text(fusion) -> str:
    """What the bundle's run reached and the command that reruns it."""
    accuracy = fusion.accuracy
    parents = " ".join(bundle.parent_files(len(bundle.given_order(fusion))))
    return (f"Fused one-shot {ui.percent(accuracy['fused'])}"
            + (f", finetuned {ui.percent(accuracy['fused_finetuned'])}" if accuracy.get("fused_finetuned") is not None else "")
            + f". `python -m clafusion_core fuse {parents} --config run.json` reruns it.")
