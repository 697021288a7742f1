"""What the methods that train on crafted inputs (adversarial training, TRS's neighbour) share: an
L-inf projection, a uniform random start, and BatchNorm statistics left as the training step
alone would leave them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def project(x_crafted: Tensor, x: Tensor, eps: float) -> Tensor:
    """Back into the L-inf ball of radius eps around x and the image box [0, 1]."""
    return torch.min(torch.max(x_crafted, x - eps), x + eps).clamp(0, 1)


def random_start(x: Tensor, eps: float) -> Tensor:
    """x plus uniform noise in [-eps, eps] per pixel, in the box [0, 1] (Madry et al. 2018's start)."""
    return project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps)


@contextlib.contextmanager
def batchnorm_statistics_kept(modules: nn.Module) -> Iterator[None]:
    """Crafting passes run the members in train mode (batch statistics, as the training forward that
    follows sees them); this puts every BatchNorm's running statistics back afterwards, so evaluation
    sees only the training forwards' updates, not the crafting passes'."""
    saved = [
        (buffer, buffer.clone())
        for module in modules.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in module.buffers()
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
