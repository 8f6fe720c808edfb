"""Models: a small torchvision-named ResNet and ResNet-50 reference weight shapes."""

from sparsetrain.models.reference_shapes import resnet50_random_weights, resnet50_weight_shapes
from sparsetrain.models.small_resnet import BasicBlock, SmallResNet, small_resnet

__all__ = [
    "BasicBlock",
    "SmallResNet",
    "small_resnet",
    "resnet50_random_weights",
    "resnet50_weight_shapes",
]
