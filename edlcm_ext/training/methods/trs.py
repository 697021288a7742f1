"""TRS, transferability reduced smooth ensemble (Yang et al. 2021): the strongest ensemble-diversity
baseline, which like EDLCM penalizes the members' input gradients through double backprop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...fused import fused_layers
from ...linf_ball import project, random_start
from ...loss.compiled import LazilyCompiled, check_switch
from .base import Method, register
from .crafting import batchnorm_statistics_kept
from .gradient_alignment import member_input_gradients, pairwise_cosines

# TRS's public code takes input gradients of PyTorch's batch-mean CE at batch size 128, so its
# smoothness term is 2 mean_b |grad_b / 128|^2. We write it per sample with that factor made
# explicit, so its strength is theirs at any batch size (ours is 64).
REFERENCE_BATCH = 128


def smoothness(gradients) -> torch.Tensor:
    """TRS's smoothness term: the members' mean of 2 mean_b |grad_b / REFERENCE_BATCH|^2, grad_b the
    per-sample input gradient of the CE (their Magnitude of the batch-mean CE's gradient)."""
    return sum(2 * (g / REFERENCE_BATCH).pow(2).sum(dim=1).mean() for g in gradients) / len(gradients)


@register("trs")
class TRS(Method):
    """L_ece + scale * (coeff * L_sim + lamda * L_smooth) (Yang et al. 2021, eq 10 with their code's
    coefficients for CIFAR-10: scale 5, coeff 2, lamda 2; inputs in [0, 1] there as here).

    L_sim: the mean over member pairs of mean_b |cos(grad_i, grad_j)| of the input gradients at x.
    L_smooth (:func:`smoothness`) on a batch whose first half is x and whose second half is x's
    neighbour that most increases the members' gradient norm: ``steps`` signed-gradient steps of
    eps / 3 within the L-inf ball of radius eps, from a uniform random start, with eps ramped
    linearly over training from ``init_eps`` (first epoch) to ``adv_eps`` (the last), as their code
    does with --plus-adv. Our reading where the paper is silent, from their code: the absolute
    cosine, the batch-mean CE's gradient scale (REFERENCE_BATCH), the neighbour crafted in train
    mode (here with BatchNorm's running statistics put back after). The double backward runs
    through edlcm_ext's fused layers, as GAL's and DEG's do; ``--compile`` compiles the loss after
    the neighbour is crafted (input gradients by torch.func).
    """

    name = "trs"
    min_members = 2

    def __init__(
        self,
        scale: float = 5.0,
        coeff: float = 2.0,
        lamda: float = 2.0,
        init_eps: float = 0.1,
        adv_eps: float = 0.2,
        steps: int = 6,
    ) -> None:
        for name, value in (("scale", scale), ("coeff", coeff), ("lamda", lamda)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name, value in (("init_eps", init_eps), ("adv_eps", adv_eps)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name} must be a positive finite number (L-inf radius in [0, 1] pixels), got {value}"
                )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.scale, self.coeff, self.lamda = float(scale), float(coeff), float(lamda)
        self.init_eps, self.adv_eps, self.steps = float(init_eps), float(adv_eps), steps
        self.eps = self.init_eps
        self.functional = False  # input gradients by torch.func (set by use_compiled)
        self.terms = self.trs_terms

    def recorded_options(self) -> dict:
        return {
            "scale": self.scale,
            "coeff": self.coeff,
            "lamda": self.lamda,
            "init_eps": self.init_eps,
            "adv_eps": self.adv_eps,
            "steps": self.steps,
        }

    def set_progress(self, epoch: int, epochs: int) -> None:
        self.eps = self.init_eps + (self.adv_eps - self.init_eps) * epoch / epochs

    def use_compiled(self, option: bool | dict = True) -> None:
        check_switch("compile", option)
        if option is not False:  # the neighbour's crafting stays eager
            self.functional = True
            self.terms = LazilyCompiled(self.trs_terms, option)

    def neighbour(self, ensemble, x, y):
        """x's neighbour within self.eps that ascends the smoothness term (detached)."""
        x = x.detach()
        crafted = random_start(x, self.eps)
        with batchnorm_statistics_kept(ensemble), torch.enable_grad():
            for _ in range(self.steps):
                crafted.requires_grad_(True)
                with fused_layers():
                    gradients = [
                        torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), crafted, create_graph=True)[0]
                        for logits in ensemble.member_logits(crafted)
                    ]
                    (ascent,) = torch.autograd.grad(smoothness([g.flatten(1) for g in gradients]), crafted)
                crafted = project(crafted.detach() + self.eps / 3 * ascent.sign(), x, self.eps)
        return crafted.detach()

    def trs_terms(self, ensemble, x, y, x_smooth):
        ce, gradients = member_input_gradients(ensemble, x, y, self.functional)
        similarity = pairwise_cosines(gradients).abs().mean()
        _, smooth_gradients = member_input_gradients(ensemble, x_smooth, y, self.functional)
        smooth = smoothness(smooth_gradients)
        return ce, similarity, smooth

    def loss(self, ensemble, x, y):
        half = x.shape[0] // 2
        x_smooth = torch.cat([x[:half].detach(), self.neighbour(ensemble, x[half:], y[half:])])
        ce, similarity, smooth = self.terms(ensemble, x, y, x_smooth)
        loss = ce + self.scale * (self.coeff * similarity + self.lamda * smooth)
        return loss, {"ce": ce, "cos": similarity, "smooth": smooth}
