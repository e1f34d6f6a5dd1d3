"""Speed and scaling of the fusion pipeline.

    python benchmarks/speed.py                 # full run (~4 min on 2 CPU cores, 1 torch thread)
    python benchmarks/speed.py --quick         # tiny sizes, the smoke test (< 1 min)

Sections (all written to ``<out>/speed.json``, ``speed-quick.json`` with ``--quick``):

* ``stages`` — time per pipeline stage on each demo pair (digits) and on the Fashion-MNIST MLP pair:
  activations, the cost matrix for every metric, the DP, balancing, OT fusion (split into its parts),
  repair, BatchNorm reset, evaluation, one finetune epoch; plus ``run_fusion``'s own ``timings_s``.
  Every stage is timed by calling the library function the pipeline calls (median of repeats).
* ``core_targets`` — the issue "core" targets: the full cost matrix of each metric on the MLP demo pair
  with cached activations (< 0.3 s) and the DP on a 1000 × 500 matrix.
* ``scaling`` — OT fusion of one layer vs width (exact vs Sinkhorn), DP vs number of layers, cost matrix
  vs probe samples and vs number of layers, each with the observed log-log exponent next to the
  theoretical one. Plotted to ``speed_scaling.html``.
* ``devices`` — the same fusions on CPU and CUDA when a GPU is present (its name recorded).
* ``memory`` — peak resident memory of one ``run_fusion`` per pair (a fresh process each), and CUDA
  peak allocation when on a GPU.
* ``threads`` — ``run_fusion`` per demo pair with 1, 2 and torch's default number of intra-op threads
  and with the library's own choice (``CLAFUSION_THREADS=auto``), on the machine as it is ("idle") and
  with a CPU hog on every core ("loaded"), as ratios to the library's choice.
* ``full_width`` — full-width ResNet-18 and VGG-11 pairs at CIFAR input size (3 × 32 × 32, random
  weights, synthetic data): time and peak resident memory per ``run_fusion`` stage (a fresh process
  per run), next to what the probe activations weigh at full resolution.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import common  # a sibling module: the benchmarks share it
import numpy as np
import torch

from clafusion_core.alignment import align_layers
from clafusion_core.balancing import balance
from clafusion_core.baselines import ensemble_accuracy
from clafusion_core.data import load_dataset
from clafusion_core.models import build_model
from clafusion_core.methods import METHODS, FusionBatch
from clafusion_core.otfusion import OTOptions, fuse_models, ground_activations, transport_plan
from clafusion_core.pipeline import (FusionConfig, compute_activations, compute_alignment,
                                     finetune_teacher, fuse_balanced, probe_inputs, run_fusion, stage_pins)
from clafusion_core.repair import repair_statistics, with_biases
from clafusion_core.layers import model_view
from clafusion_core.similarity import METRICS, cost_matrix
from clafusion_core.threads import TORCH_THREADS_AT_IMPORT, forward_macs
from clafusion_core.train import TrainConfig, evaluate, finetune, reset_batchnorm
from clafusion_core.zoo import DEMO_PAIRS, load_demo_pair

# Theoretical growth exponents (time ∝ size^k) of each scaling curve.
THEORY = {
    "ot_width": {"emd": (3.0, "network simplex: O(n³) worst case, typically observed ~2–2.5"),
                 "sinkhorn": (2.0, "O(n²) per iteration (the iteration count also varies with n)"),
                 "fuse_emd": (3.0, "cdist O(n²·d) + emd; the solver dominates for large n"),
                 "fuse_sinkhorn": (2.0, "cdist O(n²·d) + Sinkhorn O(n²) per iteration")},
    "dp_layers": {"dp": (2.0, "O(m·n) with m = L, n = L/2 (numpy-vectorised rows: ~1 until n is large)")},
    "cost_samples": {
        "linear_cka": (2.0, "Gram matrices O(N²·d) and their products O(N²) per pair"),
        "debiased_cka": (2.0, "as linear CKA, plus U-centring O(N²)"),
        "rbf_cka": (2.0, "squared distances O(N²·d), median over N² pairs"),
        "cca": (1.0, "eigendecomposition of the d × d covariance, O(N·d²) once N > d (≤ 400 here)"),
        "wasserstein": (1.0, "neuron distances O(N·p·q); the OT problem itself does not grow with N"),
        "width": (0.0, "no data used"),
    },
    "cost_layers": {
        "linear_cka": (2.0, "O(L) Gram matrices + O(L²) pair products"),
        "debiased_cka": (2.0, "O(L) Gram matrices + O(L²) pair products"),
        "rbf_cka": (2.0, "O(L) kernels + O(L²) pair products"),
        "cca": (2.0, "O(L) bases + O(L²) pair products (a Python loop over pairs)"),
        "wasserstein": (2.0, "one exact OT problem per pair: O(L²)"),
        "width": (2.0, "O(L²) trivial entries"),
    },
}

FULL = dict(widths=[64, 128, 256, 512, 1024, 2048], dp_layers=[10, 20, 50, 100, 200, 500, 1000],
            samples=[100, 200, 500, 1000, 2000], layers=[4, 8, 16, 32, 64], repeats=3,
            pairs=list(DEMO_PAIRS), finetune_epoch=True,
            thread_settings=["1", "2", "default", "auto"],
            full_width=[("resnet18", "resnet18"), ("vgg11", "vgg11")], full_width_splits=(512, 256, 256),
            full_width_probe=200, full_width_threads=["1", "2", "auto"])
QUICK = dict(widths=[32, 64, 128], dp_layers=[10, 20, 50], samples=[50, 100, 200], layers=[2, 4, 8],
             repeats=1, pairs=["mlp"], finetune_epoch=False,
             thread_settings=["1", "auto"],
             full_width=[("resnet18x0.125", "resnet18x0.125")], full_width_splits=(64, 64, 64), full_width_probe=32,
             full_width_threads=["auto"])


# ----------------------------------------------------------------------------------------------------
# per-stage timings


def _flat(acts):
    return [a for stage in acts for a in stage]


def stage_timings(label: str, model_a, model_b, splits, repeats: int, finetune_epoch: bool,
                  device: str = "cpu") -> dict:
    """Time every stage of the pipeline on one pair, calling the functions ``run_fusion`` calls."""
    config = FusionConfig.from_flat(device=device)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    model_a, model_b = model_a.to(dev), model_b.to(dev)
    t: dict[str, float] = {}
    probe = probe_inputs(splits, config).to(dev)
    t["activations"] = common.timeit(lambda: (compute_activations(model_a, probe, config),
                                              compute_activations(model_b, probe, config)), repeats, sync=sync)
    acts_a, acts_b = compute_activations(model_a, probe, config), compute_activations(model_b, probe, config)
    flat_a, flat_b = _flat(acts_a), _flat(acts_b)
    cost_times = {m: common.timeit(lambda m=m: cost_matrix(flat_a, flat_b, m), repeats, sync=sync) for m in METRICS}
    alignment = compute_alignment(acts_a, acts_b, model_a, config)
    pins, _ = stage_pins(model_a.family, [len(s) for s in acts_b], config)

    def dp():
        return [align_layers(c, pin_first=p0, pin_last=p1) for c, (p0, p1) in zip(alignment.costs, pins)]

    t["dp"] = common.timeit(dp, max(repeats, 5))
    t["balancing_add"] = common.timeit(lambda: balance(model_a, model_b, alignment.mappings, "add", probe), repeats)
    if model_a.family.merge_balancing:
        t["balancing_merge"] = common.timeit(
            lambda: balance(model_a, model_b, alignment.mappings, "merge", probe), repeats)
    balanced = balance(model_a, model_b, alignment.mappings, "add", probe)
    bal_a, bal_b = balanced.model_a.to(dev), balanced.model_b.to(dev)
    options = OTOptions()
    t["ot_group_activations"] = common.timeit(
        lambda: (ground_activations(bal_a, probe, options), ground_activations(bal_b, probe, options)), repeats, sync=sync)
    ga, gb = ground_activations(bal_a, probe, options), ground_activations(bal_b, probe, options)
    for name, options in (("ot_fuse_activations_emd", OTOptions()),
                          ("ot_fuse_activations_sinkhorn", OTOptions(solver="sinkhorn")),
                          ("ot_fuse_weights_emd", OTOptions(ground_metric="weights"))):
        t[name] = common.timeit(lambda o=options: fuse_models(bal_a, bal_b, o, acts_a=ga, acts_b=gb), repeats, sync=sync)
    fused = METHODS["ot"].fuse([bal_a, bal_b], 1, [0.5, 0.5], FusionBatch(probe), OTOptions())
    t["repair"] = common.timeit(lambda: repair_statistics(with_biases(_copy(fused.model)), [bal_a, bal_b],
                                                          fused.correspondence, [0.5, 0.5], probe),
                                repeats, sync=sync)
    t["bn_reset"] = common.timeit(lambda: reset_batchnorm(_copy(fused.model), splits.train, dev), repeats, sync=sync)
    t["fuse_balanced_total"] = common.timeit(lambda: fuse_balanced(balanced, FusionBatch(probe), splits, config, dev),
                                             repeats,
                                             sync=sync)
    t["evaluate_one_model"] = common.timeit(lambda: evaluate(fused.model, splits.test, dev), repeats, sync=sync)
    t["ensemble_accuracy"] = common.timeit(lambda: ensemble_accuracy([model_a, model_b], splits.test, dev), repeats,
                                           sync=sync)
    if finetune_epoch:
        training = config.replace(finetune_epochs=1).finetune_config()
        start = time.perf_counter()
        teacher = finetune_teacher([model_a, model_b], splits, config, dev)  # part of a finetune's cost
        finetune(fused.model, splits.train, splits.val, training, dev, teacher_logits=teacher)
        if sync:
            sync()
        t["finetune_one_epoch"] = time.perf_counter() - start
    runs = []
    for _ in range(max(1, repeats)):
        result = run_fusion(model_a, model_b, splits, config)
        runs.append(result.timings_s)
    pipeline = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    pipeline["total"] = float(np.median([sum(r.values()) for r in runs]))
    return {
        "pair": label, "arch_a": str(model_a.spec), "arch_b": str(model_b.spec),
        "dataset": splits.info.name, "probe_size": int(probe.shape[0]), "device": device,
        "train_samples": len(splits.train), "test_samples": len(splits.test),
        "alignment": alignment.mappings,
        "stages_s": t, "cost_matrix_s": cost_times, "run_fusion_timings_s": pipeline,
        "accuracy": {k: v for k, v in result.accuracy.items() if v is not None},
    }


def _copy(model):
    import copy

    return copy.deepcopy(model)


# ----------------------------------------------------------------------------------------------------
# core targets


def core_targets(model_a, model_b, splits, repeats: int, seed: int) -> dict:
    config = FusionConfig()
    probe = probe_inputs(splits, config)
    flat_a = _flat(compute_activations(model_a, probe, config))
    flat_b = _flat(compute_activations(model_b, probe, config))
    times = {m: common.timeit(lambda m=m: cost_matrix(flat_a, flat_b, m), max(repeats, 5)) for m in METRICS}
    cost = np.random.default_rng(seed).random((1000, 500))
    dp = common.timeit(lambda: align_layers(cost), max(repeats, 3))
    return {"pair": "mlp (digits demo pair)", "probe_size": config.probe.size, "target_s": 0.3,
            "cost_matrix_s": times, "cost_matrix_within_target": {m: t < 0.3 for m, t in times.items()},
            "dp_1000x500_s": dp}


# ----------------------------------------------------------------------------------------------------
# scaling curves


def _mlp_pair(width: int, seed: int):
    """Two one-hidden-layer MLPs (784 → width → 10); B's hidden neurons are a permuted, noisy copy of A's
    (so the transport problem has structure, like two trained networks)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    a = build_model(f"mlp:{width}", (1, 28, 28), 10)
    b = build_model(f"mlp:{width}", (1, 28, 28), 10)
    with torch.no_grad():
        perm = torch.randperm(width, generator=gen)
        noise = lambda t: torch.randn(t.shape, generator=gen) * t.std()  # noqa: E731
        b.hidden[0].weight.copy_(a.hidden[0].weight[perm] + noise(a.hidden[0].weight))
        b.hidden[0].bias.copy_(a.hidden[0].bias[perm] + noise(a.hidden[0].bias))
    return a, b


