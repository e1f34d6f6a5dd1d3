"""Command line: ``python -m clafusion_core {train,align,fuse,demo,barrier,compare} ...``.

User errors (a bad file, a missing dataset, an impossible alignment, an output folder that does not
exist) print one sentence on stderr and exit with status 2 — never a traceback. Outputs are checked to
be writable before any work starts. Ctrl-C exits with status 130; during a finetune it first writes
the fused model from before the finetune (``--out``, ``--json``) and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .activations import CONV_MODES
from .balancing import BALANCE_METHODS, IDENTITY_WIDTHS
from .baselines import teacher_logits
from .barrier import DEFAULT_POINTS, barrier_curves
from .checkpoints import load_checkpoint, save_checkpoint
from .compare import DEFAULT_FINETUNE_EPOCHS, compare_methods, comparison_records, markdown_table, metric_downstream, \
    metric_records
from .config import FLAT_NAMES, INSERTED_WEIGHTS, FusionConfig
from .data import DATASETS, load_dataset
from .devices import DEVICES
from .distributed import process_device, process_group, world_from_env
from .errors import AlignmentError, FusionError, OutputError
from .interpolation import GROUPINGS, IMPORTANCES, InterpOptions
from .bundle import result_text, write_bundle
from .many import fuse_many, is_pairwise, normalised_weights
from .methods import METHODS, get_method
from .models import build_model
from .otfusion import GROUND_ACTIVATION_CHOICES, GROUND_ACTIVATIONS, GROUND_CONV_FEATURES, GROUND_METRICS, INPUT_SCALINGS, MARGINALS, SOLVERS
from .pipeline import compute_activations, compute_alignment, describe_model, finetune_result, order_pair, \
    probe_inputs, run_fusion
from .similarity import METRICS
from .train import OPTIMIZERS, TrainConfig, evaluate, finetune, train_model
from .validation import check_finite_model, quote_path
from .zoo import DEFAULT_PAIR, DEMO_PAIRS, DEMO_SETS, load_demo_pair, load_demo_set

DEFAULTS = FusionConfig().flat()
CLIP_HELP = ("rescale each finetuning step's gradient to at most this norm (0 = off): a fused model's first "
             "steps can otherwise knock it far from where fusion put it")
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
    parser.add_argument("--cost", default=DEFAULTS["cost"], choices=METRICS, help="layer cost metric")
    parser.add_argument("--probe-size", type=int, default=DEFAULTS["probe_size"],
                        help="probe batch size (default: the dataset's, e.g. 1000 for digits and Fashion-MNIST)")
    parser.add_argument("--probe-seed", type=int, default=DEFAULTS["probe_seed"])
    parser.add_argument("--activation", default=DEFAULTS["activation"], choices=("post", "pre"))
    parser.add_argument("--conv-features", default=DEFAULTS["conv_features"], choices=CONV_MODES)
    parser.add_argument("--no-pin-first", dest="pin_first", action="store_false",
                        help="let the first hidden layers match freely")
    parser.add_argument("--no-pin-last", dest="pin_last", action="store_false",
                        help="let the last hidden layers match freely")


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """Balancing, the fusion method's options, repair, BatchNorm reset, seed and device."""
    parser.add_argument("--balance", default=DEFAULTS["balance"], choices=BALANCE_METHODS)
    parser.add_argument("--identity-width", default=DEFAULTS["identity_width"], choices=IDENTITY_WIDTHS,
                        help="add balancing: an inserted identity as wide as the deeper model's layer it stands in "
                             "for where that is wider (padded with always-zero channels; exact), or as its input")
    parser.add_argument("--method", default=DEFAULTS["method"], choices=sorted(METHODS), help="fusion method")
    parser.add_argument("--ground-metric", default=DEFAULTS["ground_metric"], choices=GROUND_METRICS)
    parser.add_argument("--ground-activation", default=DEFAULTS["ground_activation"], choices=GROUND_ACTIVATIONS,
                        help="activations of the OT ground metric (its own, not the cost matrix's --activation); "
                             "see --ground-activation-choice")
    parser.add_argument("--ground-activation-choice", default=DEFAULTS["ground_activation_choice"],
                        choices=GROUND_ACTIVATION_CHOICES,
                        help="OT: 'validation' also fuses with the other ground activation and keeps the fusion better "
                             "on the validation split (ties: --ground-activation); 'fixed' uses --ground-activation; "
                             "'conv' (default) chooses for CNNs/ResNets, fixed for MLPs (the choice doubles the cost)")
    parser.add_argument("--ground-conv-features", default=DEFAULTS["ground_conv_features"], choices=GROUND_CONV_FEATURES,
                        help="conv maps in the OT ground metric: every position a sample, or the channel mean")
    parser.add_argument("--inserted-weight", default=DEFAULTS["inserted_weight"], choices=INSERTED_WEIGHTS,
                        help="layers balancing inserted: keep the deeper model's layer, or average with the identity")
    parser.add_argument("--solver", default=DEFAULTS["solver"], choices=SOLVERS)
    parser.add_argument("--sinkhorn-reg", type=float, default=DEFAULTS["sinkhorn_reg"])
    parser.add_argument("--fusion-weight", type=float, default=DEFAULTS["fusion_weight"],
                        help="weight s of model B (0 = aligned A, 1 = B)")
    parser.add_argument("--input-scaling", default=DEFAULTS["input_scaling"], choices=INPUT_SCALINGS)
    parser.add_argument("--marginals", default=DEFAULTS["marginals"], choices=MARGINALS)
    parser.add_argument("--squared-ground-cost", dest="squared", action="store_true",
                        help="OT: squared Euclidean ground costs (plain Euclidean by default, which fused better)")
    parser.add_argument("--no-input-correction", dest="input_correction", action="store_false",
                        help="OT: skip the input correction, to see why it is needed (equal widths only)")
    interp = InterpOptions()
    parser.add_argument("--fusion-size", type=int, default=interp.fusion_size,
                        help="interp: samples of its class-balanced fusion batch (train/validation)")
    parser.add_argument("--grouping", default=interp.grouping, choices=GROUPINGS,
                        help="interp: K-means over all parents' neurons, or a one-to-one Hungarian match (2 parents)")
    parser.add_argument("--importance", default=interp.importance, choices=IMPORTANCES,
                        help="interp: neuron importance (uniform, or mean |conductance| for the true class)")
    parser.add_argument("--ridge", type=float, default=interp.ridge,
                        help="interp: relative ridge of the fits (default: chosen on held-out fusion samples)")
    parser.add_argument("--restarts", type=int, default=interp.restarts, help="interp: K-means restarts")
    parser.add_argument("--iterations", type=int, default=interp.iterations, help="interp: K-means iterations")
    parser.add_argument("--interp-seed", type=int, default=interp.interp_seed,
                        help="interp: seed of the held-out split, conv row sample and restarts")
    parser.add_argument("--no-repair", dest="repair", action="store_false", help="skip statistics repair")
    parser.add_argument("--no-bn-reset", dest="bn_reset", action="store_false",
                        help="keep the transported BatchNorm statistics")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--device", default=DEFAULTS["device"], choices=DEVICES)


