"""Training, evaluation and finetuning.

Training is deterministic for a given seed (the seed fixes the initial weights' RNG state and the
shuffling order). Finetuning keeps the epoch with the best *validation* accuracy — never the test
split — and the same rule is applied to the parents when they get the same extra epochs (the fair
baseline).

Finetuning can *distil* from a teacher (the parents' ensemble): the loss mixes cross-entropy with the
labels and the KL divergence to the teacher's softened outputs (Hinton et al., 2015), see
:func:`distillation_loss`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from .devices import placed_on
from .distributed import SINGLE, EpochBatches, World
from .errors import FusionError
from .threads import sized_by, work_of

Progress = Callable[[float, str], None]
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    select_best: bool = False   # keep the best-validation epoch (finetuning) instead of the last
    distill: float = 0.0        # weight of the teacher term in the loss (0: plain cross-entropy)
    temperature: float = 4.0    # softening of both outputs in the teacher term
    clip_grad_norm: float = 0.0  # rescale each step's gradient to at most this norm (0: never)

    def __post_init__(self):
        """Refuse settings torch would fail on mid-run (with a traceback) or silently train NaNs with.

        Comparisons are written so that NaN fails them too (``not lr > 0`` holds for NaN).
        """
        if self.epochs < 0:
            raise FusionError("The number of epochs must be 0 or more.")
        if not 0 <= self.distill <= 1 or not 0 < self.temperature < math.inf:
            raise FusionError("The distillation weight must lie in [0, 1] and the temperature be positive.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, Integral) or self.batch_size < 1:
            raise FusionError(f"The batch size must be a whole number of at least 1, not {self.batch_size}; e.g. 64.")
        if not 0 < self.lr < math.inf:
            raise FusionError(f"The learning rate must be a positive number, not {self.lr}; e.g. 0.01.")
        if not 0 <= self.momentum < 1:
            raise FusionError(f"The momentum must lie in [0, 1), not {self.momentum}; e.g. 0.9.")
        if not 0 <= self.clip_grad_norm < math.inf:
            raise FusionError(f"The gradient-norm clip must be 0 (off) or a positive number, not {self.clip_grad_norm}; e.g. 1.")
        if not 0 <= self.weight_decay < math.inf:
            raise FusionError(f"The weight decay must be 0 or a positive number, not {self.weight_decay}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or not 0 <= self.seed < 2**32:
            raise FusionError(f"The seed must be a whole number between 0 and 2**32 - 1, not {self.seed}; e.g. 0.")


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)      # epochs 1..E
    val_accuracy: list[float] = field(default_factory=list)    # after 0 (the start), 1, ..., E epochs
    best_epoch: int = 0         # epoch whose weights were kept (0: the starting weights)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise FusionError(f"Unknown optimiser '{config.optimizer}'; choose one of {OPTIMIZERS}.")


@sized_by(lambda args: work_of([args["model"]], min(len(args["inputs"]), args["batch_size"])))
@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, device: torch.device | str = "cpu",
                   batch_size: int = 2048) -> torch.Tensor:
    """Eval-mode logits on the CPU. The caller's model keeps its device and mode (a copy runs where the
    model lives elsewhere), so evaluating never moves a model another stage or session is using."""
    (placed,) = placed_on([model], torch.device(device))
    training = placed.training
    placed.eval()
    try:
        return torch.cat([placed(inputs[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(inputs), batch_size)])
    finally:
        placed.train(training)


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                      weight: float, temperature: float) -> torch.Tensor:
    r"""Cross-entropy mixed with knowledge distillation (Hinton et al., 2015).

    .. math::
        \mathcal{L} = (1 - w)\,\mathrm{CE}(z, y)
                      + w\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t / T)\,\|\,\mathrm{softmax}(z / T)\big)

    with student logits :math:`z`, teacher logits :math:`t`, weight :math:`w` and temperature :math:`T`.
    The :math:`T^2` keeps the teacher term's gradients on the scale of the cross-entropy's. Why it helps
    a fused model: the teacher's soft outputs say *how* the parents rank the wrong classes too, which
    a few epochs on 1-hot labels cannot teach.
    """
    loss = nn.functional.cross_entropy(logits, labels)
    if weight == 0:
        return loss
    soft = nn.functional.kl_div((logits / temperature).log_softmax(1), (teacher_logits / temperature).log_softmax(1),
                                reduction="batchmean", log_target=True)
    return (1 - weight) * loss + weight * temperature ** 2 * soft


def accuracy_of_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def model_fingerprint(model: nn.Module) -> str:
    """A digest of the architecture and every parameter and buffer: equal digests, equal functions."""
    digest = hashlib.sha1(str(getattr(model, "spec", type(model).__name__)).encode())
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


_LOGIT_CACHE_SIZE = 16   # models per dataset split


def cached_logits(model: nn.Module, dataset: TensorDataset, device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`predict_logits` on a split, remembered per (model weights, split).

    A run evaluates the parents, the balanced model and the ensemble on the same test split every time
    a fusion setting changes; only the fused model is new. The cache lives on the split object (it
    goes when the split goes) and keeps the last few models, keyed by :func:`model_fingerprint`.
    """
    cache: OrderedDict = dataset.__dict__.setdefault("_clafusion_logits", OrderedDict())
    key = model_fingerprint(model)
    if key not in cache:
        cache[key] = predict_logits(model, dataset.tensors[0], device)
        while len(cache) > _LOGIT_CACHE_SIZE:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def cached_accuracy(model: nn.Module, dataset: TensorDataset, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy from :func:`cached_logits`."""
    return accuracy_of_logits(cached_logits(model, dataset, device), dataset.tensors[1])


def evaluate(model: nn.Module, dataset: TensorDataset, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in [0, 1]."""
    inputs, labels = dataset.tensors
    return accuracy_of_logits(predict_logits(model, inputs, device), labels)


@sized_by(lambda args: 3 * work_of([args["model"]], args["config"].batch_size))  # forward + backward ≈ 3 forwards
def train_model(model: nn.Module, train: TensorDataset, val: TensorDataset, config: TrainConfig,
                device: torch.device | str = "cpu", progress: Progress | None = None,
                on_epoch: Callable[[int, float], None] | None = None,
                teacher_logits: torch.Tensor | None = None, world: World = SINGLE) -> History:
    """Train in place; report progress per batch and validation accuracy per epoch.

    The loss is cross-entropy, mixed with distillation from ``teacher_logits`` (one row per training
    example) when ``config.distill`` > 0. With ``select_best`` the weights of the best validation epoch
    are kept, the starting weights (epoch 0) included, so finetuning never returns a model worse on
    validation than it was given.

    With a ``world`` of N processes (torchrun; the process group joined, see :mod:`.distributed`) each
    process trains on its share of every global batch of ``N · config.batch_size`` examples through
    DistributedDataParallel, and only rank 0 evaluates, reports and selects the best epoch: rank 0's
    model is the result (the others end with the last epoch's weights).
    """
    if config.distill > 0 and (teacher_logits is None or len(teacher_logits) != len(train)):
        raise FusionError("Distillation needs the teacher's logits for every training example.")
    with torch.random.fork_rng(devices=[]):   # seeded locally: the caller's random state is left as it was
        torch.manual_seed(config.seed)
        return _train(model, train, val, config, device, progress, on_epoch, teacher_logits, world)


def _train(model: nn.Module, train: TensorDataset, val: TensorDataset, config: TrainConfig, device, progress,
           on_epoch, teacher_logits, world: World) -> History:
    model.to(device)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    if config.distill > 0:  # the teacher's logits travel with their examples through the shuffle
        train = TensorDataset(*train.tensors, teacher_logits.float().cpu())
    loader = EpochBatches(train, config.batch_size, generator, world)
    network = DistributedDataParallel(model) if world.size > 1 else model   # averages gradients over processes
    select_best = config.select_best and world.is_main
    history = History(val_accuracy=[evaluate(model, val, device)] if world.is_main else [])
    if on_epoch and world.is_main:
        on_epoch(0, history.val_accuracy[0])
    best_state, best_accuracy = (copy.deepcopy(model.state_dict()), history.val_accuracy[0]) if select_best else (None, 0)
    steps = max(1, config.epochs * len(loader))
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for step, (inputs, labels, *teacher) in enumerate(loader):
            inputs, labels = inputs.to(device), labels.to(device)
            teacher_batch = teacher[0].to(device) if teacher else None
            loss = distillation_loss(network(inputs), labels, teacher_batch, config.distill, config.temperature)
            optimizer.zero_grad()
            loss.backward()
            if config.clip_grad_norm > 0:   # after DDP's all-reduce: every process clips the same gradient
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            total, count = total + loss.item() * len(labels), count + len(labels)
            if progress:
                progress(((epoch - 1) * len(loader) + step + 1) / steps, f"epoch {epoch}/{config.epochs}")
        history.train_loss.append(total / max(count, 1))   # this process's share of the epoch
        if not world.is_main:
            continue
        accuracy = evaluate(model, val, device)
        history.val_accuracy.append(accuracy)
        if on_epoch:
            on_epoch(epoch, accuracy)
        if select_best and accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(model.state_dict())
            history.best_epoch = epoch
    if select_best:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = config.epochs
    model.eval()
    return history


def finetune(model: nn.Module, train: TensorDataset, val: TensorDataset, config: TrainConfig,
             device: torch.device | str = "cpu", progress: Progress | None = None,
             on_epoch: Callable[[int, float], None] | None = None,
             teacher_logits: torch.Tensor | None = None, world: World = SINGLE) -> tuple[nn.Module, History]:
    """A finetuned *copy* of ``model`` (best validation epoch kept); the input model is untouched."""
    tuned = copy.deepcopy(model)
    history = train_model(tuned, train, val, TrainConfig(**{**config.__dict__, "select_best": True}),
                          device, progress, on_epoch, teacher_logits, world)
    return tuned, history


@torch.no_grad()
def reset_batchnorm(model: nn.Module, train: TensorDataset, device: torch.device | str = "cpu",
                    max_samples: int = 4096, batch_size: int = 256) -> None:
    """Recompute BatchNorm running statistics on (up to ``max_samples``) training inputs."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    inputs = train.tensors[0][:max_samples]
    loader = DataLoader(TensorDataset(inputs), batch_size=batch_size)
    model.to(device)
    torch.optim.swa_utils.update_bn(((x.to(device),) for (x,) in loader), model)
    model.eval()