def scale_ot_width(widths, seeds, repeats, device="cpu") -> dict:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    curves = {k: [] for k in ("emd", "sinkhorn", "fuse_emd", "fuse_sinkhorn")}
    for width in widths:
        per_seed = {k: [] for k in curves}
        for seed in seeds:
            a, b = _mlp_pair(width, seed)
            a, b = a.to(dev), b.to(dev)
            with torch.no_grad():
                cost = torch.cdist(a.hidden[0].weight.double(), b.hidden[0].weight.double())
            marg = torch.full((width,), 1.0 / width, dtype=torch.float64, device=dev)
            for solver in ("emd", "sinkhorn"):
                per_seed[solver].append(common.timeit(lambda s=solver: transport_plan(cost, marg, marg, s), repeats,
                                                      max_seconds=20, sync=sync))
                options = OTOptions(ground_metric="weights", solver=solver)
                per_seed[f"fuse_{solver}"].append(common.timeit(lambda o=options: fuse_models(a, b, o), repeats,
                                                                max_seconds=20, sync=sync))
        for key in curves:
            curves[key].append(float(np.median(per_seed[key])))
        print(f"  OT width {width}: " + ", ".join(f"{k} {common.fmt_seconds(v[-1])}" for k, v in curves.items()),
              flush=True)
    return _curve("width (neurons)", widths, curves, "ot_width")