def _add_fusion_options(parser: argparse.ArgumentParser) -> None:
    _add_method_options(parser)
    _add_finetune_options(parser)
    parser.add_argument("--json", dest="json_path", default=None, help="write result.json here")
    parser.add_argument("--out", default=None, help="write the fused model (safetensors) here")
    parser.add_argument("--bundle", default=None, metavar="PATH",
                        help="write a run bundle here (a .zip, else a folder): run.json, result.json, the fused and "
                             "every parent's safetensors, a model card; `fuse parent_1 ... --config run.json` reruns it")
    parser.add_argument("--config", dest="config_path", default=None, metavar="FILE",
                        help="run config (JSON or YAML, e.g. the 'config' of a result.json); flags typed override it")


def _add_finetune_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULTS["finetune_epochs"])
    parser.add_argument("--finetune-lr", type=float, default=DEFAULTS["finetune_lr"])
    parser.add_argument("--optimizer", default=DEFAULTS["optimizer"], choices=OPTIMIZERS)
    parser.add_argument("--distill", type=float, default=DEFAULTS["distill"],
                        help="weight of distillation from the parents' ensemble while finetuning (0 = labels only)")
    parser.add_argument("--distill-temperature", type=float, default=DEFAULTS["distill_temperature"])
    parser.add_argument("--clip-grad-norm", type=float, default=DEFAULTS["clip_grad_norm"],
                        help=CLIP_HELP)
    parser.add_argument("--finetune-parents", action="store_true",
                        help="also finetune the parents for the same epochs (the fair baseline)")


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

    fuse = commands.add_parser("fuse", help="align, balance, fuse, evaluate (and finetune) two or more models")
    _add_many_model_arguments(fuse)
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
                      help=f"weight of the teacher term (default {DEFAULTS['distill']} with --teacher, else 0)")
    tune.add_argument("--distill-temperature", type=float, default=DEFAULTS["distill_temperature"])
    tune.add_argument("--clip-grad-norm", type=float, default=DEFAULTS["clip_grad_norm"], help=CLIP_HELP)
    tune.add_argument("--epochs", type=int, default=5)
    tune.add_argument("--lr", type=float, default=DEFAULTS["finetune_lr"])
    tune.add_argument("--optimizer", default=DEFAULTS["optimizer"], choices=OPTIMIZERS)
    tune.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                      help="per process: under torchrun the global batch is N times this")
    tune.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    tune.add_argument("--device", default=DEFAULTS["device"], choices=DEVICES)
    tune.add_argument("--json", dest="json_path", default=None, help="write the finetune report here")
    tune.add_argument("--out", default=None, help="write the finetuned model (safetensors) here")

    demo = commands.add_parser("demo", help="run the fusion end to end on a demo pair (no files needed)")
    demo.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(DEMO_PAIRS))
    _add_alignment_options(demo)
    _add_fusion_options(demo)
    _add_comparison_commands(commands, demo)
    return parser


