"""Fusion quality: parents, ensemble, vanilla averaging, OT fusion and CLAFusion, one-shot and finetuned.

    python benchmarks/quality.py               # full run: digits + Fashion-MNIST, 3 seeds (< 30 min; ~17 with cached parents)
    python benchmarks/quality.py --quick       # the smoke test: digits MLPs, 1 seed, 1 epoch (< 1 min)
    python benchmarks/quality.py --data-root ~/data --datasets mnist   # MNIST / CIFAR-10 from local files

For every dataset, setup and seed s the parents are trained once (and cached) by
:func:`clafusion_core.zoo.trained_model`: model A seeded s, model B seeded s + 100 (independent
initialisations and batch orders). Every fusion goes through :func:`clafusion_core.pipeline.run_fusion`
with one :class:`~clafusion_core.pipeline.FusionConfig` per row of the table:

* same shape (``mlp-same``, OTFusion's 784-400-200-100-10 MLPs without bias): vanilla averaging, OT
  fusion with the ``weights`` and the ``activations`` ground metric, each with statistics repair off and on,
  and input scaling ``sum`` vs ``average``;
* different depth (``mlp-depth`` = CLAFusion's 400-200-100-50-25 vs 400-200-100, the demo pairs
  ``mlp-demo``, ``cnn``, ``resnet``): CLAFusion for every cost metric with ``add`` and (MLPs) ``merge``
  balancing, plus repair off / input scaling ``sum`` / ``weights`` ground metric for the default metric.

Activation-based numbers depend on the probe batch, so every one-shot accuracy is the mean over
``--probe-seeds`` probe batches; finetuning starts from the probe-seed-0 fusion. Finetuning keeps the best
*validation* epoch (never the test split), and the parents get the same epochs at the same rate (the fair
baseline). The finetune learning rate is chosen per setup on the validation split (``--lr-grid``, on the
first seed; see :func:`choose_finetune_lr`). The "chosen on validation" row picks the cost metric and
balancing per seed by validation accuracy. Nothing is tuned on the test split. Tables are mean ± std over
the model seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import common  # a sibling module: the benchmarks share it
import numpy as np

from clafusion_core.baselines import vanilla_average
from clafusion_core.data import load_dataset
from clafusion_core.families import Family
from clafusion_core.config import FinetuneConfig
from clafusion_core.pipeline import FusionConfig, finetune_result, finetune_teacher, run_fusion
from clafusion_core.similarity import METRICS
from clafusion_core.train import evaluate, finetune

DATASET_SETUPS = {
    "digits": ["mlp-same", "mlp-depth", "mlp-demo", "cnn", "resnet"],
    "fashion-mnist": ["mlp-same", "mlp-depth"],
    "mnist": ["mlp-same", "mlp-depth"],
    "cifar10": ["cnn"],
}
QUICK_SETUPS = ["mlp-same", "mlp-depth"]


# ----------------------------------------------------------------------------------------------------
# the rows of one setup


INTERP_ROW = dict(name="neuron interpolation (K-means, uniform)", config=dict(method="interp"), finetune=True,
                  group="method")


def variants(setup: str, family: Family, quick: bool) -> list[dict]:
    """The fusions of a setup: name, FusionConfig overrides, whether it is finetuned, and its group.

    ``default`` marks the row with the pipeline's default options (used to choose the finetune rate)."""
    if common.SETUPS[setup]["same_shape"]:
        rows = []
        for ground in ("weights", "activations"):
            rows.append(dict(name=f"OT ({ground})", config=dict(ground_metric=ground, repair=False), finetune=True,
                             group="ot"))
            rows.append(dict(name=f"OT ({ground}) + repair", config=dict(ground_metric=ground, repair=True),
                             finetune=True, group="ot", default=ground == "activations"))
        rows.append(dict(name="OT (activations) + repair, input scaling sum",
                         config=dict(ground_metric="activations", repair=True, input_scaling="sum"), finetune=False,
                         group="ablation"))
        return rows + ([] if quick else [INTERP_ROW])
    balances = ["add", "merge"] if family.merge_balancing else ["add"]
    metrics = ("linear_cka", "width", "wasserstein") if quick else METRICS
    rows = [dict(name=f"CLAFusion {metric}, {bal}", config=dict(cost=metric, balance=bal), finetune=True,
                 group="clafusion", metric=metric, balance=bal, default=(metric, bal) == ("linear_cka", "add"))
            for bal in balances for metric in metrics]
    rows += [
        dict(name="CLAFusion linear_cka, add, no repair", config=dict(cost="linear_cka", repair=False),
             finetune=True, group="ablation"),
        dict(name="CLAFusion linear_cka, add, input scaling sum", config=dict(cost="linear_cka", input_scaling="sum"),
             finetune=False, group="ablation"),
        dict(name="CLAFusion linear_cka, add, input scaling sum, no repair",
             config=dict(cost="linear_cka", input_scaling="sum", repair=False), finetune=False, group="ablation"),
        dict(name="CLAFusion linear_cka, add, weights ground metric",
             config=dict(cost="linear_cka", ground_metric="weights"), finetune=False, group="ablation"),
        dict(name="CLAFusion linear_cka, add, inserted layers averaged",
             config=dict(cost="linear_cka", inserted_weight="average"), finetune=False, group="ablation"),
        dict(name="CLAFusion linear_cka, add, probe 200",
             config=dict(cost="linear_cka", probe_size=200), finetune=False, group="ablation"),
    ]
    if not quick:
        rows.append({**INTERP_ROW, "name": "CLAFusion linear_cka, add, neuron interpolation"})
    if family.is_conv:
        rows.append(dict(name="CLAFusion linear_cka, add, ground metric on channel means",
                         config=dict(cost="linear_cka", ground_conv_features="pool"), finetune=False, group="ablation"))
    return rows


