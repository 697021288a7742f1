"""The EDLCM regularizer's building blocks, shared by HvpCurvatureLoss (loss.py), the first-order
mode and the curvature diagnostics. edlcm_ext.loss.reference is an independent plain twin of them.

Conventions (paper eqs 2, 8-10):
- l_m(z) is member m's cross-entropy *summed* over the batch, so grad_x l_m is the per-sample input
  gradient and does not shrink with the batch size; u, g and the cosines are built from it.
- The scale of L_r is a choice the paper leaves open (``reduction``):
  "per_sample" (the default): eq 9 per sample, averaged over the batch, as CURE does:
  L_r = sum_m mean_b |u_{m,b}|^2. It does not depend on the batch size.
  "mean": eq 9 read with the batch-mean CE of nn.CrossEntropyLoss(), whose input gradient is the
  per-sample one divided by B, and the norm taken over the whole batch:
  L_r = sum_m sum_b |u_{m,b} / B|^2 = sum_m mean_b |u_{m,b}|^2 / B, B times smaller.
  Conversion: alpha under "per_sample" = alpha under "mean" / B gives the same loss and gradients
  (B: the batch size the loss is called with). L_g is the same in both.
- g_m = sign(grad_x l_m(x)) / |sign(grad_x l_m(x))|_2 per sample, a constant (detached); a sample
  whose gradient is exactly zero gets g = 0 (and so u = 0).
- u_m = grad_x l_m(x + h g_m) - grad_x l_m(x): eq 8 without the 1/h, which eq 9 absorbs into alpha.
- L_g = sum_{i<j} mean_b cos(u_{i,b}, u_{j,b}) (eq 10).
- L_ece = sum_m mean_b CE(f_m(x), y) (eq 2), from the same forward pass at x.
Both input gradients are built with create_graph=True, so backward through L_r / L_g gives the exact
parameter gradient (double backprop). Members keep their train/eval mode; each of the two forward
passes per member updates BatchNorm running statistics like any training-mode forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LogitsCheck = Callable[[Tensor], None] | None
REDUCTIONS = ("per_sample", "mean")


def l_r_scale(reduction: str, batch_size: int) -> float:
    """Factor from the "per_sample" convention's L_r to ``reduction``'s (see the module docstring)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return 1.0 / batch_size if reduction == "mean" else 1.0


class CurvatureTerms(NamedTuple):
    """The parts of the EDLCM loss (eq 11): loss = ece + total, total = alpha*l_r + beta*l_g.

    ``applied`` is False on the calls where a lazy HvpCurvatureLoss (every=k) skips
    the regularizer: total is then a zero and l_r, l_g are zeros that were not computed.
    ``alpha_applied`` is the weight L_r got in ``total``: alpha, or less where ``max_ratio`` capped it or
    ``max_pull`` bounded the pull (which scales beta alike).
    """

    total: Tensor
    ece: Tensor
    l_r: Tensor
    l_g: Tensor
    applied: bool = True
    alpha_applied: Tensor | None = None


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, check_logits: LogitsCheck = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x l(x), l(x), logits) for l = CE summed over the batch; x must require grad; the graph is kept."""
    logits = model(x)
    if check_logits is not None:
        check_logits(logits)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    return grad_x, loss, logits


def sign_direction(grad_x: Tensor) -> Tensor:
    """g = sign(grad) / |sign(grad)|_2 per sample (the high-curvature direction of sec. III-B)."""
    signs = grad_x.detach().sign()
    # A nonzero sign vector has norm >= 1, so the clamp only keeps an all-zero gradient at g = 0.
    norms = signs.flatten(1).norm(dim=1).clamp_min(1.0)
    return signs / norms.view(-1, *([1] * (signs.dim() - 1)))


def input_gradient_differences(
    models: Sequence[nn.Module], x: Tensor, y: Tensor, h: float, check_logits: LogitsCheck = None
) -> tuple[Tensor, Tensor, Tensor]:
    """u of shape (M, B, D) (eq 8 without 1/h), L_ece (eq 2) and whether each member classifies each
    sample correctly ((M, B) bool), all from the same forward at x."""
    x0 = x.detach().requires_grad_(True)
    differences, correct, ece = [], [], x0.new_zeros(())
    for model in models:
        grad_at_x, ce_sum, logits = input_gradient(model, x0, y, check_logits)
        x1 = (x0.detach() + h * sign_direction(grad_at_x)).requires_grad_(True)
        grad_at_x1, _, _ = input_gradient(model, x1, y, check_logits)
        differences.append((grad_at_x1 - grad_at_x).flatten(1))
        correct.append(logits.detach().argmax(dim=1) == y)
        ece = ece + ce_sum / x.shape[0]
    return torch.stack(differences), ece, torch.stack(correct)


def capped_alpha(alpha: float, l_r: Tensor, ece: Tensor, max_ratio: float | None) -> Tensor:
    """alpha, lowered on this batch where alpha * L_r would exceed max_ratio times the ensemble CE: a
    detached factor (no gradient flows through the cap itself); None leaves alpha as it is."""
    alpha = torch.as_tensor(alpha, dtype=l_r.dtype, device=l_r.device)
    if max_ratio is None:
        return alpha
    bound = max_ratio * ece.detach() / l_r.detach().clamp_min(torch.finfo(l_r.dtype).tiny)
    return torch.minimum(alpha, bound)


def terms_from_statistics(
    sq_norms: Tensor,
    cosines: Tensor,
    ece: Tensor,
    alpha: float,
    beta: float,
    scale: float = 1.0,
    max_ratio: float | None = None,
) -> CurvatureTerms:
    """Batch means and sums of eqs 9-10, combined as in eq 11; ``scale`` is :func:`l_r_scale`,
    ``max_ratio`` the cap of :func:`capped_alpha`."""
    l_r = sq_norms.mean(dim=1).sum() * scale
    l_g = cosines.mean(dim=1).sum()
    weight = capped_alpha(alpha, l_r, ece, max_ratio)
    return CurvatureTerms(total=weight * l_r + beta * l_g, ece=ece, l_r=l_r, l_g=l_g, alpha_applied=weight)


def ensemble_cross_entropy(member_logits: Sequence[Tensor], y: Tensor) -> Tensor:
    """L_ece = sum_m CE(f_m(x), y), each a batch mean (paper eq 2)."""
    return sum(F.cross_entropy(logits, y) for logits in member_logits)


def weight_gradient_norm(grads: Sequence[Tensor | None]) -> Tensor:
    """The L2 norm of all the weights' gradients together (None: a weight without one), in float64."""
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))