def _given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options the user typed (so they override a ``--config`` file)."""
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {action.dest for action in parser._actions if typed & set(action.option_strings)}


def _add_barrier_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS, help="values of t from 0 to 1 (default 11)")
    parser.add_argument("--methods", type=_names, default=None,
                        help=f"comma-separated fusion methods to draw paths for (default: all of {sorted(METHODS)})")


def _add_comparison_commands(commands, demo: argparse.ArgumentParser) -> None:
    """``barrier`` and ``compare``, and the demo's ``--barrier``, ``--compare``, ``--set`` and many-model options."""
    barrier = commands.add_parser("barrier", help="loss and accuracy along straight paths between two models "
                                                  "(naive, aligned, aligned + repair) and their barrier heights")
    _add_model_arguments(barrier)
    _add_data_options(barrier)
    _add_alignment_options(barrier)
    _add_method_options(barrier)
    _add_barrier_options(barrier)
    barrier.add_argument("--json", dest="json_path", default=None, help="write barrier.json here")
    demo.add_argument("--barrier", action="store_true", help="draw the loss barrier of the pair instead of fusing")
    _add_barrier_options(demo)
    compare = commands.add_parser("compare", help="every fusion method on one pair: one-shot and finetuned "
                                                  "accuracy, time, barrier heights; each cost metric's fused accuracy")
    _add_model_arguments(compare)
    _add_data_options(compare)
    _add_alignment_options(compare)
    _add_method_options(compare)
    _add_finetune_options(compare)
    compare.set_defaults(finetune_epochs=DEFAULT_FINETUNE_EPOCHS)
    _add_barrier_options(compare)
    compare.add_argument("--json", dest="json_path", default=None, help="write compare.json here")
    demo.add_argument("--compare", type=int, nargs="?", const=DEFAULT_FINETUNE_EPOCHS, default=None, metavar="EPOCHS",
                      help="compare every fusion method on the pair instead, finetuning each fused model EPOCHS "
                           f"epochs (default {DEFAULT_FINETUNE_EPOCHS})")
    demo.add_argument("--set", default=None, choices=sorted(DEMO_SETS),
                      help="fuse a demo set of three models instead of the pair")
    _add_many_options(demo)


