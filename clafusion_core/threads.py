"""How many intra-op threads torch should use for a piece of work.

torch starts with one intra-op thread per core. That pays off for large tensors, but every parallel
region costs a thread hand-off, and when other processes keep the cores busy a thread that is not
scheduled stalls the whole region: on a shared 2-core machine ``run_fusion`` on the demo pairs ran
4–26× slower with torch's default of 2 threads than with 1 (``benchmarks/speed.py``, section
``threads``). So the library picks the count itself at its entry points
(:func:`~clafusion_core.pipeline.run_fusion`, activations, training and finetuning, prediction
passes), from the size of the work and the number of idle cores:

.. math::
    n = \\min\\big(\\text{ceiling},\\ \\max(1,\\ \\text{cores} - \\text{busy}),\\
        \\max(1,\\ \\lfloor W / W_1 \\rfloor)\\big)

where :math:`W` is the work of one typical operation in multiply-accumulates (a forward pass of the
models on the batch at hand), :math:`W_1` the work below which a second thread does not pay
(:data:`WORK_PER_THREAD`, measured), ``busy`` the other runnable tasks on the machine right now and
``ceiling`` torch's thread count (never raised).

Who decides, first match wins:

1. ``CLAFUSION_THREADS=N`` in the environment: exactly ``N`` threads; ``CLAFUSION_THREADS=auto`` (or
   unset): the rule above.
2. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set: the user has chosen; torch's count is kept.
3. ``torch.set_num_threads(k)`` called after ``clafusion_core`` was imported: kept as well.
4. Otherwise the rule above, with torch's current count as the ceiling.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .errors import FusionError
from .models import build_model

ENV = "CLAFUSION_THREADS"
USER_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: Multiply-accumulates one more thread needs before it pays off (see the module docstring). The MLP
#: demo pairs (2.6e7 per pass of the 200-image probe) stay on one thread; the CNN / ResNet demo pairs
#: (4.4e8–4.8e8) and full-width models (3e10 and more) may use more cores when those are idle.
WORK_PER_THREAD = 1e8

#: torch's intra-op thread count when the library was imported (a later change is the user's choice).
TORCH_THREADS_AT_IMPORT = torch.get_num_threads()

# (ceiling, pinned) of the innermost open context, per Python thread: under OpenMP torch's intra-op
# count is per thread too, so each app session decides for itself.
_state = threading.local()
_open_counts: collections.Counter[int] = collections.Counter()   # counts our open contexts set, all threads
_lock = threading.Lock()


def forward_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one sample (linear and conv layers).

    A conv layer costs ``out_channels · H_out · W_out · (in_channels / groups) · k_h · k_w``, a linear
    layer ``in_features · out_features``. The output sizes come from a forward pass of a copy of the
    architecture built on the ``meta`` device (shapes only: no arithmetic, and the caller's model, which
    another thread may be using, is never run). A module without an arch spec counts its parameters.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        return sum(p.numel() for p in model.parameters())
    return _arch_macs(str(spec), tuple(model.input_shape), int(model.num_classes))


@functools.lru_cache(maxsize=64)
def _arch_macs(spec: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    with torch.device("meta"):
        model = build_model(spec, input_shape, num_classes).eval()
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.in_features if isinstance(module, nn.Linear) else module.weight[0].numel()
        total += output.numel() * per_output

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros((1, *input_shape), device="meta"))
    return total


def work_of(models: list[nn.Module] | tuple[nn.Module, ...], samples: int) -> float:
    """The work of one forward pass of each model on ``samples`` inputs, in multiply-accumulates: the
    size measure :func:`choose_threads` takes (the largest model's, as the models run one at a time)."""
    return float(max(forward_macs(m) for m in models)) * samples


def choose_threads(work: float, ceiling: int, *, cores: int | None = None, busy: float = 0.0) -> int:
    """The thread count of the rule in the module docstring (a pure function).

    Parameters
    ----------
    work : float
        Multiply-accumulates of one typical operation (see :func:`work_of`).
    ceiling : int
        The most threads to use (torch's count); never exceeded.
    cores : int, optional
        Cores of the machine; None: not limited by cores.
    busy : float
        Other runnable tasks right now (0 when unknown).
    """
    by_size = max(1, int(work // WORK_PER_THREAD))
    by_load = ceiling if cores is None else max(1, int(cores - busy))
    return max(1, min(ceiling, by_size, by_load))


def busy_tasks(loadavg: str = "/proc/loadavg", own_tasks: str = "/proc/self/task",
               python_threads: set[int] | None = None) -> float:
    """Runnable tasks competing with the caller right now: the kernel's instantaneous count of running
    tasks (the fourth field of ``/proc/loadavg``, ``running/total``) minus the caller itself and this
    process's running *helper* threads (OpenMP/MKL workers still spinning after a parallel region: the
    threads that are not Python threads). Other Python threads of this process count as busy (another
    app session fusing in the same server). 0 where the files do not exist (not Linux)."""
    try:
        with open(loadavg) as handle:
            running = int(handle.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    if python_threads is None:
        python_threads = {t.native_id for t in threading.enumerate()}
    helpers = 0
    try:
        for task in os.listdir(own_tasks):
            if int(task) in python_threads:
                continue
            with open(os.path.join(own_tasks, task, "stat")) as handle:
                helpers += handle.read().rpartition(")")[2].split()[:1] == ["R"]   # the state follows the name
    except (OSError, ValueError):
        helpers = 0
    return float(max(0, running - 1 - helpers))


def user_choice(env: Mapping[str, str], current: int, startup: int, nested: bool) -> int | None:
    """The thread count the user fixed, or None when the library may choose (a pure function).

    ``CLAFUSION_THREADS=N`` in ``env`` gives N; ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in ``env``, or a
    ``torch.set_num_threads`` made since import (torch's ``current`` count differs from its ``startup``
    count while no context of ours is open, i.e. not ``nested``), keep ``current``.
    """
    value = env.get(ENV, "").strip().lower()
    if value not in ("", "auto"):
        if not value.isdigit() or int(value) < 1:
            raise FusionError(f"{ENV} must be a positive whole number or 'auto', not {env[ENV]!r}; "
                              f"set e.g. {ENV}=1 or unset it.")
        return int(value)
    if any(env.get(name) for name in USER_ENVS) or (not nested and current != startup):
        return current
    return None


@contextmanager
def _scope(chosen: int, ceiling: int, pinned: bool) -> Iterator[int]:
    """Set torch's count to ``chosen`` for the body, remembering the ceiling for nested decisions."""
    current, outer = torch.get_num_threads(), getattr(_state, "scope", None)
    _state.scope = (ceiling, pinned)
    changed = chosen != current
    if changed:
        with _lock:
            _open_counts[chosen] += 1
        torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        if changed:
            torch.set_num_threads(current)
            with _lock:
                _open_counts[chosen] -= 1
        _state.scope = outer


def _inherited(current: int) -> bool:
    """Whether ``current`` is a count one of our open contexts set in another thread: torch gives a new
    thread the last count set anywhere, so an app session started while another is fusing sees it."""
    with _lock:
        return current != TORCH_THREADS_AT_IMPORT and _open_counts[current] > 0


def intra_op_threads(work: float) -> contextlib.AbstractContextManager[int]:
    """Run the body with the thread count chosen for ``work`` (see the module docstring) and restore
    torch's count afterwards; yields the count used. Nested uses decide again for their own work, under
    the outermost ceiling; inside :func:`pinned` they keep the pinned count."""
    current, outer = torch.get_num_threads(), getattr(_state, "scope", None)
    if outer is not None and outer[1]:
        return _scope(current, outer[0], True)
    inherited = outer is None and _inherited(current)
    chosen = user_choice(os.environ, current, TORCH_THREADS_AT_IMPORT, nested=outer is not None or inherited)
    ceiling = outer[0] if outer is not None else TORCH_THREADS_AT_IMPORT if inherited else current
    if chosen is None:
        chosen = choose_threads(work, ceiling)
        if chosen > 1:  # only then can the load matter (reading it costs a system call)
            chosen = choose_threads(work, ceiling, cores=os.cpu_count(), busy=busy_tasks())
    return _scope(chosen, ceiling, False)


def pinned(count: int) -> contextlib.AbstractContextManager[int]:
    """Exactly ``count`` threads for the body, nested library calls included, whatever the environment
    says (for work whose float results must not depend on the thread count, e.g. the demo zoo)."""
    return _scope(count, count, True)


def sized_by(work: Callable[[dict], float]) -> Callable[[Callable], Callable]:
    """Decorator: run the function under :func:`intra_op_threads`, the work computed by ``work`` from
    the call's arguments (a dict by parameter name, defaults filled in)."""
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with intra_op_threads(work(bound.arguments)):
                return function(*args, **kwargs)

        return wrapper

    return decorate
