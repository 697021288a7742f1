"""The product: HvpCurvatureLoss (EDLCM's regularizer, paper eqs 8-11), its terms, the compiled and
first-order paths, and the pure-PyTorch reference. Uses the ops and the fused layers, nothing of
the trainer, the evaluator or the models."""

from .hvp_curvature_loss import DEFAULT_EVERY, DEFAULT_H, DEFAULT_MAX_RATIO, HvpCurvatureLoss
from .regularizer import CurvatureTerms

__all__ = ["DEFAULT_EVERY", "DEFAULT_H", "DEFAULT_MAX_RATIO", "CurvatureTerms", "HvpCurvatureLoss"]
