"""Many-model fusion: identical and permuted parents come back, one-hot weights, targets, mixed depths."""

import copy

import pytest
import torch

from clafusion_core.errors import AlignmentError
from clafusion_core.many import allowed_references, choose_reference, fuse_many, normalised_weights
from clafusion_core.config import FusionConfig
from clafusion_core.pipeline import finetune_result
from clafusion_core.zoo import DEMO_SETS, load_demo_set
from model_utils import permuted_copy, random_model

EXACT = FusionConfig.from_flat(repair=False)   # repair is kept only when validation improves: keep the oracles exact
# Ground metrics that tell every neuron apart: on post-ReLU activations, neurons dead on the whole probe
# batch are all zero and tie, so OT may swap them (a change only where they fire, off the probe batch).
DISTINGUISHING = {"weights": dict(ground_metric="weights"), "pre-activations": dict(ground_activation="pre")}


def _max_output_error(model, reference, inputs):
    with torch.no_grad():
        return (model(inputs) - reference(inputs)).abs().max().item()


@pytest.fixture(scope="module")
def mixed_set():
    return load_demo_set("mlp-mixed")


@pytest.mark.parametrize("ground", DISTINGUISHING.values(), ids=DISTINGUISHING.keys())
def test_n_identical_models_fuse_to_the_model(same_shape_pair, digits, ground):
    model = same_shape_pair[0]
    result = fuse_many([model, copy.deepcopy(model), copy.deepcopy(model)], digits, FusionConfig.from_flat(repair=False, **ground))
    assert _max_output_error(result.fused.model, model, digits.test.tensors[0]) < 1e-4
    assert result.accuracy["fused"] == pytest.approx(result.accuracy["parents"][0])


@pytest.mark.parametrize("ground", DISTINGUISHING.values(), ids=DISTINGUISHING.keys())
def test_n_permuted_copies_fuse_to_the_model(same_shape_pair, digits, ground):
    model = same_shape_pair[0]
    parents = [permuted_copy(model, seed=1), model, permuted_copy(model, seed=2), permuted_copy(model, seed=3)]
    result = fuse_many(parents, digits, FusionConfig.from_flat(repair=False, **ground), weights=[1, 2, 3, 4])
    assert result.weights == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert _max_output_error(result.fused.model, model, digits.test.tensors[0]) < 1e-4
    assert result.accuracy["vanilla"] < result.accuracy["fused"] - 0.1   # the raw average mixes unrelated neurons


def test_weights_one_zero_zero_give_the_aligned_first_model(digits):
    parents = [random_model("mlp:40-30-20", seed=s) for s in (1, 2, 3)]
    result = fuse_many(parents, digits, EXACT, reference=1, weights=[1, 0, 0])
    inputs = digits.test.tensors[0]
    assert _max_output_error(result.fused.model, parents[0], inputs) < 1e-4    # equal widths: aligned 0 computes 0
    assert _max_output_error(result.fused.model, parents[1], inputs) > 0.1     # and is not the target
    assert result.reference == 1 and result.pairs[1] is None


def test_a_mixed_depth_set_fuses_onto_the_deepest_and_its_json_lists_every_parent(mixed_set, digits):
    depths = [len(DEMO_SETS["mlp-mixed"].archs[k].split(":")[1].split("-")) for k in range(3)]
    result = fuse_many(mixed_set[::-1], digits)          # deepest last: the default target is still the deepest
    payload = result.to_json()
    assert payload["reference"] == 2
    assert [m["depth"] for m in payload["models"]["parents"]] == depths[::-1] == [3, 4, 5]
    assert [m["depth"] for m in payload["models"]["balanced"]] == [5, 5, 5]
    assert payload["models"]["fused"]["depth"] == 5
    assert payload["accuracy"]["balanced"] == payload["accuracy"]["parents"]    # identity layers change nothing
    assert payload["accuracy"]["vanilla"] is None and len(payload["accuracy"]["parents"]) == 3
    assert payload["accuracy"]["fused"] > 0.85
    assert payload["alignments"][2] is None and all(len(a["alignment"]) < 5 for a in payload["alignments"][:2])
    # the layer where both shallower models hold identities is the deepest model's own
    assert [1.0, 0.0, 0.0][::-1] in payload["layer_weights"].values()


def test_the_reference_must_be_able_to_take_every_model_to_its_depth(mixed_set):
    assert choose_reference(mixed_set, "add") == 0 and choose_reference(mixed_set, "merge") == 2
    with pytest.raises(AlignmentError, match="deepest model"):
        choose_reference(mixed_set, "add", reference=2)
    with pytest.raises(AlignmentError, match="one of the 3 models"):
        choose_reference(mixed_set, "add", reference=3)


def test_merge_balancing_folds_every_deeper_model_to_the_shallowest(mixed_set, digits):
    result = fuse_many(mixed_set, digits, FusionConfig.from_flat(balance="merge"))
    assert result.reference == 2
    assert [len(m["widths"]) for m in result.to_json()["models"]["balanced"]] == [3, 3, 3]
    assert result.accuracy["fused"] > 0.8


def test_weights_are_normalised_and_checked():
    assert normalised_weights(None, 4) == [0.25] * 4
    assert normalised_weights([2, 1, 1], 3) == [0.5, 0.25, 0.25]
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(AlignmentError, match="3 non-negative fusion weights"):
            normalised_weights(bad, 3)


def test_the_config_carries_the_target_and_weights_and_the_result_records_them(digits):
    parents = [random_model("mlp:40-30-20", seed=s) for s in (1, 2, 3)]
    by_config = fuse_many(parents, digits, EXACT.replace(reference=1, weights=(1, 0, 0)))
    by_args = fuse_many(parents, digits, EXACT, reference=1, weights=[1, 0, 0])
    assert by_config.reference == by_args.reference == 1 and by_config.weights == by_args.weights == [1.0, 0.0, 0.0]
    assert by_config.config == by_args.config and by_args.config.fusion.weights == (1.0, 0.0, 0.0)
    inputs = digits.test.tensors[0]
    assert _max_output_error(by_config.fused.model, by_args.fused.model, inputs) == 0
    assert _max_output_error(by_config.fused.model, parents[0], inputs) < 1e-4


def test_the_allowed_targets_follow_the_balancing(mixed_set, same_shape_pair):
    assert allowed_references(mixed_set, "add") == [0] and allowed_references(mixed_set, "merge") == [2]
    assert allowed_references([*same_shape_pair, same_shape_pair[0]], "add") == [0, 1, 2]


def test_finetuning_an_n_model_fusion_afterwards_equals_finetuning_within_it(mixed_set, digits):
    """What the app's Finetune page does (``finetune_result`` on the one-shot result) is ``fuse_many``'s own finetune."""
    within = fuse_many(mixed_set, digits, FusionConfig.from_flat(finetune_epochs=1))
    after = finetune_result(fuse_many(mixed_set, digits), digits, epochs=1)
    assert after.histories == within.histories and len(after.histories["fused"]) == 2
    assert after.accuracy["fused_finetuned"] == within.accuracy["fused_finetuned"] is not None
    assert after.config == within.config
