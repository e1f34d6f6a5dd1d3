"""The intra-op thread policy: a pure rule of work size and load, who may override it, and the MAC count
it is fed (checked against torch's own FLOP counter)."""

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from clafusion_core import threads
from clafusion_core.errors import FusionError
from clafusion_core.models import build_model
from clafusion_core.threads import (WORK_PER_THREAD, busy_tasks, choose_threads, forward_macs, intra_op_threads,
                                    pinned, sized_by, user_choice)


def test_small_work_gets_one_thread_and_large_work_the_ceiling():
    assert choose_threads(0.5 * WORK_PER_THREAD, ceiling=8) == 1
    assert choose_threads(3.5 * WORK_PER_THREAD, ceiling=8) == 3        # ⌊W / W₁⌋ threads
    assert choose_threads(100 * WORK_PER_THREAD, ceiling=8) == 8        # never above torch's count
    assert choose_threads(100 * WORK_PER_THREAD, ceiling=8, cores=8, busy=6) == 2   # 2 cores idle
    assert choose_threads(100 * WORK_PER_THREAD, ceiling=2, cores=2, busy=5) == 1   # a busy machine


@given(work=st.floats(0, 1e13), more=st.floats(0, 1e13), ceiling=st.integers(1, 64),
       cores=st.integers(1, 64), busy=st.floats(0, 100), more_busy=st.floats(0, 100))
def test_rule_stays_in_range_grows_with_work_and_shrinks_with_load(work, more, ceiling, cores, busy, more_busy):
    count = choose_threads(work, ceiling, cores=cores, busy=busy)
    assert 1 <= count <= ceiling
    assert choose_threads(work + more, ceiling, cores=cores, busy=busy) >= count
    assert choose_threads(work, ceiling, cores=cores, busy=busy + more_busy) <= count


@pytest.mark.parametrize("env, current, nested, expected", [
    ({}, 2, False, None),                                    # the library chooses
    ({"CLAFUSION_THREADS": "auto"}, 2, False, None),
    ({"CLAFUSION_THREADS": "3"}, 2, False, 3),               # an explicit count wins over everything
    ({"CLAFUSION_THREADS": "3", "OMP_NUM_THREADS": "1"}, 1, False, 3),
    ({"OMP_NUM_THREADS": "4"}, 4, False, 4),                 # OpenMP / MKL settings are kept
    ({"MKL_NUM_THREADS": "1"}, 1, False, 1),
    ({}, 1, False, 1),                                       # torch.set_num_threads(1) after import: kept
    ({}, 1, True, None),                                     # ... unless it was our own outer context
])
def test_who_decides(env, current, nested, expected):
    assert user_choice(env, current, startup=2, nested=nested) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_override_is_a_user_error(value):
    with pytest.raises(FusionError, match="CLAFUSION_THREADS must be"):
        user_choice({"CLAFUSION_THREADS": value}, 2, startup=2, nested=False)


def test_busy_tasks_counts_what_competes_with_the_caller(tmp_path):
    path = tmp_path / "loadavg"
    path.write_text("1.52 0.84 0.33 6/312 98765\n")
    tasks = tmp_path / "task"
    states = {"10": "R", "11": "R", "12": "S", "13": "R"}   # caller, another Python thread, a sleeper, an OpenMP worker
    for tid, state in states.items():
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(f"{tid} (python (main)) {state} 1 10 10 0 -1\n")
    python = {10, 11, 12}
    # 6 running = the caller + the other Python thread + the worker + 3 other processes' tasks
    assert busy_tasks(str(path), str(tasks), python) == 4            # the worker is not competition
    assert busy_tasks(str(path), str(tmp_path / "none"), python) == 5   # own threads unknown: only the caller
    assert busy_tasks(str(tmp_path / "missing"), str(tasks), python) == 0


@pytest.mark.parametrize("arch, shape", [("mlp:400-200-100", (1, 8, 8)), ("vgg:8-M-16-M-32/24", (3, 16, 16)),
                                         ("resnet:1-1-1-1@8-16-32-64", (3, 32, 32)), ("vgg11-bn", (3, 32, 32))])
def test_forward_macs_equal_torchs_flop_count(arch, shape):
    model = build_model(arch, shape, 10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    assert forward_macs(model) == counter.get_total_flops() // 2   # one multiply-accumulate = 2 FLOPs


def test_forward_macs_of_a_plain_module_counts_its_parameters():
    assert forward_macs(torch.nn.Linear(3, 4)) == 16


@pytest.fixture
def two_idle_cores(monkeypatch):
    """torch at 2 threads as imported, on a 2-core machine with nothing else running."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "TORCH_THREADS_AT_IMPORT", 2)
    monkeypatch.setattr(threads, "busy_tasks", lambda: 0.0)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    for name in ("CLAFUSION_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_context_sets_and_restores_the_count(two_idle_cores, monkeypatch):
    with intra_op_threads(0.0) as small:
        assert small == torch.get_num_threads() == 1
        with intra_op_threads(10 * WORK_PER_THREAD) as big:   # nested: decides again, under the ceiling
            assert big == torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("CLAFUSION_THREADS", "1")
    with intra_op_threads(10 * WORK_PER_THREAD) as fixed:
        assert fixed == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_pinned_wins_over_nested_decisions_and_the_environment(two_idle_cores, monkeypatch):
    monkeypatch.setenv("CLAFUSION_THREADS", "2")
    with pinned(1):
        with intra_op_threads(10 * WORK_PER_THREAD) as inner:
            assert inner == torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_sized_by_computes_the_work_from_the_call(two_idle_cores):
    seen = []

    @sized_by(lambda args: args["samples"] * WORK_PER_THREAD)
    def work(samples, scale=1):
        seen.append(torch.get_num_threads())
        return samples * scale

    assert work(0, scale=3) == 0 and work(samples=5) == 5
    assert seen == [1, 2]


def test_a_thread_started_inside_a_context_is_not_mistaken_for_a_user_choice(two_idle_cores):
    """torch hands a new thread the count last set anywhere (here our 1); that thread still decides
    for itself, under torch's original ceiling."""
    seen = {}

    def other_session():
        seen["inherited"] = torch.get_num_threads()
        with intra_op_threads(10 * WORK_PER_THREAD) as count:
            seen["chosen"] = count

    with intra_op_threads(0.0):
        thread = threading.Thread(target=other_session)
        thread.start()
        thread.join()
    assert seen == {"inherited": 1, "chosen": 2}
