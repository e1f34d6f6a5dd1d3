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

from .labels import ACCURACY_LABELS, ACTIVATION_LABELS, OPTIMIZER_LABELS, RUN_NAMES


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


def parent_accuracies(fusion) -> dict[str, float]:
    """Each parent's test accuracy by display name: model A and B of a pair, "network k" (the target
    marked) of more (a ``many.ManyResult``)."""
    if isinstance(fusion, FusionResult):
        return {ACCURACY_LABELS[k]: fusion.accuracy[k] for k in ("model_a", "model_b")}
    return {f"network {k + 1}" + (" (target)" if k == fusion.reference else ""): accuracy
            for k, accuracy in enumerate(fusion.accuracy["parents"])}


def fusion_accuracies(fusion) -> dict[str, float | None]:
    """The Fusion page's accuracy bars: parents, balanced models (a pair's), ensemble, vanilla (shown as n/a
    when the shapes differ) and the fused model before and after repair."""
    pair_keys = ["balanced_a", "balanced_b"] if isinstance(fusion, FusionResult) else []
    shown = {**parent_accuracies(fusion), **accuracy_view(fusion, [*pair_keys, "ensemble", "vanilla", "fused_plain",
                                                                   "fused"])}
    return {label: value for label, value in shown.items() if value is not None or label == ACCURACY_LABELS["vanilla"]}


@dataclass(frozen=True)
class BalancedView:
    """One pair after balancing, as the Fusion page draws it: the models (A the deeper), what balancing did,
    the matching, the per-layer weights where they differ, and whose correspondence the plans show."""

    model_a: nn.Module
    model_b: nn.Module
    balanced: Balanced
    mappings: list[list[int]]
    layer_weights: dict[str, list[float]]
    parent: int


def balanced_view(fusion, viewed: int) -> BalancedView:
    """A pair's balancing, or for more networks the viewed network's against the target."""
    if isinstance(fusion, FusionResult):
        return BalancedView(fusion.model_a, fusion.model_b, fusion.balanced, fusion.alignment.mappings,
                            fusion.layer_weights, 0)
    pair = fusion.pairs[viewed]
    return BalancedView(pair.model_a, pair.model_b, pair.balanced, pair.alignment.mappings, fusion.layer_weights,
                        viewed)


def balancing_text(view: BalancedView, many: bool = False) -> str:
    """What balancing did (identity layers inserted, layers merged away, nothing) and the per-layer weights."""
    balanced = view.balanced
    if balanced.inserted:
        text = (f"{len(balanced.inserted)} identity layer(s) (hatched) were inserted into B under the layers of A "
                "that nothing was matched to; lines join matched layers. " +
                ("Exact: the balanced B computes what B computed." if balanced.exact else "Not exact here (see the notes)."))
    elif balanced.removed:
        text = f"{len(balanced.removed)} layer(s) of A (crossed out) were merged into their successors."
    else:
        text = "Both networks were already equally deep: nothing was inserted or removed."
    if view.layer_weights:
        text += (f" Per-layer weights ({'of the networks' if many else 'A, B'}) where they differ from the others: " +
                 ", ".join(f"`{layer}` " + " / ".join(f"{w:.3g}" for w in weights)
                           for layer, weights in view.layer_weights.items()) +
                 " — under an inserted identity the fused layer is the deeper networks' own.")
    return text


def ground_choice_text(repair: dict) -> str | None:
    """Which ground-metric activation the validation split chose, with both candidates' scores, if it chose."""
    choice = repair.get("ground_activation")
    if not choice:
        return None
    scores = ", ".join(f"{ACTIVATION_LABELS[name]} {100 * value:.2f} %" for name, value in choice["val"].items())
    return (f"Ground-metric activations chosen on the validation split: **{ACTIVATION_LABELS[choice['chosen']]}** "
            f"({scores}).")


def diagnostics_text(diagnostics: list[dict], group: str) -> list[str]:
    """A method's diagnostics of one transport group (neuron interpolation: fit residual, ridge, clusters; of
    the group's last layer where several share it)."""
    return [f"Fit residual {d['fit_residual']:.3g} (relative), ridge {d['ridge']:.3g}, "
            f"{len(d['cluster_sizes'])} clusters of sizes {min(d['cluster_sizes'])}–{max(d['cluster_sizes'])}, "
            f"{d['mixed_groups']} mixing both parents." for d in diagnostics if d.get("group") == group][-1:]


def finetuned(fusion) -> bool:
    return fusion.fused_finetuned is not None


def parents_finetuned(fusion) -> bool:
    """Whether the last finetune also trained the parents (the fair baseline; a pair's only)."""
    return (finetuned(fusion) and fusion.config.finetune.parents and isinstance(fusion, FusionResult)
            and fusion.accuracy.get("model_a_finetuned") is not None)


def finetune_parent_metrics(fusion) -> list[tuple[str, float, float | None]]:
    """The Finetune page's parent metrics (label, accuracy, change): a pair's two (finetuned when they were),
    or the best of more networks."""
    if not isinstance(fusion, FusionResult):
        return [("best parent", max(fusion.accuracy["parents"]), None)]
    tuned = parents_finetuned(fusion)
    return [(ACCURACY_LABELS[f"{name}_finetuned" if tuned else name],
             fusion.accuracy[f"{name}_finetuned" if tuned else name],
             fusion.accuracy[f"{name}_finetuned"] - fusion.accuracy[name] if tuned else None)
            for name in ("model_a", "model_b")]


def finetune_text(config: FusionConfig) -> str:
    """The finetune's settings in a sentence."""
    f = config.finetune
    teacher = f"distilled from the parents (weight {f.distill:g}, T = {f.temperature:g})" if f.distill > 0 else "labels only"
    return (f"{f.epochs} epoch(s), learning rate {f.lr}, {OPTIMIZER_LABELS[f.optimizer]}, {teacher}, seed "
            f"{config.seed} (the fusion run's); the best validation epoch is kept.")


def finetune_accuracies(fusion) -> dict[str, float | None]:
    """The Finetune page's bars: parents (and finetuned parents), the fused model before and after."""
    tuned = ["model_a_finetuned", "model_b_finetuned"] if parents_finetuned(fusion) else []
    return {**parent_accuracies(fusion), **accuracy_view(fusion, tuned + ["fused"] + (["fused_finetuned"]
                                                                                        if finetuned(fusion) else []))}


def histories(fusion) -> dict[str, list[float]]:
    """The validation curves of the last finetune, by display name (the parents' only when they were trained)."""
    return {RUN_NAMES.get(k, k): v for k, v in fusion.histories.items() if k == "fused" or parents_finetuned(fusion)}
