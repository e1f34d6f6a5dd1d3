"""Loss barriers along straight paths between two networks (linear mode connectivity).

For endpoints θ_0, θ_1 and t on a grid of [0, 1], the path is ``θ_t = (1 − t)·θ_0 + t·θ_1`` and its
**barrier height** is the largest rise of the test loss above the chord joining its ends,

    B = max_t [ L(θ_t) − ((1 − t)·L(θ_0) + t·L(θ_1)) ]

(Frankle et al. 2020; Entezari et al. 2022). B ≈ 0 means the endpoints lie in one linearly connected
basin. The paths compared:

* ``naive`` — the raw parameters of A and B (vanilla averaging; identical shapes only);
* ``<method>`` (e.g. ``ot``) — a registered fusion method's *aligned* parents: A re-expressed in B's
  neuron basis, and B. Methods without aligned parents (they fit a new model per weight) are skipped;
* ``<method>+repair`` — every point of that path repaired (REPAIR: each neuron's statistics moved to
  the interpolation, with weights ``[1 − t, t]``, of its parents', :mod:`~.repair`).

One alignment serves a whole curve and its repaired twin: the plans do not depend on t. Models of
different depth are first aligned by the DP and balanced (:func:`~.pipeline.align_and_balance`), so
the path runs between the balanced parents, exactly where the fusion itself interpolates. Every point
has its BatchNorm statistics recomputed when the config resets them (as the fusion does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .baselines import same_shapes, vanilla_average
from .data import DataSplits
from .devices import cpu_fallback, placed_on, resolve_device
from .errors import FusionError
from .methods import METHODS, FusionBatch, FusionOutput
from .otfusion import weighted_average
from .pipeline import align_and_balance, describe_model, fuse_and_repair, fusion_batch, ground_activation_candidates
from .repair import repair_statistics, repairable_layers, with_biases
from .config import FusionConfig
from .train import Progress, accuracy_of_logits, predict_logits, reset_batchnorm

DEFAULT_POINTS = 11
NAIVE = "naive"
REPAIRED = "+repair"
PointCallback = Callable[[str, float, float, float], None]   # curve key, t, loss, accuracy


def barrier_height(t: Sequence[float], values: Sequence[float]) -> float:
    """``max_t [v(t) − ((1 − t)·v(0) + t·v(1))]`` over a grid whose first point is t = 0 and last t = 1."""
    t, values = np.asarray(t, dtype=float), np.asarray(values, dtype=float)
    return float(np.max(values - ((1 - t) * values[0] + t * values[-1])))


def grid(points: int = DEFAULT_POINTS) -> list[float]:
    """``points`` evenly spaced values of t from 0 to 1."""
    if points < 2:
        raise FusionError("A barrier curve needs at least 2 points (t = 0 and t = 1); ask for e.g. 11.")
    return [round(float(t), 10) for t in np.linspace(0.0, 1.0, points)]


@dataclass
class BarrierCurve:
    """Test loss and accuracy along one path."""

    key: str
    title: str
    t: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def height(self) -> float:
        """The loss barrier (module docstring)."""
        return barrier_height(self.t, self.loss)

    @property
    def accuracy_drop(self) -> float:
        """The same for accuracy, which falls instead of rising: ``max_t [chord(t) − acc(t)]``."""
        return barrier_height(self.t, [-a for a in self.accuracy])

    def to_json(self) -> dict:
        return {"title": self.title, "t": self.t, "loss": [round(v, 6) for v in self.loss],
                "accuracy": [round(v, 6) for v in self.accuracy], "barrier_height": round(self.height, 6),
                "accuracy_drop": round(self.accuracy_drop, 6), "seconds": round(self.seconds, 4)}


@dataclass
class BarrierResult:
    curves: dict[str, BarrierCurve]
    skipped: dict[str, str]                 # path key -> why it has no curve
    parents: dict[str, dict]                # model_a / model_b: description, test loss and accuracy
    config: FusionConfig
    swapped: bool
    timings_s: dict[str, float]

    @property
    def heights(self) -> dict[str, float]:
        return {key: curve.height for key, curve in self.curves.items()}

    def to_json(self) -> dict:
        return {"t": next(iter(self.curves.values())).t if self.curves else [],
                "curves": {key: curve.to_json() for key, curve in self.curves.items()},
                "barrier_heights": {key: round(h, 6) for key, h in self.heights.items()},
                "skipped": self.skipped, "parents": self.parents, "swapped": self.swapped,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
                "config": self.config.to_dict()}


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, dataset: TensorDataset, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``dataset``."""
    inputs, labels = dataset.tensors
    logits = predict_logits(model, inputs, device)
    return F.cross_entropy(logits, labels).item(), accuracy_of_logits(logits, labels)


@dataclass
class StraightPath:
    """A straight path: how to build its point at t (one alignment, computed before)."""

    key: str
    title: str
    point: Callable[[float], nn.Module]