def choose_finetune_lr(dataset: str, setup: str, seed: int, splits, args) -> dict:
    """Pick the finetune learning rate on the validation split (never the test split).

    On the first seed, the two parents and the fused model of the setup's default row (probe seed 0) are
    finetuned with every rate of ``--lr-grid`` exactly as :func:`finetune_result` does it; the rate with
    the best mean (best-epoch) validation accuracy of the three is used for every row and seed.
    """
    model_a, model_b = common.setup_models(setup, dataset, seed, args.data_root)
    row = next(r for r in variants(setup, model_a.family, args.quick) if r.get("default"))
    config = FusionConfig.from_flat(dataset=dataset, data_root=args.data_root, seed=seed, device="cpu", **row["config"])
    fused = run_fusion(model_a, model_b, splits, config).fused.model
    teacher = finetune_teacher([model_a, model_b], splits, config)
    scores = {}
    for lr in args.lr_grid:
        training = config.replace(finetune_epochs=args.finetune_epochs, finetune_lr=lr).finetune_config()
        vals = {name: max(finetune(model, splits.train, splits.val, training, teacher_logits=teacher)[1].val_accuracy)
                for name, model in (("model_a", model_a), ("model_b", model_b), ("fused", fused))}
        scores[lr] = {"val": vals, "mean_val": float(np.mean(list(vals.values())))}
        print(f"    finetune lr {lr:g}: validation " + ", ".join(f"{k} {100 * v:.2f}" for k, v in vals.items()),
              flush=True)
    chosen = max(scores, key=lambda lr: scores[lr]["mean_val"])
    print(f"  finetune lr chosen on validation: {chosen:g} (row '{row['name']}', seed {seed})", flush=True)
    return {"chosen": chosen, "grid": scores, "row": row["name"], "seed": seed}


