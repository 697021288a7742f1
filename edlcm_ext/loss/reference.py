"""EDLCM's regularizer in plain PyTorch, written from the paper apart from the production code: the
baseline that bench/ times the fused path against, and a twin the tests compare with (next to
closed forms and implementations written in the tests themselves). It shares no code with
:mod:`edlcm_ext.loss.regularizer`, so "simplifying" it cannot change what HvpCurvatureLoss computes.
Conventions: those of :mod:`edlcm_ext.loss.regularizer`'s docstring.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .regularizer import CurvatureTerms


def curvature_statistics(u: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """The twin of ops.curvature_stats: |u_m|^2 per sample (M, B) and cos(u_i, u_j) for i < j (P, B)."""
    sq_norms = torch.stack([(member * member).sum(dim=1) for member in u])
    pairs = [F.cosine_similarity(u[i], u[j], dim=1, eps=eps) for i, j in itertools.combinations(range(u.shape[0]), 2)]
    return sq_norms, (torch.stack(pairs) if pairs else u.new_zeros((0, u.shape[1])))


def edlcm_terms(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    alpha: float,
    beta: float,
    h: float,
    reduction: str = "per_sample",
    max_ratio: float | None = None,
) -> CurvatureTerms:
    """alpha * L_r + beta * L_g (eqs 8-11) and L_ece (eq 2), with no input validation and no fused layer."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    rows, ece = [], 0.0
    for model in models:
        here = x.detach().clone().requires_grad_(True)
        logits = model(here)
        ece = ece + F.cross_entropy(logits, y)
        (slope,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), here, create_graph=True)
        signs = torch.sign(slope.detach())
        direction = signs / torch.linalg.vector_norm(signs.flatten(1), dim=1).clamp(min=1.0).reshape(shape)
        there = (x.detach() + h * direction).requires_grad_(True)
        (slope_there,) = torch.autograd.grad(
            F.cross_entropy(model(there), y, reduction="sum"), there, create_graph=True
        )
        rows.append((slope_there - slope).flatten(1))
    u = torch.stack(rows)
    sq_norms, cosines = curvature_statistics(u)
    l_r = sq_norms.mean(dim=1).sum() / (x.shape[0] if reduction == "mean" else 1)
    l_g = cosines.mean(dim=1).sum()
    weight = torch.tensor(alpha, dtype=l_r.dtype, device=l_r.device)
    if max_ratio is not None:  # the cap: alpha lowered so that alpha * L_r <= max_ratio * CE, as a constant
        weight = torch.clamp(weight, max=(max_ratio * ece / l_r).detach())
    return CurvatureTerms(total=weight * l_r + beta * l_g, ece=ece, l_r=l_r, l_g=l_g, alpha_applied=weight)
