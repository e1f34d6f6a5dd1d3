"""Shared helpers of the benchmarks: machine info, timing, fits, tables and JSON output.

The benchmark scripts run from the repository root (``python benchmarks/speed.py``) with the package
installed (``pip install -r requirements.txt`` installs it, editable).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np
import torch

DEFAULT_OUT = ROOT / "benchmarks" / "results"

# The OTFusion paper's MNIST recipe (784-400-200-100-10 MLPs without bias), used for every MLP setup of
# the quality benchmark so the parents of a setup are trained alike. Momentum 0.5 as in the paper.
OTFUSION_RECIPE = dict(epochs=10, lr=0.01, momentum=0.5, batch_size=64)


# ----------------------------------------------------------------------------------------------------
# environment


def set_threads(threads: int) -> int:
    """Fix torch's intra-op thread count (its default pool is very slow on a shared 2-core machine)."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


@contextmanager
def thread_setting(setting: str):
    """Run the body with the library's thread policy set to ``setting`` ("auto" or a count) through
    ``CLAFUSION_THREADS``, torch back at the count it had when the library was imported (so "auto"
    starts from torch's own default, as a user's program does)."""
    from clafusion_core.threads import ENV, TORCH_THREADS_AT_IMPORT

    before_env, before_threads = os.environ.get(ENV), torch.get_num_threads()
    os.environ[ENV] = setting
    torch.set_num_threads(TORCH_THREADS_AT_IMPORT)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        if before_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before_env


@contextmanager
def cpu_hog(processes: int, seconds: float = 900.0):
    """Keep ``processes`` cores busy with pure-Python loops while the body runs (a loaded machine, as
    when other users share it); each loop also stops by itself after ``seconds``."""
    code = f"import time\nend = time.time() + {float(seconds)}\nwhile time.time() < end:\n    pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]
    try:
        time.sleep(0.5)  # let them start
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def synthetic_splits(input_shape: tuple[int, int, int], num_classes: int, train: int, val: int, test: int,
                     seed: int = 0):
    """Gaussian images with random labels as train / val / test splits (timing and memory need no real data)."""
    from torch.utils.data import TensorDataset

    from clafusion_core.data import DataSplits, DatasetInfo

    generator = torch.Generator().manual_seed(seed)
    parts = [TensorDataset(torch.randn(n, *input_shape, generator=generator),
                           torch.randint(0, num_classes, (n,), generator=generator)) for n in (train, val, test)]
    info = DatasetInfo("synthetic", *input_shape, num_classes, tuple(str(i) for i in range(num_classes)))
    return DataSplits(info, *parts)


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # pragma: no cover - optional packages
        return None
    return getattr(mod, "__version__", None)


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except Exception:  # pragma: no cover - git missing
        return None
    return f"{commit}{'+dirty' if dirty else ''}" if commit else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Unix
        return []


def machine_info() -> dict:
    """Everything about the machine a reader needs to compare a rerun with these numbers."""
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pot": _version("ot"),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_average(),
        "device": f"cuda: {torch.cuda.get_device_name(0)}" if cuda else "cpu",
        "cuda_available": cuda,
        "git_commit": _git_commit(),
    }


def command_line() -> str:
    """The command that produced a result, as run from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------
# timing and fits


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, max_seconds: float = 30.0,
           sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn()`` in seconds over up to ``repeats`` runs after ``warmup`` runs.

    Stops repeating once the runs so far took ``max_seconds`` (slow points are timed fewer times).
    """
    spent = 0.0
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        spent += time.perf_counter() - start
        if spent > max_seconds:
            return spent / max(warmup, 1)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
        if sum(times) > max_seconds:
            break
    return statistics.median(times)


