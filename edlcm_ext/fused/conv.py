"""Conv2d whose backward computes only the gradients the running pass needs, with an input gradient
(edlcm_ext's conv2d_input_grad) whose own backward runs only the two products EDLCM's double
backward needs (csrc/conv2d.cpp and csrc/conv2d_input_grad.cpp say which, and why that is faster).

``conv2d(...)`` has F.conv2d's signature; :func:`edlcm_ext.fused.fused_layers` routes every
``F.conv2d`` call (so every nn.Conv2d) to it. The forward is PyTorch's own convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from .. import ops


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` through the edlcm_ext::conv2d op; forms it does not take run on F.conv2d itself."""
    if (
        isinstance(padding, str)  # "same"/"valid": PyTorch resolves them; rare in the models we train
        or input.dim() != 4  # unbatched input
        or input.dtype not in (torch.float32, torch.float64)
        or torch.is_autocast_enabled(input.device.type)  # autocast casts inside; keep PyTorch's own path
    ):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    return ops.conv2d(input, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups)
