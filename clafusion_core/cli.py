"""Command line: ``python -m clafusion_core {train,align,fuse,demo} ...``.

User errors (a bad file, a missing dataset, an impossible alignment, an output folder that does not
exist) print one sentence on stderr and exit with status 2 — never a traceback. Outputs are checked to
be writable before any work starts. Ctrl-C exits with status 130; during a finetune it first writes
the fused model from before the finetune (``--out``, ``--json``) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .activations import CONV_MODES
from .balancing import BALANCE_METHODS
from .checkpoints import load_checkpoint, save_checkpoint
from .data import DATASETS, load_dataset
from .devices import DEVICES
from .errors import FusionError, OutputError
from .models import build_model
from .otfusion import GROUND_METRICS, INPUT_SCALINGS, MARGINALS, SOLVERS
from .pipeline import FusionConfig, compute_activations, compute_alignment, describe_model, finetune_result, \
    order_pair, probe_inputs, run_fusion
from .similarity import METRICS
from .train import OPTIMIZERS, TrainConfig, evaluate, train_model
from .validation import check_finite_model, quote_path
from .zoo import DEFAULT_PAIR, DEMO_PAIRS, load_demo_pair

DEFAULTS = FusionConfig()
INTERRUPTED = 130   # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


def _progress_bar(description: str):
    bar = tqdm(total=100, desc=description, file=sys.stderr, leave=False, disable=None,
                bar_format="{l_bar}{bar}| {postfix}")  # disable=None: no bar when stderr is not a terminal

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(100 * fraction))
        bar.set_postfix_str(message, refresh=True)

    return bar, update


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--data-root", default=None, help="folder with the dataset in torchvision's layout")


def _add_alignment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cost", default=DEFAULTS.cost, choices=METRICS, help="layer cost metric")
    parser.add_argument("--probe-size", type=int, default=DEFAULTS.probe_size)
    parser.add_argument("--probe-seed", type=int, default=DEFAULTS.probe_seed)
    parser.add_argument("--activation", default=DEFAULTS.activation, choices=("post", "pre"))
    parser.add_argument("--conv-features", default=DEFAULTS.conv_features, choices=CONV_MODES)
    parser.add_argument("--no-pin-first", dest="pin_first", action="store_false",
                        help="let the first hidden layers match freely")
    parser.add_argument("--no-pin-last", dest="pin_last", action="store_false",
                        help="let the last hidden layers match freely")


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--balance", default=DEFAULTS.balance, choices=BALANCE_METHODS)
    parser.add_argument("--ground-metric", default=DEFAULTS.ground_metric, choices=GROUND_METRICS)
    parser.add_argument("--solver", default=DEFAULTS.solver, choices=SOLVERS)
    parser.add_argument("--sinkhorn-reg", type=float, default=DEFAULTS.sinkhorn_reg)
    parser.add_argument("--fusion-weight", type=float, default=DEFAULTS.fusion_weight,
                        help="weight s of model B (0 = aligned A, 1 = B)")
    parser.add_argument("--input-scaling", default=DEFAULTS.input_scaling, choices=INPUT_SCALINGS)
    parser.add_argument("--marginals", default=DEFAULTS.marginals, choices=MARGINALS)
    parser.add_argument("--no-repair", dest="repair", action="store_false", help="skip statistics repair")
    parser.add_argument("--no-bn-reset", dest="bn_reset", action="store_false",
                        help="keep the transported BatchNorm statistics")
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULTS.finetune_epochs)
    parser.add_argument("--finetune-lr", type=float, default=DEFAULTS.finetune_lr)
    parser.add_argument("--optimizer", default=DEFAULTS.optimizer, choices=OPTIMIZERS)
    parser.add_argument("--distill", type=float, default=DEFAULTS.distill,
                        help="weight of distillation from the parents' ensemble while finetuning (0 = labels only)")
    parser.add_argument("--distill-temperature", type=float, default=DEFAULTS.distill_temperature)
    parser.add_argument("--finetune-parents", action="store_true",
                        help="also finetune the parents for the same epochs (the fair baseline)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--device", default=DEFAULTS.device, choices=DEVICES)
    parser.add_argument("--json", dest="json_path", default=None, help="write result.json here")
    parser.add_argument("--out", default=None, help="write the fused model (safetensors) here")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_a", help="checkpoint (.safetensors, .pt, .pth)")
    parser.add_argument("model_b", help="checkpoint (.safetensors, .pt, .pth)")
    parser.add_argument("--arch-a", default=None, help="arch spec of A when the checkpoint does not say")
    parser.add_argument("--arch-b", default=None, help="arch spec of B when the checkpoint does not say")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clafusion_core", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and save it as safetensors")
    train.add_argument("--arch", required=True, help="e.g. mlp:400-200-100, vgg11, resnet18x0.5")
    _add_data_options(train)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True)

    align = commands.add_parser("align", help="cost matrix and cross-layer alignment of two models")
    _add_model_arguments(align)
    _add_data_options(align)
    _add_alignment_options(align)
    align.add_argument("--json", dest="json_path", default=None)

    fuse = commands.add_parser("fuse", help="align, balance, fuse, evaluate (and finetune) two models")
    _add_model_arguments(fuse)
    _add_data_options(fuse)
    _add_alignment_options(fuse)
    _add_fusion_options(fuse)

    demo = commands.add_parser("demo", help="run the fusion end to end on a demo pair (no files needed)")
    demo.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(DEMO_PAIRS))
    _add_alignment_options(demo)
    _add_fusion_options(demo)
    return parser


def _config(args: argparse.Namespace, **overrides) -> FusionConfig:
    names = {f.name for f in fields(FusionConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return FusionConfig(**{**values, **overrides})


def _load_models(args: argparse.Namespace, info) -> tuple:
    return tuple(load_checkpoint(path, arch=arch, input_shape=info.input_shape, num_classes=info.num_classes,
                                 dataset=info.name, name=Path(path).name)[0]
                 for path, arch in ((args.model_a, args.arch_a), (args.model_b, args.arch_b)))


def check_writable(path: str | None) -> None:
    """Refuse, before any work, an output path whose folder is missing or read-only (or that is a folder)."""
    if path is None:
        return
    if "\x00" in path:
        raise OutputError(f"The output path {quote_path(path)} contains a NUL byte; choose another path.")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{quote_path(path)} is a folder; give a file name, e.g. {quote_path(os.path.join(path, 'out'))}.")
    if not os.path.isdir(folder):
        raise OutputError(f"The folder {quote_path(folder)} for {quote_path(path)} does not exist; create it first or "
                          "choose another path.")
    if not os.access(folder, os.W_OK) or os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(f"{quote_path(path)} cannot be written (no permission); choose another path.")


def _write(path: str, write) -> None:
    try:
        write()
    except OSError as exc:
        raise OutputError(f"{quote_path(path)} could not be written ({exc.strerror}); choose another path.") from None
    print(f"wrote {path}", file=sys.stderr)


def _write_json(path: str | None, payload: dict) -> None:
    text = json.dumps(payload, indent=2)
    if path:
        _write(path, lambda: Path(path).write_text(text))
    else:
        print(text)


def _summary(result) -> str:
    rows = [f"{name:>18}: {value * 100:6.2f} %" for name, value in result.accuracy.items() if value is not None]
    return "\n".join(["test accuracy", *rows])


def cmd_train(args: argparse.Namespace) -> None:
    training = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                           batch_size=args.batch_size, seed=args.seed)
    check_writable(args.out)
    splits = load_dataset(args.dataset, args.data_root, seed=args.seed)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, splits.info.input_shape, splits.info.num_classes)
    bar, update = _progress_bar(f"training {model.spec}")
    train_model(model, splits.train, splits.val, training, progress=update)
    bar.close()
    check_finite_model(model, what="The trained model")
    _write(args.out, lambda: save_checkpoint(model, args.out, dataset=args.dataset, extra={"seed": str(args.seed)}))
    print(f"{model.spec}: test accuracy {evaluate(model, splits.test) * 100:.2f} % -> {args.out}")


def cmd_align(args: argparse.Namespace) -> None:
    config = _config(args)
    check_writable(args.json_path)
    splits = load_dataset(args.dataset, args.data_root)
    model_a, model_b, swapped = order_pair(*_load_models(args, splits.info))
    start = time.perf_counter()
    probe = probe_inputs(splits, config)
    acts_a, acts_b = compute_activations(model_a, probe, config), compute_activations(model_b, probe, config)
    activations_s = time.perf_counter() - start
    alignment = compute_alignment(acts_a, acts_b, model_a, config)
    _write_json(args.json_path, {
        **alignment.to_json(),
        "models": {"model_a": describe_model(model_a), "model_b": describe_model(model_b)},
        "timings_s": {"activations": round(activations_s, 4),
                      "cost_and_alignment": round(time.perf_counter() - start - activations_s, 4)},
        "config": asdict(config),
        "swapped": swapped,
        "warnings": alignment.notes,
    })


def _fuse_and_report(model_a, model_b, splits, config: FusionConfig, args: argparse.Namespace) -> int:
    """Fuse, then finetune as a second step, so that Ctrl-C during the finetune still writes the model
    fused before it (the status is then :data:`INTERRUPTED`, and the result's warnings say so)."""
    bar, update = _progress_bar("fusing")
    result = run_fusion(model_a, model_b, splits, replace(config, finetune_epochs=0),
                        progress=lambda f, m: update(0.35 * f if config.finetune_epochs else f, m))
    interrupted = False
    if config.finetune_epochs > 0:
        try:
            finetune_result(result, splits, epochs=config.finetune_epochs,
                            progress=lambda f, m: update(0.35 + 0.65 * f, m))
            check_finite_model(result.fused_finetuned, what="The finetuned model")
        except KeyboardInterrupt:
            interrupted = True
            kept = "the finetuned fused model" if result.fused_finetuned is not None else "the fused model from before it"
            result.warnings.append(f"Finetuning was interrupted (Ctrl-C); kept {kept}.")
    bar.close()
    if args.out:
        _write(args.out, lambda: save_checkpoint(result.fused_finetuned or result.fused.model, args.out,
                                                 dataset=config.dataset))
    _write_json(args.json_path, result.to_json())
    if args.json_path:
        print(_summary(result))
    if interrupted:
        print(f"interrupted: {result.warnings[-1]}" + (f" It is in {args.out}." if args.out else ""), file=sys.stderr)
        return INTERRUPTED
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    config = _config(args)
    check_writable(args.json_path)
    check_writable(args.out)
    splits = load_dataset(args.dataset, args.data_root)
    model_a, model_b = _load_models(args, splits.info)
    return _fuse_and_report(model_a, model_b, splits, config, args)


def cmd_demo(args: argparse.Namespace) -> int:
    pair = DEMO_PAIRS[args.pair]
    config = _config(args, dataset=pair.dataset)
    check_writable(args.json_path)
    check_writable(args.out)
    bar, update = _progress_bar(f"demo pair '{pair.key}' (trained once, then cached)")
    model_a, model_b = load_demo_pair(pair.key, progress=update)
    bar.close()
    return _fuse_and_report(model_a, model_b, load_dataset(pair.dataset), config, args)


COMMANDS = {"train": cmd_train, "align": cmd_align, "fuse": cmd_fuse, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except FusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing was written.", file=sys.stderr)
        return INTERRUPTED
