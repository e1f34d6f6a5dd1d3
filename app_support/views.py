"""Read-only views of library objects shaped for tables and widgets (names, widths, labels).

Presentation only: which unit is which and what to call it. Costs, matchings and accuracies are the
library's numbers, passed through unchanged.
"""

from __future__ import annotations

from torch import nn

from clafusion_core.layers import model_view
from clafusion_core.pipeline import Alignment, FusionResult

ACCURACY_LABELS = {
    "model_a": "model A",
    "model_b": "model B",
    "balanced_a": "A after merging",
    "balanced_b": "balanced B",
    "ensemble": "ensemble",
    "vanilla": "vanilla average",
    "fused_plain": "fused, unrepaired",
    "fused": "fused (one-shot)",
    "fused_finetuned": "fused + finetuned",
    "model_a_finetuned": "A + finetuned",
    "model_b_finetuned": "B + finetuned",
}

#: Short metric names for the six small multiples of the metric comparison (full names: METRIC_LABELS).
SHORT_METRIC_LABELS = {"linear_cka": "linear CKA", "debiased_cka": "debiased CKA", "rbf_cka": "RBF CKA",
                       "cca": "CCA", "wasserstein": "Wasserstein", "width": "width"}


def unit_names(model: nn.Module) -> list[str]:
    return [u.name for u in model_view(model).units]


def unit_widths(model: nn.Module) -> list[int]:
    return [u.width for u in model_view(model).units]


def stage_units(model: nn.Module) -> list[list[str]]:
    return [[u.name for u in stage] for stage in model_view(model).stages]


def stage_widths(model: nn.Module) -> list[list[int]]:
    return [[u.width for u in stage] for stage in model_view(model).stages]


def widths_text(model: nn.Module) -> str:
    """``400 → 200 → 100`` per stage, stages separated by `` | ``."""
    return "  |  ".join(" → ".join(str(w) for w in stage) for stage in stage_widths(model) if stage)


def pairs_table(alignment: Alignment, model_a: nn.Module, model_b: nn.Module,
                mappings: list[list[int]] | None = None) -> list[dict]:
    """One row per unit of B: its matched unit of A, both widths and the cost of the pair."""
    names_a, names_b = unit_names(model_a), unit_names(model_b)
    widths_a, widths_b = unit_widths(model_a), unit_widths(model_b)
    matched = alignment.global_mapping(mappings)
    return [{"B layer": names_b[j], "B width": widths_b[j], "A layer": names_a[i], "A width": widths_a[i],
             "cost": round(float(alignment.full_cost[i, j]), 4)} for j, i in enumerate(matched)]


def accuracy_view(fusion: FusionResult, keys: list[str]) -> dict[str, float | None]:
    """Accuracies under display labels, in the order of ``keys`` (missing ones left out)."""
    return {ACCURACY_LABELS.get(k, k): fusion.accuracy.get(k) for k in keys if k in fusion.accuracy}


def plan_label(group: str, plan_shape: tuple[int, int]) -> str:
    return f"{group}  ({plan_shape[0]} → {plan_shape[1]} neurons)"
