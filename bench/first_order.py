"""How well the first-order (finite-difference) gradient mode agrees with the exact one.

    python bench/first_order.py [--record]

For each network and dtype: cosine similarity and norm ratio of the regularizer's parameter
gradient (first-order vs exact) at several fd_step values. Its speed is a mode of bench/step.py.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from records import record_markdown
from torch import nn

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.loss.first_order import FirstOrderCurvatureLoss
from edlcm_ext.models import build_model


def smooth_cnn(classes: int = 10) -> nn.Module:
    """small_cnn with Softplus and average pooling: no kinks for the finite difference to cross."""
    layers, channels = [], 3
    for width in (16, 32, 64):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.Softplus(),
            nn.AvgPool2d(2),
        ]
        channels = width
    return nn.Sequential(*layers[:-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


CASES = {
    "small_cnn (ReLU, max-pool) float32": (
        lambda: build_model("small_cnn", 10),
        torch.float32,
        (1e-2, 1e-3, 1e-4, 1e-6),
    ),
    "smooth_cnn (Softplus, avg-pool) float32": (smooth_cnn, torch.float32, (3e-2, 1e-2, 1e-3)),
    "small_cnn (ReLU, max-pool) float64": (lambda: build_model("small_cnn", 10), torch.float64, (1e-4, 1e-6, 1e-8)),
}


def regularizer_gradient(models, x, y, regularizer):
    models = copy.deepcopy(models)
    params = [p for m in models for p in m.parameters()]
    return torch.cat([g.flatten() for g in torch.autograd.grad(regularizer.terms(models, x, y).total, params)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the table under bench/results/")
    args = parser.parse_args()
    lines = ["| network | fd_step | cosine with exact | norm ratio |", "|---|---|---|---|"]
    for name, (builder, dtype, steps) in CASES.items():
        torch.manual_seed(0)
        models = [builder().to(dtype) for _ in range(3)]
        x, y = torch.rand(64, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (64,))
        exact = regularizer_gradient(models, x, y, HvpCurvatureLoss())
        for fd_step in steps:
            approx = regularizer_gradient(models, x, y, FirstOrderCurvatureLoss(fd_step=fd_step))
            lines.append(
                f"| {name} | {fd_step:g} | {F.cosine_similarity(exact, approx, dim=0).item():.4f} | "
                f"{(approx.norm() / exact.norm()).item():.3f} |"
            )
            print(lines[-1], flush=True)
    report = (
        "\n".join(lines)
        + "\n\nGradient of the regularizer (alpha L_r + beta L_g), 3 members, batch 64, 32x32x3, train mode.\n"
    )
    print(report)
    if args.record:
        record_markdown("first_order.py", "first_order", report)


if __name__ == "__main__":
    main()
