"""Streamed activations: chunked recording equals one pass over the whole batch, and memory stays bounded."""

import pytest
import torch

from clafusion_core import activations
from clafusion_core.activations import Reading, group_activations, record, record_outputs, unit_activations
from clafusion_core.layers import model_view
from model_utils import random_model

X = torch.randn(90, 3, 8, 8)
SPECS = ["resnet:1-1-1-1@8-8-16-16", "vgg:8-M-16-M-24/20", "mlp:40-30-20"]


def _record_chunked(monkeypatch, values):
    """Make every chunk of the probe batch hold at most ``values`` recorded values."""
    monkeypatch.setattr(activations, "CHUNK_VALUES", values)


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_unit_and_group_activations_equal_one_pass(spec, monkeypatch):
    model = random_model(spec, input_shape=(3, 8, 8), seed=3)
    whole_units = unit_activations(model, X, conv="flatten")
    whole_groups = group_activations(model, X, max_rows=700)
    _record_chunked(monkeypatch, 2000)   # a few samples per chunk
    for stage, stage_whole in zip(unit_activations(model, X, conv="flatten"), whole_units):
        for chunked, whole in zip(stage, stage_whole):
            torch.testing.assert_close(chunked, whole)
    chunked_groups = group_activations(model, X, max_rows=700)
    assert chunked_groups.keys() == whole_groups.keys()
    for group, rows in whole_groups.items():
        torch.testing.assert_close(chunked_groups[group], rows)


def test_capped_rows_are_every_kth_row_of_the_stacked_places():
    """A residual stream seen at several places: its capped rows are rows[::k] of all places stacked."""
    model = random_model("resnet:2-1-1-1@8-8-16-16", input_shape=(3, 8, 8), seed=1)
    full = group_activations(model, X)
    capped = group_activations(model, X, max_rows=1000)
    for group, rows in full.items():
        step = -(-len(rows) // 1000) if len(rows) > 1000 else 1
        assert torch.equal(capped[group], rows[::step]) and len(capped[group]) <= max(1000, len(rows) if step == 1 else 0)
    assert any(len(rows) > 1000 for rows in full.values())   # the cap was exercised


@pytest.mark.parametrize("spec", ["vgg:8-M-16/20", "mlp:40-30-20"])
def test_streamed_moments_equal_mean_and_std_of_the_full_outputs(spec, monkeypatch):
    model = random_model(spec, input_shape=(3, 8, 8), seed=2)
    names = [layer.name for layer in model_view(model).layers]
    _record_chunked(monkeypatch, 500)
    outputs = record_outputs(model, X, set(names))
    stats = record(model, X, [Reading(name, "moments") for name in names])
    for name in names:
        flat = outputs[name].transpose(0, 1).reshape(outputs[name].shape[1], -1).double()
        torch.testing.assert_close(stats[Reading(name, "moments")], torch.stack([flat.mean(1), flat.std(1)]).float(),
                                   atol=1e-5, rtol=1e-5)


def test_no_chunk_holds_more_than_the_budget(monkeypatch):
    """The model sees chunks whose recorded outputs fit CHUNK_VALUES (and the whole batch is covered once)."""
    model = random_model("vgg:8-M-16/20", input_shape=(3, 8, 8), seed=0)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    per_sample = 8 * 8 * 8   # features.0's map: 8 channels × 8 × 8
    _record_chunked(monkeypatch, 10 * per_sample)
    record(model, X, [Reading("features.0", "positions")])
    assert seen[0] == 1   # the one-sample shape pass
    assert max(seen[1:]) == 10 and sum(seen[1:]) == len(X)


def test_a_pass_stops_after_the_last_recorded_module_and_records_what_a_full_pass_does():
    model = random_model("vgg:8-M-16-M-24/20", input_shape=(3, 8, 8), seed=4)
    ran = []
    model.get_submodule("head").register_forward_hook(lambda *_: ran.append("head"))
    early = record_outputs(model, X, {"features.0.conv"})
    assert ran == ["head"]   # only the one-sample shape pass reached the head
    full = model.get_submodule("features.0.conv")
    maps = []
    handle = full.register_forward_hook(lambda _m, _i, out: maps.append(out))
    model(X)
    handle.remove()
    torch.testing.assert_close(early["features.0.conv"], maps[0])


class _TwiceReLU(torch.nn.Module):
    """Calls its one ReLU twice per forward pass, as torchvision's BasicBlock does."""

    def __init__(self):
        super().__init__()
        self.first, self.relu, self.second, self.head = (torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                                          torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.relu(self.second(self.relu(self.first(x)))))


def test_a_module_run_twice_per_pass_is_recorded_on_the_full_pass():
    """No early stop after its first call: both outputs are kept, as without streaming."""
    model = _TwiceReLU()
    inputs = torch.randn(5, 4)
    out = record_outputs(model, inputs, {"relu"})["relu"]
    first = torch.relu(model.first(inputs))
    assert out.shape == (10, 4)
    torch.testing.assert_close(out[:5], first)
    torch.testing.assert_close(out[5:], torch.relu(model.second(first)))
