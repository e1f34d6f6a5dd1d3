"""Test oracles over the layer view: random models and their hidden-unit permutations."""

from __future__ import annotations

import copy

import torch

from clafusion_core.layers import model_view
from clafusion_core.models import build_model


def random_model(spec: str, input_shape=(1, 8, 8), num_classes=10, seed=0, randomise_bn=True):
    """An untrained model with non-trivial BatchNorm statistics (so BN handling is really exercised)."""
    torch.manual_seed(seed)
    model = build_model(spec, input_shape, num_classes)
    for module in model.modules():  # PyTorch's default Linear init: VGG's N(0, 0.01) gives ~1e-3 outputs,
        if isinstance(module, torch.nn.Linear):  # too small for absolute tolerances to mean anything
            module.reset_parameters()
    if randomise_bn:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
    return model


@torch.no_grad()
def permuted_copy(model, seed=0):
    """The same function with the neurons of every transport group randomly permuted.

    Permuting a group's neurons on the output axis of every layer writing it, and on the input axis of
    every layer reading it, leaves the network's function unchanged (up to float rounding).
    """
    generator = torch.Generator().manual_seed(seed)
    view = model_view(model)
    out = copy.deepcopy(model)
    widths = {}
    for layer in view.layers:
        if layer.out_group is not None:
            widths[layer.out_group] = model.get_submodule(layer.name).weight.shape[0]
    perms = {g: torch.randperm(w, generator=generator) for g, w in widths.items()}
    for layer in view.layers:
        source = model.get_submodule(layer.name)
        target = out.get_submodule(layer.name)
        weight = source.weight
        if layer.in_group is not None:
            p = perms[layer.in_group]
            w = weight.reshape(weight.shape[0], len(p), -1)[:, p]
            weight = w.reshape(weight.shape)
        if layer.out_group is not None:
            p = perms[layer.out_group]
            weight = weight[p]
            if source.bias is not None:
                target.bias.copy_(source.bias[p])
            if layer.bn:
                bn_s, bn_t = model.get_submodule(layer.bn), out.get_submodule(layer.bn)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn_t, name).copy_(getattr(bn_s, name)[p])
        target.weight.copy_(weight)
    return out


def count_calls(monkeypatch, owner, name: str) -> list[tuple]:
    """Wrap ``owner.name`` for this test so that every call still runs and is recorded (its positional
    arguments): a test can then say how often a stage ran."""
    original = getattr(owner, name)
    calls: list[tuple] = []

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls
