"""edlcm-ext: fast EDLCM ensemble adversarial defense (fused C++/CUDA kernels for its regularizer)."""

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import (
    _C,  # noqa: F401  (loads the kernels: registers torch.ops.edlcm_ext.*)
    ops,
)
from .loss import CurvatureTerms, HvpCurvatureLoss

__all__ = ["ops", "HvpCurvatureLoss", "CurvatureTerms"]
