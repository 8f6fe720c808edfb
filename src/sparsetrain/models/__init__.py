"""Models: a small torchvision-named ResNet, ResNet-50 reference weight shapes, and a
registry to build models by name (:mod:`sparsetrain.models.registry`)."""

from sparsetrain.models.reference_shapes import resnet50_random_weights, resnet50_weight_shapes
from sparsetrain.models.registry import (
    MODELS,
    build_model,
    channels_and_dim,
    model_options,
    register_model,
)
from sparsetrain.models.small_resnet import BasicBlock, SmallResNet, small_resnet

__all__ = [
    "BasicBlock",
    "SmallResNet",
    "small_resnet",
    "resnet50_random_weights",
    "resnet50_weight_shapes",
    "MODELS",
    "build_model",
    "channels_and_dim",
    "model_options",
    "register_model",
]
