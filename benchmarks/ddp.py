"""Scale-out of finetuning on the CPU: one process against two torchrun processes (gloo DDP).

    python benchmarks/ddp.py            # fused digits CNN + fused Fashion-MNIST MLP pair, 3 epochs (~10 min)
    python benchmarks/ddp.py --quick    # the smoke test: the fused digits MLP demo pair, 1 epoch

Each fused model (``run_fusion`` with the default config on a demo / benchmark pair, saved as a
checkpoint) is finetuned by the ``finetune`` command, labels only, with one *global* batch for every
row so the runs train alike:

* 1 process, 1 thread, batch 2B;
* 1 process with the library's thread choice (``CLAFUSION_THREADS=auto``), batch 2B;
* ``torchrun --nproc_per_node 2``: 2 processes of 1 thread (torchrun sets ``OMP_NUM_THREADS=1``), batch B each.

Reported: the finetune loop's own time (``timings_s.finetune`` of the command's JSON: no interpreter
start, data loading or evaluation), the whole command's wall time, the speed-up of each row over the
first, and the final test accuracy (equal rows show the runs trained alike). Repeats go round-robin
over the rows; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # a sibling module: the benchmarks share it
import numpy as np

from clafusion_core.checkpoints import save_checkpoint
from clafusion_core.data import load_dataset
from clafusion_core.pipeline import FusionConfig, run_fusion
from clafusion_core.zoo import load_demo_pair

ROWS = ("1 process, 1 thread", "1 process, auto threads", "2 processes (torchrun), 1 thread each")


def fused_checkpoint(label: str, folder: Path, data_root: str | None) -> tuple[Path, str]:
    """Fuse one pair with the default config and save the fused model; returns (path, dataset)."""
    if label == "fashion-mnist mlp-depth":
        dataset, models = "fashion-mnist", common.setup_models("mlp-depth", "fashion-mnist", 0, data_root)
    else:
        dataset, models = "digits", load_demo_pair(label.split()[-1])
    splits = load_dataset(dataset, data_root)
    result = run_fusion(*models, splits, FusionConfig.from_flat(dataset=dataset, data_root=data_root, device="cpu"))
    path = folder / f"{label.replace(' ', '_')}.safetensors"
    save_checkpoint(result.fused.model, path, dataset=dataset)
    return path, dataset


def _command(row: str, checkpoint: Path, dataset: str, args, batch: int, report: Path) -> tuple[list[str], dict]:
    finetune = ["finetune", str(checkpoint), "--dataset", dataset, "--epochs", str(args.epochs), "--distill", "0",
                "--lr", str(args.lr), "--seed", "0", "--device", "cpu", "--json", str(report)]
    if args.data_root:
        finetune += ["--data-root", args.data_root]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CLAFUSION_THREADS")}
    env["PYTHONPATH"] = str(common.ROOT)
    if row == ROWS[2]:
        return ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "clafusion_core", *finetune, "--batch-size", str(batch)], env)
    env["CLAFUSION_THREADS"] = "1" if row == ROWS[0] else "auto"
    return [sys.executable, "-m", "clafusion_core", *finetune, "--batch-size", str(2 * batch)], env


def benchmark(label: str, checkpoint: Path, dataset: str, args, folder: Path) -> dict:
    runs = {row: [] for row in ROWS}
    for repeat in range(args.repeats):
        for row in ROWS:
            report = folder / f"report-{len(runs[row])}-{ROWS.index(row)}.json"
            command, env = _command(row, checkpoint, dataset, args, args.batch_size, report)
            start = time.perf_counter()
            proc = subprocess.run(command, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{row} failed:\n{proc.stderr[-3000:]}")
            payload = json.loads(report.read_text())
            runs[row].append({"finetune_s": payload["timings_s"]["finetune"], "wall_s": wall,
                              "test_accuracy": payload["accuracy"]["after"], "best_epoch": payload["best_epoch"],
                              "world_size": payload["world_size"], "global_batch": payload["global_batch_size"]})
            print(f"  {label}: {row}: finetune {common.fmt_seconds(runs[row][-1]['finetune_s'])}, "
                  f"command {common.fmt_seconds(wall)}", flush=True)
    medians = {row: {"finetune_s": float(np.median([r["finetune_s"] for r in rs])),
                     "wall_s": float(np.median([r["wall_s"] for r in rs])),
                     "test_accuracy": rs[0]["test_accuracy"], "global_batch": rs[0]["global_batch"],
                     "world_size": rs[0]["world_size"], "runs": rs} for row, rs in runs.items()}
    base = medians[ROWS[0]]["finetune_s"]
    for entry in medians.values():
        entry["speedup_vs_1_process_1_thread"] = base / entry["finetune_s"]
    return {"model": label, "dataset": dataset, "epochs": args.epochs, "rows": medians}


def table(entries: list[dict]) -> str:
    rows = [[e["model"], row, r["world_size"], r["global_batch"], f"{r['finetune_s']:.2f}",
             f"{r['speedup_vs_1_process_1_thread']:.2f}", f"{r['wall_s']:.1f}", f"{100 * r['test_accuracy']:.2f}"]
            for e in entries for row, r in e["rows"].items()]
    return common.markdown_table(["model", "run", "processes", "global batch", "finetune loop (s)",
                                  "speed-up", "whole command (s)", "test acc. (%)"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke test: the MLP demo pair, 1 epoch")
    parser.add_argument("--models", default="digits cnn,fashion-mnist mlp-depth",
                        help="comma-separated: 'digits mlp', 'digits cnn', 'digits resnet', 'fashion-mnist mlp-depth'")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per process of the 2-process run (B)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=str(common.DEFAULT_OUT))
    args = parser.parse_args(argv)
    labels = common.parse_list(args.models)
    if args.quick:
        labels, args.epochs, args.repeats = ["digits mlp"], 1, 1
    started = time.perf_counter()
    result = {"benchmark": "ddp", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {"models": labels, "epochs": args.epochs, "batch_size_per_process": args.batch_size,
                           "global_batch": 2 * args.batch_size, "lr": args.lr, "repeats": args.repeats,
                           "rows": list(ROWS)}}
    print(f"# DDP benchmark ({'quick' if args.quick else 'full'}) — {result['machine']['cpu']}, "
          f"{result['machine']['cpu_count']} cores, load {result['machine']['load_average_start']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        entries = []
        for label in labels:
            checkpoint, dataset = fused_checkpoint(label, folder, args.data_root)
            entries.append(benchmark(label, checkpoint, dataset, args, folder))
    result["models"] = entries
    print(table(entries), flush=True)
    result["wall_s"] = time.perf_counter() - started
    path = common.write_json(Path(args.out), "ddp-quick.json" if args.quick else "ddp.json", result)
    print(f"\nwrote {path} in {result['wall_s']:.0f} s (load average now {common.load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
