"""Model registry. Every model takes images in [0, 1]; normalization, if any, is its first layer,
so attacks and the regularizer work in pixel units."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn

from .base import MODELS, register  # noqa: F401  (architectures register here)
from .layers import Classifier, Normalize


def check_width(name: str, width: int) -> None:
    """Raise a ValueError naming ``width`` unless arch ``name`` can be built at that width."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if width != 1 and "width" not in inspect.signature(MODELS.lookup(name)).parameters:
        widened = sorted(n for n, b in MODELS.items() if "width" in inspect.signature(b).parameters)
        raise ValueError(f"width: arch {name!r} has no width multiplier (only {', '.join(widened)}), got {width}")


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width: int = 1,
) -> Classifier:
    """A registered architecture; with mean/std its first layer normalizes [0, 1] inputs. ``width``
    multiplies the channel counts of the architectures that take it (small_cnn)."""
    builder = MODELS.lookup(name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    check_width(name, width)
    network = builder(num_classes, in_channels, width) if width != 1 else builder(num_classes, in_channels)
    if mean is not None or std is not None:
        network.body = nn.Sequential(Normalize(mean, std), network.body)
    return network


from . import resnet, small_cnn, vgg  # noqa: E402,F401  (registers the architectures)
