"""Command line: ``python -m clafusion_core {train,align,fuse,finetune,demo} ...``.

User errors (a bad file, a missing dataset, an impossible alignment) print one sentence on stderr and
exit with status 2 — never a traceback. ``finetune`` also runs under torchrun, one process per
CPU share or GPU (see :mod:`.distributed`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .activations import CONV_MODES
from .balancing import BALANCE_METHODS
from .baselines import teacher_logits
from .checkpoints import load_checkpoint, save_checkpoint
from .data import DATASETS, load_dataset
from .devices import DEVICES
from .distributed import process_device, process_group, world_from_env
from .errors import FusionError
from .models import build_model
from .otfusion import GROUND_METRICS, INPUT_SCALINGS, MARGINALS, SOLVERS
from .pipeline import FusionConfig, compute_activations, compute_alignment, describe_model, order_pair, \
    probe_inputs, run_fusion
from .similarity import METRICS
from .train import OPTIMIZERS, TrainConfig, evaluate, finetune, train_model
from .zoo import DEFAULT_PAIR, DEMO_PAIRS, load_demo_pair

DEFAULTS = FusionConfig()


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

    tune = commands.add_parser("finetune", help="finetune a (fused) checkpoint; runs under torchrun too",
                               description="Finetune a checkpoint, keeping the best validation epoch. Under "
                                           "`torchrun --nproc_per_node N` the N processes share every batch "
                                           "(DistributedDataParallel); rank 0 evaluates and writes the files.")
    tune.add_argument("fused", help="checkpoint to finetune (.safetensors, .pt, .pth)")
    tune.add_argument("--arch", default=None, help="its arch spec when the checkpoint does not say")
    tune.add_argument("--dataset", default=None, choices=DATASETS,
                      help="default: the dataset the checkpoint names, else digits")
    tune.add_argument("--data-root", default=None, help="folder with the dataset in torchvision's layout")
    tune.add_argument("--teacher", nargs="+", default=None, metavar="PARENT",
                      help="checkpoints whose mean logits the model distils from (the fused model's parents)")
    tune.add_argument("--distill", type=float, default=None,
                      help=f"weight of the teacher term (default {DEFAULTS.distill} with --teacher, else 0)")
    tune.add_argument("--distill-temperature", type=float, default=DEFAULTS.distill_temperature)
    tune.add_argument("--epochs", type=int, default=5)
    tune.add_argument("--lr", type=float, default=DEFAULTS.finetune_lr)
    tune.add_argument("--optimizer", default=DEFAULTS.optimizer, choices=OPTIMIZERS)
    tune.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                      help="per process: under torchrun the global batch is N times this")
    tune.add_argument("--seed", type=int, default=DEFAULTS.seed)
    tune.add_argument("--device", default=DEFAULTS.device, choices=DEVICES)
    tune.add_argument("--json", dest="json_path", default=None, help="write the finetune report here")
    tune.add_argument("--out", default=None, help="write the finetuned model (safetensors) here")

    demo = commands.add_parser("demo", help="run the fusion end to end on a demo pair (no files needed)")
    demo.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(DEMO_PAIRS))
    _add_alignment_options(demo)
    _add_fusion_options(demo)
    return parser


def _config(args: argparse.Namespace, **overrides) -> FusionConfig:
    names = {f.name for f in fields(FusionConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return FusionConfig(**{**values, **overrides})


def _load(path: str, arch: str | None, info):
    """A checkpoint as a model for the dataset described by ``info`` (a clear error when it does not fit)."""
    return load_checkpoint(path, arch=arch, input_shape=info.input_shape, num_classes=info.num_classes,
                           dataset=info.name, name=Path(path).name)[0]


def _load_models(args: argparse.Namespace, info) -> tuple:
    return tuple(_load(path, arch, info) for path, arch in ((args.model_a, args.arch_a), (args.model_b, args.arch_b)))


def _write_json(path: str | None, payload: dict) -> None:
    text = json.dumps(payload, indent=2)
    if path:
        Path(path).write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    else:
        print(text)


def _summary(result) -> str:
    rows = [f"{name:>18}: {value * 100:6.2f} %" for name, value in result.accuracy.items() if value is not None]
    return "\n".join(["test accuracy", *rows])


def cmd_train(args: argparse.Namespace) -> None:
    splits = load_dataset(args.dataset, args.data_root, seed=args.seed)
    torch.manual_seed(args.seed)
    model = build_model(args.arch, splits.info.input_shape, splits.info.num_classes)
    bar, update = _progress_bar(f"training {model.spec}")
    train_model(model, splits.train, splits.val,
                TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                            batch_size=args.batch_size, seed=args.seed), progress=update)
    bar.close()
    save_checkpoint(model, args.out, dataset=args.dataset, extra={"seed": str(args.seed)})
    print(f"{model.spec}: test accuracy {evaluate(model, splits.test) * 100:.2f} % -> {args.out}")


def cmd_align(args: argparse.Namespace) -> None:
    config = _config(args)
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


def _fuse_and_report(model_a, model_b, splits, config: FusionConfig, args: argparse.Namespace) -> None:
    bar, update = _progress_bar("fusing")
    result = run_fusion(model_a, model_b, splits, config, progress=update)
    bar.close()
    if args.out:
        save_checkpoint(result.fused_finetuned or result.fused.model, args.out, dataset=config.dataset)
        print(f"wrote {args.out}", file=sys.stderr)
    _write_json(args.json_path, result.to_json())
    if args.json_path:
        print(_summary(result))


def cmd_fuse(args: argparse.Namespace) -> None:
    config = _config(args)
    splits = load_dataset(args.dataset, args.data_root)
    model_a, model_b = _load_models(args, splits.info)
    _fuse_and_report(model_a, model_b, splits, config, args)


def cmd_demo(args: argparse.Namespace) -> None:
    pair = DEMO_PAIRS[args.pair]
    config = _config(args, dataset=pair.dataset)
    bar, update = _progress_bar(f"demo pair '{pair.key}' (trained once, then cached)")
    model_a, model_b = load_demo_pair(pair.key, progress=update)
    bar.close()
    _fuse_and_report(model_a, model_b, load_dataset(pair.dataset), config, args)


def cmd_finetune(args: argparse.Namespace) -> None:
    world = world_from_env()
    device = process_device(world, args.device)
    distill = args.distill if args.distill is not None else (DEFAULTS.distill if args.teacher else 0.0)
    if distill > 0 and not args.teacher:
        raise FusionError("Distillation needs the parents as teacher: pass --teacher A B, or --distill 0 "
                          "to finetune on the labels alone.")
    training = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
                           seed=args.seed, distill=distill, temperature=args.distill_temperature)
    dataset = args.dataset or load_checkpoint(args.fused, arch=args.arch, name=Path(args.fused).name)[1].dataset \
        or "digits"
    with process_group(world, device):
        splits = load_dataset(dataset, args.data_root)
        model = _load(args.fused, args.arch, splits.info)
        timings = {}
        start = time.perf_counter()
        teacher = None
        if args.teacher and distill > 0:
            parents = [_load(path, None, splits.info) for path in args.teacher]
            teacher = teacher_logits(parents, splits.train.tensors[0], device)
        timings["teacher"] = time.perf_counter() - start
        bar, update = _progress_bar(f"finetuning {model.spec}") if world.is_main else (None, None)
        start = time.perf_counter()
        tuned, history = finetune(model, splits.train, splits.val, training, device, update, teacher_logits=teacher,
                                  world=world)
        timings["finetune"] = time.perf_counter() - start
        if not world.is_main:
            return
        bar.close()
        start = time.perf_counter()
        accuracy = {"before": evaluate(model, splits.test, device), "after": evaluate(tuned, splits.test, device)}
        timings["evaluation"] = time.perf_counter() - start
    if args.out:
        save_checkpoint(tuned, args.out, dataset=dataset,
                        extra={"finetuned_from": Path(args.fused).name, "best_epoch": str(history.best_epoch)})
        print(f"wrote {args.out}", file=sys.stderr)
    _write_json(args.json_path, {
        "checkpoint": args.fused, "dataset": dataset, "teachers": args.teacher or [], "accuracy": accuracy,
        "val_accuracy": history.val_accuracy, "best_epoch": history.best_epoch, "train_loss": history.train_loss,
        "config": asdict(training), "world_size": world.size, "batch_size_per_process": training.batch_size,
        "global_batch_size": training.batch_size * world.size, "device": str(device),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    })
    if args.json_path:
        print(f"test accuracy {accuracy['before'] * 100:.2f} % -> {accuracy['after'] * 100:.2f} % "
              f"(best validation epoch {history.best_epoch} of {training.epochs})")


COMMANDS = {"train": cmd_train, "align": cmd_align, "fuse": cmd_fuse, "finetune": cmd_finetune, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except FusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
