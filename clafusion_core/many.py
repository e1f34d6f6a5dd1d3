"""Many-model fusion: N ≥ 2 trained models into one, every model aligned onto a target and averaged.

With a target (reference) model r and weights w (normalised to sum 1), every other model k is first
made as deep as the target — the pairwise DP alignment against the target, then balancing
(:func:`~.pipeline.align_and_balance`) — and then the chosen fusion method fuses the N balanced parents
onto r's neurons; for OT that is ``θ_F = Σ_k w_k · align_onto(θ_k, θ_r)``, one alignment per model.

The target decides the fused architecture. Balancing brings every model to the target's depth, so the
target must be a deepest model under ``add`` balancing (identity layers are inserted into the others)
and a shallowest under ``merge`` (the others' extra layers are folded away). By default it is the first
model when all are equally deep, else the first deepest (``add``) or shallowest (``merge``). Where a
model got an inserted identity layer, the ``deeper`` rule gives it weight 0 there and the others share
its weight (for two models: the deeper model's layer is kept, as in the pairwise fusion).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from .baselines import ensemble_accuracy, same_shapes
from .data import DataSplits
from .devices import cpu_fallback, placed_on, resolve_device
from .errors import AlignmentError
from .layers import model_view
from .methods import FusionOutput, get_method
from .otfusion import weighted_average
from .pipeline import BalancedPair, align_and_balance, describe_model, finetune_result, fuse_and_repair, \
    fusion_batch, inserted_layer_weights, run_fusion, run_record
from .config import FusionConfig
from .train import Progress, cached_accuracy, evaluate, reset_batchnorm


@dataclass
class ManyResult:
    config: FusionConfig
    models: list[nn.Module]                   # the parents, in the caller's order
    reference: int
    weights: list[float]
    pairs: list[BalancedPair | None]          # each model against the target (None for the target)
    parents: list[nn.Module]                  # the balanced parents, all as deep as the target
    fused: FusionOutput
    accuracy: dict
    timings_s: dict[str, float]
    layer_weights: dict[str, list[float]] = field(default_factory=dict)
    repair: dict = field(default_factory=dict)
    fused_finetuned: nn.Module | None = None
    histories: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def parent_models(self) -> list[nn.Module]:
        """The parents in the caller's order: their mean logits teach a finetune."""
        return self.models

    def baseline_runs(self) -> list[tuple[str, nn.Module]]:
        """None: a finetune trains the fused model only (no fair baseline of N parents yet)."""
        return []

    def to_json(self) -> dict:
        notes = [n for p in self.pairs if p for n in p.alignment.notes + p.balanced.notes]
        return {
            "method": self.config.fusion.name,
            "reference": self.reference,
            "weights": [round(w, 6) for w in self.weights],
            "models": {"parents": [describe_model(m) for m in self.models],
                       "balanced": [describe_model(m) for m in self.parents],
                       "fused": describe_model(self.fused.model)},
            "alignments": [None if p is None else {**p.alignment.to_json(), "swapped": p.swapped,
                                                   "inserted": p.balanced.inserted, "removed": p.balanced.removed,
                                                   "exact": p.balanced.exact} for p in self.pairs],
            **run_record(self),
            "warnings": self.warnings + notes + self.fused.warnings,
        }


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """``weights / Σ weights`` (equal weights by default); they must be non-negative, one per model."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
        raise AlignmentError(f"Give {count} non-negative fusion weights, one per model, not all zero.")
    return [w / sum(weights) for w in weights]


def allowed_references(models: Sequence[nn.Module], balance: str) -> list[int]:
    """The models that can be the target: balancing takes every model to the target's depth, so a deepest
    one under ``add`` and a shallowest one under ``merge``."""
    depths = [len(model_view(m).units) for m in models]
    extreme = max(depths) if balance == "add" else min(depths)
    return [k for k, depth in enumerate(depths) if depth == extreme]


def choose_reference(models: Sequence[nn.Module], balance: str, reference: int | None = None) -> int:
    """The target model: ``reference`` if given (checked), else the first allowed one (the first model when
    all are equally deep)."""
    allowed = allowed_references(models, balance)
    if reference is None:
        return allowed[0]
    if not 0 <= reference < len(models):
        raise AlignmentError(f"The reference must be one of the {len(models)} models: 0 to {len(models) - 1}.")
    if reference not in allowed:
        extreme = "deepest" if balance == "add" else "shallowest"
        depths = [len(model_view(m).units) for m in models]
        raise AlignmentError(f"With '{balance}' balancing the reference must be a {extreme} model "
                             f"(depths {depths}); choose model {allowed[0]} as the reference.")
    return reference


def _balanced_onto(pair: BalancedPair) -> nn.Module:
    """The non-target model of a pair made as deep as the target (the target is A unless swapped)."""
    return pair.balanced.model_a if pair.swapped else pair.balanced.model_b


def spread_layer_weights(pairs: Sequence[BalancedPair | None], weights: list[float], rule: str) -> dict[str, list[float]]:
    """Per-layer weights where some models hold an inserted identity: those get 0, the rest share the weight."""
    holders: dict[str, set[int]] = {}
    for index, pair in enumerate(pairs):
        if pair is not None and not pair.swapped:
            for layer in inserted_layer_weights(pair.balanced, rule):
                holders.setdefault(layer, set()).add(index)
    spread = {}
    for layer, identity in holders.items():
        kept = [0.0 if k in identity else w for k, w in enumerate(weights)]
        spread[layer] = [w / sum(kept) for w in kept]
    return spread


@cpu_fallback
def fuse_many(models: Sequence[nn.Module], splits: DataSplits, config: FusionConfig = FusionConfig(),
              reference: int | None = None, weights: Sequence[float] | None = None,
              progress: Progress | None = None) -> ManyResult:
    """Fuse N ≥ 2 models (module docstring); accuracy of every parent, the N-way ensemble and the fused model.

    ``config`` supplies the alignment, balancing, method, repair, BatchNorm and finetuning settings, and
    the target and weights (``config.fusion.reference`` / ``weights``) unless ``reference`` / ``weights``
    are given; the result's config records them, so it reruns the same fusion. Its pairwise
    ``fusion_weight`` is not used.
    """
    report = progress or (lambda fraction, message: None)
    if len(models) < 2:
        raise AlignmentError("Fusion needs at least two models.")
    config = config.replace(reference=config.fusion.reference if reference is None else reference,
                            weights=config.fusion.weights if weights is None else weights)
    device = resolve_device(config.device)
    weights = normalised_weights(config.fusion.weights, len(models))
    reference = choose_reference(models, config.balancing.method, config.fusion.reference)
    target = models[reference]
    timings: dict[str, float] = {}

    start = time.perf_counter()
    batch = fusion_batch(splits, config)
    activations: dict[int, list] = {}
    pairs: list[BalancedPair | None] = []
    for index, model in enumerate(models):
        report(0.3 * index / len(models), f"aligning model {index} with the target")
        pairs.append(None if index == reference else align_and_balance(target, model, batch, config, activations))
    parents = placed_on([target if p is None else _balanced_onto(p) for p in pairs], device)
    layer_weights = spread_layer_weights(pairs, weights, config.fusion.inserted)
    timings["alignment_and_balancing"] = time.perf_counter() - start

    report(0.35, f"fusion ({get_method(config.fusion.name).title})")
    start = time.perf_counter()
    batch = batch.to(device)
    fused, repair = fuse_and_repair(parents, reference, weights, layer_weights, batch, splits, config, device)
    timings["fusion"] = time.perf_counter() - start

    report(0.5, "evaluation")
    start = time.perf_counter()
    originals = placed_on(models, device)
    vanilla = None
    if same_shapes(*originals):
        vanilla = weighted_average(originals, weights)
        if config.repair.bn_reset:
            reset_batchnorm(vanilla, splits.train, device)
    accuracy = {
        "parents": [cached_accuracy(m, splits.test, device) for m in originals],
        "balanced": [cached_accuracy(m, splits.test, device) for m in parents],
        "ensemble": ensemble_accuracy(originals, splits.test, device),
        "vanilla": evaluate(vanilla, splits.test, device) if vanilla is not None else None,
        "fused_plain": repair.pop("fused_plain_test"),
        "fused": evaluate(fused.model, splits.test, device),
        "fused_finetuned": None,
    }
    timings["evaluation"] = time.perf_counter() - start
    result = ManyResult(config, list(models), reference, weights, pairs, parents, fused, accuracy, timings,
                        layer_weights, repair)
    if config.finetune.epochs > 0:
        finetune_result(result, splits, progress=lambda fraction, message: report(0.55 + 0.45 * fraction, message))
        if config.finetune.parents:
            result.warnings.append("Many-model fusion finetunes the fused model only, not the parents.")
    report(1.0, "done")
    return result


def is_pairwise(count: int, config: FusionConfig) -> bool:
    """Whether ``count`` models under ``config`` are the pairwise run (:func:`~.pipeline.run_fusion`): two
    models without a target; anything else is :func:`fuse_many`'s (the CLI's ``fuse`` and a bundle's rerun)."""
    return count == 2 and config.fusion.reference is None


def fuse_any(models: Sequence[nn.Module], splits: DataSplits, config: FusionConfig = FusionConfig(),
             progress: Progress | None = None):
    """The pairwise fusion or :func:`fuse_many`, as :func:`is_pairwise` decides."""
    if is_pairwise(len(models), config):
        return run_fusion(*models, splits, config, progress=progress)
    return fuse_many(models, splits, config, progress=progress)