def _add_many_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more checkpoints (.safetensors, .pt, .pth)")
    parser.add_argument("--arch-a", default=None, help="arch spec of the first model when the checkpoint does not say")
    parser.add_argument("--arch-b", default=None, help="arch spec of the second model when the checkpoint does not say")
    _add_many_options(parser)


def _add_many_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=_floats, default=None,
                        help="comma-separated share of each model (normalised; default equal)")
    parser.add_argument("--reference", type=int, default=None,
                        help="index (from 0) of the target model whose neurons the others are aligned onto "
                             "(default: the first, or the deepest for different depths)")


def _floats(text: str) -> list[float]:
    try:
        return [float(value) for value in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 1,1,2 (got {text!r})") from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _config(args: argparse.Namespace, **overrides) -> FusionConfig:
    """The run config: ``--config FILE`` if given, then the flags the user typed on top of it (without a
    file, every flag, defaults included). Only the chosen method's option flags apply."""
    from_file = bool(getattr(args, "config_path", None))
    base = FusionConfig.load(args.config_path) if from_file else FusionConfig()
    method = getattr(args, "method", base.fusion.name) if not from_file or "method" in args.given else base.fusion.name
    names = set(FLAT_NAMES) | {"seed", "device"} | {f.name for f in fields(get_method(method).options_type)}
    values = {k: v for k, v in vars(args).items() if k in names and (not from_file or k in args.given)}
    return base.replace(**{**values, "method": method, **overrides})


def _load(path: str, arch: str | None, info):
    """A checkpoint as a model for the dataset described by ``info`` (a clear error when it does not fit)."""
    return load_checkpoint(path, arch=arch, input_shape=info.input_shape, num_classes=info.num_classes,
                           dataset=info.name, name=Path(path).name)[0]


def _load_models(args: argparse.Namespace, info) -> tuple:
    paths = getattr(args, "models", None) or (args.model_a, args.model_b)
    archs = [args.arch_a, args.arch_b] + [None] * (len(paths) - 2)
    return tuple(_load(path, arch, info) for path, arch in zip(paths, archs))


def check_writable(*paths: str | None) -> None:
    """Refuse, before any work, an output path whose folder is missing or read-only (or that is a folder)."""
    for path in paths:
        if path is None:
            continue
        if "\x00" in path:
            raise OutputError(f"The output path {quote_path(path)} contains a NUL byte; choose another path.")
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise OutputError(f"{quote_path(path)} is a folder; give a file name, e.g. "
                              f"{quote_path(os.path.join(path, 'out'))}.")
        if not os.path.isdir(folder):
            raise OutputError(f"The folder {quote_path(folder)} for {quote_path(path)} does not exist; create it first "
                              "or choose another path.")
        if not os.access(folder, os.W_OK) or os.path.exists(path) and not os.access(path, os.W_OK):
            raise OutputError(f"{quote_path(path)} cannot be written (no permission); choose another path.")


def _bundle_probe(path: str | None) -> str | None:
    """The file :func:`check_writable` checks for ``--bundle``: the zip, or a file in the (existing) folder."""
    return os.path.join(path, "run.json") if path and os.path.isdir(path) else path


def _write(path: str, write) -> None:
    try:
        write()
    except OSError as exc:
        raise OutputError(f"{quote_path(path)} could not be written ({exc.strerror}); choose another path.") from None
    print(f"wrote {path}", file=sys.stderr)


def _write_json(path: str | None, payload: dict) -> None:
    text = result_text(payload)
    if path:
        _write(path, lambda: Path(path).write_text(text))
    else:
        print(text)


def _write_model(path: str | None, model, dataset: str) -> None:
    if path:
        _write(path, lambda: save_checkpoint(model, path, dataset=dataset))


def _write_outputs(result, args: argparse.Namespace) -> None:
    """A fusion's ``--out`` (the fused model, finetuned when it was), ``--json`` and ``--bundle``."""
    _write_model(args.out, result.fused_finetuned or result.fused.model, result.config.probe.dataset)
    _write_json(args.json_path, result.to_json())
    if args.bundle:
        names = [Path(path).name for path in getattr(args, "models", None) or ()] or None
        _write(args.bundle, lambda: write_bundle(result, args.bundle, names))


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
        "config": config.to_dict(),
        "swapped": swapped,
        "warnings": alignment.notes,
    })


