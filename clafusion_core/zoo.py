"""Demo pairs and sets: small networks trained deterministically on the embedded digits, cached on disk.

The first use trains a pair (seconds for the MLPs, under a minute for the ResNets on 2 CPU cores) and
saves it as safetensors under the user cache folder (``$CLAFUSION_CACHE`` or
``~/.cache/clafusion-explorer``); later uses load it in milliseconds. The parents are seeded
independently, as in our benchmarks (the CLAFusion reference shares one initialisation, which makes
fusion unusually easy).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import load_checkpoint, save_checkpoint
from .data import load_dataset
from .errors import FusionError
from .models import build_model
from .threads import pinned
from .train import Progress, TrainConfig, train_model

ZOO_VERSION = "2"  # bump when training or model definitions change: old caches are then retrained


@dataclass(frozen=True)
class DemoPair:
    key: str
    title: str
    description: str
    arch_a: str
    arch_b: str
    seed_a: int = 0
    seed_b: int = 1
    dataset: str = "digits"
    training: TrainConfig = TrainConfig(epochs=20, lr=0.05)


DEMO_PAIRS: dict[str, DemoPair] = {pair.key: pair for pair in (
    DemoPair("mlp", "MLPs of different depth",
             "CLAFusion's ablation shapes: 5 hidden layers vs 3.", "mlp:400-200-100-50-25", "mlp:400-200-100"),
    DemoPair("mlp-same", "Same-shape MLPs (OTFusion)",
             "Two independently seeded MLPs of one shape: where vanilla averaging applies.",
             "mlp:400-200-100", "mlp:400-200-100"),
    DemoPair("cnn", "Plain CNNs of different depth",
             "VGG-style CNNs: 6 convs vs 3 convs in the same three resolutions.",
             "vgg:32-32-M-64-64-M-128-128", "vgg:32-M-64-M-128", training=TrainConfig(epochs=15, lr=0.02)),
    DemoPair("resnet", "ResNets of different depth",
             "A ResNet-18 and a ResNet-10 (BasicBlocks, ¼ width) with BatchNorm.",
             "resnet:2-2-2-2@16-32-64-128", "resnet:1-1-1-1@16-32-64-128",
             training=TrainConfig(epochs=10, lr=0.05, weight_decay=5e-4)),
)}
DEFAULT_PAIR = "mlp"


@dataclass(frozen=True)
class DemoSet:
    """Three or more independently seeded models for many-model fusion (same training as the pairs)."""

    key: str
    title: str
    description: str
    archs: tuple[str, ...]
    seeds: tuple[int, ...]
    dataset: str = "digits"
    training: TrainConfig = TrainConfig(epochs=20, lr=0.05)


DEMO_SETS: dict[str, DemoSet] = {demo.key: demo for demo in (
    DemoSet("mlp-same", "Three same-shape MLPs",
            "Three independently seeded MLPs of one shape (the first two are the same-shape demo pair).",
            ("mlp:400-200-100",) * 3, (0, 1, 2)),
    DemoSet("mlp-mixed", "MLPs of three depths",
            "5, 4 and 3 hidden layers: each is balanced to the deepest before fusion.",
            ("mlp:400-200-100-50-25", "mlp:400-200-100-50", "mlp:400-200-100"), (0, 2, 1)),
)}


def cache_dir() -> Path:
    path = Path(os.environ.get("CLAFUSION_CACHE") or Path.home() / ".cache" / "clafusion-explorer")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_path(arch: str, seed: int, dataset: str, training: TrainConfig) -> Path:
    key = repr((ZOO_VERSION, arch, seed, dataset, sorted(asdict(training).items())))
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    safe_arch = arch.replace(":", "_").replace("@", "_").replace("/", "_")
    return cache_dir() / "zoo" / f"{dataset}-{safe_arch}-seed{seed}-{digest}.safetensors"


def trained_model(arch: str, seed: int, dataset: str = "digits", training: TrainConfig = TrainConfig(),
                  progress: Progress | None = None, data_root: str | None = None) -> nn.Module:
    """A model trained with ``training`` (seeded), loaded from the cache when it was trained before.

    ``data_root`` is where datasets without a bundled copy (MNIST, CIFAR-10) are read from; the cache
    entry does not depend on it (the same files give the same model wherever they lie).
    """
    path = _cache_path(arch, seed, dataset, training)
    if path.exists():
        try:
            return load_checkpoint(path)[0]
        except FusionError:
            path.unlink(missing_ok=True)  # a damaged cache entry is retrained, not shown to the user
    splits = load_dataset(dataset, data_root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the seed fixes the initial weights (train_model seeds the batch order)
        model = build_model(arch, splits.info.input_shape, splits.info.num_classes)
    with pinned(1):  # float sums depend on the thread count: one thread gives the same model everywhere
        train_model(model, splits.train, splits.val, TrainConfig(**{**asdict(training), "seed": seed}),
                    progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
    save_checkpoint(model, temporary, dataset=dataset, extra={"seed": str(seed), "zoo": ZOO_VERSION})
    os.replace(temporary, path)  # atomic: a concurrent reader never sees half a file
    return model


def is_cached(key: str, demo_set: bool = False) -> bool:
    """Whether every model of a demo pair (or, with ``demo_set``, a demo set) is already trained and on
    disk (loading is then instant)."""
    if demo_set:
        demo = DEMO_SETS[key]
        members, dataset, training = zip(demo.archs, demo.seeds), demo.dataset, demo.training
    else:
        pair = DEMO_PAIRS[key]
        members, dataset, training = ((pair.arch_a, pair.seed_a), (pair.arch_b, pair.seed_b)), pair.dataset, pair.training
    return all(_cache_path(arch, seed, dataset, training).exists() for arch, seed in members)


def load_demo_pair(key: str = DEFAULT_PAIR, progress: Progress | None = None) -> tuple[nn.Module, nn.Module]:
    """The two trained models of a demo pair (model A first)."""
    if key not in DEMO_PAIRS:
        raise FusionError(f"Unknown demo pair '{key}'; choose one of {sorted(DEMO_PAIRS)}.")
    pair = DEMO_PAIRS[key]
    model_a = trained_model(pair.arch_a, pair.seed_a, pair.dataset, pair.training, _half(progress, 0.0, "model A"))
    model_b = trained_model(pair.arch_b, pair.seed_b, pair.dataset, pair.training, _half(progress, 0.5, "model B"))
    return model_a, model_b


def load_demo_set(key: str, progress: Progress | None = None) -> list[nn.Module]:
    """The trained models of a demo set, in its order."""
    if key not in DEMO_SETS:
        raise FusionError(f"Unknown demo set '{key}'; choose one of {sorted(DEMO_SETS)}.")
    demo = DEMO_SETS[key]
    count = len(demo.archs)
    return [trained_model(arch, seed, demo.dataset, demo.training,
                          _share(progress, index / count, 1 / count, f"model {index + 1} of {count}"))
            for index, (arch, seed) in enumerate(zip(demo.archs, demo.seeds))]


def _half(progress: Progress | None, start: float, label: str) -> Progress | None:
    """Map a model's own 0..1 progress onto one half of the pair's progress bar."""
    return _share(progress, start, 0.5, label)


def _share(progress: Progress | None, start: float, width: float, label: str) -> Progress | None:
    """Map a model's own 0..1 progress onto ``[start, start + width]`` of a progress bar."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + fraction * width, f"{label}: {message}")
