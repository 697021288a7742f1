"""Baselines that penalise aligned input gradients of the members (first-order diversity)."""

import itertools

import torch
import torch.nn.functional as F

from ...fused import fused_layers
from ...loss.compiled import functional_input_gradient
from ...loss.regularizer import ensemble_cross_entropy
from .base import Method, register


def member_input_gradients(ensemble, x, y, functional: bool = False):
    """L_ece at x and the members' input gradients of their CE, kept in the graph (double backprop).
    Eager: autograd.grad with create_graph through edlcm_ext's fused layers (the same gradients as
    PyTorch's, faster); functional: torch.func, which torch.compile can trace (edlcm_ext.loss.compiled)."""
    if functional:
        gradients, ce_sums = zip(*(functional_input_gradient(member, x, y) for member in ensemble.members))
        return sum(ce_sums) / x.shape[0], [gradient.flatten(1) for gradient in gradients]
    x = x.detach().requires_grad_(True)
    with fused_layers():
        member_logits = ensemble.member_logits(x)
        gradients = [
            torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, create_graph=True)[0].flatten(1)
            for logits in member_logits
        ]
    return ensemble_cross_entropy(member_logits, y), gradients


def pairwise_cosines(gradients):
    """cos(grad_i, grad_j) per sample for every pair i < j: shape (pairs, B)."""
    return torch.stack([F.cosine_similarity(a, b, dim=1) for a, b in itertools.combinations(gradients, 2)])


class InputGradientDiversity(Method):
    """L_ece + weight * penalty(cosines of the members' input gradients, per pair and sample)."""

    min_members = 2
    log_name = ""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.functional = False  # input gradients by torch.func (set by use_compiled)

    def use_compiled(self, option: bool | dict = True) -> None:
        self.functional = True  # torch.compile cannot differentiate autograd.grad's graph again
        super().use_compiled(option)

    def penalty(self, cosines: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, ensemble, x, y):
        ce, gradients = member_input_gradients(ensemble, x, y, self.functional)
        penalty = self.penalty(pairwise_cosines(gradients))
        return ce + self.weight * penalty, {"ce": ce, self.log_name: penalty}


@register("gal")
class GAL(InputGradientDiversity):
    """GAL (Kariyappa & Qureshi 2019): L_ece + lambda * log sum_{i<j} exp(cos(grad_i, grad_j)),
    per sample then averaged over the batch; lambda = 0.5."""

    log_name = "gal"

    def __init__(self, lam: float = 0.5) -> None:
        super().__init__(lam)

    def penalty(self, cosines):
        return torch.logsumexp(cosines, dim=0).mean()


@register("deg")
class DEG(InputGradientDiversity):
    """DEG, dispersed ensemble gradients (Huang et al. 2021): L_ece + beta * sum_{i<j} mean_b
    cos(grad_i, grad_j); beta = 0.01."""

    log_name = "cos"

    def __init__(self, beta: float = 0.01) -> None:
        super().__init__(beta)

    def penalty(self, cosines):
        return cosines.mean(dim=1).sum()
