"""Smoke tests of the benchmarks: each script runs at its tiny ``--quick`` size and writes sane JSON.

The full benchmarks are not part of the test run (see benchmarks/README.md); these only check that the
scripts run end to end, print their tables and write results with the documented keys and finite numbers.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_quick(script: str, out: Path, *flags: str) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """Run ``benchmarks/<script> --quick`` into ``out``; returns the folder, the process and its results JSON."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, json.loads((out / f"{Path(script).stem}-quick.json").read_text())


def _numbers(value):
    """Every number in a JSON value (recursively)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


def _check_machine(data: dict) -> None:
    assert {"benchmark", "command", "date", "machine", "settings"} <= set(data)
    machine = data["machine"]
    assert {"platform", "cpu_count", "torch", "torch_threads", "load_average_start", "load_average_end",
            "device"} <= set(machine)
    assert machine["torch_threads"] >= 1
    assert "--quick" in data["command"]


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    return _run_quick("speed.py", tmp_path_factory.mktemp("speed"))


@pytest.fixture(scope="module")
def quality(tmp_path_factory):
    return _run_quick("quality.py", tmp_path_factory.mktemp("quality"))


def test_speed_quick_writes_results(speed):
    out, proc, data = speed
    _check_machine(data)
    assert data["benchmark"] == "speed" and data["quick"] is True
    assert "| stage |" in proc.stdout and "exponent" in proc.stdout  # the printed tables
    assert all(math.isfinite(x) for x in _numbers(data))

    stage = data["stages"][0]
    for key in ("activations", "dp", "balancing_add", "ot_fuse_activations_emd", "repair", "evaluate_one_model"):
        assert stage["stages_s"][key] > 0
    assert set(stage["cost_matrix_s"]) == {"linear_cka", "debiased_cka", "rbf_cka", "cca", "wasserstein", "width"}
    assert stage["run_fusion_timings_s"]["total"] > 0

    core = data["core_targets"]
    assert core["target_s"] == 0.3 and len(core["cost_matrix_s"]) == 6 and core["dp_1000x500_s"] > 0

    for curve in ("ot_width", "dp_layers", "cost_samples", "cost_layers"):
        entry = data["scaling"][curve]
        assert len(entry["sizes"]) >= 2
        for series, times in entry["times_s"].items():
            assert len(times) == len(entry["sizes"]) and all(t > 0 for t in times)
            assert entry["exponent"][series]["all"] is not None
            assert "exponent" in entry["theory"][series]
    assert set(data["scaling"]["ot_width"]["times_s"]) >= {"emd", "sinkhorn"}

    assert "cuda_available" in data["devices"]
    assert data["memory"] and data["memory"][0]["rss_peak_mib"] > 0
    threads = data["threads"]
    assert threads["settings"] == ["1", "auto"] and set(threads["loads"]) == {"idle", "loaded"}
    for load in threads["loads"].values():
        pair = load["pairs"]["mlp"]
        assert pair["ratio_to_auto"]["auto"] == 1.0 and pair["runs_s"]["1"]["threads"] == 1
        assert {"activations", "fusion", "evaluation", "total"} <= set(pair["runs_s"]["auto"])
    wide = data["full_width"][0]
    assert wide["pair"] == "resnet18x0.125 + resnet18x0.125" and wide["threads"] >= 1
    assert {"activations", "fusion", "evaluation"} <= set(wide["stage_memory"])
    assert all(m["rss_peak_mib"] >= m["rss_start_mib"] > 0 for m in wide["stage_memory"].values())
    held = wide["held_activations"]["model_a"]
    assert held["full_resolution_mib"] > held["pooled_mib"] > 0 and wide["one_shot_fusion_s"] > 0
    assert (out / "speed-quick_scaling.html").stat().st_size > 0
    assert (out / "speed-quick_stages.html").stat().st_size > 0


def test_quality_quick_writes_results(quality):
    out, proc, data = quality
    _check_machine(data)
    assert data["benchmark"] == "quality" and data["quick"] is True
    assert "| method |" in proc.stdout
    assert all(math.isfinite(x) for x in _numbers(data))
    setups = data["datasets"]["digits"]
    assert set(setups) == {"mlp-same", "mlp-depth"}

    same = setups["mlp-same"]["runs"][0]
    assert {"model_a", "model_b", "ensemble", "vanilla"} <= set(same["parents"])
    assert same["parents"]["vanilla"] is not None
    assert {"OT (weights)", "OT (activations) + repair"} <= set(same["variants"])
    assert "model_a" in same["parents_finetuned"] and "vanilla_finetuned" in same

    depth = setups["mlp-depth"]["runs"][0]
    assert depth["parents"]["vanilla"] is None  # different shapes: no vanilla averaging
    names = set(depth["variants"])
    assert {"CLAFusion linear_cka, add", "CLAFusion linear_cka, merge", "CLAFusion linear_cka, add, no repair"} <= names
    for entry in depth["variants"].values():
        assert 0.0 <= entry["one_shot"] <= 1.0
        assert entry["timings_s"]
    assert depth["variants"]["CLAFusion linear_cka, add"]["finetuned"] is not None
    assert "one_shot_choice" in depth["chosen_on_validation"]
    for setup in setups.values():
        assert setup["table_markdown"].startswith("| method |") and setup["readings"]


def test_finetune_quick_compares_distillation_with_labels_alone(tmp_path):
    _, proc, data = _run_quick("finetune.py", tmp_path)
    _check_machine(data)
    assert data["benchmark"] == "finetune" and "| dataset |" in proc.stdout
    assert all(math.isfinite(x) for x in _numbers(data))
    pair = data["datasets"]["digits"]["demo pair (seeds 0 / 1)"]
    assert set(pair["weights"]) == {"0.0", "0.9"}
    for entry in pair["weights"].values():
        run = entry["runs"][0]
        assert {"fused", "model_a", "model_b", "val_fused"} <= set(run)
        assert entry["fused_mean"] == run["fused"]
        assert math.isclose(entry["gap_to_better_parent_pp"], 100 * (run["fused"] - pair["better_parent"]))


def test_compare_quick_writes_barriers_and_the_method_table(tmp_path):
    out, proc, data = _run_quick("compare.py", tmp_path)
    _check_machine(data)
    assert data["benchmark"] == "compare" and (out / "compare-quick.md").read_text().startswith("## Loss barriers")
    (barrier, *_) = data["barriers"]
    assert {"naive", "ot", "ot+repair"} <= set(barrier["barrier_heights"])
    assert barrier["barrier_heights"]["ot"] < barrier["barrier_heights"]["naive"]
    assert "| Vanilla averaging (no alignment) |" in proc.stdout
    assert all(math.isfinite(x) for x in _numbers(data["barriers"]))


def test_refactor_quick_counts_lines_and_fuses_the_sweep_both_ways(tmp_path):
    """Before = after = HEAD (any clone has it): every module counted once, the split equal to the re-run."""
    _, proc, data = _run_quick("refactor.py", tmp_path, "--before", "HEAD")
    _check_machine(data)
    rows = data["lines"]["modules"]
    assert {"models.py", "families/mlp.py"} <= {r["module"] for r in rows}
    assert all(r["before"] == r["after"] > 0 for r in rows)
    assert data["lines"]["folders"]["clafusion_core"]["after"] == sum(r["after"] for r in rows)
    if data["duplicates"]["after"] is not None:     # the tool is installed
        assert data["duplicates"]["after"] == data["duplicates"]["before"]
    (sweep,) = data["sweep"]
    assert sweep["pair"] == "mlp" and sweep["s_values"] == [0.0, 0.5, 1.0]
    assert sweep["largest_parameter_difference"] < 1e-6     # one alignment serves every s
    assert all(math.isfinite(x) for x in _numbers(data["sweep"])) and "| mlp | 3 |" in proc.stdout


@pytest.mark.slow  # starts torchrun and three single-process runs: about a minute on 2 busy cores
def test_ddp_quick_compares_one_and_two_processes(tmp_path):
    _, proc, data = _run_quick("ddp.py", tmp_path)
    _check_machine(data)
    assert data["benchmark"] == "ddp" and "| model |" in proc.stdout
    rows = data["models"][0]["rows"]
    assert list(rows) == data["settings"]["rows"]
    assert [r["world_size"] for r in rows.values()] == [1, 1, 2]
    assert {r["global_batch"] for r in rows.values()} == {128}
    accuracies = [r["test_accuracy"] for r in rows.values()]
    assert max(accuracies) - min(accuracies) <= 1 / 359   # the same training however it is split (float
    # summation order aside, which can move one of the 359 test images)
    assert all(r["finetune_s"] > 0 for r in rows.values())