def loglog_slope(sizes: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope of log(time) against log(size): the observed growth exponent."""
    pairs = [(s, t) for s, t in zip(sizes, times) if s and t and s > 0 and t > 0]
    if len(pairs) < 2:
        return None
    x = np.log([p[0] for p in pairs])
    y = np.log([p[1] for p in pairs])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def slopes(sizes: Sequence[float], times: Sequence[float]) -> dict:
    """The exponent over all points and over the larger half (closer to the asymptotic regime)."""
    half = max(2, (len(sizes) + 1) // 2)
    return {"all": loglog_slope(sizes, times), "largest_half": loglog_slope(sizes[-half:], times[-half:])}


# ----------------------------------------------------------------------------------------------------
# statistics and tables


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def fmt_pct(values: Iterable[float | None], digits: int = 2) -> str:
    """Accuracies in [0, 1] as ``mean ± std`` percent (``–`` when there are none)."""
    mean, std, n = mean_std(values)
    if mean is None:
        return "–"
    if n == 1:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# output


def _clean(value):
    """JSON-safe copy: numpy scalars/arrays to Python, tuples to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(out_dir: Path, name: str, data: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    data = dict(data)
    data.setdefault("machine", {})["load_average_end"] = load_average()
    path.write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")
    return path


def write_text(out_dir: Path, name: str, text: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(text)
    return path


def parse_list(text: str, kind=str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def add_common_arguments(parser, *, default_datasets: str, default_seeds: str) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (the smoke test): runs in well under a minute")
    parser.add_argument("--seeds", default=default_seeds,
                        help=f"comma-separated seeds (default {default_seeds})")
    parser.add_argument("--datasets", default=default_datasets,
                        help=f"comma-separated datasets (default {default_datasets})")
    parser.add_argument("--data-root", default=None,
                        help="folder with MNIST / CIFAR-10 files in torchvision's layout (enables those datasets)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the JSON and HTML results")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the default pool is slow on a shared machine)")


# ----------------------------------------------------------------------------------------------------
# the model pairs of the benchmarks (shared so speed.py and quality.py hit the same zoo cache entries)


def _demo(key: str) -> dict:
    from clafusion_core.zoo import DEMO_PAIRS

    pair = DEMO_PAIRS[key]
    from dataclasses import asdict

    training = {k: v for k, v in asdict(pair.training).items() if k not in ("seed", "select_best")}
    return {"title": pair.title, "arch_a": pair.arch_a, "arch_b": pair.arch_b, "training": training,
            "same_shape": pair.arch_a == pair.arch_b}


# The paper's recipe takes 10 epochs of 60k images (~9 000 steps); on the 1 078 training images of the
# embedded 8×8 digits it takes 170 steps and leaves the parents at 12–66 %, so on digits the MLP setups
# use the demo pairs' digits recipe instead (20 epochs, lr 0.05, momentum 0.9; ~97 %).
DIGITS_RECIPE = dict(epochs=20, lr=0.05, momentum=0.9, batch_size=64)

SETUPS: dict[str, dict] = {
    "mlp-same": {"title": "OTFusion MLPs 784-400-200-100-10, no bias (same shape)",
                 "arch_a": "mlp:400-200-100-nobias", "arch_b": "mlp:400-200-100-nobias",
                 "training": OTFUSION_RECIPE, "training_digits": DIGITS_RECIPE, "same_shape": True},
    "mlp-depth": {"title": "CLAFusion ablation MLPs 400-200-100-50-25 vs 400-200-100, no bias",
                  "arch_a": "mlp:400-200-100-50-25-nobias", "arch_b": "mlp:400-200-100-nobias",
                  "training": OTFUSION_RECIPE, "training_digits": DIGITS_RECIPE, "same_shape": False},
    "mlp-demo": _demo("mlp"),
    "cnn": _demo("cnn"),
    "resnet": _demo("resnet"),
}


def training_for(setup: str, dataset: str) -> dict:
    """The training recipe of a setup's parents on a dataset (see ``DIGITS_RECIPE``)."""
    spec = SETUPS[setup]
    return spec.get(f"training_{dataset}", spec["training"])


def setup_models(setup: str, dataset: str, seed: int, data_root: str | None = None):
    """The two parents of a setup for one seed: A seeded ``seed``, B seeded ``seed + 100`` (independent
    initialisations and batch orders), trained once and cached by :func:`clafusion_core.zoo.trained_model`."""
    from clafusion_core.zoo import trained_model

    from clafusion_core.train import TrainConfig

    spec = SETUPS[setup]
    training = TrainConfig(**training_for(setup, dataset))
    model_a = trained_model(spec["arch_a"], seed, dataset, training, data_root=data_root)
    model_b = trained_model(spec["arch_b"], seed + 100, dataset, training, data_root=data_root)
    return model_a, model_b