def scale_dp(layers, seeds, repeats) -> dict:
    times = []
    for size in layers:
        per_seed = []
        for seed in seeds:
            cost = np.random.default_rng(seed).random((size, max(1, size // 2)))
            per_seed.append(common.timeit(lambda c=cost: align_layers(c), max(repeats, 5)))
        times.append(float(np.median(per_seed)))
    print("  DP: " + ", ".join(f"{s}×{s // 2} {common.fmt_seconds(t)}" for s, t in zip(layers, times)), flush=True)
    return _curve("layers m (n = m/2)", layers, {"dp": times}, "dp_layers")


def scale_cost_samples(model_a, model_b, splits, samples, repeats) -> dict:
    config = FusionConfig()
    available = len(splits.val)
    samples = [n for n in samples if n <= available]
    curves = {m: [] for m in METRICS}
    for n in samples:
        probe = probe_inputs(splits, FusionConfig.from_flat(probe_size=n))
        flat_a = _flat(compute_activations(model_a, probe, config))
        flat_b = _flat(compute_activations(model_b, probe, config))
        for metric in METRICS:
            curves[metric].append(common.timeit(lambda m=metric: cost_matrix(flat_a, flat_b, m), repeats,
                                                max_seconds=20))
        print(f"  cost vs samples N={n}: " + ", ".join(f"{m} {common.fmt_seconds(v[-1])}" for m, v in curves.items()),
              flush=True)
    result = _curve("probe samples N", samples, curves, "cost_samples")
    result["pair"] = f"{model_a.spec} vs {model_b.spec} on {splits.info.name}"
    return result


def scale_cost_layers(layers, seeds, repeats, samples=200, width=100) -> dict:
    curves = {m: [] for m in METRICS}
    for count in layers:
        per_seed = {m: [] for m in METRICS}
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            acts_a = [torch.relu(torch.randn(samples, width, generator=gen)) for _ in range(count)]
            acts_b = [torch.relu(torch.randn(samples, width, generator=gen)) for _ in range(count)]
            for metric in METRICS:
                per_seed[metric].append(common.timeit(lambda m=metric: cost_matrix(acts_a, acts_b, m), repeats,
                                                      max_seconds=20))
        for metric in METRICS:
            curves[metric].append(float(np.median(per_seed[metric])))
        print(f"  cost vs layers L={count}: " + ", ".join(f"{m} {common.fmt_seconds(v[-1])}"
                                                          for m, v in curves.items()), flush=True)
    result = _curve("layers per model L (both models)", layers, curves, "cost_layers")
    result["setting"] = f"synthetic ReLU activations, {samples} samples × {width} neurons per layer"
    return result


def _curve(x_label: str, sizes: list, curves: dict, theory_key: str) -> dict:
    return {"x": x_label, "sizes": list(sizes), "times_s": curves,
            "exponent": {k: common.slopes(sizes, v) for k, v in curves.items()},
            "theory": {k: {"exponent": THEORY[theory_key][k][0], "why": THEORY[theory_key][k][1]} for k in curves}}


# ----------------------------------------------------------------------------------------------------
# memory (a fresh process per measurement, so the peak is this run's own)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux: ``echo 5 > clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _memory_child(pair_key, dataset, arch_a, arch_b, training, seed_a, seed_b, threads, device, queue):
    common.set_threads(threads)
    from clafusion_core.zoo import trained_model

    splits = load_dataset(dataset)
    if arch_a is None:
        model_a, model_b = load_demo_pair(pair_key)
    else:
        model_a = trained_model(arch_a, seed_a, dataset, TrainConfig(**training))
        model_b = trained_model(arch_b, seed_b, dataset, TrainConfig(**training))
    run_fusion(model_a, model_b, splits, FusionConfig.from_flat(device=device))  # warm-up: lazy imports, allocator pools
    reset = _reset_peak_rss()
    before = _status_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_fusion(model_a, model_b, splits, FusionConfig.from_flat(device=device))
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    queue.put({"rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
               "rss_increase_mib": (peak - before) / 1024, "cuda_peak_allocated_mib": cuda_peak,
               "method": "VmHWM after resetting it (Linux clear_refs)" if reset else "ru_maxrss (process lifetime peak)"})


def peak_memory(pair_key, dataset, threads, device="cpu", arch_a=None, arch_b=None, training=None,
                seed_a=0, seed_b=100) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(pair_key, dataset, arch_a, arch_b, training, seed_a, seed_b,
                                                   threads, device, queue))
    proc.start()
    try:
        result = queue.get(timeout=600)
    finally:
        proc.join(timeout=60)
    return {"pair": pair_key, "dataset": dataset, "device": device, **result}


# ----------------------------------------------------------------------------------------------------
# threads: the library's choice against fixed counts, idle and loaded


def _fusion_run(model_a, model_b, splits, config: FusionConfig) -> dict:
    """One ``run_fusion``: its stage timings, the total and the thread count it ran with."""
    seen = []
    start = time.perf_counter()
    result = run_fusion(model_a, model_b, splits, config, progress=lambda *_: seen.append(torch.get_num_threads()))
    return {**result.timings_s, "total": time.perf_counter() - start, "threads": seen[0]}


def threads_section(demo: dict, splits, repeats: int, names: list[str]) -> dict:
    """``run_fusion`` on each demo pair under every thread setting in ``names`` (counts, "default" =
    torch's own count, "auto" = the library's choice), idle and with a CPU hog per core.

    Repeats go round-robin over the settings so a change in the machine's load hits them alike; each
    entry is the median per stage. ``ratio_to_auto`` = time / time with the library's choice.
    """
    settings = {(f"default ({TORCH_THREADS_AT_IMPORT})" if n == "default" else n):
                (str(TORCH_THREADS_AT_IMPORT) if n == "default" else n) for n in names}
    config = FusionConfig.from_flat(device="cpu")
    loads = {}
    for load in ("idle", "loaded"):
        with common.cpu_hog(os.cpu_count() or 1) if load == "loaded" else nullcontext():
            entry = {"load_average_start": common.load_average(), "pairs": {}}
            for key, (model_a, model_b) in demo.items():
                with common.thread_setting("auto"):
                    run_fusion(model_a, model_b, splits, config)  # warm-up
                runs = {name: [] for name in settings}
                for _ in range(max(1, repeats)):
                    for name, value in settings.items():
                        with common.thread_setting(value):
                            runs[name].append(_fusion_run(model_a, model_b, splits, config))
                medians = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}
                auto = medians["auto"]["total"]
                entry["pairs"][key] = {"runs_s": medians,
                                       "ratio_to_auto": {name: m["total"] / auto for name, m in medians.items()}}
                print(f"  {load} {key}: " + ", ".join(f"{name} {common.fmt_seconds(m['total'])} ({m['threads']:.0f} thr)"
                                                      for name, m in medians.items()), flush=True)
            entry["load_average_end"] = common.load_average()
        loads[load] = entry
    return {"torch_default_threads": TORCH_THREADS_AT_IMPORT, "cpu_count": os.cpu_count(), "settings": list(settings),
            "hog": f"{os.cpu_count()} pure-Python busy loops (one per core) while 'loaded' runs", "loads": loads}


def threads_table(section: dict) -> str:
    header = ["pair", "load"] + [f"{name} (s)" for name in section["settings"]] + \
             [f"{name} / auto" for name in section["settings"] if name != "auto"] + ["threads auto chose"]
    rows = []
    for load, entry in section["loads"].items():
        for key, pair in entry["pairs"].items():
            runs = pair["runs_s"]
            rows.append([key, load] + [f"{runs[n]['total']:.3f}" for n in section["settings"]]
                        + [f"{pair['ratio_to_auto'][n]:.2f}" for n in section["settings"] if n != "auto"]
                        + [f"{runs['auto']['threads']:.0f}"])
    return common.markdown_table(header, rows)


# ----------------------------------------------------------------------------------------------------
# full-width ResNet-18 / VGG-11 pairs: time and peak memory per stage


def _vm_kib(field: str) -> int:
    value = _status_kib(field)
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class StageMemory:
    """A ``run_fusion`` progress callback that records the peak resident memory of each stage: the
    kernel's peak counter (VmHWM) is reset when a stage starts and read when the next one starts."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self._current: str | None = None
        self._rss_start = 0

    def __call__(self, _fraction: float, message: str) -> None:
        if self._current is not None:
            self.stages[self._current] = {"rss_start_mib": self._rss_start / 1024, "rss_peak_mib": _vm_kib("VmHWM") / 1024}
        self._current = None if message == "done" else message
        _reset_peak_rss()
        self._rss_start = _vm_kib("VmRSS")


def held_activations_mib(model, samples: int) -> dict:
    """What the probe activations of ``model`` would weigh (float32) held at full resolution — what
    ``activations.record`` avoids by reducing each chunk in its hook — against one value per channel pooled."""
    shapes = {}
    with torch.device("meta"):
        copy = build_model(str(model.spec), model.input_shape, model.num_classes).eval()
    names = [unit.probe.module for unit in model_view(copy).units]
    handles = [copy.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, out.shape))
               for n in names]
    with torch.no_grad():
        copy(torch.zeros(1, *model.input_shape, device="meta"))
    for handle in handles:
        handle.remove()
    full = sum(int(np.prod(shape[1:])) for shape in shapes.values())
    pooled = sum(int(shape[1]) for shape in shapes.values())
    return {"units": len(names), "full_resolution_mib": full * samples * 4 / 2**20,
            "pooled_mib": pooled * samples * 4 / 2**20,
            "largest_unit_mib": max(int(np.prod(s[1:])) for s in shapes.values()) * samples * 4 / 2**20}


def _full_width_child(arch_a, arch_b, split_sizes, probe_size, setting, queue):
    with common.thread_setting(setting):
        splits = common.synthetic_splits((3, 32, 32), 10, *split_sizes)
        torch.manual_seed(0)
        model_a = build_model(arch_a, (3, 32, 32), 10)
        torch.manual_seed(1)
        model_b = build_model(arch_b, (3, 32, 32), 10)
        memory = StageMemory()
        seen = []

        def progress(fraction, message):
            seen.append(torch.get_num_threads())
            memory(fraction, message)

        rss_before = _vm_kib("VmRSS") / 1024
        start = time.perf_counter()
        result = run_fusion(model_a, model_b, splits, FusionConfig.from_flat(device="cpu", probe_size=probe_size), progress=progress)
        total = time.perf_counter() - start
    queue.put({"timings_s": result.timings_s, "total_s": total, "threads": seen[0], "rss_before_mib": rss_before,
               "stage_memory": memory.stages, "held_activations": {"model_a": held_activations_mib(model_a, probe_size),
                                                                   "model_b": held_activations_mib(model_b, probe_size)},
               "macs_per_sample": {"model_a": forward_macs(model_a), "model_b": forward_macs(model_b)}})


def full_width_section(pairs, split_sizes, probe_size, settings) -> list[dict]:
    """One ``run_fusion`` per (pair, thread setting), each in a fresh process with glibc's mmap threshold
    fixed, so freed blocks go back to the system and each stage's peak is its own."""
    ctx = multiprocessing.get_context("spawn")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)   # read by the children's glibc at start
    entries = []
    try:
        for arch_a, arch_b in pairs:
            for setting in settings:
                queue = ctx.Queue()
                proc = ctx.Process(target=_full_width_child, args=(arch_a, arch_b, split_sizes, probe_size, setting, queue))
                proc.start()
                try:
                    entry = queue.get(timeout=3600)
                finally:
                    proc.join(timeout=60)
                entry.update(pair=f"{arch_a} + {arch_b}", setting=setting, splits=dict(zip(("train", "val", "test"), split_sizes)),
                             probe_size=probe_size)
                entry["one_shot_fusion_s"] = sum(v for k, v in entry["timings_s"].items() if k != "evaluation")
                entries.append(entry)
                print(f"  {entry['pair']} threads={setting} ({entry['threads']}): total {common.fmt_seconds(entry['total_s'])}, "
                      f"one-shot fusion {common.fmt_seconds(entry['one_shot_fusion_s'])}, peak "
                      f"{max(m['rss_peak_mib'] for m in entry['stage_memory'].values()):.0f} MiB", flush=True)
    finally:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    return entries


