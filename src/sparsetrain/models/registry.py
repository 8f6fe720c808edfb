"""Models by name, so configs can say ``model: small_resnet`` plus keyword options.

A builder is a callable taking keyword arguments ``input_shape`` (one sample's shape,
without the batch axis, e.g. ``ClassificationSplit.input_shape``) and
``num_classes``, plus its own options, and returning an ``nn.Module`` whose forward
maps ``(B, *input_shape)`` to ``(B, num_classes)`` logits. :func:`build_model`
checks option names against the builder's signature before calling it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any, TypeVar

from torch import nn

from sparsetrain.options import check_options, keyword_options
from sparsetrain.models.mobilenet import MobileNetV1
from sparsetrain.models.mlp import build_mlp
from sparsetrain.models.resnet import ResNet, resnet18, resnet34, resnet50
from sparsetrain.models.small_resnet import SmallResNet, small_resnet
from sparsetrain.models.wide_resnet import WideResNet
from ..errors import UserError

ModelBuilder = Callable[..., nn.Module]
_Builder = TypeVar("_Builder", bound=ModelBuilder)

# Supplied by build_model itself, not options from the config.
_DERIVED_ARGUMENTS = ("input_shape", "num_classes")


def channels_and_dim(input_shape: Sequence[int]) -> tuple[int, int]:
    """``(in_channels, dim)`` of one sample's shape.

    ``(C, L)`` -> ``(C, 1)`` (1-D signals), ``(C, H, W)`` -> ``(C, 2)`` (images).
    """
    shape = _check_input_shape(input_shape)
    return shape[0], len(shape) - 1


def build_small_resnet(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 16,
    blocks_per_stage: Sequence[int] = (1, 1, 1),
) -> SmallResNet:
    """:func:`small_resnet` with ``in_channels`` and ``dim`` taken from ``input_shape``."""
    in_channels, dim = channels_and_dim(input_shape)
    return small_resnet(
        in_channels=in_channels,
        num_classes=num_classes,
        width=width,
        blocks_per_stage=blocks_per_stage,
        dim=dim,
    )


def _image_channels(model: str, input_shape: Sequence[int]) -> int:
    in_channels, dim = channels_and_dim(input_shape)
    if dim != 2:
        raise UserError(
            f"model {model!r} needs images, input_shape (C, H, W); got {tuple(input_shape)!r}"
        )
    return in_channels


def _resnet_builder(name: str, factory: Callable[..., ResNet]) -> ModelBuilder:
    def build(
        *, input_shape: Sequence[int], num_classes: int, zero_init_residual: bool = False, small_input: bool = False
    ) -> ResNet:
        return factory(num_classes=num_classes, zero_init_residual=zero_init_residual, small_input=small_input,
                       in_channels=_image_channels(name, input_shape))

    build.__name__ = f"build_{name}"
    build.__doc__ = (f"torchvision-layout :func:`~sparsetrain.models.resnet.{name}`; ``in_channels`` "
                     "from ``input_shape``, which must be (C, H, W).")
    return build


def _wide_resnet_builder(name: str) -> ModelBuilder:
    def build(
        *, input_shape: Sequence[int], num_classes: int, depth: int = 28, widen_factor: int = 8, drop_rate: float = 0.3
    ) -> WideResNet:
        return WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes, drop_rate=drop_rate,
                          in_channels=_image_channels(name, input_shape))

    build.__name__ = f"build_{name}"
    build.__doc__ = ("GPMT-reference :class:`~sparsetrain.models.wide_resnet.WideResNet` (defaults: WRN-28-8, "
                     "dropout 0.3); ``in_channels`` from ``input_shape``, which must be (C, H, W).")
    return build


def build_mobilenet_v1(*, input_shape: Sequence[int], num_classes: int, width_mult: float = 1.0) -> MobileNetV1:
    """STR/GPMT-layout :class:`~sparsetrain.models.mobilenet.MobileNetV1`; ``in_channels`` from
    ``input_shape``, which must be (C, H, W)."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult,
                       in_channels=_image_channels("mobilenet_v1", input_shape))


MODELS: dict[str, ModelBuilder] = {
    "small_resnet": build_small_resnet,
    "resnet18": _resnet_builder("resnet18", resnet18),
    "resnet34": _resnet_builder("resnet34", resnet34),
    "resnet50": _resnet_builder("resnet50", resnet50),
    "wrn28_8": _wide_resnet_builder("wrn28_8"),
    "wide_resnet": _wide_resnet_builder("wide_resnet"),
    "mobilenet_v1": build_mobilenet_v1,
    "mlp": build_mlp,
}


def register_model(name: str, builder: _Builder | None = None, *, replace: bool = False) -> Any:
    """Add ``builder`` to :data:`MODELS` under ``name``; returns ``builder``.

    Without ``builder`` it returns a decorator. The builder must accept
    ``input_shape`` and ``num_classes`` as keywords. An existing name raises
    ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"model name {name!r} is not a non-empty string")
    if name in MODELS and not replace:
        raise UserError(f"model {name!r} is already registered (pass replace=True to override)")

    def add(fn: _Builder) -> _Builder:
        if not callable(fn):
            raise UserError(f"model {name!r} builder {fn!r} is not callable")
        names, _, takes_any = keyword_options(fn)
        for argument in _DERIVED_ARGUMENTS:
            if argument not in names and not takes_any:
                raise UserError(
                    f"model {name!r} builder {fn.__name__!r} does not take keyword {argument!r}"
                )
        MODELS[name] = fn
        return fn

    return add if builder is None else add(builder)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword options that model ``name`` accepts (besides input_shape, num_classes)."""
    names, _, _ = keyword_options(_lookup(name))
    return tuple(n for n in names if n not in _DERIVED_ARGUMENTS)


def build_model(
    name: str, *, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build model ``name`` for samples shaped ``input_shape`` and ``num_classes`` classes."""
    builder = _lookup(name)
    shape = _check_input_shape(input_shape)
    check_options("model", name, builder, options, supplied=_DERIVED_ARGUMENTS)
    return builder(input_shape=shape, num_classes=num_classes, **options)


def _lookup(name: str) -> ModelBuilder:
    if not isinstance(name, str) or name not in MODELS:
        raise UserError(f"model {name!r} is not one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    message = (
        f"input_shape={input_shape!r} is not (C, L) for 1-D signals or (C, H, W) for images"
        " (positive integers, no batch axis)"
    )
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise UserError(message)
    shape = tuple(input_shape)
    if len(shape) not in (2, 3) or any(
        isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in shape
    ):
        raise UserError(message)
    return tuple(int(n) for n in shape)
