"""The architectures' registry (one architecture per module beside this one)."""

from ..registry import Registry

# name -> builder(num_classes, in_channels[, width]) -> Classifier
MODELS: Registry = Registry("arch")
register = MODELS.register
