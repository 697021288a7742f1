"""Typed wrappers of the edlcm_ext custom ops, with their fake (meta) kernels and autograd.

Every op's schema is declared once in C++ (csrc/<op>.cpp); this module is the only Python place
that knows about it.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "curvature_stats",
    "batch_norm_backward",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "max_pool2d",
    "max_pool2d_gather",
]


def curvature_stats(u: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-sample |u_m|^2 (M, B) and pairwise cos(u_i, u_j), i < j, (M(M-1)/2, B) of u (M, B, D)."""
    return torch.ops.edlcm_ext.curvature_stats.default(u, eps)


@torch.library.register_fake("edlcm_ext::curvature_stats")
def _curvature_stats_fake(u: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    torch._check(u.dim() == 3, lambda: f"curvature_stats: u must have shape (M, B, D), got {tuple(u.shape)}")
    torch._check(
        u.dtype in (torch.float32, torch.float64),
        lambda: f"curvature_stats: u must be float32 or float64, got {u.dtype}",
    )
    members, batch = u.shape[0], u.shape[1]
    return u.new_empty((members, batch)), u.new_empty((members * (members - 1) // 2, batch))


@torch.library.register_fake("edlcm_ext::_curvature_stats_backward")
def _curvature_stats_backward_fake(grad_sq_norms, grad_cosines, u, sq_norms, cosines, eps):
    torch._check(sq_norms.shape == grad_sq_norms.shape, lambda: "_curvature_stats_backward: sq_norms shape mismatch")
    torch._check(cosines.shape == grad_cosines.shape, lambda: "_curvature_stats_backward: cosines shape mismatch")
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def _curvature_stats_setup_context(ctx, inputs, output):
    u, eps = inputs
    sq_norms, cosines = output
    ctx.save_for_backward(u, sq_norms, cosines)
    ctx.eps = eps


def _curvature_stats_backward(ctx, grad_sq_norms, grad_cosines):
    u, sq_norms, cosines = ctx.saved_tensors
    grad_u = torch.ops.edlcm_ext._curvature_stats_backward.default(
        grad_sq_norms, grad_cosines, u, sq_norms, cosines, ctx.eps
    )
    return grad_u, None


torch.library.register_autograd(
    "edlcm_ext::curvature_stats", _curvature_stats_backward, setup_context=_curvature_stats_setup_context
)


def _double_backward_not_supported(name: str):
    # EDLCM's parameter gradient needs these ops' first derivative only; refuse higher orders
    # loudly instead of letting autograd's fallback return silently wrong gradients.
    def backward(ctx, *grads):
        raise RuntimeError(f"edlcm_ext: double backward of {name} is not supported")

    return backward


torch.library.register_autograd(
    "edlcm_ext::_curvature_stats_backward", _double_backward_not_supported("curvature_stats")
)


def batch_norm_backward(
    grad_out: Tensor, input: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor, training: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias) of BatchNorm; differentiable once more (fused double backward)."""
    return torch.ops.edlcm_ext.batch_norm_backward.default(grad_out, input, weight, mean, invstd, training)


def _check_batch_norm_shapes(grad_out, input, mean, invstd):
    torch._check(
        input.dim() >= 2, lambda: f"batch_norm_backward: input must have shape (N, C, ...), got {tuple(input.shape)}"
    )
    torch._check(grad_out.shape == input.shape, lambda: "batch_norm_backward: grad_out must have input's shape")
    torch._check(
        mean.shape == (input.shape[1],) and invstd.shape == mean.shape,
        lambda: "batch_norm_backward: mean and invstd must have shape (C,)",
    )


def _empty_in_layout(shape, like: Tensor, layout_of: Tensor) -> Tensor:
    """A fake output of ``shape`` with ``like``'s dtype and device, in ``layout_of``'s layout
    (channels_last or contiguous), as the kernels return it."""
    return like.new_empty(shape).contiguous(memory_format=torch._prims_common.suggest_memory_format(layout_of))


@torch.library.register_fake("edlcm_ext::batch_norm_backward")
def _batch_norm_backward_fake(grad_out, input, weight, mean, invstd, training):
    _check_batch_norm_shapes(grad_out, input, mean, invstd)
    channels = input.shape[1]
    return _empty_in_layout(input.shape, input, input), input.new_empty(channels), input.new_empty(channels)


@torch.library.register_fake("edlcm_ext::_batch_norm_backward_backward")
def _batch_norm_backward_backward_fake(
    grad_grad_input, grad_grad_weight, grad_grad_bias, grad_out, input, weight, mean, invstd, training
):
    _check_batch_norm_shapes(grad_out, input, mean, invstd)
    full = _empty_in_layout(input.shape, input, input)
    return full, torch.empty_like(full), input.new_empty(input.shape[1])


def _batch_norm_backward_setup_context(ctx, inputs, output):
    grad_out, input, weight, mean, invstd, training = inputs
    ctx.save_for_backward(grad_out, input, weight, mean, invstd)
    ctx.training = training


def _batch_norm_backward_backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    grad_out, input, weight, mean, invstd = ctx.saved_tensors
    grad_grad_out, grad_input, grad_weight = torch.ops.edlcm_ext._batch_norm_backward_backward.default(
        grad_grad_input, grad_grad_weight, grad_grad_bias, grad_out, input, weight, mean, invstd, ctx.training
    )
    # In training mode mean and invstd are functions of input and grad_input already includes that
    # path, so they get no gradient of their own; in eval mode they are constants.
    return grad_grad_out, grad_input, (grad_weight if weight is not None else None), None, None, None


torch.library.register_autograd(
    "edlcm_ext::batch_norm_backward", _batch_norm_backward_backward, setup_context=_batch_norm_backward_setup_context
)
torch.library.register_autograd(
    "edlcm_ext::_batch_norm_backward_backward", _double_backward_not_supported("batch_norm_backward")
)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """``F.conv2d`` (4-d input, numeric padding) whose backward computes only what the pass needs (csrc/conv2d.cpp)."""
    return torch.ops.edlcm_ext.conv2d.default(input, weight, bias, list(stride), list(padding), list(dilation), groups)


@torch.library.register_fake("edlcm_ext::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4, lambda: f"conv2d: input must have shape (N, C_in, H, W), got {tuple(input.shape)}")
    torch._check(weight.dim() == 4, lambda: f"conv2d: weight must be 4-d, got {tuple(weight.shape)}")
    return torch.ops.aten.convolution.default(input, weight, bias, stride, padding, dilation, False, [0, 0], groups)


def conv2d_input_grad(
    grad_out: Tensor,
    weight: Tensor,
    input_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """Input gradient of ``F.conv2d`` for ``grad_out``; its backward runs only the products double backward needs."""
    return torch.ops.edlcm_ext.conv2d_input_grad.default(
        grad_out, weight, list(input_size), list(stride), list(padding), list(dilation), groups
    )


@torch.library.register_fake("edlcm_ext::conv2d_input_grad")
def _conv2d_input_grad_fake(grad_out, weight, input_size, stride, padding, dilation, groups):
    torch._check(
        grad_out.dim() == 4 and weight.dim() == 4, lambda: "conv2d_input_grad: grad_out and weight must be 4-d"
    )
    torch._check(
        len(input_size) == 4, lambda: f"conv2d_input_grad: input_size must be (N, C_in, H, W), got {input_size}"
    )
    torch._check(
        input_size[1] == weight.shape[1] * groups,
        lambda: "conv2d_input_grad: input_size[1] must be C_in of weight times groups",
    )
    return _empty_in_layout(input_size, grad_out, grad_out)


def _conv2d_input_grad_setup_context(ctx, inputs, output):
    grad_out, weight, _, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_out if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
    ctx.conv_args = (stride, padding, dilation, groups)


def _conv2d_input_grad_backward(ctx, grad_grad_input):
    # The op is linear in grad_out and in weight (module comment of csrc/conv2d_input_grad.cpp).
    grad_out, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv_args
    grad_grad_out = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_grad_out = F.conv2d(grad_grad_input, weight, None, stride, padding, dilation, groups)
    if ctx.needs_input_grad[1]:
        grad_weight = conv2d_weight_grad(grad_out, grad_grad_input, weight, stride, padding, dilation, groups)
    return grad_grad_out, grad_weight, None, None, None, None, None


def conv2d_weight_grad(
    grad_out: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """Weight gradient of ``F.conv2d(input, weight)`` for ``grad_out`` alone (ATen's, differentiable)."""
    return torch.ops.aten.convolution_backward.default(
        grad_out,
        input,
        weight,
        None,
        list(stride),
        list(padding),
        list(dilation),
        False,
        [0, 0],
        groups,
        [False, True, False],
    )[1]


torch.library.register_autograd(
    "edlcm_ext::conv2d_input_grad", _conv2d_input_grad_backward, setup_context=_conv2d_input_grad_setup_context
)


def max_pool2d(
    input: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> Tensor:
    """``F.max_pool2d`` (4-d input) whose input gradient's backward is one gather (csrc/max_pool2d.cpp)."""
    return torch.ops.edlcm_ext.max_pool2d.default(
        input, list(kernel_size), list(stride), list(padding), list(dilation), ceil_mode
    )


@torch.library.register_fake("edlcm_ext::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(input.dim() == 4, lambda: f"max_pool2d: input must have shape (N, C, H, W), got {tuple(input.shape)}")
    return torch.ops.aten.max_pool2d_with_indices.default(input, kernel_size, stride, padding, dilation, ceil_mode)[0]


@torch.library.register_fake("edlcm_ext::max_pool2d_input_grad")
def _max_pool2d_input_grad_fake(grad_out, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(
        grad_out.shape == indices.shape, lambda: "max_pool2d_input_grad: grad_out and indices must have the same shape"
    )
    return torch.ops.aten.max_pool2d_with_indices_backward.default(
        grad_out, input, kernel_size, stride, padding, dilation, ceil_mode, indices
    )


def _max_pool2d_input_grad_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])


def _max_pool2d_input_grad_backward(ctx, grad_grad_input):
    # Linear in grad_out, piecewise constant in input (csrc/max_pool2d.cpp): the input gets no gradient.
    (indices,) = ctx.saved_tensors
    return max_pool2d_gather(grad_grad_input, indices), None, None, None, None, None, None, None


torch.library.register_autograd(
    "edlcm_ext::max_pool2d_input_grad",
    _max_pool2d_input_grad_backward,
    setup_context=_max_pool2d_input_grad_setup_context,
)


def max_pool2d_gather(values: Tensor, indices: Tensor) -> Tensor:
    """values (N, C, H, W) read at max-pooling indices (N, C, H_out, W_out), in the indices' layout."""
    return torch.ops.edlcm_ext.max_pool2d_gather.default(values, indices)


@torch.library.register_fake("edlcm_ext::max_pool2d_gather")
def _max_pool2d_gather_fake(values, indices):
    torch._check(values.dim() == 4 and indices.dim() == 4, lambda: "max_pool2d_gather: values and indices must be 4-d")
    torch._check(indices.dtype == torch.int64, lambda: f"max_pool2d_gather: indices must be int64, got {indices.dtype}")
    return _empty_in_layout(indices.shape, values, indices)


torch.library.register_autograd("edlcm_ext::max_pool2d_gather", _double_backward_not_supported("max_pool2d_input_grad"))
