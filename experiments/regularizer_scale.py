"""How hard does each term of eq 11 pull on the weights? Norms of the weight gradients of the CE,
alpha * L_r and beta * L_g, per L_r convention, on training batches, at a trained checkpoint's
weights or at an architecture's initialization.

The loss values alone mislead: L_r's share of the loss at step 0 says little about training, where
the input curvature (and so L_r) grows by orders of magnitude. Prints (and with --out writes) a
Markdown table, one row per source and convention, averaged over --batches batches.

    python experiments/regularizer_scale.py --data-dir ../shared/data/cifar10-jpeg \\
        --checkpoint RUN/checkpoint.pt --arch small_cnn --out results/paper_defaults/regularizer_scale.md
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.evaluation.curvature import term_gradient_norms
from edlcm_ext.models import build_model
from edlcm_ext.training.checkpoint import load_checkpoint
from edlcm_ext.training.data import CIFAR10_INFO, load_dataset


def average_over_batches(models, batches, regularizer) -> dict:
    rows = [term_gradient_norms(models, x, y, regularizer) for x, y in batches]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


def members_at(source: str, arch: str) -> tuple[str, list[nn.Module]]:
    """(label, members): a checkpoint's, or 3 freshly initialized members of arch (source "init")."""
    if source == "init":
        torch.manual_seed(0)
        return f"{arch} at init", [build_model(arch, 10, 3, CIFAR10_INFO.mean, CIFAR10_INFO.std) for _ in range(3)]
    ensemble, config, _, checkpoint = load_checkpoint(source)
    return f"{config.arch}, {config.method} after epoch {checkpoint['epoch'] + 1}", list(ensemble.members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--checkpoint", action="append", default=[], help="trained run(s); 'init' for a fresh ensemble")
    parser.add_argument("--arch", default="small_cnn", help="the architecture of 'init'")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)  # the training transform's crops and flips
    dataset, _ = load_dataset("imagefolder", args.data_dir, train=True)
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = [batch for _, batch in zip(range(args.batches), loader)]
    lines = [
        f"# Weight-gradient norms of eq 11's terms, alpha={args.alpha}, beta={args.beta}, B=64, "
        f"mean over {len(batches)} CIFAR-10 (JPEG) training batches",
        "",
        f"{platform.node()} ({platform.machine()}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        "Members in train mode, as in a training step.",
        "",
        "| weights | reduction | CE | alpha·L_r | beta·L_g | ‖∇CE‖ | ‖∇ alpha·L_r‖ | ‖∇ beta·L_g‖ | ‖∇ alpha·L_r‖ / ‖∇CE‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for source in args.checkpoint or ["init"]:
        label, models = members_at(source, args.arch)
        models = [m.train() for m in models]
        for reduction in ("mean", "per_sample"):
            r = average_over_batches(
                models, batches, HvpCurvatureLoss(alpha=args.alpha, beta=args.beta, reduction=reduction)
            )
            lines.append(
                f"| {label} | {reduction} | {r['ce']:.3g} | {r['alpha_l_r']:.3g} | {r['beta_l_g']:.3g} | {r['grad_ce']:.3g} | "
                f"{r['grad_alpha_l_r']:.3g} | {r['grad_beta_l_g']:.3g} | {r['grad_alpha_l_r'] / r['grad_ce']:.3g} |"
            )
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        pathlib.Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
