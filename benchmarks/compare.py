"""Fusion methods compared: loss barriers of same-shape pairs, and the method table on every demo pair.

1. **Barriers** — test-loss barrier heights of the naive, OT-aligned and OT-aligned + repair paths
   (11 points) for same-shape MLP pairs: the same-shape demo pair (digits) and the benchmarks'
   ``mlp-same`` setup (OTFusion recipe, no bias) on digits and Fashion-MNIST, under both OT ground
   metrics; with the seconds one 11-point curve takes (second run, warm).
2. **Methods** — :func:`clafusion_core.compare.compare_methods` (every method variant, vanilla, the
   ensemble; the same 2-epoch finetune) and :func:`~clafusion_core.compare.metric_downstream` on every
   demo pair.

``python benchmarks/compare.py`` writes ``results/compare.json`` and ``results/compare.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common  # a sibling module: the benchmarks share it

from clafusion_core.barrier import barrier_curves
from clafusion_core.compare import comparison_records, compare_methods, markdown_table, metric_downstream, \
    metric_records
from clafusion_core.data import load_dataset
from clafusion_core.config import FusionConfig
from clafusion_core.zoo import DEMO_PAIRS, load_demo_pair

BARRIER_PAIRS = [("digits", "demo:mlp-same"), ("digits", "mlp-same"), ("fashion-mnist", "mlp-same")]
QUICK_BARRIER_PAIRS = [("digits", "demo:mlp-same")]


def pair_models(dataset: str, name: str, seed: int, data_root: str | None):
    if name.startswith("demo:"):
        return load_demo_pair(name[5:])
    return common.setup_models(name, dataset, seed, data_root)


def barrier_rows(args) -> tuple[list[dict], list[dict]]:
    rows, records = [], []
    datasets = common.parse_list(args.datasets)
    for dataset, name in [p for p in (QUICK_BARRIER_PAIRS if args.quick else BARRIER_PAIRS) if p[0] in datasets]:
        splits = load_dataset(dataset, args.data_root)
        model_a, model_b = pair_models(dataset, name, args.seeds[0], args.data_root)
        for ground in ("activations", "weights"):
            config = FusionConfig.from_flat(dataset=dataset, ground_metric=ground)
            barrier_curves(model_a, model_b, splits, config, args.points)          # warm-up (caches, allocations)
            start = time.perf_counter()
            result = barrier_curves(model_a, model_b, splits, config, args.points)
            total = time.perf_counter() - start
            heights = result.heights
            rows.append({"dataset": dataset, "pair": name, "ground metric": ground,
                         **{f"barrier {k}": round(v, 4) for k, v in heights.items()},
                         "s per curve (naive / ot / ot+repair)": " / ".join(
                             f"{c.seconds:.2f}" for c in result.curves.values()),
                         "s total": round(total, 2)})
            records.append({"dataset": dataset, "pair": name, "ground_metric": ground, "total_s": total,
                            **result.to_json()})
            print(rows[-1], flush=True)
    return rows, records


def method_tables(args) -> tuple[list[str], dict]:
    sections, records = [], {}
    splits = load_dataset("digits")
    for key in (["mlp-same"] if args.quick else list(DEMO_PAIRS)):
        model_a, model_b = load_demo_pair(key)
        start = time.perf_counter()
        comparison = compare_methods(model_a, model_b, splits, FusionConfig.from_flat(), args.finetune_epochs, args.points)
        metrics = metric_downstream(model_a, model_b, splits, FusionConfig.from_flat())
        seconds = time.perf_counter() - start
        records[key] = {**comparison.to_json(), "metrics": [m.to_json() for m in metrics], "total_s": seconds}
        sections.append(f"### {DEMO_PAIRS[key].title} (`{key}`)\n\n{markdown_table(comparison_records(comparison))}\n\n"
                        f"{markdown_table(metric_records(metrics))}\n")
        print(sections[-1], flush=True)
    return sections, records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_datasets="digits,fashion-mnist", default_seeds="0")
    parser.add_argument("--points", type=int, default=None, help="points per barrier curve (default 11; quick 3)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="finetune per method (default 2; quick 0)")
    args = parser.parse_args(argv)
    args.seeds = common.parse_list(args.seeds, int)
    args.points = args.points or (3 if args.quick else 11)
    args.finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (0 if args.quick else 2)
    threads = common.set_threads(args.threads)
    name = "compare-quick" if args.quick else "compare"
    result = {"benchmark": "compare", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {"points": args.points, "finetune_epochs": args.finetune_epochs, "threads": threads,
                           "seed": args.seeds[0], "parent_seeds": "setups: A = seed, B = seed + 100"}}
    barrier_table, result["barriers"] = barrier_rows(args)
    sections, result["methods"] = method_tables(args)
    out = Path(args.out)
    common.write_json(out, f"{name}.json", result)
    header = list(barrier_table[0])
    text = (f"## Loss barriers ({args.points} points, test loss)\n\n"
            + common.markdown_table(header, [[row.get(k, "–") for k in header] for row in barrier_table])
            + f"\n\n## Methods on every demo pair ({args.finetune_epochs} finetuning epochs)\n\n" + "\n".join(sections))
    common.write_text(out, f"{name}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
