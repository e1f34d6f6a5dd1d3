"""The CLI end to end, and its promise: user errors exit 2 with one sentence, never a traceback."""

import json
import subprocess
import sys

import pytest
import torch

from clafusion_core.checkpoints import load_checkpoint, save_checkpoint
from clafusion_core.cli import main
from clafusion_core.config import FusionConfig
from clafusion_core.models import build_model
from clafusion_core.train import evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = {}
    for name, arch, seed in (("deep", "mlp:48-32-16", 0), ("shallow", "mlp:32-16", 1)):
        paths[name] = folder / f"{name}.safetensors"
        assert main(["train", "--arch", arch, "--epochs", "3", "--seed", str(seed), "--out", str(paths[name])]) == 0
    return paths


def test_train_writes_a_loadable_checkpoint(trained):
    model, info = load_checkpoint(trained["deep"])
    assert info.arch == "mlp:48-32-16" and info.dataset == "digits" and info.num_classes == 10


def test_align_writes_cost_matrix_and_alignment(trained, tmp_path):
    out = tmp_path / "align.json"
    assert main(["align", str(trained["deep"]), str(trained["shallow"]), "--cost", "debiased_cka",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert len(payload["cost_matrix"]) == 3 and len(payload["cost_matrix"][0]) == 2
    assert payload["alignment"][0] == 0 and payload["alignment"][-1] == 2   # both ends pinned
    assert payload["config"]["alignment"]["cost"] == "debiased_cka"


def test_align_without_pins_can_move_the_ends(trained, tmp_path):
    out = tmp_path / "align.json"
    assert main(["align", str(trained["deep"]), str(trained["shallow"]), "--cost", "width",
                 "--no-pin-first", "--no-pin-last", "--json", str(out)]) == 0
    # width costs: |48-32|, |32-32|, |16-32| ... rows 1 and 2 match widths 32 and 16 exactly
    assert json.loads(out.read_text())["alignment"] == [1, 2]


def test_fuse_writes_result_and_a_model_the_cli_loads_again(trained, tmp_path):
    result, fused = tmp_path / "result.json", tmp_path / "fused.safetensors"
    args = ["fuse", str(trained["deep"]), str(trained["shallow"]), "--ground-metric", "weights",
            "--solver", "sinkhorn", "--sinkhorn-reg", "0.05", "--finetune-epochs", "1", "--json", str(result),
            "--out", str(fused)]
    assert main(args) == 0
    payload = json.loads(result.read_text())
    assert payload["accuracy"]["fused_finetuned"] is not None
    assert payload["config"]["fusion"]["options"]["solver"] == "sinkhorn" and payload["seed"] == 0
    assert load_checkpoint(fused)[1].arch == payload["models"]["fused"]["arch"]
    again = tmp_path / "again.json"
    assert main(["align", str(fused), str(trained["shallow"]), "--json", str(again)]) == 0


def test_finetune_of_a_fused_checkpoint_equals_the_finetune_inside_fuse(trained, tmp_path):
    """Fusing and finetuning on different machines gives what ``fuse --finetune-epochs`` gives on one."""
    models = [str(trained["deep"]), str(trained["shallow"])]
    in_one = tmp_path / "in_one.json"
    assert main(["fuse", *models, "--finetune-epochs", "2", "--json", str(in_one)]) == 0
    fused, report = tmp_path / "fused.safetensors", tmp_path / "finetune.json"
    assert main(["fuse", *models, "--out", str(fused), "--json", str(tmp_path / "fused.json")]) == 0
    assert main(["finetune", str(fused), "--teacher", *models, "--epochs", "2", "--json", str(report)]) == 0
    one, two = json.loads(in_one.read_text()), json.loads(report.read_text())
    assert two["config"]["distill"] == 0.9 and two["world_size"] == 1 and two["global_batch_size"] == 64
    assert two["accuracy"]["before"] == one["accuracy"]["fused"]
    assert two["accuracy"]["after"] == one["accuracy"]["fused_finetuned"]
    assert two["val_accuracy"] == one["histories"]["fused"]


def test_finetune_on_labels_keeps_the_best_validation_epoch(trained, tmp_path, digits):
    out, report = tmp_path / "tuned.safetensors", tmp_path / "finetune.json"
    assert main(["finetune", str(trained["shallow"]), "--epochs", "3", "--lr", "0.2", "--optimizer", "adam",
                 "--batch-size", "32", "--out", str(out), "--json", str(report)]) == 0
    payload = json.loads(report.read_text())
    assert payload["config"]["distill"] == 0 and payload["teachers"] == [] and payload["dataset"] == "digits"
    history = payload["val_accuracy"]
    assert len(history) == 4 and history[payload["best_epoch"]] == max(history)
    tuned, info = load_checkpoint(out)
    assert evaluate(tuned, digits.val) == history[payload["best_epoch"]]   # the kept weights are that epoch's
    assert evaluate(tuned, digits.test) == payload["accuracy"]["after"]
    assert info.extra["best_epoch"] == str(payload["best_epoch"])


def test_demo_runs_the_default_pair(tmp_path, mlp_pair):
    out = tmp_path / "demo.json"
    assert main(["demo", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["models"]["model_a"]["arch"] == "mlp:400-200-100-50-25"



def _without_timings(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "timings_s"}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_run_config_round_trips_through_result_json_and_config(trained, tmp_path, suffix):
    """``fuse --config`` with the ``config`` of a result.json reruns it: the same result.json but timings."""
    import yaml

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    models = [str(trained["deep"]), str(trained["shallow"])]
    assert main(["fuse", *models, "--cost", "cca", "--ground-metric", "weights", "--fusion-weight", "0.3",
                 "--probe-size", "50", "--seed", "4", "--json", str(first)]) == 0
    recorded = json.loads(first.read_text())["config"]
    config_file = tmp_path / f"run{suffix}"
    config_file.write_text(json.dumps(recorded) if suffix == ".json" else yaml.safe_dump(recorded))
    assert main(["fuse", *models, "--config", str(config_file), "--json", str(second)]) == 0
    assert _without_timings(json.loads(second.read_text())) == _without_timings(json.loads(first.read_text()))
    assert FusionConfig.load(first) == FusionConfig.from_dict(recorded)   # a result.json is a config file too


def test_flags_typed_override_the_config_file(trained, tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(FusionConfig.from_flat(cost="cca", fusion_weight=0.3, probe_size=50).to_dict()))
    out = tmp_path / "result.json"
    assert main(["fuse", str(trained["deep"]), str(trained["shallow"]), "--config", str(config_file),
                 "--fusion-weight", "0.5", "--json", str(out)]) == 0
    config = FusionConfig.from_dict(json.loads(out.read_text())["config"])
    assert (config.alignment.cost, config.fusion.weight, config.probe.size) == ("cca", 0.5, 50)


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"magic": {}}', "Unknown section"),
                                              ('{"alignment": {"costt": "cca"}}', "alignment")])
def test_bad_config_files_are_one_sentence(trained, tmp_path, capsys, content, message):
    config_file = tmp_path / "run.json"
    config_file.write_text(content)
    assert main(["fuse", str(trained["deep"]), str(trained["shallow"]), "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

@pytest.mark.parametrize("make_args, message", [
    (lambda p, t: ["train", "--arch", "transformer:12", "--epochs", "1", "--out", str(t / "x.safetensors")],
     "Unknown architecture"),
    (lambda p, t: ["align", str(t / "corrupt.safetensors"), str(p["shallow"])], "corrupt.safetensors"),
    (lambda p, t: ["align", str(p["deep"]), str(p["shallow"]), "--dataset", "mnist", "--data-root", str(t)],
     "train-images-idx3-ubyte"),
    (lambda p, t: ["align", str(p["deep"]), str(t / "wrong_classes.safetensors")], "classes"),
    (lambda p, t: ["fuse", str(p["deep"]), str(p["shallow"]), "--device", "cuda"], "CUDA"),
    (lambda p, t: ["fuse", str(p["deep"]), str(p["shallow"]), "--distill", "1.5"], "distillation weight"),
    (lambda p, t: ["finetune", str(p["deep"]), "--distill", "0.5"], "--teacher"),
    (lambda p, t: ["finetune", str(p["deep"]), "--teacher", str(t / "wrong_classes.safetensors")], "classes"),
])
def test_user_errors_exit_2_with_one_sentence(trained, tmp_path, capsys, make_args, message):
    if message == "CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "corrupt.safetensors").write_bytes(trained["shallow"].read_bytes()[:100])
    save_checkpoint(build_model("mlp:16", (1, 8, 8), 5), tmp_path / "wrong_classes.safetensors", dataset="digits")
    capsys.readouterr()
    assert main(make_args(trained, tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    run = subprocess.run([sys.executable, "-m", "clafusion_core", "align", str(bad), str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "bad.pt" in run.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finetune_on_cuda_follows_the_cpu_run(trained, tmp_path):
    reports = {}
    for device in ("cpu", "cuda"):
        reports[device] = tmp_path / f"{device}.json"
        assert main(["finetune", str(trained["deep"]), "--teacher", str(trained["deep"]), str(trained["shallow"]),
                     "--epochs", "2", "--device", device, "--json", str(reports[device])]) == 0
    cpu, cuda = (json.loads(reports[d].read_text()) for d in ("cpu", "cuda"))
    assert cuda["device"].startswith("cuda")
    assert cuda["val_accuracy"] == pytest.approx(cpu["val_accuracy"], abs=2 / 360)   # ± two validation images


def test_the_ot_ground_cost_and_input_correction_flags_reach_the_fusion(trained, tmp_path, capsys):
    out = tmp_path / "squared.json"
    models = [str(trained["deep"]), str(trained["shallow"])]
    assert main(["fuse", *models, "--squared-ground-cost", "--json", str(out)]) == 0
    options = FusionConfig.from_dict(json.loads(out.read_text())["config"]).fusion.options
    assert (options.squared, options.input_correction) == (True, True)
    capsys.readouterr()
    # the balanced pair differs in width (48 vs 32 neurons into hidden.1): uncorrected inputs cannot be averaged
    assert main(["fuse", *models, "--no-input-correction"]) == 2
    err = capsys.readouterr().err
    assert "turn the input correction on" in err and err.count("\n") == 1


def test_the_identity_width_and_ground_activation_choice_flags_reach_the_fusion(trained, tmp_path):
    """MLPs: by default (``conv``) the ground activation is fixed; ``validation`` tries both; ``fixed`` takes the flag."""
    models = [str(trained["deep"]), str(trained["shallow"])]
    flags = {"default": [], "validation": ["--ground-activation-choice", "validation"],
             "fixed": ["--identity-width", "input", "--ground-activation-choice", "fixed", "--ground-activation", "pre"]}
    runs = {}
    for name, extra in flags.items():
        assert main(["fuse", *models, *extra, "--json", str(tmp_path / f"{name}.json")]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    configs = {name: FusionConfig.from_dict(run["config"]) for name, run in runs.items()}
    assert configs["default"].balancing.identity_width == "deeper"
    assert configs["default"].fusion.options.ground_activation_choice == "conv"
    assert "ground_activation" not in runs["default"]["repair"]
    assert set(runs["validation"]["repair"]["ground_activation"]["val"]) == {"post", "pre"}
    assert configs["fixed"].balancing.identity_width == "input"
    assert configs["fixed"].fusion.options.ground_activation_choice == "fixed"
    assert configs["fixed"].fusion.options.ground_activation == "pre"
    assert "ground_activation" not in runs["fixed"]["repair"]


def test_fuse_with_neuron_interpolation_records_the_method_its_options_and_diagnostics(trained, tmp_path):
    out = tmp_path / "interp.json"
    assert main(["fuse", str(trained["deep"]), str(trained["shallow"]), "--method", "interp", "--fusion-size", "300",
                 "--grouping", "hungarian", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["method"] == "interp" and payload["config"]["fusion"]["name"] == "interp"
    assert payload["config"]["fusion"]["options"]["fusion_size"] == 300
    assert payload["config"]["fusion"]["options"]["grouping"] == "hungarian"
    assert payload["accuracy"]["fused"] is not None and payload["diagnostics"]
    assert {"fit_residual", "cluster_sizes", "ridge"} <= set(payload["diagnostics"][0])
    config = FusionConfig.from_dict(payload["config"])
    assert config.fusion.options.fusion_size == 300 and config.fusion.name == "interp"


def test_the_gradient_norm_clip_flag_reaches_fuse_and_finetune(trained, tmp_path, capsys):
    models = [str(trained["deep"]), str(trained["shallow"])]
    fused = tmp_path / "fused.json"
    assert main(["fuse", *models, "--finetune-epochs", "1", "--clip-grad-norm", "0.5", "--json", str(fused)]) == 0
    assert FusionConfig.from_dict(json.loads(fused.read_text())["config"]).finetune.clip_grad_norm == 0.5
    tuned = tmp_path / "tuned.json"
    assert main(["finetune", models[0], "--epochs", "1", "--clip-grad-norm", "0", "--json", str(tuned)]) == 0
    assert json.loads(tuned.read_text())["config"]["clip_grad_norm"] == 0.0
    capsys.readouterr()
    assert main(["finetune", models[0], "--epochs", "1", "--clip-grad-norm", "-1"]) == 2
    err = capsys.readouterr().err
    assert "gradient-norm clip" in err and err.count("\n") == 1