def run_setup(dataset: str, setup: str, seed: int, splits, args, finetune_lr: float) -> dict:
    """All rows of one setup for one model seed."""
    started = time.perf_counter()
    model_a, model_b = common.setup_models(setup, dataset, seed, args.data_root)
    trained_s = time.perf_counter() - started
    family = model_a.family
    base = FusionConfig.from_flat(dataset=dataset, data_root=args.data_root, seed=seed, device="cpu",
                        finetune_epochs=0, finetune_lr=finetune_lr)
    out = {"seed": seed, "seed_a": seed, "seed_b": seed + 100, "arch_a": str(model_a.spec),
           "arch_b": str(model_b.spec), "training": common.training_for(setup, dataset),
           "train_or_load_s": trained_s, "variants": {}}
    parents_done = False
    finetuned_cache: dict[tuple, dict] = {}
    first = None
    for row in variants(setup, family, args.quick):
        config = base.replace(**row["config"])
        one_shot, plain, val, timings = [], [], [], []
        result0 = None
        for probe_seed in args.probe_seeds:
            result = run_fusion(model_a, model_b, splits, config.replace(probe_seed=probe_seed))
            one_shot.append(result.accuracy["fused"])
            plain.append(result.accuracy["fused_plain"])
            val.append(evaluate(result.fused.model, splits.val))
            timings.append(result.timings_s)
            if result0 is None:
                result0 = result
        if first is None:
            first = result0
            out["parents"] = {k: result0.accuracy[k] for k in ("model_a", "model_b", "ensemble", "vanilla")}
            out["swapped"] = result0.swapped
        entry = {
            "config": {k: v for k, v in asdict(config).items() if k in row["config"] or k in ("cost", "balance")},
            "group": row["group"], "metric": row.get("metric"), "balance": row.get("balance"),
            "one_shot": float(np.mean(one_shot)), "one_shot_probe_seeds": one_shot,
            "one_shot_probe_std": float(np.std(one_shot)), "fused_plain": plain, "val_one_shot": float(np.mean(val)),
            "balanced_a": result0.accuracy.get("balanced_a"), "mapping": result0.alignment.mappings,
            "timings_s": {k: float(np.median([t[k] for t in timings])) for k in timings[0]},
            "finetuned": None, "val_finetuned": None,
        }
        if row["finetune"] and args.finetune_epochs > 0:
            key = (repr(config.balancing), repr(config.fusion), config.repair.statistics, repr(result0.alignment.mappings))
            if key not in finetuned_cache:
                start = time.perf_counter()
                finetune_result(result0, splits, epochs=args.finetune_epochs, parents=not parents_done)
                if not parents_done:
                    out["parents_finetuned"] = {k: result0.accuracy[f"{k}_finetuned"] for k in ("model_a", "model_b")}
                    out["parents_val_finetuned"] = {k: max(result0.histories[k]) for k in ("model_a", "model_b")}
                    parents_done = True
                finetuned_cache[key] = {"finetuned": result0.accuracy["fused_finetuned"],
                                        "val_finetuned": max(result0.histories["fused"]),
                                        "history": result0.histories["fused"],
                                        "finetune_s": time.perf_counter() - start, "same_as": row["name"]}
            cached = finetuned_cache[key]
            entry.update(finetuned=cached["finetuned"], val_finetuned=cached["val_finetuned"],
                         val_history=cached["history"], finetune_same_as=cached["same_as"])
            if cached["same_as"] == row["name"]:
                entry["finetune_s"] = cached["finetune_s"]
        out["variants"][row["name"]] = entry
        print(f"    {row['name']}: one-shot {100 * entry['one_shot']:.2f}"
              + (f", finetuned {100 * entry['finetuned']:.2f}" if entry["finetuned"] is not None else ""), flush=True)

    if common.SETUPS[setup]["same_shape"] and args.finetune_epochs > 0:
        vanilla = vanilla_average(model_a, model_b, base.fusion.weight)
        same = base.replace(finetune_epochs=args.finetune_epochs)  # the fused model's finetune settings
        tuned, history = finetune(vanilla, splits.train, splits.val, same.finetune_config(),
                                  teacher_logits=finetune_teacher([model_a, model_b], splits, same))
        out["vanilla_finetuned"] = evaluate(tuned, splits.test)
    clafusion = {k: v for k, v in out["variants"].items() if v["group"] == "clafusion"}
    if clafusion:  # choose the cost metric and balancing on the validation split, per seed
        pick = max(clafusion, key=lambda k: clafusion[k]["val_one_shot"])
        out["chosen_on_validation"] = {"one_shot_choice": pick, "one_shot": clafusion[pick]["one_shot"]}
        tuned = {k: v for k, v in clafusion.items() if v["val_finetuned"] is not None}
        if tuned:
            pick_ft = max(tuned, key=lambda k: tuned[k]["val_finetuned"])
            out["chosen_on_validation"].update(finetuned_choice=pick_ft, finetuned=tuned[pick_ft]["finetuned"])
    out["wall_s"] = time.perf_counter() - started
    return out


