"""The one fusion path used by the app, the CLI and the benchmarks.

``FusionConfig`` → ``FusionResult``, stage by stage:

    probe batch → unit activations → cost matrix → alignment (DP) → balancing → OT fusion
    → repair / BatchNorm reset → evaluation → finetuning

Every stage is a plain function the app can call (and cache) on its own; :func:`run_fusion` calls them
in order, times each one and collects everything ``result.json`` holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .activations import CONV_MODES, group_activations, unit_activations
from .alignment import align_layers, alignment_cost, validate_mapping
from .balancing import BALANCE_METHODS, Balanced, balance
from .baselines import ensemble_accuracy, teacher_logits, vanilla_average
from .data import DataSplits, probe_batch
from .devices import resolve_device
from .errors import AlignmentError, CheckpointError
from .layers import model_view
from .models import count_parameters
from .otfusion import FusedModel, OTOptions, fuse_models
from .repair import repair_statistics
from .similarity import METRICS, cost_matrix
from .threads import sized_by, work_of
from .train import Progress, TrainConfig, evaluate, finetune, reset_batchnorm


@dataclass(frozen=True)
class FusionConfig:
    """Everything that determines a fusion run (saved in ``result.json`` to rerun it)."""

    dataset: str = "digits"
    data_root: str | None = None
    cost: str = "linear_cka"
    probe_size: int = 200
    probe_seed: int = 0
    activation: str = "post"           # "post" (after ReLU) or "pre"
    conv_features: str = "pool"        # conv maps: average over space or flatten
    pin_first: bool = True
    pin_last: bool = True
    balance: str = "add"
    ground_metric: str = "activations"
    solver: str = "emd"
    sinkhorn_reg: float = 0.01
    fusion_weight: float = 0.5
    input_scaling: str = "average"
    marginals: str = "uniform"
    repair: bool = True
    bn_reset: bool = True
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    optimizer: str = "sgd"
    distill: float = 0.9               # weight of distillation from the parents' ensemble (0: labels only)
    distill_temperature: float = 4.0
    finetune_parents: bool = False
    seed: int = 0
    device: str = "auto"
    mapping: tuple[tuple[int, ...], ...] | None = None   # a user's per-stage matching instead of the DP's

    def __post_init__(self):
        if self.cost not in METRICS:
            raise AlignmentError(f"Unknown cost metric '{self.cost}'; choose one of {METRICS}.")
        if self.balance not in BALANCE_METHODS:
            raise AlignmentError(f"Unknown balancing '{self.balance}'; choose one of {BALANCE_METHODS}.")
        if self.activation not in ("pre", "post") or self.conv_features not in CONV_MODES:
            raise AlignmentError("Activations must be 'pre' or 'post' and conv features 'pool' or 'flatten'.")
        self.ot_options()  # validates the fusion options
        self.finetune_config()

    def finetune_config(self) -> TrainConfig:
        """The training settings of a finetune, shared by the fused model and the parents' fair baseline."""
        return TrainConfig(epochs=self.finetune_epochs, lr=self.finetune_lr, optimizer=self.optimizer,
                           seed=self.seed, distill=self.distill, temperature=self.distill_temperature)

    def ot_options(self) -> OTOptions:
        return OTOptions(ground_metric=self.ground_metric, solver=self.solver, sinkhorn_reg=self.sinkhorn_reg,
                         fusion_weight=self.fusion_weight, input_scaling=self.input_scaling,
                         marginals=self.marginals)


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
    fused: FusedModel
    accuracy: dict[str, float | None]
    timings_s: dict[str, float]
    swapped: bool = False
    fused_finetuned: nn.Module | None = None
    histories: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The ``result.json`` contract (see the design's "CLI and JSON contract")."""
        return {
            **self.alignment.to_json(),
            "models": {"model_a": describe_model(self.model_a), "model_b": describe_model(self.model_b),
                       "balanced_b": describe_model(self.balanced.model_b),
                       "fused": describe_model(self.fused.model)},
            "balancing": {"method": self.config.balance, "inserted": self.balanced.inserted,
                          "removed": self.balanced.removed, "exact": self.balanced.exact},
            "accuracy": self.accuracy,
            "histories": self.histories,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "config": asdict(self.config),
            "seed": self.config.seed,
            "swapped": self.swapped,
            "warnings": self.warnings + self.alignment.notes + self.balanced.notes + self.fused.warnings,
        }


def describe_model(model: nn.Module) -> dict:
    """Arch, depth (alignable units), widths per unit and parameter count."""
    units = model_view(model).units
    return {"arch": str(model.spec), "depth": len(units), "widths": [u.width for u in units],
            "layers": [u.name for u in units], "params": count_parameters(model)}


def order_pair(model_a: nn.Module, model_b: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    """Put the deeper model first (the alignment's rows); returns whether they were swapped."""
    if model_a.spec.family != model_b.spec.family:
        raise AlignmentError(f"Cannot fuse a {model_a.spec.family} with a {model_b.spec.family}; "
                             "choose two models of the same family.")
    if model_a.num_classes != model_b.num_classes or model_a.input_shape != model_b.input_shape:
        raise CheckpointError(f"The models disagree on inputs {model_a.input_shape} vs {model_b.input_shape} or "
                              f"classes {model_a.num_classes} vs {model_b.num_classes}; choose two models trained on the same dataset.")
    depth_a, depth_b = (len(model_view(m).units) for m in (model_a, model_b))
    if depth_b > depth_a:
        return model_b, model_a, True
    return model_a, model_b, False


def probe_inputs(splits: DataSplits, config: FusionConfig) -> torch.Tensor:
    return probe_batch(splits, config.probe_size, config.probe_seed)


@sized_by(lambda args: work_of([args["model"]], len(args["probe"])))
def compute_activations(model: nn.Module, probe: torch.Tensor, config: FusionConfig) -> list[list[torch.Tensor]]:
    """Per-stage unit activations of one model (cache these: every metric reuses them)."""
    return unit_activations(model, probe, pre=config.activation == "pre", conv=config.conv_features)


def stage_pins(family: str, depths_b: list[int], config: FusionConfig) -> tuple[list[tuple[bool, bool]], list[str]]:
    """The (pin_first, pin_last) of each stage: the model's first hidden layers are matched to each
    other and its last ones too; stages in between align freely. A ResNet stage's first block carries
    the downsampling, so in ResNets every stage's first blocks are matched."""
    filled = [s for s, n in enumerate(depths_b) if n]
    first, last = (filled[0], filled[-1]) if filled else (-1, -1)
    notes = []
    if family == "resnet" and not config.pin_first:
        notes.append("ResNet stages always match their first blocks (they downsample).")
    pins = [((config.pin_first and s == first) or family == "resnet", config.pin_last and s == last)
            for s in range(len(depths_b))]
    return pins, notes


def compute_alignment(acts_a: list[list[torch.Tensor]], acts_b: list[list[torch.Tensor]], model_a: nn.Module,
                      config: FusionConfig) -> Alignment:
    """Cost matrix (whole model and per stage) and the per-stage DP alignment, or the user's override."""
    if len(acts_a) != len(acts_b):
        raise AlignmentError(f"Model A has {len(acts_a)} stages and model B {len(acts_b)}; "
                             "fuse models with the same number of stages (poolings / resolutions).")
    flat_a = [a for stage in acts_a for a in stage]
    flat_b = [b for stage in acts_b for b in stage]
    full = cost_matrix(flat_a, flat_b, config.cost) if flat_a and flat_b else np.zeros((len(flat_a), len(flat_b)))
    pins, notes = stage_pins(model_a.spec.family, [len(stage) for stage in acts_b], config)
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
    if config.mapping is not None:
        mappings = [list(m) for m in config.mapping]
        if len(mappings) != len(costs):
            raise AlignmentError(f"The matching gives {len(mappings)} stages but the models have {len(costs)}.")
        for cost, mapping, (pin_first, pin_last) in zip(costs, mappings, pins):
            validate_mapping(mapping, *cost.shape, pin_first=pin_first, pin_last=pin_last)
    return Alignment(costs, mappings, optimal, full, notes)


def fuse_balanced(balanced: Balanced, probe: torch.Tensor, splits: DataSplits, config: FusionConfig,
                  device: torch.device) -> tuple[FusedModel, float | None]:
    """OT fusion, then statistics repair and BatchNorm reset; returns the plain fused accuracy too."""
    model_a, model_b = balanced.model_a.to(device), balanced.model_b.to(device)
    probe = probe.to(device)
    options = config.ot_options()
    acts_a = acts_b = None
    if options.ground_metric == "activations":
        acts_a, acts_b = group_activations(model_a, probe), group_activations(model_b, probe)
    fused = fuse_models(model_a, model_b, options, acts_a=acts_a, acts_b=acts_b)
    plain_accuracy = None
    if config.repair or config.bn_reset:
        plain_accuracy = evaluate(fused.model, splits.test, device)
    if config.repair:
        repair_statistics(fused.model, model_a, model_b, fused.plans, probe, config.fusion_weight)
    if config.bn_reset:
        reset_batchnorm(fused.model, splits.train, device)
    return fused, plain_accuracy


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@sized_by(lambda args: work_of([args["model_a"], args["model_b"]], args["config"].probe_size))
def run_fusion(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig = FusionConfig(),
               progress: Progress | None = None,
               on_epoch: Callable[[str, int, float], None] | None = None) -> FusionResult:
    """Align, balance, fuse, evaluate and (optionally) finetune two trained models end to end."""
    report = progress or (lambda fraction, message: None)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    model_a, model_b, swapped = order_pair(model_a, model_b)
    warnings = ["Model B is deeper than model A, so they were swapped: A is now the deeper one."] if swapped else []

    report(0.02, "activations")
    with _timed(timings, "activations"):
        probe = probe_inputs(splits, config)
        acts_a, acts_b = compute_activations(model_a, probe, config), compute_activations(model_b, probe, config)
    report(0.1, "cost matrix and alignment")
    with _timed(timings, "cost_and_alignment"):
        alignment = compute_alignment(acts_a, acts_b, model_a, config)
    report(0.15, "balancing")
    with _timed(timings, "balancing"):
        balanced = balance(model_a, model_b, alignment.mappings, config.balance, probe)
    report(0.2, "OT fusion")
    with _timed(timings, "fusion"):
        fused, plain_accuracy = fuse_balanced(balanced, probe, splits, config, device)

    report(0.3, "evaluation")
    with _timed(timings, "evaluation"):
        vanilla = vanilla_average(model_a, model_b, config.fusion_weight)
        accuracy = {
            "model_a": evaluate(model_a, splits.test, device),
            "model_b": evaluate(model_b, splits.test, device),
            "balanced_a": evaluate(balanced.model_a, splits.test, device) if config.balance == "merge" else None,
            "balanced_b": evaluate(balanced.model_b, splits.test, device),
            "ensemble": ensemble_accuracy([model_a, model_b], splits.test, device),
            "vanilla": evaluate(_bn_reset(vanilla, splits, config, device), splits.test, device) if vanilla else None,
            "fused_plain": plain_accuracy,
            "fused": evaluate(fused.model, splits.test, device),
            "fused_finetuned": None,
        }

    result = FusionResult(config, model_a, model_b, alignment, balanced, fused, accuracy, timings, swapped,
                          warnings=warnings)
    if config.finetune_epochs > 0:
        finetune_result(result, splits, progress=lambda f, m: report(0.35 + 0.65 * f, m), on_epoch=on_epoch)
    report(1.0, "done")
    return result


def _bn_reset(model: nn.Module, splits: DataSplits, config: FusionConfig, device: torch.device) -> nn.Module:
    if config.bn_reset:
        reset_batchnorm(model, splits.train, device)
    return model


def finetune_teacher(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig,
                     device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The parents' ensemble logits on every training example, or None when finetuning does not distil."""
    return teacher_logits([model_a, model_b], splits.train.tensors[0], device) if config.distill > 0 else None


def finetune_result(result: FusionResult, splits: DataSplits, *, epochs: int | None = None, lr: float | None = None,
                    optimizer: str | None = None, parents: bool | None = None, distill: float | None = None,
                    temperature: float | None = None, progress: Progress | None = None,
                    on_epoch: Callable[[str, int, float], None] | None = None) -> FusionResult:
    """Finetune the fused model (and, as the fair baseline, the parents for the same epochs) in place.

    Every run uses the same settings, distillation from the parents' ensemble included, so the parents'
    numbers are what the same extra training buys *them*. ``histories[name]`` holds the validation
    accuracy after 0 (the start), 1, ..., E epochs.
    """
    changes = {"finetune_epochs": epochs, "finetune_lr": lr, "optimizer": optimizer, "finetune_parents": parents,
               "distill": distill, "distill_temperature": temperature}
    config = replace(result.config, **{k: v for k, v in changes.items() if v is not None})
    training = config.finetune_config()
    result.config = config
    device = resolve_device(config.device)
    teacher = finetune_teacher(result.model_a, result.model_b, splits, config, device)
    runs = [("fused", result.fused.model)]
    if config.finetune_parents:
        runs += [("model_a", result.model_a), ("model_b", result.model_b)]
    for name in ("model_a", "model_b"):  # no stale numbers from an earlier call
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
