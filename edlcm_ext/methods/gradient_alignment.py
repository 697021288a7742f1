"""Baselines that penalise aligned input gradients of the members (first-order diversity)."""

import itertools

import torch
import torch.nn.functional as F

from ..fused import fused_layers
from . import Method, register
from .base import ensemble_cross_entropy


def member_input_gradients(ensemble, x, y):
    """Members' logits at x and their input gradients of CE, kept in the graph (double backprop,
    through edlcm_ext's fused layers: the same gradients as PyTorch's, faster)."""
    x = x.detach().requires_grad_(True)
    with fused_layers():
        member_logits = ensemble.member_logits(x)
        gradients = [
            torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, create_graph=True)[0].flatten(1)
            for logits in member_logits
        ]
    return member_logits, gradients


def pairwise_cosines(gradients):
    """cos(grad_i, grad_j) per sample for every pair i < j: shape (pairs, B)."""
    return torch.stack([F.cosine_similarity(a, b, dim=1) for a, b in itertools.combinations(gradients, 2)])


@register("gal")
class GAL(Method):
    """GAL (Kariyappa & Qureshi 2019): L_ece + lambda * log sum_{i<j} exp(cos(grad_i, grad_j)),
    per sample then averaged over the batch; lambda = 0.5. Needs >= 2 members."""

    name = "gal"
    min_members = 2

    def __init__(self, lam: float = 0.5) -> None:
        self.lam = lam

    def loss(self, ensemble, x, y):
        member_logits, gradients = member_input_gradients(ensemble, x, y)
        ce = ensemble_cross_entropy(member_logits, y)
        alignment = torch.logsumexp(pairwise_cosines(gradients), dim=0).mean()
        return ce + self.lam * alignment, {"ce": ce, "gal": alignment}


@register("deg")
class DEG(Method):
    """DEG, dispersed ensemble gradients (Huang et al. 2021): L_ece + beta * sum_{i<j} mean_b
    cos(grad_i, grad_j); beta = 0.01. Needs >= 2 members."""

    name = "deg"
    min_members = 2

    def __init__(self, beta: float = 0.01) -> None:
        self.beta = beta

    def loss(self, ensemble, x, y):
        member_logits, gradients = member_input_gradients(ensemble, x, y)
        ce = ensemble_cross_entropy(member_logits, y)
        dispersion = pairwise_cosines(gradients).mean(dim=1).sum()
        return ce + self.beta * dispersion, {"ce": ce, "cos": dispersion}
