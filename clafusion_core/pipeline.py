"""The one fusion path used by the app, the CLI and the benchmarks.

``FusionConfig`` → ``FusionResult``, stage by stage:

    probe batch → unit activations → cost matrix → alignment (DP) → balancing → OT fusion
    → repair / BatchNorm reset → evaluation → finetuning

Every stage is a plain function the app can call (and cache) on its own; :func:`run_fusion` calls them
in order, times each one and collects everything ``result.json`` holds.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .activations import unit_activations
from .alignment import align_layers, alignment_cost, validate_mapping
from .balancing import Balanced, balance
from .baselines import ensemble_accuracy, teacher_logits, vanilla_average
from .data import DataSplits, default_probe_size, probe_examples
from .devices import cpu_fallback, placed_on, resolve_device
from .errors import AlignmentError, CheckpointError
from .families import Family
from .layers import model_view
from .models import count_parameters
from .config import FusionConfig
from .methods import FusionBatch, FusionOutput, get_method
from .repair import repair_statistics, repairable_layers, with_biases
from .similarity import cost_matrix
from .threads import sized_by, work_of
from .train import Progress, cached_accuracy, evaluate, finetune, reset_batchnorm
from .validation import check_finite_model


@dataclass
class Alignment:
    """The per-stage cost matrices and matchings, and the whole-model matrix shown to users."""

    costs: list[np.ndarray]           # one (m_s × n_s) matrix per stage
    mappings: list[list[int]]         # per stage: B's unit j → A's unit mappings[s][j]
    optimal: list[list[int]]          # the DP's matching (equal to mappings unless overridden)
    full_cost: np.ndarray             # all units of A × all units of B
    notes: list[str] = field(default_factory=list)

    @property
    def total_cost(self) -> float:
        return float(sum(alignment_cost(c, m) for c, m in zip(self.costs, self.mappings)))

    @property
    def optimal_cost(self) -> float:
        return float(sum(alignment_cost(c, m) for c, m in zip(self.costs, self.optimal)))

    def locate_cell(self, row: int, col: int) -> tuple[int, int, int] | None:
        """(stage, row within the stage, column within the stage) of a whole-model cost cell, or None
        when the cell pairs units of different stages (such a pair can never be matched)."""
        row0 = col0 = 0
        for stage, cost in enumerate(self.costs):
            m, n = cost.shape
            if row0 <= row < row0 + m and col0 <= col < col0 + n:
                return stage, row - row0, col - col0
            row0, col0 = row0 + m, col0 + n
        return None

    def to_json(self) -> dict:
        """The alignment part of ``align.json`` and ``result.json``."""
        return {"cost_matrix": self.full_cost.round(6).tolist(), "alignment": self.global_mapping(),
                "stage_alignment": self.mappings, "dp_alignment": self.global_mapping(self.optimal),
                "alignment_cost": self.total_cost}

    def global_mapping(self, mappings: list[list[int]] | None = None) -> list[int]:
        """The matching as indices into all of A's units, for each of B's units in order."""
        offset, result = 0, []
        for cost, mapping in zip(self.costs, mappings or self.mappings):
            result.extend(offset + a for a in mapping)
            offset += cost.shape[0]
        return result


@dataclass
class FusionResult:
    config: FusionConfig
    model_a: nn.Module
    model_b: nn.Module
    alignment: Alignment
    balanced: Balanced
    fused: FusionOutput
    accuracy: dict[str, float | None]
    timings_s: dict[str, float]
    swapped: bool = False
    layer_weights: dict[str, list[float]] = field(default_factory=dict)
    repair: dict = field(default_factory=dict)
    threads: int = 1                  # torch's intra-op threads the run used (float sums depend on it)
    fused_finetuned: nn.Module | None = None
    histories: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def parent_models(self) -> list[nn.Module]:
        """The parents (A, the deeper, first): their mean logits teach a finetune."""
        return [self.model_a, self.model_b]

    def baseline_runs(self) -> list[tuple[str, nn.Module]]:
        """The parents a finetune trains alike as the fair baseline, by the name of their accuracies."""
        return [("model_a", self.model_a), ("model_b", self.model_b)]

    def to_json(self) -> dict:
        """The ``result.json`` contract (see the design's "CLI and JSON contract")."""
        return {
            **self.alignment.to_json(),
            "models": {"model_a": describe_model(self.model_a), "model_b": describe_model(self.model_b),
                       "balanced_b": describe_model(self.balanced.model_b),
                       "fused": describe_model(self.fused.model)},
            "balancing": {"method": self.config.balancing.method, "inserted": self.balanced.inserted,
                          "removed": self.balanced.removed, "exact": self.balanced.exact},
            "method": self.config.fusion.name,
            **run_record(self),
            "threads": self.threads,
            "swapped": self.swapped,
            "warnings": self.warnings + self.alignment.notes + self.balanced.notes + self.fused.warnings,
        }


def run_record(result) -> dict:
    """The ``result.json`` keys every fusion run shares (a pair's :class:`FusionResult`, N models' result):
    per-layer weights, repair, the method's diagnostics, accuracies, histories, timings, config and seed."""
    return {"layer_weights": result.layer_weights, "repair": result.repair, "diagnostics": result.fused.diagnostics,
            "accuracy": result.accuracy, "histories": result.histories,
            "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()},
            "config": result.config.to_dict(), "seed": result.config.seed}


def describe_model(model: nn.Module) -> dict:
    """Arch, depth (alignable units), widths per unit and parameter count."""
    units = model_view(model).units
    return {"arch": str(model.spec), "depth": len(units), "widths": [u.width for u in units],
            "layers": [u.name for u in units], "params": count_parameters(model)}


def order_pair(model_a: nn.Module, model_b: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    """Put the deeper model first (the alignment's rows); returns whether they were swapped."""
    if model_a.family is not model_b.family:
        raise AlignmentError(f"Cannot fuse a {model_a.family.name} with a {model_b.family.name}; "
                             "choose two models of the same family.")
    if model_a.num_classes != model_b.num_classes or model_a.input_shape != model_b.input_shape:
        raise CheckpointError(f"The models disagree on inputs {model_a.input_shape} vs {model_b.input_shape} or "
                              f"classes {model_a.num_classes} vs {model_b.num_classes}; choose two models trained on the same dataset.")
    depth_a, depth_b = (len(model_view(m).units) for m in (model_a, model_b))
    if depth_b > depth_a:
        return model_b, model_a, True
    return model_a, model_b, False


def fusion_batch(splits: DataSplits, config: FusionConfig) -> FusionBatch:
    """The probe batch every stage shares (alignment, ground metric, repair, a method's fits), with labels."""
    return FusionBatch(*probe_examples(splits, config.probe.size, config.probe.seed))


def probe_inputs(splits: DataSplits, config: FusionConfig) -> torch.Tensor:
    return fusion_batch(splits, config).inputs


@sized_by(lambda args: work_of([args["model"]], len(args["probe"])))
def compute_activations(model: nn.Module, probe: torch.Tensor, config: FusionConfig) -> list[list[torch.Tensor]]:
    """Per-stage unit activations of one model (cache these: every metric reuses them)."""
    return unit_activations(model, probe, pre=config.alignment.activation == "pre", conv=config.alignment.conv_features)


def stage_pins(family: Family, depths_b: list[int], config: FusionConfig) -> tuple[list[tuple[bool, bool]], list[str]]:
    """The (pin_first, pin_last) of each stage: the model's first hidden layers are matched to each
    other and its last ones too; stages in between align freely. In a family whose stages start with
    the downsampling unit (ResNet: ``Family.pins_stage_starts``) every stage's first units are matched."""
    filled = [s for s, n in enumerate(depths_b) if n]
    first, last = (filled[0], filled[-1]) if filled else (-1, -1)
    notes = []
    if family.pins_stage_starts and not config.alignment.pin_first:
        notes.append(family.pin_note)
    pins = [((config.alignment.pin_first and s == first) or family.pins_stage_starts,
             config.alignment.pin_last and s == last) for s in range(len(depths_b))]
    return pins, notes


def compute_alignment(acts_a: list[list[torch.Tensor]], acts_b: list[list[torch.Tensor]], model_a: nn.Module,
                      config: FusionConfig) -> Alignment:
    """Cost matrix (whole model and per stage) and the per-stage DP alignment, or the user's override."""
    if len(acts_a) != len(acts_b):
        raise AlignmentError(f"Model A has {len(acts_a)} stages and model B {len(acts_b)}; "
                             "fuse models with the same number of stages (poolings / resolutions).")
    flat_a = [a for stage in acts_a for a in stage]
    flat_b = [b for stage in acts_b for b in stage]
    full = cost_matrix(flat_a, flat_b, config.alignment.cost) if flat_a and flat_b else np.zeros((len(flat_a), len(flat_b)))
    pins, notes = stage_pins(model_a.family, [len(stage) for stage in acts_b], config)
    costs, optimal, row, col = [], [], 0, 0
    for stage_a, stage_b, (pin_first, pin_last) in zip(acts_a, acts_b, pins):
        m, n = len(stage_a), len(stage_b)
        if n > m:
            raise AlignmentError(f"Stage {len(costs)} of the deeper model has fewer layers ({m}) than the other's "
                                 f"({n}); every stage of model A must be at least as deep as model B's.")
        costs.append(full[row:row + m, col:col + n])
        optimal.append(align_layers(costs[-1], pin_first=pin_first, pin_last=pin_last))
        row, col = row + m, col + n
    mappings = optimal
    if config.alignment.mapping is not None:
        mappings = [list(m) for m in config.alignment.mapping]
        if len(mappings) != len(costs):
            raise AlignmentError(f"The matching gives {len(mappings)} stages but the models have {len(costs)}.")
        for cost, mapping, (pin_first, pin_last) in zip(costs, mappings, pins):
            validate_mapping(mapping, *cost.shape, pin_first=pin_first, pin_last=pin_last)
    return Alignment(costs, mappings, optimal, full, notes)


@dataclass
class BalancedPair:
    """Two models after the front stages: ordered (A the deeper), aligned by the DP, balanced."""

    model_a: nn.Module
    model_b: nn.Module
    swapped: bool
    alignment: Alignment
    balanced: Balanced


def align_and_balance(model_a: nn.Module, model_b: nn.Module, batch: FusionBatch, config: FusionConfig,
                      activations: dict[int, list[list[torch.Tensor]]] | None = None) -> BalancedPair:
    """Order the pair, record both models' activations on ``batch``, align (DP) and balance them.

    ``activations`` (keyed by ``id(model)``) lets a caller pairing one model with many record it once.
    """
    model_a, model_b, swapped = order_pair(model_a, model_b)
    store = {} if activations is None else activations
    for model in (model_a, model_b):
        if id(model) not in store:
            store[id(model)] = compute_activations(model, batch.inputs, config)
    alignment = compute_alignment(store[id(model_a)], store[id(model_b)], model_a, config)
    balanced = balance(model_a, model_b, alignment.mappings, config.balancing.method, batch.inputs,
                       config.balancing.identity_width)
    return BalancedPair(model_a, model_b, swapped, alignment, balanced)


def inserted_layer_weights(balanced: Balanced, rule: str) -> dict[str, list[float]]:
    """Per-layer ``[w_A, w_B]`` where they differ from ``[1 − s, s]``.

    Where balancing inserted an identity into B, averaging A's real layer with it at s = 0.5 gives a
    half-identity neither parent computed; the ``deeper`` rule keeps A's layer there (``[1, 0]``).
    """
    if rule == "average" or not balanced.inserted:
        return {}
    units = model_view(balanced.model_b).stages
    inserted = [units[stage][position].name for stage, position in balanced.inserted]
    return {layer.name: [1.0, 0.0] for layer in model_view(balanced.model_b).layers
            if any(layer.name == unit or layer.name.startswith(unit + ".") for unit in inserted)}


def fuse_balanced(balanced: Balanced, batch: FusionBatch, splits: DataSplits, config: FusionConfig,
                  device: torch.device) -> tuple[FusionOutput, dict[str, list[float]], dict]:
    """Fuse with the chosen method, then statistics repair (kept only if it helps on validation) and
    BatchNorm reset. Returns the fusion, the per-layer weights and what repair did."""
    parents = placed_on([balanced.model_a, balanced.model_b], device)   # never moves the caller's models
    batch = batch.to(device)
    weights = [1 - config.fusion.weight, config.fusion.weight]
    layer_weights = inserted_layer_weights(balanced, config.fusion.inserted)
    fused, report = fuse_and_repair(parents, 1, weights, layer_weights, batch, splits, config, device)
    return fused, layer_weights, report


def ground_activation_candidates(options, family) -> list:
    """The method options :func:`fuse_and_repair` tries on models of ``family``: where OT's
    ``ground_activation_choice`` leaves the choice to validation (``validation``, or ``conv`` on a conv
    family; the ``activations`` ground metric only) the configured ground activation first, then the other
    one; anything else is tried as it is."""
    from dataclasses import replace

    from .otfusion import GROUND_ACTIVATIONS, OTOptions

    choose = isinstance(options, OTOptions) and options.ground_metric == "activations" and (
        options.ground_activation_choice == "validation" or (options.ground_activation_choice == "conv" and family.is_conv))
    if choose:
        return [options] + [replace(options, ground_activation=other) for other in GROUND_ACTIVATIONS
                            if other != options.ground_activation]
    return [options]


def fuse_and_repair(parents: list[nn.Module], reference: int, weights: list[float],
                    layer_weights: dict[str, list[float]], batch: FusionBatch, splits: DataSplits,
                    config: FusionConfig, device: torch.device) -> tuple[FusionOutput, dict]:
    """Fuse ``parents`` (placed on ``device``) with the configured method, then :func:`repair_and_reset`.

    Where the options leave a choice to the validation split (OT's ``ground_activation_choice``), every
    candidate is fused and repaired and the one with the best validation accuracy is kept (the configured
    one on ties); the report's ``ground_activation`` says which, with each candidate's validation accuracy.
    Never the test split.
    """
    method = get_method(config.fusion.name)
    candidates = ground_activation_candidates(config.fusion.options, parents[0].family)
    best = None
    scores = {}
    for options in candidates:
        method_batch = method.batch(splits, batch, options).to(device)
        fused = method.fuse(parents, reference, weights, method_batch, options, layer_weights)
        report = repair_and_reset(fused, parents, weights, layer_weights, batch, splits, config, device)
        if len(candidates) == 1:
            return fused, report
        val = (report["val_with"] if report["kept"] else report["val_without"]) if report["enabled"] \
            else evaluate(fused.model, splits.val, device)   # repair scored the kept model already
        scores[options.ground_activation] = val
        if best is None or val > best[2]:
            best = (fused, report, val, options.ground_activation)
    fused, report, _, chosen = best
    report["ground_activation"] = {"chosen": chosen, "val": scores}
    return fused, report


def repair_and_reset(fused: FusionOutput, parents: list[nn.Module], weights: list[float],
                     layer_weights: dict[str, list[float]], batch: FusionBatch, splits: DataSplits,
                     config: FusionConfig, device: torch.device) -> dict:
    """Statistics repair of ``fused.model`` (kept only if it helps on validation) and BatchNorm reset, for
    any number of parents; replaces ``fused.model`` in place and returns what repair did."""
    report: dict = {"fused_plain_test": None}
    if config.repair.statistics or config.repair.bn_reset:
        report["fused_plain_test"] = evaluate(fused.model, splits.test, device)
    report["enabled"] = bool(config.repair.statistics and repairable_layers(fused.model))
    if not report["enabled"]:   # nothing to repair (or BatchNorm everywhere: the reset repairs)
        _bn_reset(fused.model, splits, config, device)
        return report
    repaired = with_biases(copy.deepcopy(fused.model))
    repair_statistics(repaired, parents, fused.correspondence, weights, batch.inputs, layer_weights)
    plain, repaired = (_bn_reset(m, splits, config, device) for m in (fused.model, repaired))
    report.update(added_biases=not fused.model.spec.bias, val_without=evaluate(plain, splits.val, device),
                  val_with=evaluate(repaired, splits.val, device))
    report["kept"] = report["val_with"] > report["val_without"]
    if report["kept"]:
        fused.model = repaired
    else:
        fused.warnings.append("Statistics repair did not improve validation accuracy "
                              f"({100 * report['val_with']:.2f} vs {100 * report['val_without']:.2f} %), "
                              "so the fused model is kept without it.")
    if report["kept"] and report["added_biases"]:
        fused.warnings.append("Repair gave the fused model biases (its parents had none) so it could shift "
                              "each neuron's mean; the exported model has them too.")
    return report


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@cpu_fallback
@sized_by(lambda args: work_of([args["model_a"], args["model_b"]],
                              args["config"].probe.size or default_probe_size(args["config"].probe.dataset)))
def run_fusion(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig = FusionConfig(),
               progress: Progress | None = None,
               on_epoch: Callable[[str, int, float], None] | None = None) -> FusionResult:
    """Align, balance, fuse, evaluate and (optionally) finetune two trained models end to end."""
    report = progress or (lambda fraction, message: None)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    model_a, model_b, swapped = order_pair(model_a, model_b)
    warnings = ["Model B is deeper than model A, so they were swapped: A is now the deeper one."] if swapped else []

    report(0.02, "activations")
    with _timed(timings, "activations"):
        batch = fusion_batch(splits, config)
        acts_a, acts_b = (compute_activations(m, batch.inputs, config) for m in (model_a, model_b))
    report(0.1, "cost matrix and alignment")
    with _timed(timings, "cost_and_alignment"):
        alignment = compute_alignment(acts_a, acts_b, model_a, config)
    report(0.15, "balancing")
    with _timed(timings, "balancing"):
        balanced = balance(model_a, model_b, alignment.mappings, config.balancing.method, batch.inputs,
                       config.balancing.identity_width)
    report(0.2, "fusion")
    with _timed(timings, "fusion"):
        fused, layer_weights, repair_report = fuse_balanced(balanced, batch, splits, config, device)

    report(0.3, "evaluation")
    with _timed(timings, "evaluation"):
        vanilla = vanilla_average(model_a, model_b, config.fusion.weight)
        accuracy = {
            "model_a": cached_accuracy(model_a, splits.test, device),
            "model_b": cached_accuracy(model_b, splits.test, device),
            "balanced_a": cached_accuracy(balanced.model_a, splits.test, device) if config.balancing.method == "merge" else None,
            "balanced_b": cached_accuracy(balanced.model_b, splits.test, device),
            "ensemble": ensemble_accuracy([model_a, model_b], splits.test, device),
            "vanilla": evaluate(_bn_reset(vanilla, splits, config, device), splits.test, device) if vanilla else None,
            "fused_plain": repair_report.pop("fused_plain_test"),
            "fused": evaluate(fused.model, splits.test, device),
            "fused_finetuned": None,
        }

    result = FusionResult(config, model_a, model_b, alignment, balanced, fused, accuracy, timings, swapped,
                          layer_weights=layer_weights, repair=repair_report, threads=torch.get_num_threads(),
                          warnings=warnings)
    if config.finetune.epochs > 0:
        finetune_result(result, splits, progress=lambda f, m: report(0.35 + 0.65 * f, m), on_epoch=on_epoch)
    check_finite_model(result.fused.model, result.fused_finetuned)
    report(1.0, "done")
    return result


def _bn_reset(model: nn.Module, splits: DataSplits, config: FusionConfig, device: torch.device) -> nn.Module:
    if config.repair.bn_reset:
        reset_batchnorm(model, splits.train, device)
    return model


def finetune_teacher(parents: list[nn.Module], splits: DataSplits, config: FusionConfig,
                     device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The parents' ensemble logits on every training example, or None when finetuning does not distil."""
    return teacher_logits(parents, splits.train.tensors[0], device) if config.finetune.distill > 0 else None


def finetune_result(result, splits: DataSplits, *, epochs: int | None = None, lr: float | None = None,
                    optimizer: str | None = None, parents: bool | None = None, distill: float | None = None,
                    temperature: float | None = None, clip_grad_norm: float | None = None,
                    progress: Progress | None = None,
                    on_epoch: Callable[[str, int, float], None] | None = None):
    """Finetune the fused model of a run (a pair's :class:`FusionResult` or N models' result) in place, and
    as the fair baseline the parents its ``baseline_runs`` names (a pair's two) for the same epochs.

    Every run uses the same settings, distillation from the parents' ensemble included, so the parents'
    numbers are what the same extra training buys *them*. ``histories[name]`` holds the validation
    accuracy after 0 (the start), 1, ..., E epochs.
    """
    changes = {"finetune_epochs": epochs, "finetune_lr": lr, "optimizer": optimizer, "finetune_parents": parents,
               "distill": distill, "distill_temperature": temperature, "clip_grad_norm": clip_grad_norm}
    config = result.config.replace(**{k: v for k, v in changes.items() if v is not None})
    training = config.finetune_config()
    result.config = config
    device = resolve_device(config.device)
    teacher = finetune_teacher(result.parent_models(), splits, config, device)
    runs = [("fused", result.fused.model)]
    if config.finetune.parents:
        runs += result.baseline_runs()
    for name, _ in result.baseline_runs():  # no stale numbers from an earlier call
        result.accuracy.pop(f"{name}_finetuned", None)
        result.histories.pop(name, None)
    report = progress or (lambda fraction, message: None)
    with _timed(result.timings_s, "finetune"):
        for index, (name, model) in enumerate(runs):
            def step(fraction, message, index=index, name=name):
                report((index + fraction) / len(runs), f"finetuning {name}: {message}")

            def epoch_done(epoch, accuracy, name=name):
                if on_epoch:
                    on_epoch(name, epoch, accuracy)

            tuned, history = finetune(model, splits.train, splits.val, training, device, step, epoch_done, teacher)
            result.histories[name] = history.val_accuracy
            result.accuracy[f"{name}_finetuned"] = evaluate(tuned, splits.test, device)
            if name == "fused":
                result.fused_finetuned = tuned
    return result
