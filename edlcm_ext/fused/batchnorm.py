"""BatchNorm whose backward runs through edlcm_ext's fused kernels, so its double backward is fused.

PyTorch builds BatchNorm's double backward from dozens of full-size elementwise ops; EDLCM runs it
in every BatchNorm layer at every step. ``batch_norm(...)`` has F.batch_norm's signature;
:func:`edlcm_ext.fused.fused_layers` routes every ``F.batch_norm`` call (so every nn.BatchNorm*d) to
it, and :func:`edlcm_ext.fused.convert_to_fused` swaps the modules. The forward is PyTorch's own
``native_batch_norm`` (including its running-statistic update).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops


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
            None,
            None,
            None,
            None,
            None,
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
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