def _fuse_and_report(model_a, model_b, splits, config: FusionConfig, args: argparse.Namespace) -> int:
    """Fuse, then finetune as a second step, so that Ctrl-C during the finetune still writes the model
    fused before it (the status is then :data:`INTERRUPTED`, and the result's warnings say so)."""
    bar, update = _progress_bar("fusing")
    epochs = config.finetune.epochs
    result = run_fusion(model_a, model_b, splits, config.replace(finetune_epochs=0),
                        progress=lambda f, m: update(0.35 * f if epochs else f, m))
    interrupted = False
    if epochs > 0:
        try:
            finetune_result(result, splits, epochs=epochs, progress=lambda f, m: update(0.35 + 0.65 * f, m))
            check_finite_model(result.fused_finetuned, what="The finetuned model")
        except KeyboardInterrupt:
            interrupted = True
            kept = "the finetuned fused model" if result.fused_finetuned is not None else "the fused model from before it"
            result.warnings.append(f"Finetuning was interrupted (Ctrl-C); kept {kept}.")
    bar.close()
    _write_outputs(result, args)
    if args.json_path:
        print(_summary(result))
    if interrupted:
        print(f"interrupted: {result.warnings[-1]}" + (f" It is in {args.out}." if args.out else ""), file=sys.stderr)
        return INTERRUPTED
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    config = _config(args)
    check_writable(args.json_path, args.out, _bundle_probe(args.bundle))
    splits = load_dataset(args.dataset, args.data_root)
    return _fuse_any_and_report(_load_models(args, splits.info), splits, config, args)


def cmd_demo(args: argparse.Namespace) -> int:
    check_writable(args.json_path, getattr(args, "out", None), _bundle_probe(args.bundle))
    if args.set:
        demo = DEMO_SETS[args.set]
        bar, update = _progress_bar(f"demo set '{demo.key}' (trained once, then cached)")
        models = load_demo_set(demo.key, progress=update)
        bar.close()
        return _fuse_any_and_report(models, load_dataset(demo.dataset), _config(args, dataset=demo.dataset), args)
    pair = DEMO_PAIRS[args.pair]
    config = _config(args, dataset=pair.dataset)
    bar, update = _progress_bar(f"demo pair '{pair.key}' (trained once, then cached)")
    model_a, model_b = load_demo_pair(pair.key, progress=update)
    bar.close()
    if args.barrier:
        return _barrier_and_report(model_a, model_b, load_dataset(pair.dataset), config, args)
    if args.compare is not None:
        config = config.replace(finetune_epochs=args.compare)
        return _compare_and_report(model_a, model_b, load_dataset(pair.dataset), config, args)
    return _fuse_any_and_report((model_a, model_b), load_dataset(pair.dataset), config, args)


