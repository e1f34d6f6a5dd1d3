"""Short finetunes of a fused model: labels only vs distillation from the parents, against the parents.

    python benchmarks/finetune.py            # digits depth pairs (the demo pair + 3 more), 5 finetune seeds (~3 min)
    python benchmarks/finetune.py --datasets digits,fashion-mnist   # adds the Fashion-MNIST depth pair (~10 min more)
    python benchmarks/finetune.py --quick    # the smoke test: the demo pair, 1 seed, 1 epoch

The question it answers is the issue's: after a short finetune, does the fused model match or beat the
better parent — and the parents given the same extra epochs? On the 359 test images of the embedded
digits one image is 0.28 pp, so a single finetune says little; this script finetunes every fused model
with several seeds (batch orders) and reports means. For each pair the fusion is the pipeline default
(``FusionConfig()``: linear CKA, ``add``, activations ground metric, exact OT, repair) and each distillation
weight of ``--weights`` is run with the same seeds, epochs and learning rate; the parents get exactly the
same finetune (teacher included) as the fair baseline. The best *validation* epoch is kept everywhere.

Pairs: on digits, the MLP demo pair (A seed 0, B seed 1) and ``mlp-demo`` pairs seeded s / s + 100 for
``--pair-seeds``; on Fashion-MNIST, the quality benchmark's ``mlp-depth`` pair of seed 0 (OTFusion
recipe).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import common  # a sibling module: the benchmarks share it
import numpy as np

from clafusion_core.data import load_dataset
from clafusion_core.config import FinetuneConfig
from clafusion_core.pipeline import FusionConfig, finetune_result, run_fusion
from clafusion_core.zoo import load_demo_pair


def pairs_for(dataset: str, pair_seeds: list[int], data_root: str | None) -> list[tuple[str, tuple]]:
    """(label, (model A, model B)) of every pair benchmarked on ``dataset``."""
    if dataset == "digits":
        return [("demo pair (seeds 0 / 1)", load_demo_pair("mlp"))] + [
            (f"mlp-demo seeds {s} / {s + 100}", common.setup_models("mlp-demo", dataset, s, data_root))
            for s in pair_seeds]
    return [("mlp-depth seeds 0 / 100", common.setup_models("mlp-depth", dataset, 0, data_root))]


def run_pair(models: tuple, splits, dataset: str, args) -> dict:
    """One fusion, then every (weight, seed) finetune of the fused model and of both parents."""
    base = FusionConfig.from_flat(dataset=dataset, data_root=args.data_root, device="cpu",
                                  clip_grad_norm=args.clip_grad_norm)
    result = run_fusion(*models, splits, base)
    accuracy = dict(result.accuracy)
    better_parent = max(accuracy["model_a"], accuracy["model_b"])
    out = {"parents": {k: accuracy[k] for k in ("model_a", "model_b", "ensemble")}, "one_shot": accuracy["fused"],
           "better_parent": better_parent, "arch_a": str(result.model_a.spec), "arch_b": str(result.model_b.spec),
           "weights": {}}
    for weight in args.weights:
        runs = []
        for seed in args.finetune_seeds:
            start = time.perf_counter()
            result.config = base.replace(seed=seed)
            finetune_result(result, splits, epochs=args.epochs, lr=args.lr, distill=weight, parents=True)
            runs.append({"seed": seed, "fused": result.accuracy["fused_finetuned"],
                         "model_a": result.accuracy["model_a_finetuned"],
                         "model_b": result.accuracy["model_b_finetuned"],
                         "val_fused": max(result.histories["fused"]), "seconds": time.perf_counter() - start})
        fused = [r["fused"] for r in runs]
        parents_alike = [max(r["model_a"], r["model_b"]) for r in runs]
        out["weights"][str(weight)] = {
            "runs": runs, "fused_mean": float(np.mean(fused)),
            "gap_to_better_parent_pp": 100 * (float(np.mean(fused)) - better_parent),
            "runs_at_or_above_better_parent": sum(f >= better_parent for f in fused),
            "better_parent_finetuned_alike_mean": float(np.mean(parents_alike)),
            "gap_to_parents_finetuned_alike_pp": 100 * (float(np.mean(fused)) - float(np.mean(parents_alike))),
            "val_fused_mean": float(np.mean([r["val_fused"] for r in runs])),
        }
        print(f"    distill {weight:g}: fused + {args.epochs} epochs {100 * np.mean(fused):.2f} "
              f"({out['weights'][str(weight)]['gap_to_better_parent_pp']:+.2f} pp vs the better parent, "
              f"{out['weights'][str(weight)]['runs_at_or_above_better_parent']}/{len(runs)} runs at or above it); "
              f"better parent finetuned alike {100 * np.mean(parents_alike):.2f}", flush=True)
    return out


def render(results: dict, args) -> str:
    header = ["dataset", "pair", "A / B", "ensemble", "one-shot", "distill", "fused + finetune",
              "vs better parent", "runs ≥ better parent", "better parent + same finetune"]
    rows = []
    for dataset, pairs in results.items():
        for label, pair in pairs.items():
            parents = pair["parents"]
            for weight, entry in pair["weights"].items():
                rows.append([dataset, label, f"{100 * parents['model_a']:.2f} / {100 * parents['model_b']:.2f}",
                             f"{100 * parents['ensemble']:.2f}", f"{100 * pair['one_shot']:.2f}", weight,
                             common.fmt_pct([r["fused"] for r in entry["runs"]]),
                             f"{entry['gap_to_better_parent_pp']:+.2f} pp",
                             f"{entry['runs_at_or_above_better_parent']}/{len(entry['runs'])}",
                             common.fmt_pct([max(r["model_a"], r["model_b"]) for r in entry["runs"]])])
    return (f"{args.epochs} epoch(s), lr {args.lr:g}, SGD (momentum 0.9), gradient norm clipped at "
            f"{args.clip_grad_norm:g} (0: not clipped), temperature "
            f"{FinetuneConfig.temperature:g}, finetune seeds {args.finetune_seeds}; test accuracy in %, "
            "mean ± std over the finetune seeds.\n\n" + common.markdown_table(header, rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_datasets="digits", default_seeds="0,1,2,3,4")
    parser.add_argument("--pair-seeds", default="1,2,3", help="extra digits pairs: A seeded s, B s + 100")
    parser.add_argument("--weights", default=f"0,{FinetuneConfig.distill:g}", help="distillation weights to compare")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    parser.add_argument("--clip-grad-norm", type=float, default=FinetuneConfig.clip_grad_norm)
    args = parser.parse_args(argv)
    args.finetune_seeds = common.parse_list(args.seeds, int)
    args.pair_seeds = common.parse_list(args.pair_seeds, int)
    args.weights = common.parse_list(args.weights, float)
    datasets = common.parse_list(args.datasets)
    if args.quick:
        args.finetune_seeds, args.pair_seeds, args.epochs, datasets = args.finetune_seeds[:1], [], 1, ["digits"]
    threads = common.set_threads(args.threads)
    started = time.perf_counter()
    output = {"benchmark": "finetune", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {"epochs": args.epochs, "lr": args.lr, "clip_grad_norm": args.clip_grad_norm,
                           "weights": args.weights,
                           "temperature": FinetuneConfig.temperature, "finetune_seeds": args.finetune_seeds,
                           "pair_seeds": args.pair_seeds, "threads": threads},
              "datasets": {}}
    for dataset in datasets:
        splits = load_dataset(dataset, args.data_root)
        output["datasets"][dataset] = {}
        for label, models in pairs_for(dataset, args.pair_seeds, args.data_root):
            print(f"## {dataset}: {label}", flush=True)
            output["datasets"][dataset][label] = run_pair(models, splits, dataset, args)
    output["markdown"] = render(output["datasets"], args)
    output["wall_s"] = time.perf_counter() - started
    path = common.write_json(Path(args.out), "finetune-quick.json" if args.quick else "finetune.json", output)
    print("\n" + output["markdown"] + f"\n\nwrote {path} in {output['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
