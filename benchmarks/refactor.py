"""Figures of the families refactor (issue #10): lines per module, repeated code, and what OT's
align-once split saves on a sweep of the fusion weight s.

    python benchmarks/refactor.py            # before 8329109, after HEAD; MLP and ResNet demo pairs, 11 values of s
    python benchmarks/refactor.py --quick    # the smoke test: the MLP pair, 3 values of s, one run

* ``lines`` — the lines of every module of ``clafusion_core`` (``git show REV:path | wc -l``) at the
  two commits, and of each top-level folder's Python files;
* ``duplicates`` — what the ``duplicates`` tool finds in each commit's tracked files (pairs of places
  sharing six or more lines; skipped where the tool is not installed);
* ``sweep`` — one OT fusion at each value of s on a demo pair, aligned by the DP and balanced with the
  default config: ``rerun`` calls the OT method's ``fuse`` per s (ground activations, transport plans,
  average), ``split`` aligns once (``OTFusion.align``) and takes :func:`~clafusion_core.otfusion.weighted_average`
  per s. Both give the same models (the largest parameter difference is reported). Medians over the
  repeats, taken in turn, in seconds, on one torch thread by default; the load average is recorded at
  the start and end.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common  # a sibling module: the benchmarks share it

from clafusion_core.barrier import grid
from clafusion_core.data import load_dataset
from clafusion_core.config import FusionConfig
from clafusion_core.methods import METHODS
from clafusion_core.otfusion import weighted_average
from clafusion_core.pipeline import align_and_balance, fusion_batch, inserted_layer_weights
from clafusion_core.zoo import DEMO_PAIRS, load_demo_pair

BEFORE = "8329109"   # main before the families refactor
FOLDERS = ("clafusion_core", "app_support", "pages", "app.py", "tests", "benchmarks")
#: the numbers of the tool's summary line ("no duplicates" has no pairs)
DUPLICATE_COUNTS = {"pairs": r"^(\d+) pairs", "files_read": r"\((\d+) files read\)", "by_shape": r"(\d+) by shape alone",
                    "boilerplate": r"(\d+) of those marked boilerplate"}


# ---------------------------------------------------------------------------------------------- lines

def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=common.ROOT, capture_output=True, check=True).stdout


def python_files(rev: str, folder: str) -> list[str]:
    return [p for p in _git("ls-tree", "-r", "--name-only", rev, "--", folder).decode().splitlines() if p.endswith(".py")]


def line_count(rev: str, path: str) -> int:
    """``git show REV:path | wc -l``."""
    return _git("show", f"{rev}:{path}").count(b"\n")


def lines(before: str, after: str) -> dict:
    counts = {rev: {path: line_count(rev, path) for folder in FOLDERS for path in python_files(rev, folder)}
              for rev in (before, after)}
    modules = sorted({p for rev in counts for p in counts[rev] if p.startswith("clafusion_core/")})
    rows = [{"module": p.removeprefix("clafusion_core/"), "before": counts[before].get(p, 0),
             "after": counts[after].get(p, 0)} for p in modules]
    folders = {folder: {rev_name: sum(n for p, n in counts[rev].items() if p == folder or p.startswith(folder + "/"))
                        for rev_name, rev in (("before", before), ("after", after))} for folder in FOLDERS}
    return {"modules": rows, "folders": folders}


# ----------------------------------------------------------------------------------------- duplicates

def duplicates(rev: str, seconds: int) -> dict | None:
    """The tool's summary and rows on the files ``rev`` tracks (None where the tool is not installed)."""
    if shutil.which("duplicates") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["tar", "-x", "-C", folder], input=_git("archive", rev), check=True)
        report = subprocess.run(["duplicates", "--repo", folder, "--most", "200", "--seconds", str(seconds)],
                                capture_output=True, text=True, check=True).stdout
    summary = report.splitlines()[0] if report else ""
    counts = {name: _count(pattern, summary) for name, pattern in DUPLICATE_COUNTS.items()}
    return {**counts, "summary": summary, "rows": [row for row in report.splitlines() if re.match(r"D\d+ ", row)]}


def _count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------------------------------------- sweep

def _largest_difference(models_a, models_b) -> float:
    """The largest absolute difference between the floating tensors of paired models."""
    return max(float((a.state_dict()[key] - value).abs().max()) for a, b in zip(models_a, models_b)
               for key, value in b.state_dict().items() if value.is_floating_point() and value.numel())


