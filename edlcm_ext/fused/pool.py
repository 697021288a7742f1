"""MaxPool2d whose double backward is one gather in the tensors' own layout (csrc/max_pool2d.cpp).

``max_pool2d(...)`` has F.max_pool2d's signature; :func:`edlcm_ext.fused.fused_layers` routes every
``F.max_pool2d`` call (so every nn.MaxPool2d) to it. The forward is PyTorch's own max-pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from .. import ops

IntPair = int | tuple[int, int]


def max_pool2d(
    input: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """``F.max_pool2d`` through the edlcm_ext::max_pool2d op; forms it does not take run on F.max_pool2d."""
    if return_indices or input.dim() != 4 or input.dtype not in (torch.float32, torch.float64):
        return F.max_pool2d(
            input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=return_indices
        )
    stride = kernel_size if stride is None or stride == [] or stride == () else stride
    return ops.max_pool2d(input, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), ceil_mode)
