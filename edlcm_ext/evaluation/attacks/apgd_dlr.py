import torch

from .apgd import APGD
from .base import margin, register


def dlr_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample untargeted DLR loss (Croce & Hein 2020, eq 6):
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), z sorted decreasingly as z_pi1 >= z_pi2 >= z_pi3.
    Invariant to shifting and scaling z, so log-probabilities (an Ensemble's output) give the same
    loss as the logits behind them."""
    if output.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {output.shape[1]}")
    ordered = output.sort(dim=1, descending=True).values
    return -margin(output, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


@register("apgd-dlr")
class APGDDLR(APGD):
    """APGD (Croce & Hein 2020) on the untargeted DLR loss instead of CE, as in AutoAttack's
    standard suite: the same step-size schedule (see APGD); DLR does not saturate the way CE does
    on confident or rescaled outputs, so it breaks defenses that only flatten CE."""

    def per_sample_loss(self, output, y):
        return dlr_loss(output, y)
