"""BatchNorm whose backward runs through edlcm_ext's fused kernels, so its double backward is fused.

PyTorch builds BatchNorm's double backward from dozens of full-size elementwise ops; EDLCM runs it
in every BatchNorm layer at every step. Three ways to use the fused path, same numbers each way:
- ``with fused_batchnorm(): ...`` routes every ``F.batch_norm`` call (so every nn.BatchNorm*d)
  made inside the block; HvpCurvatureLoss does this by default.
- ``convert_batchnorm(model)`` swaps nn.BatchNorm1d/2d/3d for subclasses that always use it;
  state_dict keys and running-statistic updates stay those of PyTorch's modules.
- ``batch_norm(...)``: the function, with F.batch_norm's signature.
The forward is PyTorch's own ``native_batch_norm`` (including its running-statistic update).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from . import ops


class _FusedBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps):
        output, batch_mean, batch_invstd = torch.native_batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
        if training:
            mean, invstd = batch_mean, batch_invstd
        else:  # copies: the buffers may be updated in place before backward runs
            mean, invstd = running_mean.clone(), (running_var + eps).rsqrt()
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.training = training
        ctx.has_bias = bias is not None
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, mean, invstd = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = ops.batch_norm_backward(
            grad_output, input, weight, mean, invstd, ctx.training
        )
        return (
            grad_input,
            grad_weight if weight is not None else None,
            grad_bias if ctx.has_bias else None,
            None, None, None, None, None,
        )


def batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` whose backward (and double backward) runs on the fused kernels."""
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    if training:  # F.batch_norm's own check ("Expected more than 1 value per channel when training")
        F._verify_batch_size(input.size())
    if input.dtype not in (torch.float32, torch.float64) or input.numel() == 0:
        # AMP dtypes and empty batches: PyTorch's own path, with its behaviour
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _FusedBatchNormFunction.apply(input, weight, bias, running_mean, running_var, training, momentum, eps)


class _FusedBatchNormMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fused_batchnorm(enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``F.batch_norm`` call uses the fused backward kernels."""
    if not enabled:
        yield
        return
    with _FusedBatchNormMode():
        yield


class _FusedBatchNormMixin:
    def forward(self, input: Tensor) -> Tensor:
        with fused_batchnorm():
            return super().forward(input)


class FusedBatchNorm1d(_FusedBatchNormMixin, nn.BatchNorm1d):
    """nn.BatchNorm1d with the fused backward."""


class FusedBatchNorm2d(_FusedBatchNormMixin, nn.BatchNorm2d):
    """nn.BatchNorm2d with the fused backward."""


class FusedBatchNorm3d(_FusedBatchNormMixin, nn.BatchNorm3d):
    """nn.BatchNorm3d with the fused backward."""


_FUSED_CLASSES = {nn.BatchNorm1d: FusedBatchNorm1d, nn.BatchNorm2d: FusedBatchNorm2d, nn.BatchNorm3d: FusedBatchNorm3d}


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Swap (in place) every nn.BatchNorm1d/2d/3d in ``model`` for its fused subclass; returns ``model``.

    Parameters, buffers, state_dict keys and hooks are kept (only the class changes).
    """
    for module in model.modules():
        fused = _FUSED_CLASSES.get(type(module))
        if fused is not None:
            module.__class__ = fused
    return model
