"""Scale-out: the batches each process trains on, torchrun's environment, and a real 2-process gloo run
of ``finetune`` against one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clafusion_core.checkpoints import load_checkpoint, save_checkpoint
from clafusion_core.cli import main
from clafusion_core.distributed import SINGLE, EpochBatches, World, world_from_env
from clafusion_core.errors import DeviceError
from clafusion_core.models import build_model

ROOT = Path(__file__).resolve().parent.parent


def _indices(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n), torch.zeros(n, dtype=torch.long))


def _epochs(loader, epochs: int) -> list[list[list[int]]]:
    """The example indices of every batch of ``epochs`` epochs."""
    return [[inputs.tolist() for inputs, _ in loader] for _ in range(epochs)]


def test_one_process_trains_on_exactly_the_dataloaders_batches():
    """Same batches, same generator use: a training run is unchanged by going through EpochBatches."""
    data = _indices(103)
    plain = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))
    ours = EpochBatches(data, 16, torch.Generator().manual_seed(5))
    assert len(ours) == len(plain)
    assert _epochs(ours, 3) == _epochs(plain, 3)


def test_the_ranks_batches_of_a_step_make_up_the_single_process_global_batch():
    n, batch, size = 60, 4, 3
    single = _epochs(EpochBatches(_indices(n), batch * size, torch.Generator().manual_seed(1)), 2)
    ranks = [_epochs(EpochBatches(_indices(n), batch, torch.Generator().manual_seed(1), World(r, size)), 2)
             for r in range(size)]
    for epoch, steps in enumerate(single):
        for step, global_batch in enumerate(steps):
            for rank in range(size):   # DistributedSampler deals the global batch out round-robin
                assert ranks[rank][epoch][step] == global_batch[rank::size]


def test_a_world_that_does_not_divide_the_data_repeats_fewer_than_world_size_examples():
    ranks = [_epochs(EpochBatches(_indices(37), 5, torch.Generator().manual_seed(2), World(r, 2)), 1)[0]
             for r in range(2)]
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert len(seen) == 38 and set(seen) == set(range(37))   # every example once, one of them twice
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]]   # equal steps: no process waits forever


@pytest.mark.parametrize("env, world", [
    ({}, SINGLE),
    ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}, World(2, 4, 0)),
    ({"WORLD_SIZE": "2", "RANK": "1"}, World(1, 2, 1)),
])
def test_world_from_torchruns_environment(env, world):
    assert world_from_env(env) == world


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}])
def test_a_broken_torchrun_environment_is_a_user_error(env):
    with pytest.raises(DeviceError, match="torchrun"):
        world_from_env(env)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    paths = []
    for seed, arch in ((0, "mlp:32-16"), (1, "mlp:24"), (2, "mlp:40")):
        torch.manual_seed(seed)
        paths.append(folder / f"{seed}.safetensors")
        save_checkpoint(build_model(arch, (1, 8, 8), 10), paths[-1], dataset="digits")
    return folder, paths


# Three fresh interpreters import torch: 24 s on the shared 2-core machine at load 3 (51 s at load 5).
def test_torchrun_with_two_gloo_processes_matches_one_process_with_the_same_global_batch(checkpoints):
    """2 processes × batch 32 follow 1 process × batch 64 step by step (distillation included): the same
    validation curve and the same weights up to float summation order."""
    folder, (model, *parents) = checkpoints
    common = [str(model), "--teacher", *map(str, parents), "--epochs", "2", "--lr", "0.05"]
    assert main(["finetune", *common, "--batch-size", "64", "--json", str(folder / "one.json"),
                 "--out", str(folder / "one.safetensors")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CLAFUSION_THREADS", None)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "clafusion_core", "finetune", *common, "--batch-size", "32",
                          "--json", str(folder / "two.json"), "--out", str(folder / "two.safetensors")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((folder / f"{name}.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2 and two["batch_size_per_process"] == 32 and two["global_batch_size"] == 64
    assert two["val_accuracy"] == one["val_accuracy"] and two["best_epoch"] == one["best_epoch"]
    assert two["accuracy"] == one["accuracy"]
    weights_one, weights_two = (load_checkpoint(folder / f"{name}.safetensors")[0].state_dict() for name in ("one", "two"))
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-4, atol=1e-5)
    start = load_checkpoint(model)[0].state_dict()
    assert any(not torch.allclose(start[k], v) for k, v in weights_one.items())   # it did train
