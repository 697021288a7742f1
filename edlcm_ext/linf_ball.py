"""The L-inf ball around a batch of images in [0, 1]: what attacks (evaluation) and adversarial
training and TRS's neighbour (training) both step inside."""

from __future__ import annotations

import torch
from torch import Tensor


def project(x_moved: Tensor, x: Tensor, eps: float) -> Tensor:
    """Back into the L-inf ball of radius eps around x and the image box [0, 1]."""
    return torch.min(torch.max(x_moved, x - eps), x + eps).clamp(0, 1)


def random_start(x: Tensor, eps: float) -> Tensor:
    """x plus uniform noise in [-eps, eps] per pixel, in the box [0, 1] (Madry et al. 2018's start)."""
    return project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)
