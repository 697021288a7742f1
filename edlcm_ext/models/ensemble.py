"""An ensemble of classifiers whose prediction is the argmax of the members' mean softmax (eq 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Floor of the mean probability before the log, so attacks never see log(0).
LOG_PROBABILITY_FLOOR = 1e-12


class Ensemble(nn.Module):
    """``forward(x)`` returns log(mean_m softmax(f_m(x))) (clamped), the quantity that PDD, TRS and
    DVERGE attack; ``predict(x)`` its argmax (eq 1). Inputs are images in [0, 1]."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("members must hold at least one model")
        self.members = nn.ModuleList(members)

    def member_logits(self, x: Tensor) -> list[Tensor]:
        return [member(x) for member in self.members]

    def forward(self, x: Tensor) -> Tensor:
        probabilities = torch.stack([logits.softmax(dim=1) for logits in self.member_logits(x)]).mean(dim=0)
        return probabilities.clamp_min(LOG_PROBABILITY_FLOOR).log()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self(x).argmax(dim=1)
