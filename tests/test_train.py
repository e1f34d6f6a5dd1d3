"""Training and finetuning: the distillation loss against its closed form, and what it teaches."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from clafusion_core.errors import FusionError
from clafusion_core.models import build_model
from clafusion_core.train import TrainConfig, distillation_loss, finetune, predict_logits, train_model


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_weight_zero_is_plain_cross_entropy():
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(distillation_loss(logits, labels, None, 0.0, 4.0), expected)


@pytest.mark.parametrize("weight, temperature", [(1.0, 1.0), (0.9, 4.0), (0.5, 2.0)])
def test_loss_matches_the_closed_form(weight, temperature):
    rng = np.random.default_rng(0)
    z, t = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    y = rng.integers(0, 4, size=6)
    p_z, p_t = _softmax(z / temperature), _softmax(t / temperature)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_z)), axis=1))
    ce = np.mean(-np.log(_softmax(z)[np.arange(6), y]))
    expected = (1 - weight) * ce + weight * temperature ** 2 * kl
    got = distillation_loss(torch.tensor(z), torch.tensor(y), torch.tensor(t), weight, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_a_student_equal_to_its_teacher_gets_no_teacher_gradient():
    logits = torch.randn(8, 5, requires_grad=True)
    distillation_loss(logits, torch.zeros(8, dtype=torch.long), logits.detach().clone(), 1.0, 4.0).backward()
    assert logits.grad.abs().max().item() < 1e-6


def _blobs(n: int = 400, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    centres = torch.randn(4, 1, 4, 4, generator=generator) * 2
    return TensorDataset(centres[labels] + 0.5 * torch.randn(n, 1, 4, 4, generator=generator), labels)


def test_pure_distillation_learns_the_teacher_not_the_labels():
    """With weight 1 the labels are ignored: a student trained on *scrambled* labels still learns the
    teacher's function, which proves the teacher's logits stay paired with their examples through the
    shuffle. With weight 0 the same student learns the scrambled labels instead."""
    torch.manual_seed(0)
    data, val = _blobs(), _blobs(200, seed=1)
    teacher = build_model("mlp:32", (1, 4, 4), 4)
    train_model(teacher, data, val, TrainConfig(epochs=10, lr=0.05))
    scrambled = TensorDataset(data.tensors[0], (data.tensors[1] + 1) % 4)
    teacher_out = predict_logits(teacher, data.tensors[0])

    def agreement(distill: float) -> float:
        torch.manual_seed(1)
        student = build_model("mlp:32", (1, 4, 4), 4)
        train_model(student, scrambled, val, TrainConfig(epochs=10, lr=0.05, distill=distill),
                    teacher_logits=teacher_out)
        return (predict_logits(student, data.tensors[0]).argmax(1) == teacher_out.argmax(1)).float().mean().item()

    assert agreement(1.0) > 0.9
    assert agreement(0.0) < 0.2


def test_finetune_leaves_its_input_untouched_and_keeps_the_best_validation_epoch():
    torch.manual_seed(0)
    data = _blobs()
    model = build_model("mlp:32", (1, 4, 4), 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, history = finetune(model, data, data, TrainConfig(epochs=3, lr=0.05))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(history.val_accuracy) == 4 and history.val_accuracy[history.best_epoch] == max(history.val_accuracy)


@pytest.mark.parametrize("clip", [0.0, 0.05, 1e6])
def test_a_clipped_step_moves_the_weights_by_lr_times_the_clipped_gradient(clip):
    """One full-batch SGD step (no momentum): Δθ = −lr · g · min(1, c / ‖g‖), and ‖g‖ > 0.05 here."""
    torch.manual_seed(0)
    data = _blobs()
    model = build_model("mlp:32", (1, 4, 4), 4)
    inputs, labels = data.tensors
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = TrainConfig(epochs=1, lr=0.1, momentum=0.0, batch_size=len(labels), clip_grad_norm=clip)
    train_model(model, data, data, config)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    scale = 1.0 if clip == 0 else min(1.0, clip / grad.norm().item())
    assert grad.norm() > 0.05
    torch.testing.assert_close(after - before, -0.1 * scale * grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("config", [dict(distill=1.5), dict(distill=-0.1), dict(temperature=0.0), dict(epochs=-1),
                                    dict(clip_grad_norm=-1.0), dict(clip_grad_norm=float("inf"))])
def test_invalid_settings_are_one_sentence_errors(config):
    with pytest.raises(FusionError):
        TrainConfig(**config)


def test_distillation_without_teacher_logits_is_refused():
    with pytest.raises(FusionError, match="teacher"):
        train_model(build_model("mlp:8", (1, 4, 4), 4), _blobs(), _blobs(), TrainConfig(epochs=1, distill=0.5))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                    reason="needs a CUDA device")])]


def _dropout_net() -> torch.nn.Module:
    """A model in training mode whose forward pass would draw from the global RNG (dropout)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(32, 5)).train()


@pytest.mark.parametrize("device", DEVICES)
def test_predicting_leaves_the_callers_model_and_the_global_rng_as_they_were(device):
    model = _dropout_net()
    inputs = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rng = torch.random.get_rng_state()
    logits = predict_logits(model, inputs, device, batch_size=16)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert model.training and next(model.parameters()).device.type == "cpu"
    with torch.no_grad():
        assert torch.allclose(logits, model.eval()(inputs), atol=1e-5)   # eval-mode logits: dropout was off


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_already_on_the_device_is_predicted_without_a_copy(device, monkeypatch):
    from types import SimpleNamespace

    from clafusion_core import devices

    model = _dropout_net().to(device)
    monkeypatch.setattr(devices, "copy", SimpleNamespace(deepcopy=lambda *_: pytest.fail("the model was copied")))
    assert predict_logits(model, torch.zeros(3, 1, 8, 8), device).shape == (3, 5)
    assert model.training
