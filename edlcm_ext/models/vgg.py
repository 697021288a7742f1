"""VGG-16 with BatchNorm (Simonyan & Zisserman 2015), the paper's black-box surrogate."""

from torch import nn

from .base import register
from .layers import Classifier

VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


@register("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int = 3) -> Classifier:
    layers, channels = [], in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: small inputs (8x8 digits) keep a pixel
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    classifier = nn.Linear(channels, num_classes)
    # torchvision's VGG initialization of the linear layer: logits start near 0. With PyTorch's default
    # the summed CE of 3 members spikes to 16.1 in the first 100 steps at the paper's lr 0.02 and ends
    # them at chance (6.94); with this, max 10.6 and 6.10 (results/paper_defaults/vgg16_bn_first100_steps.md).
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)
    return Classifier(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), classifier)
