"""One switch that routes layers through edlcm_ext's double-backward paths: BatchNorm
(:mod:`edlcm_ext.fused.batchnorm`, fused kernels), Conv2d (:mod:`edlcm_ext.fused.conv`, only the products
double backward needs) and MaxPool2d (:mod:`edlcm_ext.fused.pool`, a gather in either layout). Same
values and gradients as PyTorch's layers, less time.

- ``with fused_layers(): ...`` routes every ``F.batch_norm``, ``F.conv2d`` and ``F.max_pool2d``
  call made inside the block (so every nn.BatchNorm*d, nn.Conv2d and nn.MaxPool2d);
  HvpCurvatureLoss does this by default.
- ``convert_to_fused(model)`` swaps those modules for subclasses that always use it; state_dict
  keys, hooks and running-statistic updates stay those of PyTorch's modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .batchnorm import batch_norm
from .conv import conv2d
from .pool import max_pool2d

ROUTES = ((F.batch_norm, batch_norm), (F.conv2d, conv2d), (F.max_pool2d, max_pool2d))


class _FusedLayersMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for routed, fused in ROUTES:
            if func is routed:
                return fused(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fused_layers(enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``F.batch_norm``, ``F.conv2d`` and ``F.max_pool2d`` call runs on edlcm_ext's paths."""
    if not enabled:
        yield
        return
    with _FusedLayersMode():
        yield


class _FusedMixin:
    def forward(self, input):
        with fused_layers():
            return super().forward(input)


class FusedBatchNorm1d(_FusedMixin, nn.BatchNorm1d):
    """nn.BatchNorm1d with the fused backward."""


class FusedBatchNorm2d(_FusedMixin, nn.BatchNorm2d):
    """nn.BatchNorm2d with the fused backward."""


class FusedBatchNorm3d(_FusedMixin, nn.BatchNorm3d):
    """nn.BatchNorm3d with the fused backward."""


class FusedConv2d(_FusedMixin, nn.Conv2d):
    """nn.Conv2d whose double backward runs only the products it needs."""


class FusedMaxPool2d(_FusedMixin, nn.MaxPool2d):
    """nn.MaxPool2d whose double backward is one gather in the tensors' layout."""


_FUSED_CLASSES = {
    nn.BatchNorm1d: FusedBatchNorm1d,
    nn.BatchNorm2d: FusedBatchNorm2d,
    nn.BatchNorm3d: FusedBatchNorm3d,
    nn.Conv2d: FusedConv2d,
    nn.MaxPool2d: FusedMaxPool2d,
}


def convert_to_fused(model: nn.Module) -> nn.Module:
    """Swap (in place) every nn.BatchNorm1d/2d/3d, nn.Conv2d and nn.MaxPool2d in ``model`` for its fused subclass;
    returns ``model``. Parameters, buffers, state_dict keys and hooks are kept (only the class changes)."""
    for module in model.modules():
        fused = _FUSED_CLASSES.get(type(module))
        if fused is not None:
            module.__class__ = fused
    return model
