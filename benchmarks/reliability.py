"""What hostile inputs cost, before and after the reliability checks: time and peak memory per case.

Each case runs in a fresh child process (``--child CASE``) so that its peak resident memory is its own:

* ``bomb``       — a ``.pt`` whose one float storage of 1 GiB of zeros is deflated to about 1 MB;
* ``zero-stride``— a ``.pt`` holding ``zeros(1).expand(20000, 20000)`` (1.5 GB once made contiguous);
* ``arch``       — an arch spec of 10⁹ ResNet blocks;
* ``fifo``       — a named pipe given as a checkpoint path (the unchecked loader blocks forever: not run);
* ``sinkhorn``   — a 400×400 plan at regularisation 1e-3 and 1e-6 (``--unbounded`` also runs POT at
  1e-3 with the former 20 000-iteration cap, which takes minutes);
* ``load``       — a legitimate ResNet-18 ``.pt`` (45 MB) read by ``torch.load`` without and with the
  scan before it: what the checks cost a file that passes them.

``before`` is what the unchecked step does (``torch.load``, ``.contiguous()``, POT's solver); ``after``
is ``load_checkpoint`` / ``build_model`` / ``transport_plan`` as the app and the CLI call them.

    python benchmarks/reliability.py                 # -> benchmarks/results/reliability.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import common  # a sibling module: the benchmarks share it

import numpy as np
import torch

from clafusion_core.errors import FusionError

BOMB_ELEMENTS = 2**28       # 1 GiB of float32 zeros
STRIDE_SIDE = 20_000


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_bomb(path: Path) -> None:
    """A torch.save zip whose storage record is 1 GiB of zeros, deflated while streaming (never in memory)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    n = BOMB_ELEMENTS.to_bytes(4, "little")
    with zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith("data/0"):
                record_info = zipfile.ZipInfo(info.filename)
                record_info.compress_type = zipfile.ZIP_DEFLATED
                with target.open(record_info, "w", force_zip64=True) as record:
                    chunk = bytes(2**24)
                    for _ in range(4 * BOMB_ELEMENTS // len(chunk)):
                        record.write(chunk)
                continue
            if info.filename.endswith("data.pkl"):
                content = content.replace(b"K\x02\x85", b"J" + n + b"\x85").replace(b"K\x02t", b"J" + n + b"t")
            target.writestr(info.filename, content, compress_type=zipfile.ZIP_STORED)


def _sinkhorn_problem():
    rng = np.random.default_rng(0)
    cost = torch.cdist(torch.tensor(rng.normal(size=(400, 50))), torch.tensor(rng.normal(size=(400, 50))))
    marginal = torch.full((400,), 1 / 400, dtype=torch.float64)
    return cost, marginal


def run_child(case: str, variant: str, work: Path) -> dict:
    """One measurement, in this (fresh) process."""
    from clafusion_core.checkpoints import load_checkpoint
    from clafusion_core.models import build_model
    from clafusion_core.otfusion import marginal_error, transport_plan

    torch.set_num_threads(1)
    outcome = ""
    start_mb = peak_mb()
    start = time.perf_counter()
    try:
        if case == "bomb" and variant == "before":
            outcome = f"loaded {torch.load(work / 'bomb.pt', weights_only=True)['w'].numel():,} values"
        elif case == "bomb":
            load_checkpoint(work / "bomb.pt")
        elif case == "zero-stride" and variant == "before":
            value = torch.load(work / "stride.pt", weights_only=True)["hidden.0.weight"]
            outcome = f"made {value.contiguous().numel():,} values"
        elif case == "zero-stride":
            load_checkpoint(work / "stride.pt")
        elif case == "arch":
            build_model("resnet:999999999-1-1-1", (3, 32, 32), 10)
        elif case == "fifo":
            load_checkpoint(work / "pipe")
        elif case == "load":
            data = (work / "resnet18.pt").read_bytes()
            start = time.perf_counter()
            if variant == "after":   # what load_checkpoint reads with: the scan, then torch.load
                from clafusion_core import torchfile
                torchfile.scan(data, "resnet18.pt", 2**31)
            torch.load(io.BytesIO(data), weights_only=True)
            outcome = "read"
        elif case.startswith("sinkhorn"):
            import ot
            reg = float(case.split("@")[1])
            cost, marginal = _sinkhorn_problem()
            if variant == "before":
                plan = ot.sinkhorn(marginal, marginal, cost / cost.max(), reg, method="sinkhorn_log",
                                   numItermax=20_000, stopThr=1e-9)
                message = ""
            else:
                plan, message = transport_plan(cost, marginal, marginal, "sinkhorn", reg)
            outcome = f"marginal error {marginal_error(plan, marginal, marginal):.2g}; {message or 'no message'}"
    except FusionError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    return {"case": case, "variant": variant, "seconds": round(time.perf_counter() - start, 4),
            "peak_memory_growth_mb": round(peak_mb() - start_mb, 1), "outcome": outcome}


def measure(case: str, variant: str, work: Path) -> dict:
    command = [sys.executable, __file__, "--child", case, "--variant", variant, "--work", str(work)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if run.returncode:
        raise RuntimeError(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=common.DEFAULT_OUT)
    parser.add_argument("--unbounded", action="store_true",
                        help="also run POT's Sinkhorn at 1e-3 with 20 000 iterations (minutes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="after", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.variant, args.work)))
        return

    info = common.machine_info()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        _write_bomb(work / "bomb.pt")
        torch.save({"hidden.0.weight": torch.zeros(1).expand(STRIDE_SIDE, STRIDE_SIDE)}, work / "stride.pt")
        from clafusion_core.models import build_model
        torch.save(build_model("resnet18", (3, 32, 32), 10).state_dict(), work / "resnet18.pt")
        os.mkfifo(work / "pipe")
        sizes = {name: (work / name).stat().st_size for name in ("bomb.pt", "stride.pt", "resnet18.pt")}
        plan = [("bomb", "before"), ("bomb", "after"), ("zero-stride", "before"), ("zero-stride", "after"),
                ("arch", "after"), ("fifo", "after"), ("load", "before"), ("load", "after"),
                ("sinkhorn@0.001", "after"), ("sinkhorn@1e-06", "after")]
        if args.unbounded:
            plan.append(("sinkhorn@0.001", "before"))
        rows = [measure(case, variant, work) for case, variant in plan]
    info["load_average_end"] = common.load_average()
    payload = {"command": common.command_line(), "date": common.now(), "machine": info, "file_bytes": sizes,
               "results": rows}
    print(common.markdown_table(["case", "variant", "time", "peak memory growth", "outcome"],
                                [[r["case"], r["variant"], common.fmt_seconds(r["seconds"]),
                                  f"{r['peak_memory_growth_mb']:,.0f} MB", r["outcome"][:110]] for r in rows]))
    print(f"\nwrote {common.write_json(args.out, 'reliability.json', payload)}")


if __name__ == "__main__":
    main()
