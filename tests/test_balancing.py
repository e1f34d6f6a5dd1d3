import pytest
import torch

from clafusion_core.alignment import align_layers
from clafusion_core.balancing import balance
from clafusion_core.errors import AlignmentError
from clafusion_core.layers import model_view
from model_utils import random_model

X = torch.randn(128, 1, 8, 8)

# (deeper A, shallower B, per-stage matching of B's units into A's)
CASES = {
    "mlp": ("mlp:40-30-20-10-5", "mlp:40-20-10", [[0, 2, 4]]),
    "mlp-nobias": ("mlp:40-30-20-10-nobias", "mlp:40-20-nobias", [[0, 3]]),
    "cnn": ("vgg:8-8-M-16-16-M-32-32/24", "vgg:8-M-16-M-32/24", [[0], [1], [0], [0]]),
    "cnn-bn": ("vgg:8-8-M-16-16-16-M-32-bn/24-12", "vgg:8-M-16-16-M-32-bn/24", [[0], [0, 2], [0], [1]]),
    "resnet-bn": ("resnet:2-3-2-2@8-16-16-32", "resnet:1-1-2-1@8-16-16-32", [[0], [0], [0, 1], [0]]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_identity_insertion_preserves_outputs(case):
    spec_a, spec_b, mapping = case
    model_a, model_b = random_model(spec_a, seed=1), random_model(spec_b, seed=2)
    balanced = balance(model_a, model_b, mapping, "add")
    assert balanced.exact
    depths = [len(s) for s in model_view(balanced.model_b).stages]
    assert depths == [len(s) for s in model_view(model_a).stages]
    expected_inserted = sum(a - b for a, b in zip(depths, [len(m) for m in mapping]))
    assert len(balanced.inserted) == expected_inserted > 0
    with torch.no_grad():
        assert (balanced.model_b(X) - model_b(X)).abs().max() < 1e-5


def test_identity_before_first_layer_is_flagged_inexact():
    model_a, model_b = random_model("mlp:40-30-20"), random_model("mlp:40-20")
    balanced = balance(model_a, model_b, [[1, 2]], "add")
    assert not balanced.exact and balanced.notes
    assert balanced.inserted == [(0, 0)]


def test_merge_is_exact_when_every_merged_unit_is_always_active():
    """With a ReLU that never clips, folding a layer into the next is plain matrix algebra."""
    model_a = random_model("mlp:20-16-12")
    with torch.no_grad():
        model_a.hidden[1].bias.fill_(100.0)   # hidden.1 is always active on these inputs
    balanced = balance(model_a, random_model("mlp:20-12"), [[0, 2]], "merge", probe=X)
    assert balanced.removed == [(0, 1)]
    assert str(balanced.model_a.spec) == "mlp:20-12"
    with torch.no_grad():
        assert torch.allclose(balanced.model_a(X), model_a(X), atol=1e-4)


def test_merge_uses_the_activation_rate_of_clipped_units():
    model_a = random_model("mlp:20-16-12")
    with torch.no_grad():
        model_a.hidden[1].bias.fill_(-100.0)  # hidden.1 is dead: its successor sees only its bias
    balanced = balance(model_a, random_model("mlp:20-12"), [[0, 2]], "merge", probe=X)
    merged_next = balanced.model_a.hidden[1]
    assert torch.allclose(merged_next.weight, torch.zeros_like(merged_next.weight))
    assert torch.allclose(merged_next.bias, model_a.hidden[2].bias)


def test_merge_refuses_cnns():
    with pytest.raises(AlignmentError, match="MLP"):
        balance(random_model("vgg:8-8-M-16"), random_model("vgg:8-M-16"), [[1], [0], []], "merge", probe=X)


def test_stage_count_mismatch_is_a_clear_error():
    with pytest.raises(AlignmentError, match="stages"):
        balance(random_model("vgg:8-M-16"), random_model("vgg:8-M-16-M-32"), [[0], [0]], "add")


def test_balancing_follows_the_dp_alignment():
    cost = torch.rand(5, 3).numpy()
    mapping = align_layers(cost)
    balanced = balance(random_model("mlp:50-40-30-20-10"), random_model("mlp:40-30-20"), [mapping], "add")
    assert sorted(p for _, p in balanced.inserted) == sorted(set(range(5)) - set(mapping))


# (deeper A, shallower B, matching, the balanced B's unit widths per stage under identity_width="deeper")
WIDENING = {
    "mlp": ("mlp:40-60-20", "mlp:40-20", [[0, 2]], [[40, 60, 20]]),
    "cnn": ("vgg:8-8-M-16-16-M-32-32/24", "vgg:8-M-16-M-32/24", [[0], [1], [0], [0]],
            [[8, 8], [16, 16], [32, 32], [24]]),
    "cnn-bn": ("vgg:8-8-M-16-16-M-32-bn/24", "vgg:8-M-16-M-32-bn/24", [[0], [1], [0], [0]],
               [[8, 8], [16, 16], [32], [24]]),
    "cnn-classifier": ("vgg:8-M-16/24-40", "vgg:8-M-16/24", [[0], [0], [0]], [[8], [16], [24, 40]]),
}


@pytest.mark.parametrize("case", WIDENING.values(), ids=WIDENING.keys())
def test_identity_units_take_the_deeper_width_and_stay_exact(case):
    """An identity standing in for a wider layer of A is ``[I; 0]`` with A's width, and the layer after it
    reads the extra (always-zero) channels through zero weights: the balanced B still computes B exactly."""
    spec_a, spec_b, mapping, widths = case
    model_a, model_b = random_model(spec_a, seed=1), random_model(spec_b, seed=2)
    widened = balance(model_a, model_b, mapping, "add")
    narrow = balance(model_a, model_b, mapping, "add", identity_width="input")
    assert [[u.width for u in s] for s in model_view(widened.model_b).stages] == widths
    assert widened.inserted == narrow.inserted and widened.exact
    with torch.no_grad():
        for balanced in (widened, narrow):
            assert (balanced.model_b(X) - model_b(X)).abs().max() < 1e-5
    narrow_widths = [[u.width for u in s] for s in model_view(narrow.model_b).stages]
    assert narrow_widths != widths   # the "input" rule keeps each identity as wide as its input


def test_with_deeper_identity_widths_the_balanced_pair_has_a_s_widths_so_s0_fusion_is_a():
    """Oracle for the widened identities in the OT path: when B's real layers are as wide as A's matched
    ones, the balanced B has A's widths everywhere, T is a scaled permutation, and the s = 0 fusion (the
    aligned A) computes exactly A. With identities as wide as their input A's wider layer is squeezed onto
    fewer neurons and the s = 0 fusion is not A."""
    from clafusion_core.methods import METHODS, FusionBatch

    model_a = random_model("vgg:8-8-M-16-16-M-32/24", seed=1)
    model_b = random_model("vgg:8-M-16-M-32/24", seed=2)
    for rule, exact in (("deeper", True), ("input", False)):
        balanced = balance(model_a, model_b, [[0], [1], [0], [0]], "add", identity_width=rule)
        fused = METHODS["ot"].fuse([balanced.model_a, balanced.model_b], 1, [1.0, 0.0], FusionBatch(X)).model
        with torch.no_grad():
            error = (fused(X) - model_a(X)).abs().max()
        assert (error < 1e-4) == exact, (rule, float(error))


def test_unknown_identity_width_is_a_user_error():
    with pytest.raises(AlignmentError):
        balance(random_model("mlp:40-30-20"), random_model("mlp:40-20"), [[0, 2]], "add", identity_width="wide")
