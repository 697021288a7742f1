from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel, so that the model's input stays in [0, 1] pixel units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if mean is None or std is None or len(mean) != len(std) or min(std) <= 0:
            raise ValueError(
                f"mean and std must be per-channel sequences of equal length with std > 0, got {mean}, {std}"
            )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """body (images -> penultimate features (B, F)) followed by a linear classifier.

    Every registered architecture has this shape, so methods that act on the penultimate features
    (PDD's dropout) work with all of them.
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))