def full_width_table(entries: list[dict]) -> str:
    stages = list(dict.fromkeys(k for e in entries for k in e["timings_s"]))
    memory = list(dict.fromkeys(k for e in entries for k in e["stage_memory"]))
    header = ["pair", "threads"] + [f"{k} (s)" for k in stages] + ["one-shot fusion (s)"] + \
             [f"peak MiB: {k}" for k in memory]
    rows = [[e["pair"], f"{e['setting']} → {e['threads']}"] + [f"{e['timings_s'].get(k, 0):.2f}" for k in stages]
            + [f"{e['one_shot_fusion_s']:.1f}"] + [f"{e['stage_memory'][k]['rss_peak_mib']:.0f}" if k in e["stage_memory"]
                                                    else "–" for k in memory] for e in entries]
    return common.markdown_table(header, rows)


# ----------------------------------------------------------------------------------------------------
# plots and tables


def plot_scaling(scaling: dict, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("ot_width", "OT fusion of one layer vs width"), ("dp_layers", "DP alignment vs layers"),
              ("cost_samples", "Cost matrix vs probe samples"), ("cost_layers", "Cost matrix vs layers")]
    prefix = {"ot_width": "OT", "dp_layers": "DP", "cost_samples": "cost(N)", "cost_layers": "cost(L)"}
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    names = list(dict.fromkeys(n for key, _ in panels for n in scaling[key]["times_s"]))
    colour = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in panels],
                        horizontal_spacing=0.1, vertical_spacing=0.14)
    for index, (key, _) in enumerate(panels):
        row, col = index // 2 + 1, index % 2 + 1
        curve = scaling[key]
        for name, times in curve["times_s"].items():
            slope = curve["exponent"][name]["largest_half"]
            label = f"{prefix[key]}: {name} (k≈{slope}, theory {curve['theory'][name]['exponent']:g})"
            fig.add_trace(go.Scatter(x=curve["sizes"], y=times, mode="lines+markers", name=label, legendgroup=key,
                                     line=dict(color=colour[name])), row=row, col=col)
        fig.update_xaxes(type="log", title_text=curve["x"], row=row, col=col)
        fig.update_yaxes(type="log", title_text="seconds", row=row, col=col)
    fig.update_layout(height=900, width=1300, title="CLAFusion Explorer — scaling (log-log; k = fitted exponent)",
                      legend=dict(font=dict(size=10)))
    fig.write_html(path, include_plotlyjs="cdn")


