"""Finetuning on several processes with PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node N -m clafusion_core finetune FUSED ...`` starts N copies of the command;
torchrun tells each its place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), which :func:`world_from_env` reads. Each process trains the same
model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on the CPU, NCCL on
GPUs, one GPU per process), which averages the gradients of every step over the processes; rank 0
alone evaluates, keeps the best validation epoch and writes the checkpoint.

Data order. Step k of a single process with batch ``B·N`` trains on the k-th slice of the epoch's
permutation ``π`` of the training set, ``π[kBN : (k+1)BN]``. :class:`EpochBatches` gives every
process the same ``π`` (drawn from the run's seeded generator exactly as a single-process
``DataLoader(shuffle=True, generator=...)`` draws it) and lets :class:`DistributedSampler`
(``shuffle=False``) deal it out: rank r gets ``π[r], π[r+N], π[r+2N], ...``, so its k-th batch of B
holds ``π[r + N(kB + j)]``, j < B, and the N batches of step k together are exactly the single
process's ``π[kBN : (k+1)BN]``. The gradient averaged over the processes is then the gradient of the
mean loss over that global batch: the run follows the single-process run with batch ``B·N`` up to
float summation order. (``DistributedSampler(shuffle=True)`` would draw its own permutation from
``seed + epoch`` instead, a different order from every single-process run.) Two caveats: when N does
not divide the training set, DistributedSampler repeats its first few (< N) indices so every process
gets as many; and BatchNorm layers normalise over each process's own B samples in training mode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .devices import resolve_device
from .errors import DeviceError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, reports and writes files."""
        return self.rank == 0


SINGLE = World()


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in ``env`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); one process
    when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        size, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DeviceError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers; start the run with torchrun.") from None
    if size < 1 or not 0 <= rank < size:
        raise DeviceError(f"RANK {rank} does not fit WORLD_SIZE {size}; start the run with torchrun.")
    return World(rank, size, local_rank)


def process_device(world: World, name: str = "auto") -> torch.device:
    """The device of this process: one GPU per process (``cuda:LOCAL_RANK``) with CUDA, else the CPU."""
    device = resolve_device(name)
    if device.type == "cuda" and world.size > 1:
        if world.local_rank >= torch.cuda.device_count():
            raise DeviceError(f"Process {world.local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                              "visible); start at most one process per GPU.")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the run's process group for the body (NCCL for GPUs, gloo for the CPU); nothing for one
    process."""
    if world.size == 1:
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class EpochBatches:
    """This process's batches of each epoch (iterate once per epoch; see the module docstring).

    With one process this yields exactly the batches of ``DataLoader(dataset, batch_size, shuffle=True,
    generator=generator)``, and consumes the generator as it does.
    """

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator, world: World = SINGLE):
        self.dataset, self.batch_size, self.world = dataset, batch_size, world
        self.order = DataLoader(range(len(dataset)), batch_size=max(1, len(dataset)), shuffle=True,
                                generator=generator)

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.dataset) / self.world.size) / self.batch_size)

    def __iter__(self) -> Iterator:
        permutation = torch.cat(list(self.order)).tolist()  # run it out, as a training loop does: the
        # sampler draws from the generator once more at its end
        epoch = Subset(self.dataset, permutation)
        sampler = DistributedSampler(epoch, num_replicas=self.world.size, rank=self.world.rank, shuffle=False)
        return iter(DataLoader(epoch, batch_size=self.batch_size, sampler=sampler))