# ----------------------------------------------------------------------------------------------------
# aggregation and tables


def table_rows(runs: list[dict], finetune_epochs: int) -> list[dict]:
    """One row per method: per-seed one-shot and finetuned accuracies (aggregated by the caller)."""
    rows = []

    def add(name, one_shot, finetuned=None, probe_std=None, note=""):
        rows.append({"method": name, "one_shot": one_shot, "finetuned": finetuned or [None] * len(one_shot),
                     "probe_std": probe_std, "note": note})

    parents_ft = [r.get("parents_finetuned", {}) for r in runs]
    add("model A (parent)", [r["parents"]["model_a"] for r in runs], [p.get("model_a") for p in parents_ft],
        note=runs[0]["arch_a"])
    add("model B (parent)", [r["parents"]["model_b"] for r in runs], [p.get("model_b") for p in parents_ft],
        note=runs[0]["arch_b"])
    add("ensemble (mean of softmaxes)", [r["parents"]["ensemble"] for r in runs], note="costs both models")
    if runs[0]["parents"]["vanilla"] is not None:
        add("vanilla averaging", [r["parents"]["vanilla"] for r in runs], [r.get("vanilla_finetuned") for r in runs])
    for name in runs[0]["variants"]:
        entries = [r["variants"][name] for r in runs]
        probe_std = float(np.mean([e["one_shot_probe_std"] for e in entries]))
        note = ""
        shared = [e.get("finetune_same_as") for e in entries if e.get("finetune_same_as") not in (name, None)]
        if shared:  # same alignment as an earlier row, so the same fused model was finetuned once
            note = "finetuned model shared with " + "; ".join(
                f"{other} ({shared.count(other)}/{len(entries)} seeds)" for other in sorted(set(shared)))
        add(name, [e["one_shot"] for e in entries], [e["finetuned"] for e in entries], probe_std, note)
        if entries[0]["balanced_a"] is not None and entries[0]["metric"] == "linear_cka":
            add("  (A after merge balancing alone)", [e["balanced_a"] for e in entries], note="lossy merge")
    if "chosen_on_validation" in runs[0]:
        chosen = [r["chosen_on_validation"] for r in runs]
        picks = sorted({c["one_shot_choice"] for c in chosen} | {c.get("finetuned_choice") for c in chosen} - {None})
        add("CLAFusion, metric+balancing chosen on validation", [c["one_shot"] for c in chosen],
            [c.get("finetuned") for c in chosen], note="picked: " + "; ".join(picks))
    return rows


def render_table(rows: list[dict], finetune_epochs: int) -> str:
    return common.markdown_table(
        ["method", "one-shot test acc. (%)", f"after {finetune_epochs}-epoch finetune (%)", "probe-seed std (pp)",
         "note"],
        [[r["method"], common.fmt_pct(r["one_shot"]), common.fmt_pct(r["finetuned"]),
          "–" if r["probe_std"] is None else f"{100 * r['probe_std']:.2f}", r["note"]] for r in rows])


def _mean(values):
    return common.mean_std(values)[0]


def _verdict(value: float, baseline: float) -> str:
    return "beats" if value > baseline + 1e-9 else "ties with" if abs(value - baseline) <= 1e-9 else "LOSES to"