def plot_stages(stages: list[dict], path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for entry in stages:
        names = list(entry["stages_s"]) + [f"cost_{m}" for m in entry["cost_matrix_s"]]
        values = list(entry["stages_s"].values()) + list(entry["cost_matrix_s"].values())
        fig.add_trace(go.Bar(name=f"{entry['pair']} ({entry['dataset']})", x=names, y=values))
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="seconds (log)", height=600, width=1300,
                      title="Time per pipeline stage (median; CPU)")
    fig.write_html(path, include_plotlyjs="cdn")


STAGE_ORDER = ["activations", "dp", "balancing_add", "balancing_merge", "ot_group_activations",
               "ot_fuse_activations_emd", "ot_fuse_activations_sinkhorn", "ot_fuse_weights_emd", "repair", "bn_reset",
               "fuse_balanced_total", "evaluate_one_model", "ensemble_accuracy", "finetune_one_epoch"]


def stage_table(stages: list[dict]) -> str:
    header = ["stage"] + [f"{s['pair']} ({s['dataset']})" for s in stages]
    rows = []
    for stage in STAGE_ORDER:
        if any(stage in s["stages_s"] for s in stages):
            rows.append([stage] + [common.fmt_seconds(s["stages_s"].get(stage)) for s in stages])
    for metric in METRICS:
        rows.append([f"cost matrix: {metric}"] + [common.fmt_seconds(s["cost_matrix_s"][metric]) for s in stages])
    keys = list(stages[0]["run_fusion_timings_s"]) if stages else []
    for key in keys:
        rows.append([f"run_fusion: {key}"] + [common.fmt_seconds(s["run_fusion_timings_s"].get(key)) for s in stages])
    return common.markdown_table(header, rows)


