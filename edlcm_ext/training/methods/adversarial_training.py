"""Adversarial training of the ensemble (Madry et al. 2018), and its fast single-step form (Wong et
al. 2020): the field's default defense, beside which EDLCM is compared (docs/results.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...linf_ball import project, random_start
from ...loss.compiled import LazilyCompiled, check_switch
from ...loss.regularizer import ensemble_cross_entropy
from .base import Method, register
from .crafting import batchnorm_statistics_kept


@register("at")
class AdversarialTraining(Method):
    """L_ece (eq 2) on examples crafted within the L-inf ball of radius ``eps`` around each batch.

    The examples ascend the CE of the ensemble's averaged prediction, log(mean_m softmax(f_m(x))),
    as our evaluation attacks it: ``steps`` signed-gradient steps of ``step_size``, each projected
    onto the ball and the box [0, 1], from a uniform random start (``random_start``). The defaults,
    steps=1 with a random start and step 1.25 eps, are the fast single-step form (Wong et al. 2020);
    steps=k > 1 is PGD adversarial training, whose default step 2.5 eps / k lets k steps cross the
    ball (Madry et al.). The members are then trained on the crafted batch alone.

    BatchNorm while crafting: the members stay in train mode (batch statistics, as the training
    forward on the crafted batch sees them), and the running statistics are put back after crafting,
    so only the training forward updates them. Crafting takes input gradients only (the parameters'
    .grad is never touched) and runs eager; ``--compile`` compiles the training pass on the crafted
    batch.
    """

    name = "at"

    def __init__(
        self, eps: float = 0.01, steps: int = 1, step_size: float | None = None, random_start: bool = True
    ) -> None:
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number (L-inf radius in [0, 1] pixels), got {eps}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a positive finite number or None, got {step_size}")
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be True or False, got {random_start!r}")
        self.eps, self.steps, self.random_start = float(eps), steps, random_start
        default_step = 1.25 * eps if steps == 1 else 2.5 * eps / steps
        self.step_size = float(default_step if step_size is None else step_size)
        self.train_on = self.crafted_cross_entropy

    def recorded_options(self) -> dict:
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size, "random_start": self.random_start}

    def use_compiled(self, option: bool | dict = True) -> None:
        check_switch("compile", option)
        if option is not False:  # crafting's input gradients stay eager: Dynamo cannot trace autograd.grad
            self.train_on = LazilyCompiled(self.crafted_cross_entropy, option)

    def craft(self, ensemble, x, y):
        """The crafted batch: detached, within eps of x, in [0, 1]."""
        x = x.detach()
        crafted = random_start(x, self.eps) if self.random_start else x.clone()
        with batchnorm_statistics_kept(ensemble), torch.enable_grad():
            for _ in range(self.steps):
                crafted.requires_grad_(True)
                loss = F.nll_loss(ensemble(crafted), y, reduction="sum")
                (gradient,) = torch.autograd.grad(loss, crafted)
                crafted = project(crafted.detach() + self.step_size * gradient.sign(), x, self.eps)
        return crafted.detach()

    @staticmethod
    def crafted_cross_entropy(ensemble, crafted, y):
        return ensemble_cross_entropy(ensemble.member_logits(crafted), y)

    def loss(self, ensemble, x, y):
        ce = self.train_on(ensemble, self.craft(ensemble, x, y), y)
        return ce, {"ce": ce}