def readings(setup: str, rows: list[dict], runs: list[dict]) -> list[str]:
    """Plain statements of where fusion wins and loses against the baselines (means over seeds)."""
    by = {r["method"]: r for r in rows}
    a, b = _mean(by["model A (parent)"]["one_shot"]), _mean(by["model B (parent)"]["one_shot"])
    weaker, better = min(a, b), max(a, b)
    ens = _mean(by["ensemble (mean of softmaxes)"]["one_shot"])
    fused = {r["method"]: r for r in rows if r["method"].startswith(("OT", "CLAFusion"))}
    lines = []
    if not fused:
        return lines
    best_name = max(fused, key=lambda k: _mean(fused[k]["one_shot"]))
    best = _mean(fused[best_name]["one_shot"])
    pp = lambda x: f"{100 * x:+.2f} pp"  # noqa: E731
    lines.append(f"best one-shot fusion: {best_name} at {100 * best:.2f} % — {pp(best - weaker)} vs the weaker "
                 f"parent, {pp(best - better)} vs the better parent, {pp(best - ens)} vs the ensemble"
                 " (best row picked after the fact; see the validation-chosen row for an honest pick).")
    if best < weaker:
        lines.append("one-shot fusion LOSES to both parents.")
    elif best < better:
        lines.append("one-shot fusion lies between the parents: it LOSES to the better one.")
    if best < ens:
        lines.append("one-shot fusion LOSES to the ensemble (which costs both models at inference).")
    if "vanilla averaging" in by:
        van = _mean(by["vanilla averaging"]["one_shot"])
        lines.append(f"vanilla averaging {100 * van:.2f} % vs best OT {100 * best:.2f} % ({pp(best - van)}).")
        for ground in ("weights", "activations"):
            plain, rep = fused.get(f"OT ({ground})"), fused.get(f"OT ({ground}) + repair")
            if plain and rep:
                lines.append(f"OT ({ground}): {pp(_mean(plain['one_shot']) - weaker)} vs the weaker parent without "
                             f"repair, {pp(_mean(rep['one_shot']) - weaker)} with repair "
                             f"(design target: ≥ −1.5 pp, ≈ −0.7 pp with repair).")
    parents_ft = [_mean(by["model A (parent)"]["finetuned"]), _mean(by["model B (parent)"]["finetuned"])]
    if None not in parents_ft:
        best_parent_ft = max(parents_ft)
        tuned = {k: _mean(v["finetuned"]) for k, v in fused.items() if _mean(v["finetuned"]) is not None}
        if tuned:
            name = max(tuned, key=tuned.get)
            verdict = _verdict(tuned[name], best_parent_ft)
            lines.append(f"after the same finetune the best fused model ({name}, {100 * tuned[name]:.2f} %) "
                         f"{verdict} the better parent finetuned alike ({100 * best_parent_ft:.2f} %).")
        chosen = by.get("CLAFusion, metric+balancing chosen on validation")
        if chosen and _mean(chosen["finetuned"]) is not None:
            c = _mean(chosen["finetuned"])
            verdict = _verdict(c, best_parent_ft)
            lines.append(f"validation-chosen CLAFusion after finetune ({100 * c:.2f} %) {verdict} the better parent "
                         f"finetuned alike ({100 * best_parent_ft:.2f} %).")
    if not common.SETUPS[setup]["same_shape"]:
        rep, norep = fused.get("CLAFusion linear_cka, add"), fused.get("CLAFusion linear_cka, add, no repair")
        s_rep = fused.get("CLAFusion linear_cka, add, input scaling sum")
        if rep and norep:
            lines.append(f"repair: {100 * _mean(norep['one_shot']):.2f} % off → {100 * _mean(rep['one_shot']):.2f} % on "
                         f"(linear_cka, add, average scaling)"
                         + (f"; input scaling sum: {100 * _mean(s_rep['one_shot']):.2f} % (with repair)." if s_rep else "."))
    return lines


# ----------------------------------------------------------------------------------------------------


DEFAULT_ROWS = ("OT (activations) + repair", "CLAFusion linear_cka, add")  # the pipeline's defaults