def scaling_table(scaling: dict) -> str:
    rows = []
    for key, curve in scaling.items():
        for name, times in curve["times_s"].items():
            exp = curve["exponent"][name]
            rows.append([key, name, f"{curve['sizes'][0]} … {curve['sizes'][-1]}",
                         f"{common.fmt_seconds(times[0])} … {common.fmt_seconds(times[-1])}",
                         exp["all"], exp["largest_half"], f"{curve['theory'][name]['exponent']:g}",
                         curve["theory"][name]["why"]])
    return common.markdown_table(["curve", "series", "sizes", "time (first … last)", "exponent (all points)",
                                  "exponent (largest half)", "theory", "why"], rows)


# ----------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_datasets="digits,fashion-mnist", default_seeds="0")
    parser.add_argument("--pairs", default=None, help=f"demo pairs to time (default all: {','.join(DEMO_PAIRS)})")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (median is reported)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: "
                                                   "stages,core,scaling,devices,memory,threads,full_width")
    parser.add_argument("--thread-settings", default=None,
                        help="thread settings of the threads section (counts, 'default', 'auto'; default "
                             f"{','.join(FULL['thread_settings'])})")
    parser.add_argument("--full-width-threads", default=None,
                        help=f"thread settings of the full-width section (default {','.join(FULL['full_width_threads'])})")
    parser.add_argument("--name", default=None, help="results file stem (default speed, speed-quick with --quick)")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.pairs:
        sizes["pairs"] = common.parse_list(args.pairs)
    if args.thread_settings:
        sizes["thread_settings"] = common.parse_list(args.thread_settings)
    if args.full_width_threads:
        sizes["full_width_threads"] = common.parse_list(args.full_width_threads)
    repeats = args.repeats or sizes["repeats"]
    seeds = common.parse_list(args.seeds, int)
    datasets = common.parse_list(args.datasets)
    if args.quick:
        datasets = [d for d in datasets if d == "digits"] or ["digits"]
    skip = set(common.parse_list(args.skip))
    threads = common.set_threads(args.threads)
    out = Path(args.out)
    name = args.name or ("speed-quick" if args.quick else "speed")
    started = time.perf_counter()
    result = {"benchmark": "speed", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {"repeats": repeats, "seeds": seeds, "datasets": datasets, "threads": threads, **sizes}}
    print(f"# Speed benchmark ({'quick' if args.quick else 'full'}) — {result['machine']['cpu']}, "
          f"{threads} torch thread(s), load {result['machine']['load_average_start']}", flush=True)

    digits = load_dataset("digits")
    demo = {key: load_demo_pair(key) for key in sizes["pairs"]}
    fashion_pair = None
    if "fashion-mnist" in datasets:
        fashion_pair = common.setup_models("mlp-depth", "fashion-mnist", seeds[0], args.data_root)
        fashion = load_dataset("fashion-mnist", args.data_root)

    stages = []
    if "stages" not in skip:
        print("\n## Stages", flush=True)
        for key, (model_a, model_b) in demo.items():
            stages.append(stage_timings(key, model_a, model_b, digits, repeats, sizes["finetune_epoch"]))
            print(f"  {key}: done", flush=True)
        if fashion_pair is not None:
            stages.append(stage_timings("mlp-depth", *fashion_pair, fashion, repeats,
                                        sizes["finetune_epoch"]))
            print("  fashion-mnist mlp-depth: done", flush=True)
        result["stages"] = stages
        print(stage_table(stages), flush=True)

    if "core" not in skip:
        print("\n## Core targets", flush=True)
        mlp_a, mlp_b = demo.get("mlp") or load_demo_pair("mlp")
        core = core_targets(mlp_a, mlp_b, digits, repeats, seeds[0])
        result["core_targets"] = core
        print(common.markdown_table(["metric", "cost matrix (MLP demo pair, cached activations)", "< 0.3 s"],
                                    [[m, common.fmt_seconds(t), "yes" if core["cost_matrix_within_target"][m] else "NO"]
                                     for m, t in core["cost_matrix_s"].items()]))
        print(f"DP on a 1000×500 matrix: {common.fmt_seconds(core['dp_1000x500_s'])}", flush=True)

    if "scaling" not in skip:
        print("\n## Scaling", flush=True)
        scaling = {"ot_width": scale_ot_width(sizes["widths"], seeds, repeats),
                   "dp_layers": scale_dp(sizes["dp_layers"], seeds, repeats)}
        if fashion_pair is not None:
            scaling["cost_samples"] = scale_cost_samples(*fashion_pair, fashion, sizes["samples"], repeats)
        else:
            scaling["cost_samples"] = scale_cost_samples(*(demo.get("mlp") or load_demo_pair("mlp")), digits,
                                                         sizes["samples"], repeats)
        scaling["cost_layers"] = scale_cost_layers(sizes["layers"], seeds, repeats)
        result["scaling"] = scaling
        print(scaling_table(scaling), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        plot_scaling(scaling, out / f"{name}_scaling.html")

    if "devices" not in skip:
        result["devices"] = devices_section(demo, digits, repeats, sizes, seeds)
    if "memory" not in skip:
        print("\n## Memory", flush=True)
        memory = [peak_memory(key, "digits", threads) for key in sizes["pairs"]]
        if fashion_pair is not None:
            memory.append(peak_memory("mlp-depth", "fashion-mnist", threads, arch_a=common.SETUPS["mlp-depth"]["arch_a"],
                                      arch_b=common.SETUPS["mlp-depth"]["arch_b"],
                                      training=common.training_for("mlp-depth", "fashion-mnist"),
                                      seed_a=seeds[0], seed_b=seeds[0] + 100))
        if torch.cuda.is_available():
            memory += [peak_memory(key, "digits", threads, device="cuda") for key in sizes["pairs"]]
        result["memory"] = memory
        print(common.markdown_table(["pair", "dataset", "device", "RSS before (MiB)", "RSS peak (MiB)",
                                     "increase (MiB)", "CUDA peak (MiB)"],
                                    [[m["pair"], m["dataset"], m["device"], f"{m['rss_before_mib']:.0f}",
                                      f"{m['rss_peak_mib']:.0f}", f"{m['rss_increase_mib']:.0f}",
                                      "–" if m["cuda_peak_allocated_mib"] is None else
                                      f"{m['cuda_peak_allocated_mib']:.1f}"] for m in memory]), flush=True)

    if "threads" not in skip:
        print("\n## Threads (run_fusion, whole run; idle = the machine as it is, loaded = a CPU hog per core)",
              flush=True)
        result["threads"] = threads_section(demo, digits, repeats, sizes["thread_settings"])
        print(threads_table(result["threads"]), flush=True)
    if "full_width" not in skip:
        print("\n## Full-width pairs at 3×32×32 (random weights, synthetic data)", flush=True)
        result["full_width"] = full_width_section(sizes["full_width"], sizes["full_width_splits"],
                                                  sizes["full_width_probe"], sizes["full_width_threads"])
        print(full_width_table(result["full_width"]), flush=True)

    if stages:
        out.mkdir(parents=True, exist_ok=True)
        plot_stages(stages, out / f"{name}_stages.html")
    result["wall_s"] = time.perf_counter() - started
    path = common.write_json(out, f"{name}.json", result)
    print(f"\nwrote {path} in {result['wall_s']:.0f} s (load average now {common.load_average()})")
    return 0


def devices_section(demo, digits, repeats, sizes, seeds) -> dict:
    """CPU vs CUDA on the same fusions (only when a GPU is present)."""
    if not torch.cuda.is_available():
        print("\n## CPU vs CUDA: no CUDA device on this machine — skipped", flush=True)
        return {"cuda_available": False, "note": "no CUDA device on this machine; rerun on a GPU machine"}
    print(f"\n## CPU vs CUDA ({torch.cuda.get_device_name(0)})", flush=True)
    pairs = {}
    for key, (model_a, model_b) in demo.items():
        entry = {}
        for device in ("cpu", "cuda"):
            runs = []
            for _ in range(max(1, repeats)):
                if device == "cuda":
                    torch.cuda.synchronize()
                runs.append(run_fusion(model_a, model_b, digits, FusionConfig.from_flat(device=device)).timings_s)
            entry[device] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            entry[device]["total"] = float(np.median([sum(r.values()) for r in runs]))
            model_a, model_b = model_a.cpu(), model_b.cpu()
        pairs[key] = entry
        print(f"  {key}: cpu {common.fmt_seconds(entry['cpu']['total'])}, "
              f"cuda {common.fmt_seconds(entry['cuda']['total'])}", flush=True)
    torch.cuda.reset_peak_memory_stats()
    width_cuda = scale_ot_width(sizes["widths"], seeds, repeats, device="cuda")
    return {"cuda_available": True, "device_name": torch.cuda.get_device_name(0), "run_fusion_s": pairs,
            "ot_width_cuda": width_cuda, "cuda_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}


if __name__ == "__main__":
    sys.exit(main())
