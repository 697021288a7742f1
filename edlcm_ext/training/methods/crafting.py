"""What the methods that train on crafted inputs (adversarial training, TRS's neighbour) share
besides the L-inf ball (edlcm_ext.linf_ball): BatchNorm statistics left as the training step alone
would leave them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


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