def _fuse_any_and_report(models, splits, config: FusionConfig, args: argparse.Namespace) -> int:
    """Two models without a reference (``--reference`` or the config's): the pairwise fusion (``--weights``
    become s); else :func:`fuse_many` with the config's reference and weights."""
    if len(models) < 2:
        raise AlignmentError("Give at least two checkpoints to fuse.")
    if is_pairwise(len(models), config):
        if config.fusion.weights is not None:
            weights = normalised_weights(config.fusion.weights, 2)
            swapped = order_pair(*models)[2]   # s is the share of the shallower model (B once ordered)
            config = config.replace(fusion_weight=weights[0] if swapped else weights[1], weights=None)
        return _fuse_and_report(*models, splits, config, args)
    bar, update = _progress_bar(f"fusing {len(models)} models")
    result = fuse_many(models, splits, config, progress=update)
    bar.close()
    _write_outputs(result, args)
    if args.json_path:
        accuracy = result.accuracy
        rows = [f"{f'model {k}' + (' (target)' if k == result.reference else ''):>18}: {a * 100:6.2f} %"
                for k, a in enumerate(accuracy["parents"])]
        rows += [f"{name:>18}: {accuracy[name] * 100:6.2f} %" for name in ("ensemble", "vanilla", "fused_plain", "fused",
                                                                           "fused_finetuned") if accuracy[name] is not None]
        print("\n".join(["test accuracy", *rows]))
    return 0


def _barrier_and_report(model_a, model_b, splits, config: FusionConfig, args: argparse.Namespace) -> None:
    for name in args.methods or ():
        get_method(name)
    bar, update = _progress_bar("loss barrier")
    result = barrier_curves(model_a, model_b, splits, config, args.points, methods=args.methods, progress=update)
    bar.close()
    _write_json(args.json_path, result.to_json())
    if args.json_path:
        rows = [f"{curve.title:>40}: {curve.height:8.4f}   (accuracy drop {100 * curve.accuracy_drop:5.2f} pp)"
                for curve in result.curves.values()]
        print("\n".join(["barrier height (test loss)", *rows]))


def _compare_and_report(model_a, model_b, splits, config: FusionConfig, args: argparse.Namespace) -> None:
    bar, update = _progress_bar("comparing methods")
    comparison = compare_methods(model_a, model_b, splits, config, config.finetune.epochs, args.points,
                                 progress=lambda f, m: update(0.8 * f, m))
    metrics = metric_downstream(model_a, model_b, splits, config, progress=lambda f, m: update(0.8 + 0.2 * f, m))
    bar.close()
    _write_json(args.json_path, {**comparison.to_json(), "metrics": [row.to_json() for row in metrics]})
    if args.json_path:
        print(markdown_table(comparison_records(comparison)))
        print(markdown_table(metric_records(metrics)))


def cmd_compare(args: argparse.Namespace) -> None:
    check_writable(args.json_path)
    splits = load_dataset(args.dataset, args.data_root)
    _compare_and_report(*_load_models(args, splits.info), splits, _config(args), args)


def cmd_barrier(args: argparse.Namespace) -> None:
    check_writable(args.json_path)
    splits = load_dataset(args.dataset, args.data_root)
    _barrier_and_report(*_load_models(args, splits.info), splits, _config(args), args)


def cmd_finetune(args: argparse.Namespace) -> None:
    check_writable(args.json_path, args.out)
    world = world_from_env()
    device = process_device(world, args.device)
    distill = args.distill if args.distill is not None else (DEFAULTS["distill"] if args.teacher else 0.0)
    if distill > 0 and not args.teacher:
        raise FusionError("Distillation needs the parents as teacher: pass --teacher A B, or --distill 0 "
                          "to finetune on the labels alone.")
    training = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, batch_size=args.batch_size,
                           seed=args.seed, distill=distill, temperature=args.distill_temperature,
                           clip_grad_norm=args.clip_grad_norm)
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
        _write(args.out, lambda: save_checkpoint(tuned, args.out, dataset=dataset, extra={
            "finetuned_from": Path(args.fused).name, "best_epoch": str(history.best_epoch)}))
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


COMMANDS = {"train": cmd_train, "align": cmd_align, "fuse": cmd_fuse, "finetune": cmd_finetune, "demo": cmd_demo, "barrier": cmd_barrier,
            "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    args.given = _given_options(subparser, argv)
    try:
        return COMMANDS[args.command](args) or 0
    except FusionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C); nothing was written.", file=sys.stderr)
        return INTERRUPTED
