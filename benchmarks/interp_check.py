"""Neuron-interpolation fusion against OT fusion and the parents, one-shot, on the MLP setups.

    python benchmarks/interp_check.py                                   # digits + Fashion-MNIST, seed 0
    python benchmarks/interp_check.py --datasets digits --seeds 0,1,2
    python benchmarks/interp_check.py --quick                           # digits mlp-same only

For every dataset, setup (``mlp-same``, ``mlp-depth`` of :data:`common.SETUPS`; on digits also the demo
pairs ``demo:mlp-same``, ``demo:mlp``, ``demo:cnn``, ``demo:resnet``) and seed, the parents come from the zoo cache. OT fusion goes
through :func:`clafusion_core.pipeline.run_fusion` (its defaults: activations ground metric, exact OT,
repair on; and the weights ground metric). Neuron interpolation runs on the same balanced parents (the
pipeline's alignment and ``add`` balancing for different depths) with a class-balanced fusion batch of
``--fusion-size`` samples from the training and validation splits; the fused model takes model B's widths,
as OT's does. Everything is scored on the test split; nothing is tuned on it. Fusion time is wall time on
``--threads`` torch threads (the machine may be shared: see the load average in the JSON).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import common  # a sibling module: the benchmarks share it

from clafusion_core.balancing import balance
from clafusion_core.data import load_dataset
from clafusion_core.interpolation import InterpOptions, fusion_batch, interpolation_fuse
from clafusion_core.pipeline import (FusionConfig, compute_activations, compute_alignment, order_pair,
                                     probe_inputs, run_fusion)
from clafusion_core.train import evaluate
from clafusion_core.zoo import load_demo_pair

INTERP_ROWS = [("kmeans", "uniform"), ("kmeans", "conductance"), ("hungarian", "uniform"), ("hungarian", "conductance")]
OT_ROWS = {"OT (activations) + repair": {}, "OT (weights) + repair": {"ground_metric": "weights"}}


def parents_of(pair: str, dataset: str, seed: int, data_root: str | None):
    if pair.startswith("demo:"):
        return load_demo_pair(pair.removeprefix("demo:"))
    return common.setup_models(pair, dataset, seed, data_root)


def balanced_pair(model_a, model_b, splits, config: FusionConfig):
    """The pipeline's ordering, alignment and balancing: two models of equal depth (A the deeper)."""
    model_a, model_b, _ = order_pair(model_a, model_b)
    probe = probe_inputs(splits, config)
    alignment = compute_alignment(compute_activations(model_a, probe, config),
                                  compute_activations(model_b, probe, config), model_a, config)
    return balance(model_a, model_b, alignment.mappings, config.balance, probe)


def run_pair(pair: str, dataset: str, seed: int, splits, args) -> dict:
    model_a, model_b = parents_of(pair, dataset, seed, args.data_root)
    config = FusionConfig.from_flat(dataset=dataset, data_root=args.data_root, seed=seed, device="cpu")
    rows: dict[str, dict] = {}
    for name, overrides in OT_ROWS.items():
        result = run_fusion(model_a, model_b, splits, replace(config, **overrides))
        rows[name] = {"accuracy": result.accuracy["fused"], "fusion_s": result.timings_s["fusion"]}
    accuracy = result.accuracy
    balanced = balanced_pair(model_a, model_b, splits, config)
    inputs, labels = fusion_batch(splits, args.fusion_size, seed)
    for grouping, importance in INTERP_ROWS:
        start = time.perf_counter()
        fused = interpolation_fuse([balanced.model_a, balanced.model_b], 1, [0.5, 0.5], inputs, labels,
                                   InterpOptions(fusion_size=args.fusion_size, grouping=grouping,
                                                 importance=importance, seed=seed))
        seconds = time.perf_counter() - start
        rows[f"interp {grouping}, {importance}"] = {
            "accuracy": evaluate(fused.model, splits.test), "fusion_s": seconds,
            "ridges": [d["ridge"] for d in fused.diagnostics],
            "fit_residual": [round(d["fit_residual"], 4) for d in fused.diagnostics], "warnings": fused.warnings}
    out = {"pair": pair, "dataset": dataset, "seed": seed, "arch_a": str(model_a.spec), "arch_b": str(model_b.spec),
           "fusion_samples": len(inputs), "inserted": balanced.inserted,
           "parents": {k: accuracy[k] for k in ("model_a", "model_b", "ensemble", "vanilla")}, "rows": rows}
    best_parent = max(accuracy["model_a"], accuracy["model_b"])
    for name, row in rows.items():
        print(f"  {dataset} {pair} seed {seed}: {name}: {100 * row['accuracy']:.2f} % "
              f"({100 * (row['accuracy'] - best_parent):+.2f} pp vs the better parent) in {row['fusion_s']:.2f} s",
              flush=True)
    return out


def table(results: list[dict]) -> str:
    names = list(OT_ROWS) + [f"interp {g}, {i}" for g, i in INTERP_ROWS]
    header = ["dataset", "pair", "seed", "A", "B", "ensemble", *names]
    lines = []
    for r in results:
        p = r["parents"]
        lines.append([r["dataset"], r["pair"], r["seed"], *(f"{100 * p[k]:.2f}" for k in ("model_a", "model_b", "ensemble")),
                      *(f"{100 * r['rows'][n]['accuracy']:.2f} ({r['rows'][n]['fusion_s']:.1f} s)" for n in names)])
    return common.markdown_table(header, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_datasets="digits,fashion-mnist", default_seeds="0")
    parser.add_argument("--pairs", default=None,
                        help="comma-separated setups / demo pairs (default: mlp-same,mlp-depth; on digits also "
                             "demo:mlp-same,demo:mlp,demo:cnn,demo:resnet)")
    parser.add_argument("--fusion-size", type=int, default=1000, help="fusion-batch samples (default 1000)")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    datasets = ["digits"] if args.quick else common.parse_list(args.datasets)
    seeds = common.parse_list(args.seeds, int)[:1 if args.quick else None]
    started = time.perf_counter()
    results = []
    for dataset in datasets:
        splits = load_dataset(dataset, args.data_root)
        default = "mlp-same,mlp-depth" + (",demo:mlp-same,demo:mlp,demo:cnn,demo:resnet" if dataset == "digits" else "")
        pairs = ["mlp-same"] if args.quick else common.parse_list(args.pairs or default)
        for pair in pairs:
            for seed in ([0] if pair.startswith("demo:") else seeds):
                results.append(run_pair(pair, dataset, seed, splits, args))
    markdown = table(results)
    print(markdown)
    path = common.write_json(Path(args.out), "interp_check-quick.json" if args.quick else "interp_check.json",
                             {"benchmark": "interp_check", "command": common.command_line(), "date": common.now(),
                              "machine": {**common.machine_info(), "torch_threads": threads},
                              "fusion_size": args.fusion_size, "results": results, "markdown": markdown,
                              "wall_s": time.perf_counter() - started})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
