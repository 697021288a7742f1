"""HvpCurvatureLoss: the EDLCM regularizer (paper eq 11) as a drop-in loss for a training loop."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import ops
from ..fused import fused_layers
from .compiled import LazilyCompiled, check_switch, functional_input_gradient_differences
from .regularizer import (
    REDUCTIONS,
    CurvatureTerms,
    ensemble_cross_entropy,
    input_gradient_differences,
    l_r_scale,
    terms_from_statistics,
    weight_gradient_norm,
)

# Default finite-difference step (eq 8), an L2 distance in pixel units of [0, 1] images. g is the
# unit-norm sign vector, so x + h g is a corner of the L-inf ball of radius h / sqrt(D): 0.0018 on
# 32x32x3 inputs. Chosen by the sweep in docs/defaults.md: h 0.3 (the corner at the smallest attack
# radius, 0.005) bought more robustness but cost more clean accuracy than the issue allows.
DEFAULT_H = 0.1
# Safeguard: alpha * L_r is capped at this many times the ensemble CE of the batch (a detached
# factor on alpha). It is inactive wherever the regularizer trains sensibly (docs/defaults.md: it
# never engaged on small_cnn), and stops a model whose input curvature starts huge (torchvision's
# resnet18 at its own init: alpha * L_r ~100x the CE) from being driven to NaN.
DEFAULT_MAX_RATIO = 1.0
# Lazy regularization by default: the regularizer on one training call in 16, weighted 16. Chosen by
# the rule of results/cifar10_full/lazy_default.md (written before its runs): the largest k whose clean
# accuracy and worst case at eps 0.01 stay within the seed spread (at least 1.5 points) of the exact
# step's, for 1.37x the plain step on a CPU instead of 5.6x. every=1 is the paper's exact step.
DEFAULT_EVERY = 16
# Bound on the regularizer's pull by default: alpha and beta are lowered on a batch where the weight
# gradient of alpha * L_r + beta * L_g exceeds the CE's. The value cap alone does not bound the pull
# (3x the CE's on torchvision resnet18 at its own init), and under every=16 torchvision's ResNets
# diverged without it (results/trains_everywhere/). It never engaged on small_cnn (pull 0.08-0.14 of
# the CE's), so the evidence runs stand for it. 1.39x the plain step against 1.31x at every=16 without
# it (bench/results/step_2026-12-03_cpu_small_cnn_default.md). Where the training CE falls below L_r
# it binds, and a bound call joins its step once: the digits demo keeps 74% at eps 0.1, not 79%.
DEFAULT_MAX_PULL = 1.0
# alpha * L_r this many times the ensemble CE (at the first call) means the curvature term swamps the
# classification loss. Measured on CIFAR-10 (results/paper_defaults/): runs that trained had ratios
# 0.0004-1.7; resnet20 at 5.3 stalled at chance and torchvision resnet18 at 109 reached NaN.
DOMINANCE_RATIO = 4.0
# The dominance check reads two device values (a host sync): on the first regularized call, then
# once every this many regularized calls until it has warned once.
DOMINANCE_CHECK_INTERVAL = 1000


class HvpCurvatureLoss(nn.Module):
    """alpha * L_r + beta * L_g of an ensemble (EDLCM, paper eqs 8-11), with exact parameter gradients.

    ``reg(models, x, y)`` returns the scalar alpha*L_r + beta*L_g; add it to your ensemble
    cross-entropy. ``reg.terms(models, x, y)`` returns :class:`CurvatureTerms` (total, ece, l_r, l_g,
    applied), where ``ece`` is the ensemble cross-entropy (eq 2, batch mean) from the regularizer's
    own forward pass at x, so ``(t.ece + t.total).backward()`` is a whole EDLCM step.

    Args:
        alpha: weight of the curvature term L_r (paper default 1).
        beta: weight of the dispersion term L_g (paper default 0.01); needs >= 2 members when nonzero.
        h: finite-difference step of eq 8 (an L2 distance in the units of x).
        reduction: scale convention of L_r. "per_sample" (default, CURE's): eq 9 per sample, averaged
            over the batch, L_r = sum_m mean_b |u_mb|^2, independent of the batch size. "mean": eq 9
            with the batch-mean CE of ``nn.CrossEntropyLoss()`` and the norm over the whole batch,
            L_r = sum_m mean_b |u_mb|^2 / B (the paper's formula read literally in PyTorch; its
            strength falls as the batch grows). Same run: alpha_per_sample = alpha_mean / B.
        max_ratio: cap alpha * L_r at this many times the ensemble CE of the batch, by lowering alpha
            on that batch (a detached factor; ``CurvatureTerms.alpha_applied`` says by how much).
            None: no cap (the paper's loss).
        max_pull: bound the regularizer's pull instead of its value: on each batch, alpha and beta
            are lowered by a detached factor so that the norm of alpha * L_r + beta * L_g's gradient
            over the members' parameters is at most max_pull times the norm of the CE's
            (``alpha_applied`` includes the factor; beta gets the same). Both weight gradients are
            taken inside the call (1.3x the unbounded step on 3x small_cnn on a CPU: docs/loss.md),
            so ``total`` passes gradient to the members' parameters only (not to x or other
            tensors). Default 1 (docs/defaults.md); None: no bound.
        every: lazy regularization (as StyleGAN2's lazy R1): the regularizer runs on one training
            call out of ``every`` (the first included), weighted by ``every``, so its gradient summed
            over ``every`` steps is unchanged; the other calls cost one forward pass (``terms``) or
            nothing (``forward``). A term that max_ratio or max_pull bounded on its batch is applied
            once, not ``every`` times: the bound says how much the regularizer may weigh in one step.
            Default 16 (docs/defaults.md); ``every=1, max_pull=None`` is the paper's exact step (with
            the max_ratio cap).
        fused_layers: run the members' BatchNorm and Conv2d layers (every ``F.batch_norm`` and
            ``F.conv2d`` call) through edlcm_ext's double-backward paths (:mod:`edlcm_ext.fused`);
            same gradients, less time.
        check_inputs: check x for NaN/Inf and y's label range. On CPU these raise a ValueError; on
            other devices they are asynchronous device asserts (no host sync per call).
        compiled: run the regularizer's passes (and the CE-only calls of every=k) through
            torch.compile, the input gradients taken with torch.func (:mod:`edlcm_ext.loss.compiled`):
            the same loss and gradients as the exact path, as a few generated kernels (on CUDA
            replayed as CUDA graphs). True: torch.compile's defaults per device; a dict: torch.compile's
            keyword arguments. Compiles on the first call and again for a new batch shape or a
            train/eval switch. The labels' range is then checked by cross-entropy itself, not here.
        correct_only: experimental (#41, docs/results.md): L_r counts only the samples each member
            classifies correctly at x (its own argmax, from the same forward pass), still averaged over
            all B; L_g and the CE are unchanged. On trained members the misclassified 40% of
            member-samples carry 66% of L_r. Default False (the paper's L_r).

    Under ``torch.autocast`` the regularizer's passes run in float32: u is a small difference of two
    input gradients, which bf16 cannot resolve (docs/loss.md); the caller's other work (and the
    CE-only calls of every=k) keeps autocast.

    Training calls (grad mode on) advance the schedule of ``every``; its state is
    in ``state_dict()``, so it survives a checkpoint. Under ``torch.no_grad()`` (a validation loop) the
    terms are computed on the whole batch at full weight, detached, and the schedule does not move.
    Members are any modules mapping x (B, ...) to logits (B, classes); their train/eval mode is left
    as it is. The conventions are in :mod:`edlcm_ext.loss.regularizer`.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.01,
        h: float = DEFAULT_H,
        reduction: str = "per_sample",
        max_ratio: float | None = DEFAULT_MAX_RATIO,
        max_pull: float | None = DEFAULT_MAX_PULL,
        every: int = DEFAULT_EVERY,
        fused_layers: bool = True,
        check_inputs: bool = True,
        compiled: bool | dict = False,
        correct_only: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        check_switch("compiled", compiled)
        for name, value in (("h", h),) + tuple(
            (name, value) for name, value in (("max_ratio", max_ratio), ("max_pull", max_pull)) if value is not None
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.alpha, self.beta, self.h, self.reduction, self.every = (
            float(alpha),
            float(beta),
            float(h),
            reduction,
            every,
        )
        self.fused_layers, self.check_inputs = fused_layers, check_inputs
        self.compiled = compiled
        self.correct_only = bool(correct_only)
        self.max_ratio = None if max_ratio is None else float(max_ratio)
        self.max_pull = None if max_pull is None else float(max_pull)
        self.calls = 0  # training calls so far: the clock of `every`
        self._regularized_calls = 0
        self._warned = False

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, h={self.h}, reduction={self.reduction!r}, "
            f"max_ratio={self.max_ratio}, max_pull={self.max_pull}, every={self.every}, "
            f"fused_layers={self.fused_layers}, compiled={self.compiled!r}, correct_only={self.correct_only}"
        )

    @property
    def compiled(self) -> bool | dict:
        return self._compiled_option

    @compiled.setter
    def compiled(self, option: bool | dict) -> None:
        check_switch("compiled", option)
        self._compiled_option = option
        self._compiled_passes = self._compiled_cross_entropy = None
        if option is not False:
            self._compiled_passes = LazilyCompiled(self._functional_passes, option)
            self._compiled_cross_entropy = LazilyCompiled(members_cross_entropy, option)

    def get_extra_state(self) -> dict:
        return {"calls": self.calls, "regularized_calls": self._regularized_calls, "warned": self._warned}

    def set_extra_state(self, state: dict) -> None:
        self.calls, self._regularized_calls = int(state["calls"]), int(state["regularized_calls"])
        self._warned = bool(state["warned"])

    def schedule_weight(self, call: int) -> float:
        """The factor of the regularizer on training call ``call`` (0-based): ``every`` on the calls
        that regularize (call % every == 0, the first included), 0 on the others."""
        return 0.0 if call % self.every else float(self.every)

    def forward(self, models: Sequence[nn.Module], x: Tensor, y: Tensor) -> Tensor:
        return self._terms(models, x, y, need_ece=False).total

    def terms(self, models: Sequence[nn.Module], x: Tensor, y: Tensor) -> CurvatureTerms:
        return self._terms(models, x, y, need_ece=True)

    def _terms(self, models: Sequence[nn.Module], x: Tensor, y: Tensor, need_ece: bool) -> CurvatureTerms:
        check_logits = validate_inputs(models, x, y, self.beta, self.check_inputs)
        models, scale = list(models), l_r_scale(self.reduction, x.shape[0])
        if not torch.is_grad_enabled():
            with torch.enable_grad():
                terms = self._regularizer(models, x, y, check_logits, scale)
            return CurvatureTerms(*(t.detach() for t in terms[:4]), alpha_applied=terms.alpha_applied)
        weight = self.schedule_weight(self.calls)
        self.calls += 1
        if weight == 0:
            zero = x.new_zeros(())
            ece = self._members_cross_entropy(models, x, y, check_logits) if need_ece else zero
            return CurvatureTerms(total=zero.requires_grad_(), ece=ece, l_r=zero, l_g=zero, applied=False)
        capped = self._regularizer(models, x, y, check_logits, scale)
        terms, pull_factor = self._bound_pull(models, capped) if self.max_pull is not None else (capped, None)
        self._check_dominance(terms, x.shape[0])
        if weight == 1:
            return terms
        # A bounded term is applied once: its bound is what one step may take, and k times it diverged
        # torchvision resnet18 at every=16 (results/trains_everywhere/). A detached choice, no host sync.
        bounded = capped.alpha_applied < self.alpha  # the max_ratio cap engaged
        if pull_factor is not None:
            bounded = bounded | (pull_factor < 1)
        step_weight = torch.where(bounded, 1.0, weight).to(terms.total.dtype)
        return terms._replace(total=terms.total * step_weight)

    def _regularizer(self, models, x, y, check_logits, scale: float) -> CurvatureTerms:
        with torch.autocast(x.device.type, enabled=False):  # float32: bf16 cannot resolve u (docs/loss.md)
            return self._regularizer_passes(models, x, y, check_logits, scale)

    def _members_cross_entropy(self, models, x, y, check_logits) -> Tensor:
        if self._compiled_cross_entropy is not None:
            return self._compiled_cross_entropy(models, x, y)
        return members_cross_entropy(models, x, y, check_logits)

    def _regularizer_passes(self, models, x, y, check_logits, scale: float) -> CurvatureTerms:
        if self._compiled_passes is not None:
            return self._compiled_passes(models, x, y, scale)
        with fused_layers(self.fused_layers):
            u, ece, correct = input_gradient_differences(models, x, y, self.h, check_logits)
        return self._combine(u, ece, correct, scale)

    def _functional_passes(self, models, x, y, scale: float) -> CurvatureTerms:
        """The exact path's terms with the input gradients taken by torch.func, for torch.compile."""
        u, ece, correct = functional_input_gradient_differences(models, x, y, self.h)
        return self._combine(u, ece, correct, scale)

    def _combine(self, u: Tensor, ece: Tensor, correct: Tensor, scale: float) -> CurvatureTerms:
        """L_r and L_g (eqs 9-10) from u, combined with L_ece as in eq 11."""
        sq_norms, cosines = ops.curvature_stats(u)
        if self.correct_only:  # |u_mb|^2 counts where member m classifies sample b correctly; still / B
            sq_norms = sq_norms * correct.to(sq_norms.dtype)
        return terms_from_statistics(sq_norms, cosines, ece, self.alpha, self.beta, scale, self.max_ratio)

    def _bound_pull(self, models: list[nn.Module], terms: CurvatureTerms) -> tuple[CurvatureTerms, Tensor]:
        """``terms`` with total scaled by s = min(1, max_pull |grad CE| / |grad total|) over the members'
        parameters (s detached), and s. Both gradients are taken here, total's the one expensive double backward
        it needs anyway; the returned total hands its gradient back to the caller's backward unchanged."""
        params = [p for model in models for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "max_pull bounds the pull on the members' parameters, but none of them requires grad; "
                "set max_pull=None to train with the regularizer's gradient to other tensors only"
            )
        # Both graphs share the forward pass at x, which the caller's backward of ece still needs.
        ce_grads = torch.autograd.grad(terms.ece, params, retain_graph=True, allow_unused=True)
        total_grads = torch.autograd.grad(terms.total, params, retain_graph=True, allow_unused=True)
        ce_norm, total_norm = weight_gradient_norm(ce_grads), weight_gradient_norm(total_grads)
        factor = (self.max_pull * ce_norm / total_norm.clamp_min(torch.finfo(torch.float64).tiny)).clamp(max=1.0)
        factor = factor.to(terms.total.dtype)
        total = PrecomputedGradient.apply(terms.total.detach() * factor, factor, total_grads, *params)
        return terms._replace(total=total, alpha_applied=terms.alpha_applied * factor), factor

    def _check_dominance(self, terms: CurvatureTerms, terms_batch: int) -> None:
        """Warn once when alpha * L_r swamps the CE (a host sync, only every DOMINANCE_CHECK_INTERVAL)."""
        due = self._regularized_calls % DOMINANCE_CHECK_INTERVAL == 0
        self._regularized_calls += 1
        if self._warned or not due or self.alpha == 0:
            return
        curvature = float(terms.alpha_applied) * float(terms.l_r.detach())
        ce = float(terms.ece.detach())
        if curvature > DOMINANCE_RATIO * ce:
            self._warned = True
            fix = (
                f"set max_ratio (default {DEFAULT_MAX_RATIO:g}) or max_pull (default {DEFAULT_MAX_PULL:g}), lower alpha"
            )
            if self.reduction == "mean":  # under "mean" L_r scales as 1/B: a small batch makes it larger
                fix += f" (under 'mean' L_r scales as 1/batch size; this batch has {terms_batch})"
            warnings.warn(
                f"HvpCurvatureLoss: alpha * L_r = {curvature:.4g} is {curvature / max(ce, 1e-12):.0f}x the ensemble "
                f"cross-entropy ({ce:.4g}) with alpha={self.alpha:g} and reduction={self.reduction!r}: the curvature "
                f"term swamps the classification loss, and such runs stall at chance or diverge to NaN. To fix: {fix}.",
                RuntimeWarning,
                stacklevel=4,  # the caller of terms() or forward()
            )


class PrecomputedGradient(torch.autograd.Function):
    """A scalar whose backward hands ``factor * grads`` to ``params``: a term whose parameter gradient
    was already taken (by autograd.grad) joins the caller's backward without a second double backward."""

    @staticmethod
    def forward(ctx, value: Tensor, factor: Tensor, grads: tuple, *params: Tensor) -> Tensor:
        ctx.factor, ctx.grads = factor, grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        scale = grad_output * ctx.factor
        return None, None, None, *(None if grad is None else scale * grad for grad in ctx.grads)


def members_cross_entropy(models: Sequence[nn.Module], x: Tensor, y: Tensor, check_logits=None) -> Tensor:
    """L_ece (eq 2) from one forward pass per member, each member's logits checked."""
    member_logits = [model(x) for model in models]
    if check_logits is not None:
        for logits in member_logits:
            check_logits(logits)
    return ensemble_cross_entropy(member_logits, y)


def _check_values(condition: Tensor, message: str) -> None:
    """Raise on CPU; on an accelerator an asynchronous device assert, so no host sync."""
    if condition.device.type == "cpu":
        if not bool(condition):
            raise ValueError(message)
    else:
        torch._assert_async(condition, message)


def validate_inputs(models: Sequence[nn.Module], x: Tensor, y: Tensor, beta: float, check_values: bool = True):
    """Raise a clear error naming the bad argument; return the check to run on each member's logits."""
    if isinstance(models, nn.Module) and not isinstance(models, nn.ModuleList):
        raise TypeError("models must be a sequence of nn.Module members (e.g. a list or nn.ModuleList), got one module")
    models = list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("models must be a non-empty sequence of nn.Module")
    if beta != 0 and len(models) < 2:
        raise ValueError(
            f"models: L_g (beta={beta}) needs at least 2 members, got {len(models)}; set beta=0 for one model"
        )
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor, got {x.dtype if isinstance(x, Tensor) else type(x).__name__}"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(
            f"y must be an integer tensor of class labels, got {y.dtype if isinstance(y, Tensor) else type(y).__name__}"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"x and y disagree on the batch: x has shape {tuple(x.shape)} (batch size {x.shape[0]}) but y has shape "
            f"{tuple(y.shape)}; y must have shape (B,) = ({x.shape[0]},). If x is one unbatched image, pass x.unsqueeze(0)"
        )
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}")
    for index, model in enumerate(models):
        device = next((p.device for p in model.parameters()), x.device)
        if device != x.device:
            raise ValueError(f"models[{index}] is on {device} but x is on {x.device}")
    if check_values and x.device.type != "meta":
        _check_values(torch.isfinite(x).all(), "x contains non-finite values (NaN or Inf)")
    checked = []

    def check_logits(logits: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"each model must return logits of shape (B={x.shape[0]}, classes), got {tuple(logits.shape)}"
            )
        classes = logits.shape[1]
        if check_values and classes not in checked and y.device.type != "meta":
            checked.append(classes)
            _check_values(
                ((y >= 0) & (y < classes)).all(), f"y: labels must lie in [0, {classes}) for {classes} classes"
            )

    return check_logits
