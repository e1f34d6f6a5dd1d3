"""The baselines every fusion is compared with: vanilla averaging and the output ensemble."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .train import accuracy_of_logits, cached_logits, predict_logits


def same_shapes(*models: nn.Module) -> bool:
    """Whether the models have one arch spec and equal tensor shapes (so raw parameters can be averaged)."""
    first = models[0].state_dict()
    return all(str(m.spec) == str(models[0].spec) and
               all(first[k].shape == v.shape for k, v in m.state_dict().items()) for m in models[1:])


@torch.no_grad()
def vanilla_average(model_a: nn.Module, model_b: nn.Module, weight_b: float = 0.5) -> nn.Module | None:
    """Parameter-wise ``(1 − s)·θ_A + s·θ_B`` without any alignment; None unless the shapes are identical."""
    if not same_shapes(model_a, model_b):
        return None
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    averaged = copy.deepcopy(model_b)
    averaged.load_state_dict({k: (1 - weight_b) * state_a[k] + weight_b * v if v.is_floating_point() else v
                              for k, v in state_b.items()})
    return averaged


@torch.no_grad()
def teacher_logits(models: list[nn.Module], inputs: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """The parents' mean logits: the teacher a fused model distils from while it is finetuned.

    Averaging logits (a geometric mean of the parents' probabilities, renormalised) keeps the
    parents' margins, which the distillation temperature then softens.
    """
    return sum(predict_logits(m, inputs, device) for m in models) / len(models)


def ensemble_accuracy(models: list[nn.Module], dataset: TensorDataset, device: torch.device | str = "cpu") -> float:
    """Accuracy of the mean of the models' softmax outputs (costs the sum of their sizes)."""
    labels = dataset.tensors[1]
    probabilities = sum(torch.softmax(cached_logits(m, dataset, device), 1) for m in models) / len(models)
    return accuracy_of_logits(probabilities, labels)
