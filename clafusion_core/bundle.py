"""Run bundles: one zip (or folder) that documents a fusion run and reproduces it.

A bundle holds

* ``run.json`` — the run's config (the ``config`` of ``result.json``), the file ``fuse --config`` reads;
* ``result.json`` — the run's result, byte for byte what the CLI writes;
* ``fused.safetensors`` — the fused model (finetuned when the run finetuned);
* ``parent_1.safetensors``, ``parent_2.safetensors`` — the parents in the order they were given, so
  the bundle alone reproduces the run;
* ``MODEL_CARD.md`` — parents, method, settings and accuracies, and the command that reruns it.

Rerunning the config on the parents (:func:`rerun_bundle`) gives the same ``result.json`` apart from
``timings_s``: every stage is seeded by the config. The zip's entries carry a fixed date, so one run
always gives the same bundle bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import checkpoint_bytes, load_checkpoint
from .data import DataSplits, load_dataset
from .errors import CheckpointError
from .methods import get_method
from .pipeline import FusionResult, run_fusion
from .config import FusionConfig

RUN_FILE, RESULT_FILE, FUSED_FILE, CARD_FILE = "run.json", "result.json", "fused.safetensors", "MODEL_CARD.md"
PARENT_FILES = ("parent_1.safetensors", "parent_2.safetensors")
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def result_text(payload: dict) -> str:
    """``result.json`` as the CLI writes it."""
    return json.dumps(payload, indent=2)


def given_order(result: FusionResult) -> tuple:
    """The parents in the order the user gave them (the run puts the deeper one first)."""
    return (result.model_b, result.model_a) if result.swapped else (result.model_a, result.model_b)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def model_card(result: FusionResult, names: Sequence[str] = ("parent 1", "parent 2")) -> str:
    """A short Markdown model card: parents, method, settings, accuracies and how to rerun the run."""
    payload, config = result.to_json(), result.config
    models, accuracy = payload["models"], payload["accuracy"]
    roles = ("model_b", "model_a") if result.swapped else ("model_a", "model_b")
    parents = [f"| {index + 1} | {name} | `{models[role]['arch']}` | {models[role]['depth']} | "
               f"{models[role]['params']:,} | {_percent(accuracy[role])} |"
               for index, (name, role) in enumerate(zip(names, roles))]
    rows = [f"| {label} | {_percent(accuracy.get(key))} |" for key, label in (
        ("model_a", "model A (the deeper)"), ("model_b", "model B"), ("ensemble", "ensemble of both"),
        ("vanilla", "vanilla averaging"), ("fused_plain", "fused, before repair"), ("fused", "fused (one-shot)"),
        ("fused_finetuned", f"fused after {config.finetune.epochs} finetuning epochs")) if accuracy.get(key) is not None]
    settings = [f"| `{key}` | `{json.dumps(value)}` |" for key, value in config.flat().items()]
    balancing = payload["balancing"]
    return "\n".join([
        f"# Fused model: `{models['fused']['arch']}` on {config.probe.dataset}",
        "",
        f"Fused by CLAFusion Explorer from two parents with **{get_method(config.fusion.name).title}** after cross-layer "
        f"alignment under **{config.alignment.cost}** and **{config.balancing.method}** balancing "
        f"({len(balancing['inserted'])} identity layer(s) inserted, {len(balancing['removed'])} merged away).",
        "",
        "## Parents", "", "| # | name | arch | depth | parameters | test accuracy |", "|---|---|---|---|---|---|",
        *parents, "",
        f"Alignment (each unit of B → its unit of A, from 0): `{payload['alignment']}`; "
        f"fusion weight of B s = {config.fusion.weight:g}; statistics repair "
        f"{'kept' if payload['repair'].get('kept') else 'not kept' if payload['repair'].get('enabled') else 'off'}.",
        "",
        "## Test accuracy", "", "| model | accuracy |", "|---|---|", *rows, "",
        "## Settings", "", "| setting | value |", "|---|---|", *settings, "",
        "## Reproduce", "",
        "```",
        f"python -m clafusion_core fuse {PARENT_FILES[0]} {PARENT_FILES[1]} --config {RUN_FILE} --json {RESULT_FILE}",
        "```",
        "",
        f"gives the same `{RESULT_FILE}` apart from `timings_s` (in Python: `clafusion_core.bundle.rerun_bundle`).",
        "",
    ])


def bundle_files(result: FusionResult, names: Sequence[str] = ("parent 1", "parent 2")) -> dict[str, bytes]:
    """The bundle's files by name (see the module docstring)."""
    dataset = result.config.probe.dataset
    files = {RUN_FILE: json.dumps(result.config.to_dict(), indent=2).encode(),
             RESULT_FILE: result_text(result.to_json()).encode(),
             FUSED_FILE: checkpoint_bytes(result.fused_finetuned or result.fused.model, dataset=dataset)}
    for file, model in zip(PARENT_FILES, given_order(result)):
        files[file] = checkpoint_bytes(model, dataset=dataset)
    files[CARD_FILE] = model_card(result, names).encode()
    return files


def bundle_bytes(result: FusionResult, names: Sequence[str] = ("parent 1", "parent 2")) -> bytes:
    """The bundle as zip bytes (what the app's download button serves)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in bundle_files(result, names).items():
            entry = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            entry.external_attr = 0o644 << 16     # rw-r--r-- when unpacked
            archive.writestr(entry, content, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def write_bundle(result: FusionResult, destination: str | Path, names: Sequence[str] = ("parent 1", "parent 2")) -> Path:
    """Write the bundle to ``destination``: a zip when it ends in ``.zip``, else a folder."""
    destination = Path(destination)
    if destination.suffix == ".zip":
        destination.write_bytes(bundle_bytes(result, names))
        return destination
    destination.mkdir(parents=True, exist_ok=True)
    for name, content in bundle_files(result, names).items():
        (destination / name).write_bytes(content)
    return destination


def read_bundle(source: str | Path) -> dict[str, bytes]:
    """A bundle's files by name, from its zip or folder."""
    source = Path(source)
    try:
        if source.is_dir():
            return {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
        with zipfile.ZipFile(source) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{source} is not a readable run bundle ({error}); give the zip or folder a run wrote.") from None


def rerun_bundle(source: str | Path, splits: DataSplits | None = None) -> FusionResult:
    """Run the bundle's config on its parents again (``splits`` default: the config's dataset)."""
    files = read_bundle(source)
    missing = [name for name in (RUN_FILE, *PARENT_FILES) if name not in files]
    if missing:
        raise CheckpointError(f"The run bundle lacks {', '.join(missing)}; give the whole zip or folder a run wrote.")
    config: FusionConfig = FusionConfig.from_dict(json.loads(files[RUN_FILE]))
    parents = [load_checkpoint(files[name], name=name)[0] for name in PARENT_FILES]
    return run_fusion(*parents, splits or load_dataset(config.probe.dataset, config.probe.data_root), config)
