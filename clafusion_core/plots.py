"""Plotly figure builders for CLAFusion Explorer.

Every function here takes plain Python / numpy inputs and returns a :class:`plotly.graph_objects.Figure`;
nothing imports torch or streamlit, so the figures are testable without a model or a browser.

One look throughout: ``template="plotly_white"``, tight margins, a title on every figure, and for cost
matrices a sequential scale on which *low cost = similar* is the strong (dark) colour.

Clickable heatmaps: Streamlit's ``st.plotly_chart(on_select=...)`` returns no points for
``go.Heatmap`` (Streamlit issue 8760), so :func:`cost_heatmap` overlays a near-transparent
``go.Scatter`` named ``"cells"`` at the cell centres whose ``customdata`` is ``[i, j]`` (row of A, column
of B). A page reads the selection as ``event.selection.points[k]["customdata"]``, keeping only points that
carry customdata (the path traces have none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = [
    "cost_heatmap",
    "metric_comparison",
    "transport_plan_heatmap",
    "downsample_plan",
    "permutation_likeness",
    "accuracy_bars",
    "training_curves",
    "stage_timings",
    "format_seconds",
    "architecture_diagram",
    "barrier_plot",
    "method_comparison_bars",
    "metric_downstream_bars",
]

TEMPLATE = "plotly_white"
COST_COLORSCALE = "Blues_r"  # low cost (similar layers) = dark blue
MASS_COLORSCALE = "Blues"  # high transported mass = dark blue
PATH_COLOR = "#d62728"  # the DP alignment
OVERRIDE_COLOR = "#ff7f0e"  # the user's matching
DIFFERS_COLOR = "#ff7f0e"  # a metric whose path differs from the first metric's
ACCENT_COLOR = "#1f77b4"
B_COLOR = "#2ca02c"
NEUTRAL_COLOR = "#9aa5b1"
IDENTITY_COLOR = "#c8c8c8"
REMOVED_COLOR = "#e0e0e0"
MARGIN = dict(l=10, r=10, t=60, b=10)
COMPACT_MARGIN = dict(l=4, r=4, t=28, b=4)
MAX_VALUE_CELLS = 12  # cost values are written into the cells up to 12 x 12
HOVER_LABEL = dict(bgcolor="white", font=dict(color="#222"))


def _title(text: str, subtitle: str = "") -> dict:
    title: dict = dict(text=text, x=0.01, xanchor="left")
    if subtitle:
        title["subtitle"] = dict(text=subtitle)
    return title


def _fmt_cost(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "n/a"


def _check_path(path: Sequence[int], m: int, n: int, what: str) -> list[int]:
    path = [int(i) for i in path]
    if len(path) != n or any(not 0 <= i < m for i in path):
        raise ValueError(f"{what} must give one row index in [0, {m}) for each of the {n} columns, got {path}.")
    return path


# --------------------------------------------------------------------------------------------- cost heatmap


def _cell_hover(cost: np.ndarray, rows: list[str], cols: list[str], row_widths: list[int] | None,
                col_widths: list[int] | None) -> list[list[str]]:
    """Hover text of every cell: both layer names, their widths when known, and the cost."""
    def name(names: list[str], widths: list[int] | None, k: int, model: str) -> str:
        width = f" · width {widths[k]}" if widths is not None else ""
        return f"{model}: {names[k]}{width}"

    return [[f"{name(rows, row_widths, i, 'A')}<br>{name(cols, col_widths, j, 'B')}<br>"
             f"cost: {_fmt_cost(cost[i, j])}" for j in range(cost.shape[1])] for i in range(cost.shape[0])]


def _path_trace(path: list[int], *, name: str, color: str, dash: str = "solid", width: float = 3,
                showlegend: bool = True, marker_size: float = 9, outline: bool = False) -> go.Scatter:
    """The matching as a line through the matched cells (x = column j, y = row path[j]).

    ``outline=True`` (cells that show their values) frames each matched cell with an open square of
    ``marker_size`` px instead of covering its centre with a dot, and thins the line.
    """
    marker = (dict(symbol="square-open", color=color, size=marker_size, line=dict(color=color, width=3))
              if outline else dict(color=color, size=marker_size, line=dict(color="white", width=1.5)))
    return go.Scatter(
        x=list(range(len(path))), y=path, mode="lines+markers", name=name,
        line=dict(color=color, width=1.5 if outline else width, dash=dash), marker=marker,
        hoverinfo="skip",  # clicks go to the "cells" overlay underneath
        unselected=dict(marker=dict(opacity=1)),  # a cell selection must not dim the path
        showlegend=showlegend,
    )


def _cells_trace(cost: np.ndarray, hover: list[list[str]], marker_size: float,
                 zrange: tuple[float, float]) -> go.Scatter:
    """Near-transparent markers on all cell centres, so Streamlit's on_select gets (i, j) back.

    Each marker has its cell's colour, so even the 1 % opacity leaves no visible square.
    """
    m, n = cost.shape
    cells = [(i, j) for i in range(m) for j in range(n)]
    return go.Scatter(
        x=[j for _, j in cells], y=[i for i, _ in cells], mode="markers", name="cells",
        customdata=[[i, j] for i, j in cells],
        hovertext=[hover[i][j] for i, j in cells], hovertemplate="%{hovertext}<extra></extra>",
        hoverlabel=HOVER_LABEL,
        marker=dict(symbol="square", size=marker_size, opacity=0.01, color=[float(cost[i, j]) for i, j in cells],
                    colorscale=COST_COLORSCALE, cmin=zrange[0], cmax=zrange[1], showscale=False),
        selected=dict(marker=dict(opacity=0.45, color="#ffd60a")),  # the picked cell lights up
        unselected=dict(marker=dict(opacity=0.01)),
        showlegend=False,
    )


def cost_heatmap(cost: np.ndarray, rows: list[str], cols: list[str], *, path: list[int] | None = None,
                 override: list[int] | None = None, title: str = "", row_widths: list[int] | None = None,
                 col_widths: list[int] | None = None, show_values: bool = True,
                 compact: bool = False) -> go.Figure:
    """Layer-to-layer cost matrix with the DP alignment (and optionally the user's matching) on top.

    ``cost[i, j]`` is the dissimilarity of layer i of the deeper model A (row ``rows[i]``) and layer j of
    the shallower B (column ``cols[j]``); row 0 is at the top. ``path[j]`` is the row matched to column
    j, drawn as "DP alignment"; ``override`` is a second matching drawn dashed as "your matching".
    Axis coordinates are the integer indices (names are tick labels), and a transparent "cells" scatter
    with ``customdata = [i, j]`` makes every cell selectable in Streamlit. ``compact=True`` is for small
    multiples: no values, no legend, small margins, 220 px high.
    """
    cost = np.asarray(cost, dtype=float)
    m, n = cost.shape
    if len(rows) != m or len(cols) != n:
        raise ValueError(f"cost is {m}x{n} but {len(rows)} row and {len(cols)} column names were given.")
    path = _check_path(path, m, n, "path") if path is not None else None
    override = _check_path(override, m, n, "override") if override is not None else None

    hover = _cell_hover(cost, rows, cols, row_widths, col_widths)
    finite = cost[np.isfinite(cost)]
    zrange = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    heatmap = go.Heatmap(
        z=cost, x=list(range(n)), y=list(range(m)), colorscale=COST_COLORSCALE, name="cost",
        zmin=zrange[0], zmax=zrange[1],
        hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", hoverlabel=HOVER_LABEL,
        colorbar=dict(title=dict(text="cost"), thickness=12), showscale=not compact,
    )
    values = show_values and not compact and max(m, n) <= MAX_VALUE_CELLS
    if values:
        heatmap.update(texttemplate="%{z:.2f}", textfont=dict(size=11))

    height = 220 if compact else int(min(720, max(320, 130 + 42 * m)))
    plot_height = height - (50 if compact else 150)
    cell_px = max(6.0, min(48.0, 0.8 * plot_height / max(m, 1)))  # about a cell's height, in px

    def matching(indices: list[int], name: str, color: str, dash: str, scale: float) -> go.Scatter:
        size = cell_px * scale if values else (6 if compact else 9)
        return _path_trace(indices, name=name, color=color, dash=dash, width=2 if compact else 3,
                           showlegend=not compact, marker_size=size, outline=values)

    fig = go.Figure(heatmap)
    if path is not None:
        fig.add_trace(matching(path, "DP alignment", PATH_COLOR, "solid", 1.0))
    if override is not None:  # a smaller frame, so both show on a shared cell
        fig.add_trace(matching(override, "your matching", OVERRIDE_COLOR, "dash", 0.75))
    fig.add_trace(_cells_trace(cost, hover, cell_px, zrange))

    subtitle = ""
    if not compact and path is not None:
        subtitle = f"DP alignment cost {sum(cost[path[j], j] for j in range(n)):.3f}"
        if override is not None:
            subtitle += f" · your matching {sum(cost[override[j], j] for j in range(n)):.3f}"
    fig.update_layout(
        template=TEMPLATE, title=_title(title, subtitle), height=height,
        margin=COMPACT_MARGIN if compact else MARGIN, showlegend=not compact,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        hovermode="closest", clickmode="event+select",
    )
    fig.update_xaxes(tickmode="array", tickvals=list(range(n)), ticktext=list(cols), showgrid=False,
                     title=None if compact else "B (shallower) layer", range=[-0.5, n - 0.5])
    fig.update_yaxes(tickmode="array", tickvals=list(range(m)), ticktext=list(rows), showgrid=False,
                     title=None if compact else "A (deeper) layer", range=[m - 0.5, -0.5])
    return fig


def metric_comparison(costs: dict[str, np.ndarray], paths: dict[str, list[int]], rows: list[str],
                      cols: list[str], labels: dict[str, str] | None = None) -> go.Figure:
    """All cost metrics side by side, each with its DP path; paths that differ from the first stand out.

    One small heatmap per metric (in the order of ``costs``), sharing the y axis. A metric's path is
    drawn in the DP colour when it equals the first metric's path and in orange, dashed, with "differs"
    in its subplot title otherwise. Costs in [0, 1] share one colour bar; otherwise each heatmap uses its
    own range.
    """
    if not costs:
        raise ValueError("metric_comparison needs at least one cost matrix.")
    keys = list(costs)
    labels = {k: (labels or {}).get(k, k) for k in keys}
    matrices = {k: np.asarray(costs[k], dtype=float) for k in keys}
    m, n = len(rows), len(cols)
    for k, c in matrices.items():
        if c.shape != (m, n):
            raise ValueError(f"cost matrix {k!r} is {c.shape[0]}x{c.shape[1]}, expected {m}x{n}.")
    checked = {k: _check_path(paths[k], m, n, f"path of {k!r}") for k in keys if paths.get(k) is not None}
    reference = checked.get(keys[0])
    differs = {k: reference is not None and k in checked and checked[k] != reference for k in keys}

    finite = np.concatenate([c[np.isfinite(c)] for c in matrices.values()])
    shared_scale = finite.size > 0 and finite.min() >= 0 and finite.max() <= 1
    titles = [labels[k] + (" — differs" if differs[k] else "") for k in keys]
    fig = make_subplots(rows=1, cols=len(keys), shared_yaxes=True, subplot_titles=titles,
                        horizontal_spacing=min(0.04, 0.2 / len(keys)))
    for col, k in enumerate(keys, start=1):
        heatmap = go.Heatmap(
            z=matrices[k], x=list(range(n)), y=list(range(m)), name=labels[k],
            hovertext=_cell_hover(matrices[k], rows, cols, None, None),
            hovertemplate=f"{labels[k]}<br>%{{hovertext}}<extra></extra>", hoverlabel=HOVER_LABEL,
        )
        if shared_scale:
            heatmap.update(coloraxis="coloraxis")
        else:
            heatmap.update(colorscale=COST_COLORSCALE, showscale=False)
        fig.add_trace(heatmap, row=1, col=col)
        if k in checked:
            color = DIFFERS_COLOR if differs[k] else PATH_COLOR
            fig.add_trace(_path_trace(checked[k], name=f"{labels[k]} path", color=color,
                                      dash="dash" if differs[k] else "solid", width=2, marker_size=7,
                                      showlegend=False), row=1, col=col)
        fig.update_xaxes(tickmode="array", tickvals=list(range(n)), ticktext=list(cols), showgrid=False,
                         range=[-0.5, n - 0.5], row=1, col=col)
    fig.update_yaxes(tickmode="array", tickvals=list(range(m)), ticktext=list(rows), showgrid=False,
                     range=[m - 0.5, -0.5])
    if shared_scale:
        fig.update_layout(coloraxis=dict(colorscale=COST_COLORSCALE, cmin=0, cmax=1,
                                         colorbar=dict(title=dict(text="cost"), thickness=12)))
    n_differ = sum(differs.values())
    subtitle = (f"red: DP alignment · orange dashed: differs from {labels[keys[0]]} ({n_differ} of "
                f"{len(keys) - 1})" if len(keys) > 1 and reference is not None else "")
    fig.update_layout(template=TEMPLATE, title=_title("Cost metrics compared", subtitle),
                      height=int(min(560, max(300, 150 + 34 * m))), margin=dict(l=10, r=10, t=90, b=10),
                      showlegend=False)
    return fig


# ------------------------------------------------------------------------------------------ transport plans


def downsample_plan(plan: np.ndarray, max_cells: int = 256) -> tuple[np.ndarray, int, int]:
    """Block-sum ``plan`` so that neither side exceeds ``max_cells``; total mass is preserved.

    Returns ``(small, row_block, col_block)``: entry ``small[a, b]`` is the mass from A neurons
    ``a*row_block ... (a+1)*row_block - 1`` to B neurons ``b*col_block ... (b+1)*col_block - 1`` (the last
    block may be shorter). Blocks are 1 (no change) on a side that already fits.
    """
    plan = np.asarray(plan, dtype=float)
    if plan.ndim != 2 or max_cells < 1:
        raise ValueError("plan must be a 2-D array and max_cells at least 1.")
    n_a, n_b = plan.shape
    rb, cb = max(math.ceil(n_a / max_cells), 1), max(math.ceil(n_b / max_cells), 1)
    rows_out, cols_out = math.ceil(n_a / rb), math.ceil(n_b / cb)
    padded = np.zeros((rows_out * rb, cols_out * cb))
    padded[:n_a, :n_b] = plan
    small = padded.reshape(rows_out, rb, cols_out, cb).sum(axis=(1, 3))
    return small, rb, cb


def permutation_likeness(plan: np.ndarray) -> float:
    """Fraction of the plan's mass that lies on each row's largest entry: 1 for a (scaled) permutation,
    ``1 / n_B`` for the uniform plan, 0 for an empty plan."""
    plan = np.abs(np.asarray(plan, dtype=float))
    total = plan.sum()
    return float(plan.max(axis=1).sum() / total) if plan.size and total > 0 else 0.0


def transport_plan_heatmap(plan: np.ndarray, *, title: str = "", max_cells: int = 256) -> go.Figure:
    """The transport plan T (rows: neurons of A, columns: neurons of B) as a heatmap.

    Plans larger than ``max_cells`` on a side are shown block-summed (see :func:`downsample_plan`) and
    the subtitle says so; it also gives the plan's permutation-likeness (:func:`permutation_likeness`).
    """
    plan = np.asarray(plan, dtype=float)
    n_a, n_b = plan.shape
    small, rb, cb = downsample_plan(plan, max_cells)
    r, c = small.shape

    def side(model: str, axis: str, block: int) -> str:
        return f"{model} neuron %{{{axis}}}" if block == 1 else f"{model} neurons %{{{axis}}}…+{block - 1}"

    # hover from the coordinates (block starts), not per-cell strings: a 256 x 256 plan stays small
    fig = go.Figure(go.Heatmap(
        z=small, x=np.arange(c) * cb, y=np.arange(r) * rb, colorscale=MASS_COLORSCALE, zmin=0,
        hovertemplate=f"{side('A', 'y', rb)} → {side('B', 'x', cb)}: %{{z:.4g}}<extra></extra>",
        hoverlabel=HOVER_LABEL, colorbar=dict(title=dict(text="mass"), thickness=12),
    ))
    heading = f"{title} — " if title else "Transport plan "
    subtitle = f"permutation-likeness {permutation_likeness(plan):.2f} (share of mass on each A neuron's top entry)"
    if (rb, cb) != (1, 1):
        subtitle += f" · shown block-summed to {r}×{c}"
    fig.update_layout(template=TEMPLATE, title=_title(f"{heading}{n_a}×{n_b}", subtitle),
                      height=int(min(640, max(320, 140 + 3 * r))), margin=dict(l=10, r=10, t=80, b=10))
    fig.update_xaxes(title="B neuron" if cb == 1 else f"B neurons (blocks of {cb})", showgrid=False)
    fig.update_yaxes(title="A neuron" if rb == 1 else f"A neurons (blocks of {rb})", showgrid=False,
                     autorange="reversed")
    return fig


# ---------------------------------------------------------------------------------------- results and time


def accuracy_bars(accuracies: dict[str, float | None], *, title: str = "Test accuracy") -> go.Figure:
    """Accuracy per model as vertical bars, in the given order, labelled as percentages.

    Values are fractions in [0, 1] (if any value exceeds 1, all are read as percentages). ``None``
    (e.g. vanilla averaging for different shapes) gets no bar, just an "n/a" label. The y axis runs from
    a little below the lowest accuracy to 100 %. Bars of fused models use the accent colour.
    """
    names = list(accuracies)
    known = [v for v in accuracies.values() if v is not None]
    scale = 1.0 if known and max(known) > 1 else 100.0
    pct = [None if accuracies[k] is None else float(accuracies[k]) * scale for k in names]
    present = [p for p in pct if p is not None]
    low = min(present) if present else 0.0
    y_min = max(0.0, math.floor(low - max(1.0, 0.5 * (100 - low))))
    fig = go.Figure(go.Bar(
        x=names, y=pct, text=["" if p is None else f"{p:.1f} %" for p in pct],
        textposition="inside", insidetextanchor="end", textfont=dict(color="white"),
        marker_color=[ACCENT_COLOR if "fused" in k.lower() else NEUTRAL_COLOR for k in names],
        hovertemplate="%{x}: %{y:.2f} %<extra></extra>", name="accuracy",
    ))
    for name, p in zip(names, pct):
        if p is None:
            fig.add_annotation(x=name, y=y_min, yanchor="bottom", text="n/a", showarrow=False,
                               font=dict(color="#666", size=13))
    fig.update_layout(template=TEMPLATE, title=_title(title), height=360, margin=MARGIN, showlegend=False)
    fig.update_yaxes(range=[y_min, 100], title="accuracy (%)", ticksuffix=" %")
    return fig


def training_curves(histories: dict[str, list[float]], *, title: str = "Validation accuracy per epoch",
                    y_title: str = "accuracy") -> go.Figure:
    """One line with markers per run; x is the number of epochs trained (0 = the starting model)."""
    fig = go.Figure()
    for name, values in histories.items():
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers",
                                 name=name, hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=_title(title), height=360, margin=MARGIN,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    fig.update_xaxes(title="epoch", dtick=1, rangemode="nonnegative")
    fig.update_yaxes(title=y_title)
    return fig


def format_seconds(seconds: float) -> str:
    """``0.0004`` → ``"0.4 ms"``, ``0.0123`` → ``"12 ms"``, ``3.456`` → ``"3.46 s"``, ``75`` → ``"75.0 s"``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def stage_timings(timings: dict[str, float], *, title: str = "Time per stage") -> go.Figure:
    """Horizontal bars of seconds per pipeline stage (first stage on top), labelled in ms / s."""
    names, secs = list(timings), [float(v) for v in timings.values()]
    fig = go.Figure(go.Bar(
        x=secs, y=names, orientation="h", text=[format_seconds(s) for s in secs], textposition="auto",
        marker_color=ACCENT_COLOR, hovertemplate="%{y}: %{x:.3f} s<extra></extra>", name="time",
    ))
    fig.update_layout(template=TEMPLATE, title=_title(f"{title} (total {format_seconds(sum(secs))})"),
                      height=int(max(220, 90 + 32 * len(names))), margin=MARGIN, showlegend=False)
    fig.update_xaxes(title="seconds", rangemode="tozero")
    fig.update_yaxes(autorange="reversed")
    return fig


# ------------------------------------------------------------------------------------ architecture diagram


@dataclass
class _Box:
    """One unit in the architecture diagram."""

    x: float
    width: int | None  # None: an identity unit whose input width is unknown (before the first layer)
    kind: str  # "unit", "id" (inserted identity) or "removed" (merged away)
    stage: int
    position: int | None  # A: the unit's index in its stage; B: the A position it sits under (None: unmatched)


def _positions(stages: list[list[int]]) -> list[list[float]]:
    """x position of every unit: consecutive integers, with a gap of one between stages."""
    out, x = [], 0.0
    for units in stages:
        out.append([x + k for k in range(len(units))])
        x += len(units) + 1
    return out


def _stage_mapping(n_a: int, n_b: int, ids: list[int], given: list[int] | None) -> tuple[list[int] | None, bool]:
    """A position of each of B's units in one stage, and whether B is already the balanced model.

    Given, or implied by the inserted positions when ``n_B + len(ids) == n_A`` (B is the original
    model), or one-to-one when B is as deep as A (B is the balanced model itself); else unknown.
    """
    if given is not None:
        return list(given), False
    if ids and n_b + len(ids) == n_a:
        return [p for p in range(n_a) if p not in ids], False
    if n_b == n_a:
        return list(range(n_a)), True
    return None, False


def _b_boxes(stages_a: list[list[int]], stages_b: list[list[int]], inserted: set[tuple[int, int]],
             mapping: list[list[int]] | None, xs_a: list[list[float]]) -> list[_Box]:
    """B's row: each unit under its matched A unit, identity units under the A units they stand in for.

    Inserted positions are positions in the balanced B, which is as deep as A: they are A positions.
    Without a known mapping B's units are spread evenly under A's stage and left unconnected.
    """
    boxes, width = [], None  # width: what flows into the next unit, carried across stages
    for s, (units_a, units_b) in enumerate(zip(stages_a, stages_b)):
        ids = sorted(p for (st, p) in inserted if st == s)
        stage_map, balanced = _stage_mapping(len(units_a), len(units_b), ids, mapping[s] if mapping else None)
        if stage_map is None:
            lo, hi = xs_a[s][0], xs_a[s][-1]
            step = (hi - lo) / max(len(units_b) - 1, 1)
            xs = [lo + k * step if len(units_b) > 1 else (lo + hi) / 2 for k in range(len(units_b))]
            boxes += [_Box(x, w, "unit", s, None) for x, w in zip(xs, units_b)]
            width = units_b[-1] if units_b else width
            continue
        if len(stage_map) != len(units_b) or any(not 0 <= i < len(units_a) for i in stage_map):
            raise ValueError(f"mapping of stage {s} must give an A position for each of B's {len(units_b)} units.")
        matched = dict(zip(stage_map, units_b))
        for p in range(len(units_a)):
            if p in matched:
                width = matched[p]
                boxes.append(_Box(xs_a[s][p], width, "id" if balanced and p in ids else "unit", s, p))
            elif p in ids:  # an identity unit keeps the width flowing into it
                boxes.append(_Box(xs_a[s][p], width, "id", s, p))
    return boxes


def _units(count: int) -> str:
    return f"{count} unit" if count == 1 else f"{count} units"


def _box_height(width: int | None, widest: int) -> float:
    return 0.2 if not width else 0.15 + 0.45 * math.sqrt(width / widest)


def _boxes_bar(boxes: list[_Box], y: float, widest: int, name: str, color: str, hover: list[str],
               pattern: dict | None = None) -> go.Bar:
    """Boxes as bars centred on row y (``base`` = bottom edge), so they can carry a hatch pattern."""
    heights = [_box_height(b.width, widest) for b in boxes]
    return go.Bar(x=[b.x for b in boxes], y=heights, base=[y - h / 2 for h in heights], width=0.7, name=name,
                  marker=dict(color=color, line=dict(color="#444", width=1), pattern=pattern),
                  hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", showlegend=bool(boxes))


def architecture_diagram(stages_a: list[list[int]], stages_b: list[list[int]], *,
                         inserted: Sequence[tuple[int, int]] = (), removed: Sequence[tuple[int, int]] = (),
                         mapping: list[list[int]] | None = None,
                         names: tuple[str, str] = ("A", "B")) -> go.Figure:
    """The two models' fusable units as two rows of boxes (height ~ sqrt(width), labelled by width).

    ``stages_a`` / ``stages_b`` list each stage's unit widths; stages are separated by a gap. Lines join
    matched units, ``mapping[s][j]`` being the A position of B's unit j in stage s. ``inserted`` are
    ``(stage, position)`` identity units of the balanced B (positions in the balanced model, i.e. A's
    positions, as in ``balancing.Balanced.inserted``): drawn hatched grey, labelled "id", in B's row under
    the A unit they stand in for. Pass the original B (the mapping is then implied by ``inserted`` when
    not given) or the balanced B itself. ``removed`` are ``(stage, position)`` units of A merged away:
    drawn grey and crossed out.
    """
    if len(stages_a) != len(stages_b):
        raise ValueError(f"A has {len(stages_a)} stages and B {len(stages_b)}; they must match to be drawn.")
    if mapping is not None and len(mapping) != len(stages_a):
        raise ValueError("mapping must have one list per stage.")
    removed_set = {tuple(p) for p in removed}
    xs_a = _positions(stages_a)
    a_boxes = [_Box(x, w, "removed" if (s, p) in removed_set else "unit", s, p)
               for s, (units, xs) in enumerate(zip(stages_a, xs_a)) for p, (w, x) in enumerate(zip(units, xs))]
    b_boxes = _b_boxes(stages_a, stages_b, {tuple(p) for p in inserted}, mapping, xs_a)
    widest = max([w for stage in stages_a + stages_b for w in stage] + [1])
    y_a, y_b = 1.0, 0.0

    def of(boxes: list[_Box], kind: str) -> list[_Box]:
        return [b for b in boxes if b.kind == kind]

    def a_hover(b: _Box) -> str:
        return f"{names[0]} · stage {b.stage} · unit {b.position} · width {b.width}"

    def b_hover(b: _Box) -> str:
        matched = f" · under {names[0]} unit {b.position}" if b.position is not None else ""
        return f"{names[1]} · stage {b.stage} · width {b.width}{matched}"

    fig = go.Figure([
        _boxes_bar(of(a_boxes, "unit"), y_a, widest, f"{names[0]} units", ACCENT_COLOR,
                   [a_hover(b) for b in of(a_boxes, "unit")]),
        _boxes_bar(of(a_boxes, "removed"), y_a, widest, "merged away", REMOVED_COLOR,
                   [a_hover(b) + " (merged away)" for b in of(a_boxes, "removed")]),
        _boxes_bar(of(b_boxes, "unit"), y_b, widest, f"{names[1]} units", B_COLOR,
                   [b_hover(b) for b in of(b_boxes, "unit")]),
        _boxes_bar(of(b_boxes, "id"), y_b, widest, "identity (inserted)", IDENTITY_COLOR,
                   [f"identity unit · stage {b.stage} · position {b.position}" for b in of(b_boxes, "id")],
                   pattern=dict(shape="/", fgcolor="#777")),
    ])

    # lines from the bottom of each matched A box to the top of the B box under it
    line_x, line_y = [], []
    for b in b_boxes:
        if b.position is not None and b.kind == "unit":  # identity units stand in for nothing
            a_width = stages_a[b.stage][b.position]
            line_x += [xs_a[b.stage][b.position], b.x, None]
            line_y += [y_a - _box_height(a_width, widest) / 2, y_b + _box_height(b.width, widest) / 2, None]
    fig.add_trace(go.Scatter(x=line_x, y=line_y, mode="lines", name="matched", line=dict(color="#888", width=1.5),
                             hoverinfo="skip", showlegend=bool(line_x)))
    gone = of(a_boxes, "removed")
    if gone:  # crosses first, so the width labels stay on top
        fig.add_trace(go.Scatter(x=[b.x for b in gone], y=[y_a] * len(gone), mode="markers", name="removed",
                                 marker=dict(symbol="x-thin", size=26, line=dict(color=PATH_COLOR, width=3)),
                                 hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(
        x=[b.x for b in a_boxes + b_boxes], y=[y_a] * len(a_boxes) + [y_b] * len(b_boxes), mode="text",
        text=["id" if b.kind == "id" else str(b.width) for b in a_boxes + b_boxes], name="widths",
        textfont=dict(size=11, color=["#111" if b.kind == "id" else "white" for b in a_boxes + b_boxes]),
        hoverinfo="skip", showlegend=False,
    ))
    if len(stages_a) > 1:
        for s, xs in enumerate(xs_a):
            if xs:
                fig.add_annotation(x=(xs[0] + xs[-1]) / 2, y=1.42, text=f"stage {s}", showarrow=False,
                                   font=dict(size=11, color="#666"))

    x_max = max([b.x for b in a_boxes + b_boxes] + [0.0])
    fig.update_layout(template=TEMPLATE, barmode="overlay", bargap=0, height=320, margin=MARGIN,
                      title=_title(f"{names[0]} ({_units(len(a_boxes))}) vs {names[1]} "
                                   f"({_units(sum(map(len, stages_b)))})"),
                      legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0))
    fig.update_xaxes(visible=False, range=[-0.6, x_max + 0.6])
    fig.update_yaxes(tickmode="array", tickvals=[y_a, y_b], ticktext=list(names), range=[-0.5, 1.55],
                     showgrid=False, zeroline=False)
    return fig


# ------------------------------------------------------------------------------- comparing fusion methods

CURVE_COLORS = ["#9aa5b1", "#1f77b4", "#aec7e8", "#2ca02c", "#98df8a", "#9467bd", "#c5b0d5", "#8c564b", "#e377c2"]


def barrier_plot(curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], *,
                 heights: dict[str, float] | None = None,
                 title: str = "Test loss and accuracy along the straight path") -> go.Figure:
    """Loss (left) and accuracy (right) against t for each path ``name → (t, loss, accuracy)``.

    A curve may be partial (drawn while it is computed). ``heights`` adds each path's loss barrier
    to its legend entry; the left panel's dotted line is the chord of the first complete curve's loss.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test loss", "test accuracy"), horizontal_spacing=0.08)
    for index, (name, (t, loss, accuracy)) in enumerate(curves.items()):
        color = CURVE_COLORS[index % len(CURVE_COLORS)]
        label = name if not heights or name not in heights else f"{name} (barrier {heights[name]:.3f})"
        fig.add_trace(go.Scatter(x=list(t), y=list(loss), mode="lines+markers", name=label, legendgroup=name,
                                 line=dict(color=color), hovertemplate=f"{name}<br>t = %{{x:.2f}}: loss %{{y:.4f}}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=list(t), y=[100 * a for a in accuracy], mode="lines+markers", name=label,
                                 legendgroup=name, showlegend=False, line=dict(color=color),
                                 hovertemplate=f"{name}<br>t = %{{x:.2f}}: %{{y:.2f}} %<extra></extra>"), row=1, col=2)
    fig.update_layout(template=TEMPLATE, title=_title(title, "t = 0: model A (aligned onto B's neurons where a method "
                                                             "aligns), t = 1: model B"),
                      height=420, margin=dict(l=10, r=10, t=90, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="left", x=0.0))
    fig.update_xaxes(title="t", range=[-0.03, 1.03])
    fig.update_yaxes(title="cross-entropy", row=1, col=1)
    fig.update_yaxes(title="accuracy (%)", ticksuffix=" %", row=1, col=2)
    return fig


def method_comparison_bars(names: Sequence[str], one_shot: Sequence[float | None],
                           finetuned: Sequence[float | None], *, ceiling: float | None = None, epochs: int = 0,
                           title: str = "Fusion methods on one pair") -> go.Figure:
    """One-shot and finetuned test accuracy per method (fractions) as grouped bars, with the ensemble's
    accuracy as a dashed ceiling line."""
    def pct(values):
        return [None if v is None else 100 * float(v) for v in values]

    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(names), y=pct(one_shot), name="one-shot", marker_color=NEUTRAL_COLOR,
                         text=[None if v is None else f"{v:.1f}" for v in pct(one_shot)], textposition="outside",
                         hovertemplate="%{x}<br>one-shot: %{y:.2f} %<extra></extra>"))
    if any(v is not None for v in finetuned):
        fig.add_trace(go.Bar(x=list(names), y=pct(finetuned), name=f"after {epochs} finetuning epochs",
                             marker_color=ACCENT_COLOR, text=[None if v is None else f"{v:.1f}" for v in pct(finetuned)],
                             textposition="outside", hovertemplate="%{x}<br>finetuned: %{y:.2f} %<extra></extra>"))
    known = [v for v in pct([*one_shot, *finetuned, ceiling]) if v is not None]
    low = min(known) if known else 0.0
    if ceiling is not None:
        fig.add_hline(y=100 * ceiling, line=dict(color=PATH_COLOR, dash="dash"),
                      annotation_text=f"ensemble {100 * ceiling:.1f} %", annotation_position="top left")
    fig.update_layout(template=TEMPLATE, title=_title(title), barmode="group", height=400, margin=MARGIN,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    fig.update_yaxes(range=[max(0.0, math.floor(low - max(2.0, 0.3 * (100 - low)))), 101], title="test accuracy (%)",
                     ticksuffix=" %")
    return fig


def metric_downstream_bars(labels: Sequence[str], fused: Sequence[float], alignments: Sequence[str], *,
                           chosen: str | None = None,
                           title: str = "What each cost metric's alignment fuses to") -> go.Figure:
    """Fused one-shot accuracy (fractions) per cost metric, each bar labelled with its alignment; the
    best bar in the accent colour, the metric in use (``chosen``) outlined."""
    values = [100 * float(v) for v in fused]
    best = max(values) if values else None
    fig = go.Figure(go.Bar(
        x=list(labels), y=values, text=[f"{v:.1f} %<br>{a}" for v, a in zip(values, alignments)], textposition="inside",
        insidetextanchor="end", textfont=dict(color="white"), name="fused",
        marker=dict(color=[ACCENT_COLOR if v == best else NEUTRAL_COLOR for v in values],
                    line=dict(color=[PATH_COLOR if label == chosen else "rgba(0,0,0,0)" for label in labels], width=3)),
        customdata=list(alignments), hovertemplate="%{x}<br>alignment %{customdata}<br>fused: %{y:.2f} %<extra></extra>"))
    low = min(values) if values else 0.0
    fig.update_layout(template=TEMPLATE, title=_title(title, "bar text: each unit of B → its matched unit of A"),
                      height=400, margin=dict(l=10, r=10, t=80, b=10), showlegend=False)
    fig.update_yaxes(range=[max(0.0, math.floor(low - max(2.0, 0.5 * (100 - low)))), 100], title="fused one-shot (%)",
                     ticksuffix=" %")
    return fig
