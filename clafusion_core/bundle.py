"""Run bundles: one zip (or folder) that documents a fusion run and reproduces it.

A bundle holds

* ``run.json`` — the run's config (the ``config`` of ``result.json``), the file ``fuse --config`` reads;
* ``result.json`` — the run's result, byte for byte what the CLI writes;
* ``fused.safetensors`` — the fused model (finetuned when the run finetuned);
* ``parent_1.safetensors``, ``parent_2.safetensors``, … — the parents (two, or all N of a many-model
  run) in the order they were given, so the bundle alone reproduces the run;
* ``MODEL_CARD.md`` — every parent, method, settings and accuracies, and the command that reruns it.

Rerunning the config on the parents (:func:`rerun_bundle`, or ``fuse parent_1 … parent_N --config
run.json``) gives the same ``result.json`` apart from ``timings_s``: every stage is seeded by the config,
and an N-model run's config holds its target and weights. The zip's entries carry a fixed date, so one
run always gives the same bundle bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .checkpoints import checkpoint_bytes, load_checkpoint
from .config import FusionConfig
from .data import DataSplits, load_dataset
from .errors import CheckpointError
from .many import ManyResult, fuse_any
from .methods import get_method
from .pipeline import FusionResult

RUN_FILE, RESULT_FILE, FUSED_FILE, CARD_FILE = "run.json", "result.json", "fused.safetensors", "MODEL_CARD.md"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def parent_files(count: int) -> list[str]:
    """``parent_1.safetensors`` … ``parent_<count>.safetensors``."""
    return [f"parent_{k + 1}.safetensors" for k in range(count)]


def result_text(payload: dict) -> str:
    """A JSON file as every writer here writes it (the CLI, bundles, the app's downloads), so a bundle's
    ``result.json`` is byte for byte the CLI's."""
    return json.dumps(payload, indent=2)


def given_order(result: FusionResult | ManyResult) -> tuple:
    """The parents in the order the user gave them (a pair's run puts the deeper one first)."""
    if isinstance(result, ManyResult):
        return tuple(result.models)
    return (result.model_b, result.model_a) if result.swapped else (result.model_a, result.model_b)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _parent_rows(result: FusionResult | ManyResult, payload: dict, names: Sequence[str]) -> list[str]:
    """One Markdown row per parent in the order given: name, arch, depth, parameters, test accuracy (and for
    N models its weight, the target marked)."""
    models, accuracy = payload["models"], payload["accuracy"]
    if isinstance(result, ManyResult):
        described = [(model, acc, f"{weight:.3g}" + (" (target)" if k == result.reference else ""))
                     for k, (model, acc, weight) in enumerate(zip(models["parents"], accuracy["parents"], result.weights))]
    else:
        roles = ("model_b", "model_a") if result.swapped else ("model_a", "model_b")
        share = {"model_a": 1 - result.config.fusion.weight, "model_b": result.config.fusion.weight}
        described = [(models[role], accuracy[role], f"{share[role]:.3g}") for role in roles]
    return [f"| {k + 1} | {name} | `{model['arch']}` | {model['depth']} | {model['params']:,} | {_percent(acc)} | {weight} |"
            for k, (name, (model, acc, weight)) in enumerate(zip(names, described))]


def _default_names(result: FusionResult | ManyResult) -> list[str]:
    return [f"parent {k + 1}" for k in range(len(given_order(result)))]


def model_card(result: FusionResult | ManyResult, names: Sequence[str] | None = None) -> str:
    """A short Markdown model card: every parent, method, settings, accuracies and how to rerun the run."""
    payload, config = result.to_json(), result.config
    names = list(names or _default_names(result))
    accuracy, many = payload["accuracy"], isinstance(result, ManyResult)
    labels = ((("ensemble", f"ensemble of all {len(names)}"),) if many else
              (("model_a", "model A (the deeper)"), ("model_b", "model B"), ("ensemble", "ensemble of both")))
    rows = [f"| {label} | {_percent(accuracy.get(key))} |" for key, label in (
        *labels, ("vanilla", "vanilla averaging"), ("fused_plain", "fused, before repair"), ("fused", "fused (one-shot)"),
        ("fused_finetuned", f"fused after {config.finetune.epochs} finetuning epochs")) if accuracy.get(key) is not None]
    settings = [f"| `{key}` | `{json.dumps(value)}` |" for key, value in config.flat().items()]
    if many:
        changes = [(len(a["inserted"]), len(a["removed"])) for a in payload["alignments"] if a is not None]
        inserted, removed = sum(c[0] for c in changes), sum(c[1] for c in changes)
        matching = "; ".join(f"{names[k]} → `{a['alignment']}`" for k, a in enumerate(payload["alignments"]) if a)
        alignment = (f"Alignment of each network with the target {names[result.reference]} (each unit → its unit of "
                     f"the deeper, from 0): {matching}; weights as given {config.fusion.weights or 'equal'}")
    else:
        inserted, removed = len(payload["balancing"]["inserted"]), len(payload["balancing"]["removed"])
        alignment = (f"Alignment (each unit of B → its unit of A, from 0): `{payload['alignment']}`; "
                     f"fusion weight of B s = {config.fusion.weight:g}")
    repair = payload["repair"]
    return "\n".join([
        f"# Fused model: `{payload['models']['fused']['arch']}` on {config.probe.dataset}",
        "",
        f"Fused by CLAFusion Explorer from {len(names)} parents with **{get_method(config.fusion.name).title}** after "
        f"cross-layer alignment under **{config.alignment.cost}** and **{config.balancing.method}** balancing "
        f"({inserted} identity layer(s) inserted, {removed} merged away).",
        "",
        "## Parents", "", "| # | name | arch | depth | parameters | test accuracy | weight |",
        "|---|---|---|---|---|---|---|", *_parent_rows(result, payload, names), "",
        f"{alignment}; statistics repair "
        f"{'kept' if repair.get('kept') else 'not kept' if repair.get('enabled') else 'off'}.",
        "",
        "## Test accuracy", "", "| model | accuracy |", "|---|---|", *rows, "",
        "## Settings", "", "| setting | value |", "|---|---|", *settings, "",
        "## Reproduce", "",
        "```",
        f"python -m clafusion_core fuse {' '.join(parent_files(len(names)))} --config {RUN_FILE} --json {RESULT_FILE}",
        "```",
        "",
        f"gives the same `{RESULT_FILE}` apart from `timings_s` (in Python: `clafusion_core.bundle.rerun_bundle`).",
        "",
    ])


def bundle_files(result: FusionResult | ManyResult, names: Sequence[str] | None = None) -> dict[str, bytes]:
    """The bundle's files by name (see the module docstring)."""
    dataset, parents = result.config.probe.dataset, given_order(result)
    files = {RUN_FILE: result_text(result.config.to_dict()).encode(),
             RESULT_FILE: result_text(result.to_json()).encode(),
             FUSED_FILE: checkpoint_bytes(result.fused_finetuned or result.fused.model, dataset=dataset)}
    for file, model in zip(parent_files(len(parents)), parents):
        files[file] = checkpoint_bytes(model, dataset=dataset)
    files[CARD_FILE] = model_card(result, names).encode()
    return files


def bundle_bytes(result: FusionResult | ManyResult, names: Sequence[str] | None = None) -> bytes:
    """The bundle as zip bytes (what the app's download button serves)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in bundle_files(result, names).items():
            entry = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            entry.external_attr = 0o644 << 16     # rw-r--r-- when unpacked
            archive.writestr(entry, content, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def write_bundle(result: FusionResult | ManyResult, destination: str | Path, names: Sequence[str] | None = None) -> Path:
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


def rerun_bundle(source: str | Path, splits: DataSplits | None = None) -> FusionResult | ManyResult:
    """Run the bundle's config on its parents again (``splits`` default: the config's dataset), as
    ``fuse --config`` does: two parents without a target are the pairwise run, more go to ``fuse_many``."""
    files = read_bundle(source)
    count = max(2, sum(1 for name in files if name.startswith("parent_") and name.endswith(".safetensors")))
    missing = [name for name in (RUN_FILE, *parent_files(count)) if name not in files]
    if missing:
        raise CheckpointError(f"The run bundle lacks {', '.join(missing)}; give the whole zip or folder a run wrote.")
    try:
        data = json.loads(files[RUN_FILE])
    except ValueError:   # not UTF-8 or not JSON
        raise CheckpointError(f"The run bundle's {RUN_FILE} is not valid JSON; give the zip or folder a run wrote.") from None
    config: FusionConfig = FusionConfig.from_dict(data)
    parents = [load_checkpoint(files[name], name=name)[0] for name in parent_files(count)]
    return fuse_any(parents, splits or load_dataset(config.probe.dataset, config.probe.data_root), config)
