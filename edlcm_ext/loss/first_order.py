"""Experimental: EDLCM's regularizer with a first-order parameter gradient, no double backward at all.

Not part of the main API (``HvpCurvatureLoss`` and its docs): approximate, and on our records barely
faster than the exact step (6.5x against 6.7x plain on a CPU, 6.4x against 6.9x on an H100), though it
halves the memory. It is exact in the limit (cosine > 0.999999 with the exact gradient in float64,
tested), but a ReLU / max-pool network's parameter gradient jumps wherever a unit flips, and in float32
no step is both small enough to avoid flips and large enough for round-off: ``bench/first_order.py``
measured cosine 0.96 on a Softplus/avg-pool CNN at fd_step 1e-2, below 0.04 on the ReLU/max-pool
small_cnn at every step tried (bench/results/first_order_*.md). Use ``FirstOrderCurvatureLoss(fd_step=...)``
in place of ``HvpCurvatureLoss``, and only with smooth activations.

The exact parameter gradient of alpha*L_r + beta*L_g differentiates input gradients (double
backprop). With v = d(total)/du held fixed, that gradient is sum_m d/dtheta <v_m, u_m>, and for each
point z in {x, x + h g} the mixed derivative is a directional finite difference of ordinary
parameter gradients:

    d/dtheta <v, grad_z l(z)> = (grad_theta l(z + r v/|v|) - grad_theta l(z)) |v| / r + O(r).

So the step needs only first-order passes (PyTorch's own BatchNorm kernels, cuDNN, AMP,
channels_last, torch.compile all apply). Beyond the paper and approximate: see docs/fused.md for its
measured agreement with the exact gradient. The finite-difference passes run on scratch copies of
the buffers, so only the two passes at x and x + h g update them, as in the exact mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .hvp_curvature_loss import HvpCurvatureLoss
from .regularizer import CurvatureTerms, sign_direction, terms_from_statistics


def _input_and_parameter_gradients(model: nn.Module, z: Tensor, y: Tensor, params: list[Tensor]):
    z = z.detach().requires_grad_(True)
    grads = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), [z] + params)
    return grads[0], list(grads[1:])


def _parameter_gradients(model: nn.Module, z: Tensor, y: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Parameter gradients at z from a pass that leaves the model's buffers alone: BatchNorm updates
    running statistics in place without bumping their autograd version, so restoring them afterwards
    would invalidate the saved graph of the pass at x (still needed for the ensemble CE)."""
    scratch_buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.enable_grad():  # backward() of a Function runs without grad mode
        logits = torch.func.functional_call(model, scratch_buffers, (z.detach(),), strict=False)
        return list(torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), params))


class _FiniteDifferenceGradient(torch.autograd.Function):
    """Identity on the regularizer's value whose backward injects the finite-difference parameter gradient."""

    @staticmethod
    def forward(ctx, total, state, *params):
        ctx.state = state
        return total.clone()

    @staticmethod
    def backward(ctx, grad_total):
        return (None, None, *ctx.state.parameter_gradients(grad_total))


class _State:
    def __init__(self, models, y, step, member_params):
        self.models, self.y, self.step, self.member_params = models, y, step, member_params
        self.points = []  # per member: [(z, grad_theta l(z), v at z)]

    def parameter_gradients(self, grad_total: Tensor) -> list[Tensor]:
        out = []
        for model, params, points in zip(self.models, self.member_params, self.points):
            total = [torch.zeros_like(p) for p in params]
            for z, base, v in points:
                # v = 0 (e.g. alpha = 0 and one member) gives a zero step and a zero contribution;
                # the clamp avoids 0/0 without reading the norm on the host.
                norm = v.norm()
                shifted = _parameter_gradients(model, z + (self.step / norm.clamp_min(1e-30)) * v, self.y, params)
                for acc, g_shift, g_base in zip(total, shifted, base):
                    acc.add_((g_shift - g_base) * (grad_total * norm / self.step))
            out.extend(total)
        return out


def first_order_terms(
    settings: FirstOrderCurvatureLoss, models: Sequence[nn.Module], x: Tensor, y: Tensor, check_logits, scale: float
):
    """CurvatureTerms whose ``total`` back-propagates the finite-difference gradient. ``settings`` gives
    alpha, beta, h, max_ratio and fd_step (the L2 length, in input units per sample, of the
    difference step); ``scale`` is regularizer.l_r_scale."""
    alpha, beta, h, max_ratio, step = settings.alpha, settings.beta, settings.h, settings.max_ratio, settings.fd_step
    member_params = [[p for p in m.parameters() if p.requires_grad] for m in models]
    state = _State(list(models), y, step * x.shape[0] ** 0.5, member_params)
    differences, ece, grads_at = [], x.new_zeros(()), []
    for model, params in zip(models, member_params):
        x0 = x.detach().requires_grad_(True)
        logits = model(x0)
        if check_logits is not None:
            check_logits(logits)
        ce_sum = F.cross_entropy(logits, y, reduction="sum")
        grads = torch.autograd.grad(ce_sum, [x0] + params, retain_graph=True)  # graph kept for ece
        grad_x0, theta_x0 = grads[0], list(grads[1:])
        x1 = x.detach() + h * sign_direction(grad_x0)
        grad_x1, theta_x1 = _input_and_parameter_gradients(model, x1, y, params)
        differences.append((grad_x1 - grad_x0).detach().flatten(1))
        grads_at.append([(x1, theta_x1), (x.detach(), theta_x0)])
        ece = ece + ce_sum / x.shape[0]
    u = torch.stack(differences).requires_grad_(True)
    with torch.enable_grad():
        sq_norms, cosines = ops.curvature_stats(u)
        terms = terms_from_statistics(sq_norms, cosines, ece.detach(), alpha, beta, scale, max_ratio)
        (v,) = torch.autograd.grad(terms.total, u)
    shape = x.shape
    for member, points in enumerate(grads_at):
        v_member = v[member].view(shape)
        # u = grad(x1) - grad(x0): +v at x1, -v at x0
        state.points.append([(points[0][0], points[0][1], v_member), (points[1][0], points[1][1], -v_member)])
    total = _FiniteDifferenceGradient.apply(
        terms.total.detach(), state, *[p for params in member_params for p in params]
    )
    return CurvatureTerms(
        total=total, ece=ece, l_r=terms.l_r.detach(), l_g=terms.l_g.detach(), alpha_applied=terms.alpha_applied
    )


class FirstOrderCurvatureLoss(HvpCurvatureLoss):
    """Experimental: :class:`HvpCurvatureLoss` whose parameter gradient is the finite difference of
    :func:`first_order_terms` (``fd_step``: its per-sample L2 step) instead of double backprop. The
    same options otherwise, but not ``compiled`` (torch.compile traces the exact path only)."""

    def __init__(self, *args, fd_step: float = 1e-2, **kwargs) -> None:
        if not (math.isfinite(fd_step) and fd_step > 0):
            raise ValueError(f"fd_step must be a positive finite number, got {fd_step}")
        if kwargs.get("compiled", False) is not False:
            raise ValueError("compiled applies to HvpCurvatureLoss's exact path, not to FirstOrderCurvatureLoss")
        super().__init__(*args, **kwargs)
        self.fd_step = float(fd_step)

    def _regularizer_passes(self, models, x, y, check_logits, scale: float) -> CurvatureTerms:
        return first_order_terms(self, models, x, y, check_logits, scale)
