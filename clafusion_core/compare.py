"""Fusion methods side by side on one pair, and what each cost metric's alignment fuses to.

:func:`compare_methods` runs every registered fusion method (OT once per ground metric) through the
same pipeline (:func:`~.pipeline.run_fusion`: the same probe batch, alignment, balancing, repair and
BatchNorm reset), then gives every fused model the same short finetune, next to vanilla averaging
(identical shapes only) and the output ensemble (the ceiling a single model rarely reaches). A method
with aligned parents also gets its loss-barrier curves from that one run's alignment (:mod:`~.barrier`).

:func:`metric_downstream` answers a question the cost heatmap cannot: the cost metric whose DP
alignment looks best is not necessarily the one whose alignment fuses best. Every metric of
:data:`~.similarity.METRICS` aligns the pair; each distinct alignment is fused once; each metric gets the
fused accuracy its alignment leads to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .barrier import DEFAULT_POINTS, NAIVE, BarrierCurve, StraightPath, aligned_paths, grid, interpolation_curve
from .baselines import ensemble_accuracy, same_shapes, vanilla_average
from .data import DataSplits
from .devices import resolve_device
from .methods import METHODS
from .otfusion import GROUND_METRICS
from .pipeline import compute_activations, compute_alignment, finetune_result, finetune_teacher, \
    fusion_batch, order_pair, run_fusion
from .config import FusionConfig
from .similarity import METRIC_LABELS, METRICS
from .train import Progress, cached_accuracy, evaluate, finetune, reset_batchnorm

DEFAULT_FINETUNE_EPOCHS = 2


@dataclass(frozen=True)
class Variant:
    """One fusion method with the settings that make it this variant (flat config fields)."""

    key: str
    title: str
    settings: tuple[tuple[str, object], ...]


def method_variants() -> list[Variant]:
    """Every registered method; OT once per ground metric."""
    variants = []
    for name, method in METHODS.items():
        if name == "ot":
            variants += [Variant(f"ot-{metric}", f"{method.title}, {metric} ground metric",
                                 (("method", name), ("ground_metric", metric))) for metric in GROUND_METRICS]
        else:
            variants.append(Variant(name, method.title, (("method", name),)))
    return variants


@dataclass
class MethodRow:
    key: str
    title: str
    kind: str                              # "method", "baseline" (vanilla) or "ceiling" (ensemble), "parent"
    one_shot: float
    finetuned: float | None = None
    seconds: float | None = None           # the one-shot run (alignment to evaluation)
    finetune_seconds: float | None = None
    barrier: float | None = None           # loss barrier of its aligned path
    barrier_repaired: float | None = None

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Comparison:
    rows: list[MethodRow]
    curves: dict[str, BarrierCurve]
    config: FusionConfig
    finetune_epochs: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"rows": [r.to_json() for r in self.rows],
                "curves": {key: curve.to_json() for key, curve in self.curves.items()},
                "barrier_heights": {key: round(curve.height, 6) for key, curve in self.curves.items()},
                "finetune_epochs": self.finetune_epochs, "notes": self.notes, "config": self.config.to_dict()}


def _finetuned_accuracy(model: nn.Module, model_a: nn.Module, model_b: nn.Module, splits: DataSplits,
                    config: FusionConfig) -> float:
    """Test accuracy of ``model`` after the finetune every fused model gets (same settings, same teacher)."""
    device = resolve_device(config.device)
    teacher = finetune_teacher([model_a, model_b], splits, config, device)
    tuned, _ = finetune(model, splits.train, splits.val, config.finetune_config(), device, teacher_logits=teacher)
    return evaluate(tuned, splits.test, device)


def compare_methods(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig = FusionConfig(),
                    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS, points: int = DEFAULT_POINTS,
                    progress: Progress | None = None,
                    on_row: Callable[[MethodRow], None] | None = None) -> Comparison:
    """One-shot and finetuned accuracy, time and barrier heights of every method variant on one pair.

    ``config`` holds the shared settings (probe, alignment, balancing, repair, finetuning recipe); each
    variant changes only its method fields. ``points`` = 0 skips the barrier curves. ``on_row`` gets
    each row as soon as it is known (for a table that fills in).
    """
    report = progress or (lambda fraction, message: None)
    device = resolve_device(config.device)
    tuning = config.replace(finetune_epochs=finetune_epochs)
    model_a, model_b, _ = order_pair(model_a, model_b)
    rows, curves, notes = [], {}, []
    ts = grid(points) if points else []

    def add(row: MethodRow) -> None:
        rows.append(row)
        if on_row:
            on_row(row)

    for label, model in (("model A", model_a), ("model B", model_b)):
        add(MethodRow(label.replace(" ", "_").lower(), label, "parent", cached_accuracy(model, splits.test, device)))
    add(MethodRow("ensemble", "Ensemble (mean of softmaxes)", "ceiling",
                  ensemble_accuracy([model_a, model_b], splits.test, device)))
    variants = method_variants()
    steps = len(variants) + 1
    if same_shapes(model_a, model_b):
        report(0.0, "vanilla averaging")
        start = time.perf_counter()
        vanilla = vanilla_average(model_a, model_b, config.fusion.weight)
        if config.repair.bn_reset:
            reset_batchnorm(vanilla, splits.train, device)
        row = MethodRow("vanilla", "Vanilla averaging (no alignment)", "baseline",
                        evaluate(vanilla, splits.test, device), seconds=time.perf_counter() - start)
        if ts:
            curves[NAIVE] = interpolation_curve(StraightPath(NAIVE, "naive (no alignment)",
                                                             lambda t: vanilla_average(model_a, model_b, t)),
                                                ts, splits, device, config.repair.bn_reset)
            row.barrier = curves[NAIVE].height
        if finetune_epochs:
            start = time.perf_counter()
            row.finetuned = _finetuned_accuracy(vanilla, model_a, model_b, splits, tuning)
            row.finetune_seconds = time.perf_counter() - start
        add(row)
    else:
        notes.append("The two networks differ in shape, so vanilla averaging (and the naive path) do not apply.")

    batch = fusion_batch(splits, config).to(device)
    for index, variant in enumerate(variants):
        report((index + 1) / steps, variant.title)
        start = time.perf_counter()
        result = run_fusion(model_a, model_b, splits, config.replace(finetune_epochs=0, **dict(variant.settings)))
        row = MethodRow(variant.key, variant.title, "method", result.accuracy["fused"],
                        seconds=time.perf_counter() - start)
        if result.fused.aligned is not None and ts:
            parents = [result.balanced.model_a, result.balanced.model_b]
            for path in aligned_paths(variant.key, variant.title, result.fused, parents, batch, config.repair.statistics):
                curves[path.key] = interpolation_curve(path, ts, splits, device, config.repair.bn_reset)
            row.barrier = curves[variant.key].height
            row.barrier_repaired = curves[variant.key + "+repair"].height if variant.key + "+repair" in curves else None
        elif result.fused.aligned is None:
            notes.append(f"{variant.title} has no aligned parents, so it has no barrier curve.")
        if finetune_epochs:
            start = time.perf_counter()
            finetune_result(result, splits, epochs=finetune_epochs, parents=False)
            row.finetuned = result.accuracy["fused_finetuned"]
            row.finetune_seconds = time.perf_counter() - start
        add(row)
    report(1.0, "done")
    return Comparison(rows, curves, config, finetune_epochs, notes)


@dataclass
class MetricRow:
    metric: str
    label: str
    alignment: list[int]           # for each of B's units, its matched unit of A
    cost: float                    # the alignment's total cost under this metric (comparable within a metric only)
    fused: float                   # one-shot test accuracy of the fusion under this alignment
    same_as: list[str]             # the other metrics whose alignment is identical

    def to_json(self) -> dict:
        return {**self.__dict__, "cost": round(self.cost, 6), "fused": round(self.fused, 6)}


def metric_downstream(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig = FusionConfig(),
                      metrics: tuple[str, ...] = METRICS, progress: Progress | None = None) -> list[MetricRow]:
    """For each cost metric, its DP alignment and the one-shot fused accuracy that alignment leads to.

    Activations are recorded once; metrics that produce the same alignment share one fusion.
    """
    report = progress or (lambda fraction, message: None)
    model_a, model_b, _ = order_pair(model_a, model_b)
    batch = fusion_batch(splits, config)
    acts_a, acts_b = (compute_activations(m, batch.inputs, config) for m in (model_a, model_b))
    alignments = {metric: compute_alignment(acts_a, acts_b, model_a, config.replace(cost=metric, mapping=None))
                  for metric in metrics}
    fused: dict[tuple, float] = {}
    for index, (metric, alignment) in enumerate(alignments.items()):
        key = tuple(map(tuple, alignment.mappings))
        if key not in fused:
            report(index / len(metrics), f"fusing under the {METRIC_LABELS[metric]} alignment")
            result = run_fusion(model_a, model_b, splits,
                                config.replace(cost=metric, mapping=None, finetune_epochs=0))
            fused[key] = result.accuracy["fused"]
    report(1.0, "done")
    keys = {metric: tuple(map(tuple, a.mappings)) for metric, a in alignments.items()}
    return [MetricRow(metric, METRIC_LABELS[metric], a.global_mapping(), a.total_cost, fused[keys[metric]],
                      [other for other in metrics if other != metric and keys[other] == keys[metric]])
            for metric, a in alignments.items()]


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def comparison_records(comparison: Comparison) -> list[dict]:
    """One display row per method (accuracy in %, seconds, loss barriers; None where it does not apply)."""
    tuned = f"after {comparison.finetune_epochs} epochs %"
    return [{"method": r.title, "one-shot %": _percent(r.one_shot), tuned: _percent(r.finetuned),
             "one-shot s": _rounded(r.seconds, 2), "finetune s": _rounded(r.finetune_seconds, 2),
             "barrier": _rounded(r.barrier), "barrier + repair": _rounded(r.barrier_repaired)} for r in comparison.rows]


def metric_records(rows: list[MetricRow]) -> list[dict]:
    """One display row per cost metric: its alignment and the fused accuracy it leads to."""
    return [{"cost metric": r.label, "alignment (B unit → A unit)": str(r.alignment), "fused one-shot %": _percent(r.fused),
             "same alignment as": ", ".join(r.same_as)} for r in rows]


def markdown_table(records: list[dict]) -> str:
    """Records as a Markdown table ("–" where a value does not apply)."""
    def cell(value) -> str:
        return "–" if value in (None, "") else str(value).replace("|", "\\|")

    header = list(records[0]) if records else []
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[k]) for k in header) + " |" for r in records])
