"""Pick the compute device once, at the edge (``auto`` → CUDA when present)."""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device_label() -> str:
    """A short description for the UI: the GPU's name, or that there is none."""
    return f"CUDA: {torch.cuda.get_device_name(0)}" if cuda_available() else "no CUDA device on this machine"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cuda" and not cuda_available():
        raise DeviceError("CUDA was chosen but this machine has no CUDA GPU; choose 'cpu' or 'auto'.")
    if name not in DEVICES:
        raise DeviceError(f"Unknown device '{name}'; choose one of {DEVICES}.")
    return torch.device(name)


def placed_on(models: Sequence[nn.Module], device: torch.device) -> list[nn.Module]:
    """The models themselves where they already live on ``device``, else private copies moved there
    (so the caller's models never change device). ``cuda`` without an index is the current CUDA device,
    where ``.to("cuda")`` puts a model."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return [m if next(m.parameters()).device == device else copy.deepcopy(m).to(device) for m in models]


GPU_OUT_OF_MEMORY = ("The GPU ran out of memory, so this run was repeated on the CPU; choose a smaller probe "
                     "or model to keep it on the GPU.")


def cpu_fallback(function: Callable) -> Callable:
    """Decorator for entry points taking a ``config`` with a ``device``: when a run on the GPU runs out of
    memory, it is run again from the start on the CPU, with a visible warning (a Python warning, and in
    the result's ``warnings`` where it has them)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = bound.arguments["config"]
        try:
            return function(*bound.args, **bound.kwargs)
        except torch.cuda.OutOfMemoryError:
            if config.device == "cpu":
                raise
        torch.cuda.empty_cache()
        warnings.warn(GPU_OUT_OF_MEMORY, RuntimeWarning, stacklevel=2)
        bound.arguments["config"] = config.replace(device="cpu")
        result = function(*bound.args, **bound.kwargs)
        if isinstance(getattr(result, "warnings", None), list):
            result.warnings.append(GPU_OUT_OF_MEMORY)
        return result

    return wrapper
