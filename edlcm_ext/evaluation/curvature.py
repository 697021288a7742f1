"""Curvature diagnostics of trained members: does EDLCM lower curvature and disperse it (sec. III)?

Per test sample, at the trained weights and in eval mode:
- |u_m| (eq 8 without 1/h, the per-sample term of eq 9) averaged over members;
- the mean pairwise cosine of the members' u (eq 10's per-sample term);
- lambda_max of each member's input Hessian of CE (eq 5-6: the quantity L_r targets), by power
  iteration on exact Hessian-vector products (double backprop), averaged over members.

And, on training batches, how hard each term of eq 11 pulls on the weights (term_gradient_norms): a
loss value can mislead, as a term a thousandth of the CE can have a larger gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import ops
from ..loss.regularizer import input_gradient_differences, weight_gradient_norm

if TYPE_CHECKING:
    from ..loss.hvp_curvature_loss import HvpCurvatureLoss

PerSampleLoss = Callable[[Tensor], Tensor]  # x (B, ...) -> per-sample losses (B,), samples independent


def largest_hessian_eigenvalue(loss_fn: PerSampleLoss, x: Tensor, iterations: int = 20, seed: int = 0) -> Tensor:
    """Per-sample eigenvalue of largest magnitude of the input Hessian of ``loss_fn`` at x (B,), by
    power iteration: v <- Hv / |Hv|, reported as the Rayleigh quotient <v, Hv>. Samples must not
    interact (eval-mode BatchNorm), so one batched HVP gives every sample's own product."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss_fn(x).sum(), x, create_graph=True)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / v.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    eigenvalue = x.new_zeros(x.shape[0])
    for _ in range(iterations):
        (hv,) = torch.autograd.grad(gradient, x, v, retain_graph=True)
        eigenvalue = (hv * v).flatten(1).sum(dim=1)
        norms = hv.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        v = hv / norms.view(-1, *([1] * (x.dim() - 1)))
    return eigenvalue.detach()


def curvature_diagnostics(
    members: Sequence[nn.Module],
    loader: DataLoader,
    device: torch.device,
    h: float = 0.1,
    iterations: int = 20,
    max_samples: int = 200,
) -> dict:
    """Means and medians over the first ``max_samples`` samples of ``loader``: |u|, cos(u_i, u_j),
    lambda_max (members' train/eval mode is restored afterwards; evaluated in eval mode)."""
    modes = [m.training for m in members]
    for m in members:
        m.eval()
    norms, cosines, eigenvalues, seen = [], [], [], 0
    try:
        for x, y in loader:
            if seen >= max_samples:
                break
            x, y = x[: max_samples - seen].to(device), y[: max_samples - seen].to(device)
            seen += len(y)
            with torch.enable_grad():
                u, _, _ = input_gradient_differences(members, x, y, h)
                sq_norms, pair_cosines = ops.curvature_stats(u.detach())
                norms.append(sq_norms.sqrt().mean(dim=0))
                if len(members) > 1:
                    cosines.append(pair_cosines.mean(dim=0))
                eigenvalues.append(
                    torch.stack(
                        [
                            largest_hessian_eigenvalue(
                                lambda z, m=m, y=y: F.cross_entropy(m(z), y, reduction="none"), x, iterations
                            )
                            for m in members
                        ]
                    ).mean(dim=0)
                )
    finally:
        for m, mode in zip(members, modes):
            m.train(mode)

    def summary(values: list[Tensor]) -> dict:
        if not values:
            return {"mean": float("nan"), "median": float("nan")}
        flat = torch.cat(values).double().cpu()
        return {"mean": flat.mean().item(), "median": flat.median().item()}

    return {
        "samples": seen,
        "h": h,
        "power_iterations": iterations,
        "u_norm": summary(norms),
        "u_cosine": summary(cosines),
        "lambda_max": summary(eigenvalues),
    }


def term_gradient_norms(models: Sequence[nn.Module], x: Tensor, y: Tensor, regularizer: HvpCurvatureLoss) -> dict:
    """Values of CE, alpha*L_r and beta*L_g (nominal alpha, no cap) and the L2 norms of their gradients
    over all members' weights, taken with autograd.grad: no .grad is touched, so it can probe a run."""
    terms = regularizer.terms(models, x, y)
    weighted = {"ce": terms.ece, "alpha_l_r": regularizer.alpha * terms.l_r, "beta_l_g": regularizer.beta * terms.l_g}
    params = [p for m in models for p in m.parameters()]
    result = {}
    for name, value in weighted.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        result[name] = float(value.detach())
        result[f"grad_{name}"] = float(weight_gradient_norm(grads))
    return result


def l_r_by_correctness(members: Sequence[nn.Module], batches, h: float = 0.1) -> dict:
    """Where L_r (eq 9) sits: over the member-samples of ``batches`` ((x, y) pairs, taken as given, in
    the members' current train/eval mode), the fraction a member misclassifies at x, the share of
    sum |u_mb|^2 they carry, and the ratio of their mean |u_mb|^2 to the correct ones' (the evidence
    behind ``HvpCurvatureLoss(correct_only=True)``, docs/results.md)."""
    wrong = total = 0
    wrong_sq = right_sq = 0.0
    for x, y in batches:
        with torch.enable_grad():
            u, _, correct = input_gradient_differences(members, x, y, h)
        sq_norms, _ = ops.curvature_stats(u.detach())
        wrong += int((~correct).sum())
        total += correct.numel()
        wrong_sq += float(sq_norms[~correct].sum())
        right_sq += float(sq_norms[correct].sum())
    right = total - wrong
    return {
        "member_samples": total,
        "misclassified_fraction": wrong / total,
        "misclassified_l_r_share": wrong_sq / (wrong_sq + right_sq),
        "sq_norm_ratio": (wrong_sq / wrong) / (right_sq / right) if wrong and right and right_sq else float("nan"),
    }