def aligned_paths(name: str, title: str, output: FusionOutput, parents: Sequence[nn.Module], batch: FusionBatch,
                  repair: bool = True) -> list[StraightPath]:
    """The path between a method's two aligned parents, and (when the model has layers without
    BatchNorm and ``repair``) its repaired twin: both from the one ``output``."""
    endpoints = output.aligned

    def point(t: float) -> nn.Module:
        return weighted_average(endpoints, [1 - t, t])

    def repaired(t: float) -> nn.Module:
        model = with_biases(point(t))
        repair_statistics(model, parents, output.correspondence, [1 - t, t], batch.inputs)
        return model

    paths = [StraightPath(name, title, point)]
    if repair and repairable_layers(endpoints[1]):
        paths.append(StraightPath(name + REPAIRED, f"{title} + repair", repaired))
    return paths


def interpolation_curve(path: StraightPath, ts: Sequence[float], splits: DataSplits, device: torch.device,
                        bn_reset: bool = True, on_point: PointCallback | None = None) -> BarrierCurve:
    """Test loss and accuracy at every t of ``ts`` along ``path`` (BatchNorm recomputed per point)."""
    curve, start = BarrierCurve(path.key, path.title), time.perf_counter()
    for t in ts:
        model = path.point(t)
        if bn_reset:
            reset_batchnorm(model, splits.train, device)
        loss, accuracy = loss_and_accuracy(model, splits.test, device)
        curve.t.append(t)
        curve.loss.append(loss)
        curve.accuracy.append(accuracy)
        if on_point:
            on_point(path.key, t, loss, accuracy)
    curve.seconds = time.perf_counter() - start
    return curve


@cpu_fallback
def barrier_curves(model_a: nn.Module, model_b: nn.Module, splits: DataSplits, config: FusionConfig = FusionConfig(),
                   points: int = DEFAULT_POINTS, *, methods: Sequence[str] | None = None,
                   progress: Progress | None = None, on_point: PointCallback | None = None) -> BarrierResult:
    """Loss and accuracy along the naive path and every aligned path (module docstring), with barrier heights.

    ``methods`` are registry names (default: every registered method); each is run once, with the
    config's options for it and equal weights, on the config's probe batch (a choice the options leave to
    the validation split, OT's ``ground_activation_choice``, is made as the pipeline makes it — one
    alignment per candidate — so the curve runs through the model :func:`~.pipeline.run_fusion` fuses); ``config.repair.statistics`` adds the
    repaired twins. ``on_point`` is called after
    every point (for drawing progressively), ``progress`` with the fraction of points done.
    """
    report = progress or (lambda fraction, message: None)
    device = resolve_device(config.device)
    ts = grid(points)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = fusion_batch(splits, config)
    pair = align_and_balance(model_a, model_b, batch, config)
    parents = placed_on([pair.balanced.model_a, pair.balanced.model_b], device)
    batch = batch.to(device)
    timings["alignment_and_balancing"] = time.perf_counter() - start

    originals = placed_on([pair.model_a, pair.model_b], device)
    paths, skipped = [], {}
    if same_shapes(*originals):
        paths.append(StraightPath(NAIVE, "naive (no alignment)", lambda t: vanilla_average(*originals, t)))
    else:
        skipped[NAIVE] = "The parents differ in shape, so their raw parameters cannot be averaged."
    for name in methods or list(METHODS):
        method = METHODS[name]
        if not method.aligns:
            skipped[name] = f"{method.title} builds a new model per weight (no aligned parents), so it has no straight path."
            continue
        start = time.perf_counter()
        options = config.options_for(name)
        if len(ground_activation_candidates(options, parents[0].family)) > 1:
            # the choice the pipeline makes on the validation split: the path runs through run_fusion's model
            own = config if name == config.fusion.name else config.replace(method=name)
            output, _ = fuse_and_repair(parents, 1, [0.5, 0.5], {}, batch, splits, own, device)
        else:
            output = method.fuse(parents, 1, [0.5, 0.5], batch, options)
        timings[f"fuse:{name}"] = time.perf_counter() - start
        paths += aligned_paths(name, method.title, output, parents, batch, config.repair.statistics)

    curves, done, total = {}, 0, len(paths) * len(ts)

    def point_done(key: str, t: float, loss: float, accuracy: float) -> None:
        nonlocal done
        done += 1
        report(done / total, f"{key}: t = {t:.2f}")
        if on_point:
            on_point(key, t, loss, accuracy)

    for path in paths:
        curves[path.key] = interpolation_curve(path, ts, splits, device, config.repair.bn_reset, point_done)
        timings[f"curve:{path.key}"] = curves[path.key].seconds
    described = {}
    for label, model in zip(("model_a", "model_b"), originals):
        loss, accuracy = loss_and_accuracy(model, splits.test, device)
        described[label] = {**describe_model(model), "test_loss": round(loss, 6), "test_accuracy": round(accuracy, 6)}
    return BarrierResult(curves, skipped, described, config, pair.swapped, timings)
