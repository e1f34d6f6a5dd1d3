"""Read-only views of library objects shaped for tables and widgets (names, widths, labels).

Presentation only: which unit is which and what to call it. Costs, matchings and accuracies are the
library's numbers, passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from clafusion_core.balancing import Balanced
from clafusion_core.layers import model_view
from clafusion_core.pipeline import Alignment, FusionConfig, FusionResult
from clafusion_core.similarity import METRIC_LABELS

from .labels import ACCURACY_LABELS, OPTIMIZER_LABELS, RUN_NAMES


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


@dataclass(frozen=True)
class WhatIfSlot:
    """One layer of B in the what-if editor: where it is, its label, the names of its possible partners."""

    stage: int
    unit: int
    label: str
    partners: list[str]


def whatif_slots(model_a: nn.Module, model_b: nn.Module) -> list[WhatIfSlot]:
    """A slot per unit of B, offering the units of A in the same stage (stages named when there are several)."""
    stages_a, stages_b = stage_units(model_a), stage_units(model_b)
    staged = sum(1 for units in stages_b if units) > 1
    return [WhatIfSlot(stage, j, f"partner of B {name}" + (f" (stage {stage})" if staged else ""), units_a)
            for stage, (units_a, units_b) in enumerate(zip(stages_a, stages_b)) for j, name in enumerate(units_b)]


def metric_rows(alignments: dict[str, Alignment], names_a: list[str], chosen: str) -> list[dict]:
    """One row per metric: its DP matching (A's layer of each B layer), its cost, and whether it agrees
    with the chosen metric's matching."""
    reference = alignments[chosen].global_mapping(alignments[chosen].optimal) if chosen in alignments else None
    return [{"metric": METRIC_LABELS[m],
             "matching (A layer of each B layer)": " · ".join(names_a[i] for i in a.global_mapping(a.optimal)),
             "its cost": round(a.optimal_cost, 4),
             f"agrees with {METRIC_LABELS[chosen]}": a.global_mapping(a.optimal) == reference}
            for m, a in alignments.items()]


def fusion_accuracies(fusion: FusionResult) -> dict[str, float | None]:
    """The Fusion page's accuracy bars: parents, balanced models, ensemble, vanilla (shown as n/a when the
    shapes differ) and the fused model before and after repair."""
    keys = ["model_a", "model_b", "balanced_a", "balanced_b", "ensemble", "vanilla", "fused_plain", "fused"]
    return {label: value for label, value in accuracy_view(fusion, keys).items()
            if value is not None or label == ACCURACY_LABELS["vanilla"]}


def balancing_text(balanced: Balanced, layer_weights: dict[str, list[float]]) -> str:
    """What balancing did (identity layers inserted, layers merged away, nothing) and the per-layer weights."""
    if balanced.inserted:
        text = (f"{len(balanced.inserted)} identity layer(s) (hatched) were inserted into B under the layers of A "
                "that nothing was matched to; lines join matched layers. " +
                ("Exact: the balanced B computes what B computed." if balanced.exact else "Not exact here (see the notes)."))
    elif balanced.removed:
        text = f"{len(balanced.removed)} layer(s) of A (crossed out) were merged into their successors."
    else:
        text = "Both networks were already equally deep: nothing was inserted or removed."
    if layer_weights:
        text += (" Per-layer weights (A, B) where they differ from (1 − s, s): " +
                 ", ".join(f"`{layer}` {w[0]:g} / {w[1]:g}" for layer, w in layer_weights.items()) +
                 " — the fused layer under each inserted identity is A's own.")
    return text


def diagnostics_text(diagnostics: list[dict], group: str) -> list[str]:
    """A method's diagnostics of one transport group (neuron interpolation: fit residual, ridge, clusters; of
    the group's last layer where several share it)."""
    return [f"Fit residual {d['fit_residual']:.3g} (relative), ridge {d['ridge']:.3g}, "
            f"{len(d['cluster_sizes'])} clusters of sizes {min(d['cluster_sizes'])}–{max(d['cluster_sizes'])}, "
            f"{d['mixed_groups']} mixing both parents." for d in diagnostics if d.get("group") == group][-1:]


def finetuned(fusion: FusionResult) -> bool:
    return fusion.fused_finetuned is not None


def parents_finetuned(fusion: FusionResult) -> bool:
    """Whether the last finetune also trained the parents (the fair baseline)."""
    return finetuned(fusion) and fusion.config.finetune.parents and fusion.accuracy.get("model_a_finetuned") is not None


def finetune_text(config: FusionConfig) -> str:
    """The finetune's settings in a sentence."""
    f = config.finetune
    teacher = f"distilled from the parents (weight {f.distill:g}, T = {f.temperature:g})" if f.distill > 0 else "labels only"
    return (f"{f.epochs} epoch(s), learning rate {f.lr}, {OPTIMIZER_LABELS[f.optimizer]}, {teacher}, seed "
            f"{config.seed} (the fusion run's); the best validation epoch is kept.")


def finetune_accuracies(fusion: FusionResult) -> dict[str, float | None]:
    """The Finetune page's bars: parents (and finetuned parents), the fused model before and after."""
    keys = ["model_a", "model_b"] + (["model_a_finetuned", "model_b_finetuned"] if parents_finetuned(fusion) else []) \
        + ["fused"] + (["fused_finetuned"] if finetuned(fusion) else [])
    return accuracy_view(fusion, keys)


def histories(fusion: FusionResult) -> dict[str, list[float]]:
    """The validation curves of the last finetune, by display name (the parents' only when they were trained)."""
    return {RUN_NAMES.get(k, k): v for k, v in fusion.histories.items() if k == "fused" or parents_finetuned(fusion)}