def summary_table(data: dict) -> str:
    """One line per dataset and setup: parents, baselines and the default fusion, one-shot and finetuned."""
    epochs = data["settings"]["finetune_epochs"]
    header = ["dataset", "setup", "A", "B", "ensemble", "vanilla", "fused one-shot", "CLAFusion, chosen on val.",
              f"A + {epochs} ep", f"B + {epochs} ep", f"vanilla + {epochs} ep", f"fused + {epochs} ep",
              f"chosen on val. + {epochs} ep", "finetune lr"]
    lines = []
    for dataset, setups in data["datasets"].items():
        for setup, entry in setups.items():
            runs = entry["runs"]
            default = next(name for name in DEFAULT_ROWS if name in runs[0]["variants"])
            chosen = [r.get("chosen_on_validation") for r in runs]
            column = [[r["parents"]["model_a"] for r in runs], [r["parents"]["model_b"] for r in runs],
                      [r["parents"]["ensemble"] for r in runs], [r["parents"]["vanilla"] for r in runs],
                      [r["variants"][default]["one_shot"] for r in runs],
                      [c and c["one_shot"] for c in chosen],
                      [r.get("parents_finetuned", {}).get("model_a") for r in runs],
                      [r.get("parents_finetuned", {}).get("model_b") for r in runs],
                      [r.get("vanilla_finetuned") for r in runs],
                      [r["variants"][default]["finetuned"] for r in runs],
                      [c and c.get("finetuned") for c in chosen]]
            lines.append([dataset, setup, *(common.fmt_pct(values) for values in column), f"{entry['finetune_lr']:g}"])
    return common.markdown_table(header, lines)


def render(path: Path) -> int:
    """Print the summary, tables and readings of a results file again (e.g. for the README)."""
    import json

    data = json.loads(path.read_text())
    epochs = data["settings"]["finetune_epochs"]
    print(f"<!-- {data['command']} — {data['date']} -->\n")
    print(summary_table(data))
    for dataset, setups in data["datasets"].items():
        for setup, entry in setups.items():
            rows = table_rows(entry["runs"], epochs)
            lr = entry.get("finetune_lr", data["settings"].get("finetune_lr"))
            print(f"\n### {dataset} — {setup}: {entry['title']}\n\n"
                  f"{len(entry['runs'])} seed(s) {[r['seed'] for r in entry['runs']]}, "
                  f"probe seeds {data['settings']['probe_seeds']}, finetune lr {lr}\n")
            print(render_table(rows, epochs) + "\n")
            print("\n".join(f"- {line}" for line in readings(setup, rows, entry["runs"])))
    return 0


