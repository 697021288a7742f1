"""Command line: ``edlcm train``, ``edlcm demo`` (also ``python -m edlcm_ext``)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from .devices import resolve_device
from .evaluation.attacks import ATTACKS, LABELS, PRESETS, expand_attack_names
from .evaluation.eval_job import DEFAULT_EPS, EvalSettings, run_evaluation
from .evaluation.evaluate import robust_accuracy
from .evaluation.report import markdown_table
from .models import MODELS, check_width
from .training.checkpoint import CheckpointError, load_checkpoint
from .training.config import TrainConfig
from .training.data import DATASETS, load_dataset
from .training.methods import METHODS, build_method
from .training.trainer import NonFiniteLossError, train

DEMO_METHODS = ("base", "edlcm")
DEMO_EPOCHS = 15
DEMO_EPS = (0.05, 0.1)
# The worst case the demo prints must hold against strong attacks (APGD-CE, APGD-DLR); the paper's
# FGSM and 10-step PGD are kept as labeled extra rows.
DEMO_ATTACKS = PRESETS["default"]
DEMO_APGD_ITERATIONS = 50
DEMO_SQUARE_QUERIES = 300  # keeps the demo near a minute on 2 cores; edlcm eval defaults to 5000


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), and every option's default in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, low=None, low_open=False, high=None, high_open=False):
    """An argparse type: a number of ``kind`` in the stated range, or a message naming that range."""
    bounds = " and ".join(
        part
        for part in (
            None if low is None else f"{'>' if low_open else '>='} {low:g}",
            None if high is None else f"{'<' if high_open else '<='} {high:g}",
        )
        if part
    )
    wanted = f"{'an integer' if kind is int else 'a number'}{' ' + bounds if bounds else ''}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


POSITIVE_INT, NON_NEGATIVE_INT = _number(int, 1), _number(int, 0)
POSITIVE_FLOAT, NON_NEGATIVE_FLOAT = _number(float, 0, low_open=True), _number(float, 0)


def _method_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--method", default=defaults.method, choices=sorted(METHODS), help="training method")
    parser.add_argument("--arch", default=defaults.arch, choices=sorted(MODELS), help="architecture of every member")
    parser.add_argument(
        "--width", type=POSITIVE_INT, default=defaults.width, help="channel width multiplier of small_cnn's members"
    )
    parser.add_argument("--members", type=POSITIVE_INT, default=defaults.members, help="ensemble size M")
    parser.add_argument(
        "--dataset", default=defaults.dataset, choices=DATASETS, help="digits is embedded; the others read --data-dir"
    )
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (required except for digits)")
    parser.add_argument("--download", action="store_true", help="allow torchvision to download CIFAR")
    parser.add_argument("--epochs", type=POSITIVE_INT, default=defaults.epochs, help="passes over the training set")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=defaults.batch_size, help="images per step")
    parser.add_argument(
        "--lr", type=POSITIVE_FLOAT, default=defaults.lr, help="SGD learning rate at the start of the cosine schedule"
    )
    parser.add_argument(
        "--momentum", type=_number(float, 0, high=1, high_open=True), default=defaults.momentum, help="SGD momentum"
    )
    parser.add_argument(
        "--weight-decay", type=NON_NEGATIVE_FLOAT, default=defaults.weight_decay, help="SGD weight decay"
    )
    parser.add_argument("--min-lr", type=NON_NEGATIVE_FLOAT, default=defaults.min_lr, help="end of the cosine schedule")
    parser.add_argument(
        "--seed", type=NON_NEGATIVE_INT, default=defaults.seed, help="initial weights, data order, augmentation"
    )
    parser.add_argument(
        "--train-subset", type=NON_NEGATIVE_INT, default=0, help="train on a fixed random subset of N images (0: all)"
    )
    parser.add_argument("--out-dir", default=None, help="where the checkpoint and logs go (default: runs/<method>)")
    parser.add_argument("--device", type=_device_name, default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=NON_NEGATIVE_INT, default=defaults.workers, help="data loader processes")
    parser.add_argument(
        "--channels-last", action="store_true", help="train in the channels_last layout (faster convolutions)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the method's loss through torch.compile (CUDA graphs on a GPU): same gradients, fewer launches; "
        "compiling takes minutes on a CPU (docs/compiled.md)",
    )
    options = "; ".join(
        f"{name}: " + (", ".join(f"{k}={v!r}" for k, v in cls.option_defaults().items()) or "none")
        for name, cls in sorted(METHODS.items())
    )
    parser.add_argument(
        "--set",
        dest="method_options",
        type=_method_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a method option, e.g. --set alpha=1.0 (repeat for several). Options and defaults per method: {options}",
    )
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out-dir")
    parser.add_argument(
        "--stop-after",
        type=POSITIVE_INT,
        default=None,
        metavar="EPOCH",
        help="stop once this many epochs of the --epochs schedule are done; --resume goes on from there",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["method_options"] = dict(args.method_options)
    values["progress"] = not args.no_progress
    values["out_dir"] = args.out_dir or os.path.join("runs", args.method)
    return TrainConfig(**values)


def _device_name(text: str) -> str:
    try:
        resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def check_train_config(config: TrainConfig, resume: bool) -> None:
    """What the flags alone cannot check, before anything is written; ValueError names the flag."""
    try:
        method = build_method(config.method, **config.method_options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--set: {error}") from None
    if config.members < method.members_needed():
        raise ValueError(
            f"--members: method {config.method!r} compares members and needs >= {method.members_needed()}, "
            f"got {config.members}" + (" (or --set beta=0)" if config.method == "edlcm" else "")
        )
    try:
        check_width(config.arch, config.width)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    checkpoint = os.path.join(config.out_dir, "checkpoint.pt")
    if os.path.exists(checkpoint) and not resume:
        raise ValueError(f"--out-dir: {checkpoint} exists; pass --resume to continue it, or choose another --out-dir")
    if config.dataset != "digits":
        if not config.data_dir:
            raise ValueError(f"--data-dir: dataset {config.dataset!r} needs the folder that holds it")
        if not config.download and not os.path.isdir(config.data_dir):
            hint = (
                " (or pass --download to fetch it with torchvision)"
                if config.dataset in ("cifar10", "cifar100")
                else ""
            )
            raise ValueError(f"--data-dir: {config.data_dir} is not a folder{hint}")
        try:
            load_dataset(config.dataset, config.data_dir, train=True, download=config.download)
        except (RuntimeError, OSError, ValueError, IndexError) as error:
            raise ValueError(
                f"--data-dir: cannot read {config.dataset!r} from {config.data_dir}: {str(error).splitlines()[0]}"
            ) from None


def command_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        check_train_config(config, args.resume)
    except ValueError as error:
        print(f"edlcm train: error: {error}", file=sys.stderr)
        return 2
    try:
        history = train(config, resume=args.resume, stop_after=args.stop_after).history
    except NonFiniteLossError as error:
        print(f"edlcm train: {error}", file=sys.stderr)
        return 1
    except CheckpointError as error:
        print(f"edlcm train: error: {error}", file=sys.stderr)
        return 2
    if history:
        print(json.dumps(history[-1]))
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """Short Base vs EDLCM training on the embedded digits and a small white-box comparison."""
    started, rows, epoch_seconds = time.perf_counter(), {}, {}
    test_set, _ = load_dataset("digits", None, train=False)
    for method in DEMO_METHODS:
        out_dir = os.path.join(args.out_dir, method)
        config = TrainConfig(
            method=method,
            arch="small_cnn",
            dataset="digits",
            epochs=args.epochs,
            out_dir=out_dir,
            seed=args.seed,
            progress=not args.no_progress,
        )
        print(f"training {method} ({config.members}x {config.arch}, {config.epochs} epochs on digits) -> {out_dir}")
        history = train(config, resume=True).history
        ensemble = load_checkpoint(os.path.join(out_dir, "checkpoint.pt"))[0]
        apgd = {"iterations": DEMO_APGD_ITERATIONS}
        rows[method] = robust_accuracy(
            ensemble,
            DataLoader(test_set, batch_size=512),
            DEMO_ATTACKS,
            DEMO_EPS,
            torch.device("cpu"),
            attack_options={"apgd": apgd, "apgd-dlr": apgd, "square": {"queries": DEMO_SQUARE_QUERIES}},
            progress=not args.no_progress,
        )
        epoch_seconds[method] = sum(record["seconds"] for record in history) / len(history)
    print(
        f"\nAccuracy (%) on the digits test set ({len(test_set)} images) under white-box L-inf attacks, eps in [0, 1] pixel units:\n"
    )
    print(markdown_table(rows))
    print(
        f"(APGD with {DEMO_APGD_ITERATIONS} iterations and Square with {DEMO_SQUARE_QUERIES} queries to keep the demo short; "
        "edlcm eval runs 100 and 5000)"
    )
    print("training time per epoch: " + ", ".join(f"{m} {s:.2f} s" for m, s in epoch_seconds.items()))
    print(
        f"(demo took {time.perf_counter() - started:.0f} s; checkpoints in {args.out_dir}; "
        f"full evaluation: edlcm eval --checkpoint {args.out_dir}/base/checkpoint.pt --checkpoint {args.out_dir}/edlcm/checkpoint.pt)"
    )
    return 0


def _eps_list(text: str) -> list[float]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        eps = [float(v) for v in values]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers >= 0 (e.g. 0.005,0.01), got {text!r}"
        ) from None
    if not eps or any(not 0 <= e <= 1 for e in eps):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated radii in [0, 1] (pixel units of [0, 1] images), got {text!r}"
        )
    return eps


def _attack_list(text: str) -> list[str]:
    try:
        return expand_attack_names(v for v in text.split(",") if v)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def command_eval(args: argparse.Namespace) -> int:
    if args.name and len(args.name) != len(args.checkpoint):
        print(
            f"edlcm eval: error: --name: give one per --checkpoint ({len(args.checkpoint)}), got {len(args.name)}",
            file=sys.stderr,
        )
        return 2
    for path in args.checkpoint + args.surrogate:
        if not os.path.isfile(path):
            print(f"edlcm eval: error: --checkpoint/--surrogate: {path}: no such file", file=sys.stderr)
            return 2
    settings = EvalSettings(
        checkpoints=args.checkpoint,
        names=args.name or None,
        attacks=args.attacks,
        eps=args.eps,
        tsr_eps=args.tsr_eps,
        surrogates=args.surrogate,
        black_box_attacks=args.black_box_attacks,
        large_eps=args.large_eps,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        apgd_iterations=args.apgd_iterations,
        pgd_restarts=args.pgd_restarts,
        square_queries=args.square_queries,
        curvature=args.curvature,
        progress=not args.no_progress,
    )
    try:
        results, paths = run_evaluation(settings)
    except CheckpointError as error:
        print(f"edlcm eval: error: {error}", file=sys.stderr)
        return 2
    with open(paths[1]) as table:
        print(table.read())
    for name, result in results.items():
        for message in result["warnings"]:
            print(f"WARNING {name}: {message}")
    print("wrote " + ", ".join(paths))
    return 0


def main(argv=None) -> int:
    parser = _Parser(prog="edlcm", description="Train and evaluate EDLCM and baseline ensembles.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train_parser = commands.add_parser("train", help="train an ensemble with one method")
    add_train_arguments(train_parser)
    train_parser.set_defaults(run=command_train)
    demo = commands.add_parser(
        "demo",
        help="Base vs EDLCM on the embedded digits: clean accuracy and the per-sample worst case "
        "over six attacks (FGSM, BIM, PGD-10, APGD-CE, APGD-DLR, Square)",
    )
    demo.add_argument("--out-dir", default="runs/demo", help="checkpoints of the two runs")
    demo.add_argument("--epochs", type=POSITIVE_INT, default=DEMO_EPOCHS, help="epochs of each run")
    demo.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of both runs")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=command_demo)
    evaluation = commands.add_parser("eval", help="white-box, black-box and TSR evaluation of checkpoints")
    evaluation.add_argument(
        "--checkpoint", action="append", required=True, help="a trainer checkpoint.pt (repeat for several)"
    )
    evaluation.add_argument("--name", action="append", help="column name per checkpoint (default: its method)")
    attack_help = (
        "comma-separated attacks: "
        + ", ".join(f"{name} ({LABELS.get(name, name)})" for name in sorted(ATTACKS))
        + "; or a preset: "
        + ", ".join(f"{name} = {','.join(attacks)}" for name, attacks in PRESETS.items())
        + ". The per-sample worst case over all of them is reported (default: %(default)s)"
    )
    evaluation.add_argument("--attacks", type=_attack_list, default=",".join(PRESETS["default"]), help=attack_help)
    per_dataset = ", ".join(f"{name} {','.join(f'{e:g}' for e in eps)}" for name, eps in DEFAULT_EPS.items())
    evaluation.add_argument(
        "--eps",
        type=_eps_list,
        default=None,
        help=f"comma-separated L-inf radii; default per dataset (PDD's): {per_dataset}",
    )
    evaluation.add_argument(
        "--tsr-eps", type=_eps_list, default=[], help="also the member transfer matrix and TSR (eq 12)"
    )
    evaluation.add_argument(
        "--surrogate", action="append", default=[], help="checkpoint of a black-box surrogate ensemble"
    )
    evaluation.add_argument(
        "--black-box-attacks",
        type=_attack_list,
        default=None,
        help="attacks crafted on each surrogate and transferred (default: those of --attacks)",
    )
    evaluation.add_argument(
        "--large-eps",
        type=_number(float, 0, high=1),
        default=0.3,
        help="sanity check: PGD accuracy here should be ~0 (0: skip)",
    )
    evaluation.add_argument(
        "--max-samples", type=NON_NEGATIVE_INT, default=0, help="a fixed random subset of N test images (0: all)"
    )
    evaluation.add_argument("--batch-size", type=POSITIVE_INT, default=256, help="test images per attack batch")
    evaluation.add_argument("--data-dir", default=None, help="override the checkpoint's data folder")
    evaluation.add_argument("--out-dir", default="runs/eval", help="results.json, table.md and plots")
    evaluation.add_argument(
        "--cache-dir", default=None, help="per-sample results kept for resuming (default: OUT_DIR/flags)"
    )
    evaluation.add_argument("--device", type=_device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    evaluation.add_argument("--apgd-iterations", type=POSITIVE_INT, default=100, help="APGD-CE and APGD-DLR iterations")
    evaluation.add_argument("--pgd-restarts", type=POSITIVE_INT, default=1, help="random restarts of PGD")
    evaluation.add_argument(
        "--square-queries", type=POSITIVE_INT, default=5000, help="query budget of the Square attack"
    )
    evaluation.add_argument(
        "--curvature",
        type=NON_NEGATIVE_INT,
        default=0,
        metavar="N",
        help="curvature diagnostics on N test samples (>= 200 advised): mean |u| (eq 9), cosine of "
        "members' u (eq 10), input-Hessian lambda_max by power iteration",
    )
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluation.set_defaults(run=command_eval)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
