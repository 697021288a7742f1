"""Command line: ``edlcm train``, ``edlcm demo`` (also ``python -m edlcm_ext``)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from .attacks import ATTACKS, LABELS, PRESETS, expand_attack_names
from .checkpoint import CheckpointError
from .data import DATASETS, load_dataset
from .eval_job import EvalSettings, run_evaluation
from .evaluate import robust_accuracy
from .methods import METHODS, build_method
from .report import markdown_table
from .models import MODELS
from .train import NonFiniteLossError, TrainConfig, load_checkpoint, train

DEMO_METHODS = ("base", "edlcm")
DEMO_EPS = (0.05, 0.1)
# The worst case the demo prints must hold against strong attacks (APGD-CE, APGD-DLR); the paper's
# FGSM and 10-step PGD are kept as labeled extra rows.
DEMO_ATTACKS = PRESETS["default"]
DEMO_APGD_ITERATIONS = 50
DEMO_SQUARE_QUERIES = 300  # keeps the demo near a minute on 2 cores; edlcm eval defaults to 5000


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
    parser.add_argument("--method", default=defaults.method, choices=sorted(METHODS))
    parser.add_argument("--arch", default=defaults.arch, choices=sorted(MODELS))
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset (required except for digits)")
    parser.add_argument("--download", action="store_true", help="allow torchvision to download CIFAR")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--min-lr", type=float, default=defaults.min_lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-subset", type=int, default=0, help="train on a fixed random subset of N images")
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--device", type=_device_name, default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--channels-last", action="store_true", help="train in the channels_last layout (faster convolutions)")
    parser.add_argument("--set", dest="method_options", type=_method_option, action="append", default=[],
                        metavar="KEY=VALUE", help="method hyper-parameter, e.g. --set alpha=1.0 --set beta=0.01")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out-dir")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values["method_options"] = dict(args.method_options)
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def _device_name(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"invalid device {text!r}; choose auto, cpu, cuda or cuda:N") from None
    return text


def command_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        build_method(config.method, **config.method_options)
    except (TypeError, ValueError) as error:
        print(f"edlcm train: error: --set {' '.join(f'{k}={v!r}' for k, v in config.method_options.items())} "
              f"is not valid for method {config.method!r}: {error}", file=sys.stderr)
        return 2
    try:
        history = train(config, resume=args.resume).history
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
        config = TrainConfig(method=method, arch="small_cnn", dataset="digits", epochs=args.epochs, out_dir=out_dir,
                             seed=args.seed, progress=not args.no_progress)
        print(f"training {method} ({config.members}x {config.arch}, {config.epochs} epochs on digits) -> {out_dir}")
        history = train(config, resume=True).history
        ensemble = load_checkpoint(os.path.join(out_dir, "checkpoint.pt"))[0]
        apgd = {"iterations": DEMO_APGD_ITERATIONS}
        rows[method] = robust_accuracy(ensemble, DataLoader(test_set, batch_size=512), DEMO_ATTACKS, DEMO_EPS,
                                       torch.device("cpu"), attack_options={"apgd": apgd, "apgd-dlr": apgd, "square": {"queries": DEMO_SQUARE_QUERIES}},
                                       progress=not args.no_progress)
        epoch_seconds[method] = sum(record["seconds"] for record in history) / len(history)
    print(f"\nAccuracy (%) on the digits test set ({len(test_set)} images) under white-box L-inf attacks, eps in [0, 1] pixel units:\n")
    print(markdown_table(rows))
    print(f"(APGD with {DEMO_APGD_ITERATIONS} iterations and Square with {DEMO_SQUARE_QUERIES} queries to keep the demo short; "
          "edlcm eval runs 100 and 5000)")
    print("training time per epoch: " + ", ".join(f"{m} {s:.2f} s" for m, s in epoch_seconds.items()))
    print(f"(demo took {time.perf_counter() - started:.0f} s; checkpoints in {args.out_dir}; "
          f"full evaluation: edlcm eval --checkpoint {args.out_dir}/base/checkpoint.pt --checkpoint {args.out_dir}/edlcm/checkpoint.pt)")
    return 0


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _attack_list(text: str) -> list[str]:
    try:
        return expand_attack_names(v for v in text.split(",") if v)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def command_eval(args: argparse.Namespace) -> int:
    settings = EvalSettings(
        checkpoints=args.checkpoint, names=args.name or None, attacks=args.attacks, eps=args.eps, tsr_eps=args.tsr_eps,
        surrogates=args.surrogate, black_box_attacks=args.black_box_attacks, large_eps=args.large_eps, max_samples=args.max_samples, batch_size=args.batch_size,
        data_dir=args.data_dir, out_dir=args.out_dir, cache_dir=args.cache_dir, device=args.device, apgd_iterations=args.apgd_iterations,
        pgd_restarts=args.pgd_restarts, square_queries=args.square_queries, curvature=args.curvature, progress=not args.no_progress)
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
    parser = argparse.ArgumentParser(prog="edlcm", description="Train and evaluate EDLCM and baseline ensembles.")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train an ensemble with one method")
    add_train_arguments(train_parser)
    train_parser.set_defaults(run=command_train)
    demo = commands.add_parser("demo", help="Base vs EDLCM on the embedded digits, with FGSM/PGD robustness")
    demo.add_argument("--out-dir", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=command_demo)
    evaluation = commands.add_parser("eval", help="white-box, black-box and TSR evaluation of checkpoints")
    evaluation.add_argument("--checkpoint", action="append", required=True, help="a trainer checkpoint.pt (repeat for several)")
    evaluation.add_argument("--name", action="append", help="column name per checkpoint (default: its method)")
    attack_help = ("comma-separated attacks: " + ", ".join(f"{name} ({LABELS.get(name, name)})" for name in sorted(ATTACKS))
                   + "; or a preset: " + ", ".join(f"{name} = {','.join(attacks)}" for name, attacks in PRESETS.items())
                   + ". The per-sample worst case over all of them is reported (default: %(default)s)")
    evaluation.add_argument("--attacks", type=_attack_list, default=",".join(PRESETS["default"]), help=attack_help)
    evaluation.add_argument("--eps", type=_float_list, default=None, help="comma-separated; default: PDD's for the dataset")
    evaluation.add_argument("--tsr-eps", type=_float_list, default=[], help="also the member transfer matrix and TSR (eq 12)")
    evaluation.add_argument("--surrogate", action="append", default=[], help="checkpoint of a black-box surrogate ensemble")
    evaluation.add_argument("--black-box-attacks", type=_attack_list, default=None,
                            help="attacks crafted on each surrogate and transferred (default: those of --attacks)")
    evaluation.add_argument("--large-eps", type=float, default=0.3, help="sanity check: PGD accuracy here should be ~0 (0: skip)")
    evaluation.add_argument("--max-samples", type=int, default=0, help="a fixed random subset of N test images")
    evaluation.add_argument("--batch-size", type=int, default=256)
    evaluation.add_argument("--data-dir", default=None, help="override the checkpoint's data folder")
    evaluation.add_argument("--out-dir", default="runs/eval")
    evaluation.add_argument("--cache-dir", default=None, help="per-sample results kept for resuming (default: OUT_DIR/flags)")
    evaluation.add_argument("--device", type=_device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    evaluation.add_argument("--apgd-iterations", type=int, default=100)
    evaluation.add_argument("--pgd-restarts", type=int, default=1)
    evaluation.add_argument("--square-queries", type=int, default=5000, help="query budget of the Square attack")
    evaluation.add_argument("--curvature", type=int, default=0, metavar="N",
                            help="curvature diagnostics on N test samples (>= 200 advised): mean |u| (eq 9), cosine of "
                                 "members' u (eq 10), input-Hessian lambda_max by power iteration")
    evaluation.add_argument("--no-progress", action="store_true")
    evaluation.set_defaults(run=command_eval)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