def resolve_datasets(args) -> list[str]:
    if args.quick:
        return ["digits"]
    if args.datasets:
        return common.parse_list(args.datasets)
    datasets = ["digits", "fashion-mnist"]
    if args.data_root:
        datasets += ["mnist", "cifar10"]
    return datasets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_datasets="", default_seeds="0,1,2")
    parser.set_defaults(datasets=None)
    parser.add_argument("--setups", default=None,
                        help="comma-separated setups to run on every dataset (default per dataset: "
                             + "; ".join(f"{d}: {','.join(s)}" for d, s in DATASET_SETUPS.items()) + ")")
    parser.add_argument("--probe-seeds", default=None, help="probe-batch seeds averaged per fusion (default 0,1,2)")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="finetune epochs (default 2; quick 1)")
    parser.add_argument("--finetune-lr", default="auto",
                        help="finetune learning rate, or 'auto' (default): chosen per setup on the validation "
                             "split from --lr-grid")
    parser.add_argument("--lr-grid", default=None,
                        help=f"candidate finetune rates for 'auto' (default {FinetuneConfig.lr:g} "
                             "(the pipeline's default),0.005,0.001; quick: the pipeline's default and 0.005)")
    parser.add_argument("--name", default=None,
                        help="file name (without .json) of the results (default quality, or quality-quick)")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only print the tables of an earlier results file (no benchmark is run)")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    args.seeds = common.parse_list(args.seeds, int)
    if args.quick:
        args.seeds = args.seeds[:1]
    args.probe_seeds = common.parse_list(args.probe_seeds or ("0" if args.quick else "0,1,2"), int)
    if args.finetune_epochs is None:
        args.finetune_epochs = 1 if args.quick else 2
    default_grid = f"{FinetuneConfig.lr},0.005" + ("" if args.quick else ",0.001")
    args.lr_grid = common.parse_list(args.lr_grid or default_grid, float)
    args.finetune_lr = None if args.finetune_lr == "auto" else float(args.finetune_lr)
    threads = common.set_threads(args.threads)
    datasets = resolve_datasets(args)
    out_dir = Path(args.out)
    name = args.name or ("quality-quick" if args.quick else "quality")
    started = time.perf_counter()
    result = {"benchmark": "quality", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {"seeds": args.seeds, "probe_seeds": args.probe_seeds, "datasets": datasets,
                           "finetune_epochs": args.finetune_epochs,
                           "finetune_lr": args.finetune_lr or "auto (chosen on validation per setup)",
                           "lr_grid": args.lr_grid, "pipeline_default_finetune_lr": FinetuneConfig.lr,
                           "finetune_optimizer": FinetuneConfig.optimizer, "threads": threads,
                           "parent_seeds": "A = seed, B = seed + 100",
                           "setups": {k: common.SETUPS[k] for k in common.SETUPS}},
              "datasets": {}, "skipped": {}}
    print(f"# Quality benchmark ({'quick' if args.quick else 'full'}) — {result['machine']['cpu']}, "
          f"{threads} torch thread(s), load {result['machine']['load_average_start']}", flush=True)
    markdown = []
    for dataset in datasets:
        setups = common.parse_list(args.setups) if args.setups else (QUICK_SETUPS if args.quick
                                                                     else DATASET_SETUPS.get(dataset, ["mlp-same"]))
        try:
            splits = load_dataset(dataset, args.data_root)
        except Exception as error:  # a dataset that is not available locally is reported, not fatal
            result["skipped"][dataset] = str(error)
            print(f"\n## {dataset}: skipped — {error}", flush=True)
            continue
        result["datasets"][dataset] = {}
        for setup in setups:
            print(f"\n## {dataset} / {setup}: {common.SETUPS[setup]['title']}", flush=True)
            runs = []
            lr_choice = None
            if args.finetune_lr is None and args.finetune_epochs > 0:
                try:
                    lr_choice = choose_finetune_lr(dataset, setup, args.seeds[0], splits, args)
                except Exception as error:
                    traceback.print_exc()
                    result["skipped"][f"{dataset}/{setup}"] = f"{type(error).__name__}: {error}"
                    continue
            finetune_lr = lr_choice["chosen"] if lr_choice else (args.finetune_lr or FinetuneConfig.lr)
            for seed in args.seeds:
                print(f"  seed {seed}", flush=True)
                try:
                    runs.append(run_setup(dataset, setup, seed, splits, args, finetune_lr))
                except Exception as error:
                    traceback.print_exc()
                    result["skipped"][f"{dataset}/{setup}/seed{seed}"] = f"{type(error).__name__}: {error}"
            if not runs:
                continue
            rows = table_rows(runs, args.finetune_epochs)
            table = render_table(rows, args.finetune_epochs)
            notes = readings(setup, rows, runs)
            result["datasets"][dataset][setup] = {"title": common.SETUPS[setup]["title"], "finetune_lr": finetune_lr,
                                                  "finetune_lr_selection": lr_choice, "runs": runs,
                                                  "table": rows, "table_markdown": table, "readings": notes}
            section = (f"### {dataset} — {setup}: {common.SETUPS[setup]['title']}\n\n"
                       f"{len(runs)} seed(s) {[r['seed'] for r in runs]}, probe seeds {args.probe_seeds}, "
                       f"finetune lr {finetune_lr:g}{' (chosen on validation)' if lr_choice else ''}\n\n"
                       f"{table}\n\n" + "\n".join(f"- {line}" for line in notes))
            markdown.append(section)
            print("\n" + section, flush=True)
    result["markdown"] = "\n\n".join(markdown)
    if result["datasets"]:
        result["summary_markdown"] = summary_table(result)
        print("\n" + result["summary_markdown"], flush=True)
    result["wall_s"] = time.perf_counter() - started
    path = common.write_json(out_dir, f"{name}.json", result)
    print(f"\nwrote {path} in {result['wall_s']:.0f} s (load average now {common.load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