def round_robin(runs: dict[str, Callable[[], object]], repeats: int, warmup: bool) -> dict[str, float]:
    """Median seconds of each run, the runs taken in turn, so that the load of a shared machine, which
    changes by the minute, falls on all of them alike."""
    if warmup:
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def sweep(key: str, points: int, repeats: int) -> dict:
    """Time ``points`` values of s fused by re-running OT per value, and by one alignment and one average per value."""
    pair = DEMO_PAIRS[key]
    splits = load_dataset(pair.dataset)
    config = FusionConfig.from_flat(dataset=pair.dataset)
    batch = fusion_batch(splits, config)
    balanced = align_and_balance(*load_demo_pair(key), batch, config).balanced
    parents, method, options = [balanced.model_a, balanced.model_b], METHODS["ot"], config.fusion.options
    batch = method.batch(splits, batch, options)
    values = grid(points)
    layer_weights = inserted_layer_weights(balanced, config.fusion.inserted)   # the same for every s

    def rerun():
        return [method.fuse(parents, 1, [1 - s, s], batch, options, layer_weights).model for s in values]

    def split():
        aligned, _, _ = method.align(parents, 1, batch, options)
        return [weighted_average(aligned, [1 - s, s], layer_weights) for s in values]

    aligned, _, _ = method.align(parents, 1, batch, options)
    times = round_robin({"rerun_s": rerun, "split_s": split,
                         "align_once_s": lambda: method.align(parents, 1, batch, options),
                         "average_one_s": lambda: weighted_average(aligned, [0.5, 0.5], layer_weights)},
                        repeats, warmup=repeats > 1)
    return {"pair": key, "arch_a": str(parents[0].spec), "arch_b": str(parents[1].spec), "s_values": values,
            "inserted_layers": len(balanced.inserted), **times, "speedup": times["rerun_s"] / times["split_s"],
            "largest_parameter_difference": _largest_difference(rerun(), split())}


# ------------------------------------------------------------------------------------------------ run

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the MLP pair, 3 values of s, one run")
    parser.add_argument("--before", default=BEFORE, help=f"commit before the refactor (default {BEFORE})")
    parser.add_argument("--after", default="HEAD", help="commit after it (default HEAD)")
    parser.add_argument("--pairs", default="mlp,resnet", help="demo pairs of the sweep (default mlp,resnet)")
    parser.add_argument("--points", type=int, default=11, help="values of s (default 11)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each sweep, taken in turn (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=str(common.DEFAULT_OUT), help="folder for the JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.points, args.repeats = "mlp", 3, 1
    threads = common.set_threads(args.threads)
    revs = {"before": _git("rev-parse", "--short", args.before).decode().strip(),
            "after": _git("rev-parse", "--short", args.after).decode().strip()}
    result = {"benchmark": "refactor", "command": common.command_line(), "date": common.now(),
              "machine": common.machine_info(), "quick": args.quick,
              "settings": {**revs, "points": args.points, "repeats": args.repeats, "threads": threads},
              "lines": lines(revs["before"], revs["after"]),
              "duplicates": {name: duplicates(rev, 60 if args.quick else 120) for name, rev in revs.items()},
              "sweep": [sweep(key, args.points, args.repeats) for key in common.parse_list(args.pairs)]}
    path = common.write_json(Path(args.out), "refactor-quick.json" if args.quick else "refactor.json", result)
    changed = [r for r in result["lines"]["modules"] if r["before"] != r["after"]]
    print(common.markdown_table(["module", revs["before"], revs["after"]],
                                [[r["module"], r["before"], r["after"]] for r in changed]))
    for name, found in result["duplicates"].items():
        print(f"duplicates at {revs[name]}: {found['summary'] if found else 'tool not installed'}")
    print(common.markdown_table(["pair", "values of s", "re-run OT per s", "align once + average per s", "speed-up",
                                 "align once", "one average", "largest difference"],
                                [[r["pair"], len(r["s_values"]), common.fmt_seconds(r["rerun_s"]),
                                  common.fmt_seconds(r["split_s"]), f"{r['speedup']:.1f}×",
                                  common.fmt_seconds(r["align_once_s"]), common.fmt_seconds(r["average_one_s"]),
                                  f"{r['largest_parameter_difference']:.1e}"] for r in result["sweep"]]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
