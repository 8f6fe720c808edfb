"""Image augmentations used by the reference ImageNet and CIFAR-10 recipes (PIL + torch, no torchvision).

Each transform is a small callable class that takes a ``PIL.Image.Image`` (``ToTensor`` also takes an
``(H, W, C)`` / ``(H, W)`` uint8 numpy array) and behaves like its torchvision namesake:

* :class:`RandomResizedCrop` ``(size, scale=(0.08, 1.0), ratio=(3/4, 4/3))``: torchvision's sampling
  (up to 10 tries of a random area fraction and log-uniform aspect ratio, then a centred crop of
  the whole image clamped to ``ratio``), then a bilinear resize of the crop to ``size``;
* :class:`RandomHorizontalFlip` ``(p=0.5)``;
* :class:`Resize` ``(size)``: an int resizes the SHORTER side to ``size`` (the longer side becomes
  ``int(size * long / short)``), an ``(h, w)`` pair resizes to exactly that; bilinear;
* :class:`CenterCrop` ``(size)``: crop box offsets rounded like torchvision; zero-padded if the
  image is smaller than ``size``;
* :class:`RandomCrop` ``(size, padding=None, padding_mode="reflect")``: pad (``"constant"`` with
  zeros, ``"edge"``, ``"reflect"`` or ``"symmetric"``), then a uniformly random ``size`` window;
* :class:`ToTensor`: ``(H, W, C)`` uint8 -> ``(C, H, W)`` float32 in ``[0, 1]``;
* :class:`Normalize` ``(mean, std)``: per channel ``(x - mean[c]) / std[c]``;
* :class:`Compose` ``(transforms)``: applies them in order.

**Randomness comes from torch's global generator only** (``torch.rand`` / ``torch.randint`` /
``Tensor.uniform_``; neither Python's ``random`` nor numpy's global state is used). So
``torch.manual_seed(s)`` makes a sequence of calls reproducible, and inside a
``torch.utils.data.DataLoader`` each worker is reproducible: torch seeds worker ``k`` with
``base_seed + k``, where ``base_seed`` is drawn from the loader's ``generator`` (or the global
generator) when iteration starts. The draws are made in the same order and with the same calls as
torchvision's, so the same seed picks the same crop boxes and flips as torchvision would.

Presets (image sizes are parameters so tests can use small images):

* :func:`imagenet_train_transform` ``(image_size=224)``: RandomResizedCrop, flip, ImageNet mean/std;
* :func:`imagenet_eval_transform` ``(image_size=224, resize_size=256)``: Resize, CenterCrop, mean/std;
* :func:`cifar10_train_transform` ``(image_size=32, padding=4)``: reflect-pad, RandomCrop, flip,
  normalisation with the GPMT constants (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`);
* :func:`cifar10_eval_transform` ``()``: normalisation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from PIL import Image
from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The CIFAR-10 constants of the GPMT code (std as commonly copied, not the exact per-pixel std).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_FLIP_LEFT_RIGHT = getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT
_PAD_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect", "symmetric": "symmetric"}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Compose",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "Resize",
    "CenterCrop",
    "RandomCrop",
    "ToTensor",
    "Normalize",
    "imagenet_train_transform",
    "imagenet_eval_transform",
    "cifar10_train_transform",
    "cifar10_eval_transform",
]


# ----------------------------------------------------------------------------- composition


class Compose:
    """Apply ``transforms`` one after the other."""

    def __init__(self, transforms: Iterable[Callable[[Any], Any]]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise UserError(f"Compose: {t!r} is not callable")

    def __call__(self, image: Any) -> Any:
        for t in self.transforms:
            image = t(image)
        return image

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


# ----------------------------------------------------------------------------- geometry


class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio`` (w/h), resize to ``size``."""

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0)):
        self.size = _size_pair(size, "RandomResizedCrop size")
        self.scale = _increasing_pair(scale, "RandomResizedCrop scale")
        self.ratio = _increasing_pair(ratio, "RandomResizedCrop ratio")

    def params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop box ``(top, left, height, width)`` inside a ``width`` x ``height`` image."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        # Fallback: the whole image, centre-cropped to the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < min(self.ratio):  # max(1, .): torchvision would return an empty box here
            w, h = width, max(1, int(round(width / min(self.ratio))))
        elif in_ratio > max(self.ratio):
            w, h = max(1, int(round(height * max(self.ratio)))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_pil(image, self)
        top, left, h, w = self.params(*image.size)
        out_h, out_w = self.size
        return image.resize((out_w, out_h), _BILINEAR, box=(left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p <= 1.0:
            raise UserError(f"RandomHorizontalFlip p={p!r} is not a probability in [0, 1]")
        self.p = float(p)

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_pil(image, self)
        if torch.rand(1).item() < self.p:
            return image.transpose(_FLIP_LEFT_RIGHT)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Resize:
    """Bilinear resize: an int matches the shorter side (aspect kept), ``(h, w)`` is exact."""

    def __init__(self, size: int | Sequence[int]):
        if isinstance(size, Integral) and not isinstance(size, bool):
            self.size: int | tuple[int, int] = _positive_int(size, "Resize size")
        else:
            self.size = _size_pair(size, "Resize size")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(out_width, out_height)`` for a ``width`` x ``height`` input."""
        if isinstance(self.size, tuple):
            return self.size[1], self.size[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_pil(image, self)
        size = self.output_size(*image.size)
        return image if size == image.size else image.resize(size, _BILINEAR)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class CenterCrop:
    """The central ``size`` window (zero padding where the image is smaller)."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _size_pair(size, "CenterCrop size")

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_pil(image, self)
        width, height = image.size
        crop_h, crop_w = self.size
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        if crop_h > height or crop_w > width:  # torchvision pads first, then crops
            pad_left, pad_top = max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2
            image = _pad(image, (pad_left, pad_top, max(crop_w - width + 1, 0) // 2,
                                 max(crop_h - height + 1, 0) // 2), "constant")
            width, height = image.size
            top = int(round((height - crop_h) / 2.0))
            left = int(round((width - crop_w) / 2.0))
        return image.crop((left, top, left + crop_w, top + crop_h))

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomCrop:
    """Pad by ``padding`` (int, ``(lr, tb)`` or ``(l, t, r, b)``), then a random ``size`` window."""

    def __init__(self, size: int | Sequence[int], padding: int | Sequence[int] | None = None,
                 padding_mode: str = "reflect"):
        self.size = _size_pair(size, "RandomCrop size")
        self.padding = _padding(padding)
        if padding_mode not in _PAD_MODES:
            raise UserError(f"RandomCrop padding_mode={padding_mode!r} is not one of: {', '.join(_PAD_MODES)}")
        self.padding_mode = padding_mode

    def __call__(self, image: Image.Image) -> Image.Image:
        _check_pil(image, self)
        if any(self.padding):
            image = _pad(image, self.padding, self.padding_mode)
        width, height = image.size
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise UserError(f"RandomCrop: crop {crop_h}x{crop_w} is larger than the (padded) image {height}x{width}")
        if (crop_h, crop_w) == (height, width):
            return image
        top = int(torch.randint(0, height - crop_h + 1, size=(1,)).item())
        left = int(torch.randint(0, width - crop_w + 1, size=(1,)).item())
        return image.crop((left, top, left + crop_w, top + crop_h))

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding}, padding_mode={self.padding_mode!r})"


# ----------------------------------------------------------------------------- tensors


class ToTensor:
    """``(H, W, C)`` (or ``(H, W)``) uint8 image -> ``(C, H, W)`` float32 tensor in ``[0, 1]``."""

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, Image.Image):
            array = np.asarray(image)
        elif isinstance(image, np.ndarray):
            array = image
        else:
            raise TypeError(f"ToTensor expects a PIL image or numpy array, got {type(image).__name__}")
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise UserError(f"ToTensor expects uint8 (H, W) or (H, W, C) pixels, got {array.dtype} {array.shape}")
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.to(torch.float32).div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """Per channel ``(x - mean[c]) / std[c]`` on a ``(C, H, W)`` float tensor (returns a new tensor)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if not self.mean or len(self.mean) != len(self.std):
            raise UserError(f"Normalize mean {self.mean} and std {self.std} must be non-empty and equally long")
        if not all(s > 0 for s in self.std):
            raise UserError(f"Normalize std {self.std} must be positive")

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3 or not tensor.is_floating_point():
            raise UserError("Normalize expects a float (C, H, W) tensor")
        if tensor.shape[0] != len(self.mean):
            raise UserError(f"Normalize has {len(self.mean)} channel statistics, image has {tensor.shape[0]} channels")
        mean = torch.tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return (tensor - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# ----------------------------------------------------------------------------- presets


def imagenet_train_transform(image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD) -> Compose:
    """RandomResizedCrop(image_size) (default scale/ratio), horizontal flip, ToTensor, Normalize."""
    return Compose([RandomResizedCrop(image_size), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])


def imagenet_eval_transform(image_size: int = 224, resize_size: int = 256, mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Resize(resize_size) (shorter side), CenterCrop(image_size), ToTensor, Normalize."""
    return Compose([Resize(resize_size), CenterCrop(image_size), ToTensor(), Normalize(mean, std)])


def cifar10_train_transform(image_size: int = 32, padding: int = 4, mean: Sequence[float] = CIFAR10_MEAN,
                            std: Sequence[float] = CIFAR10_STD) -> Compose:
    """Reflect-pad ``padding``, RandomCrop(image_size), horizontal flip, ToTensor, Normalize."""
    return Compose([RandomCrop(image_size, padding=padding, padding_mode="reflect"), RandomHorizontalFlip(),
                    ToTensor(), Normalize(mean, std)])


def cifar10_eval_transform(mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> Compose:
    """ToTensor, Normalize (no geometric change)."""
    return Compose([ToTensor(), Normalize(mean, std)])


# ----------------------------------------------------------------------------- helpers


def _check_pil(image: Any, transform: Any) -> None:
    if not isinstance(image, Image.Image):
        raise TypeError(f"{type(transform).__name__} expects a PIL image, got {type(image).__name__}")


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise UserError(f"{what}={value!r} is not an integer >= 1")
    return int(value)


def _size_pair(size: Any, what: str) -> tuple[int, int]:
    """``(height, width)`` from an int or a 1- or 2-element sequence."""
    if isinstance(size, Integral) and not isinstance(size, bool):
        side = _positive_int(size, what)
        return side, side
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) in (1, 2):
        pair = tuple(_positive_int(s, what) for s in size)
        return (pair[0], pair[0]) if len(pair) == 1 else (pair[0], pair[1])
    raise UserError(f"{what}={size!r} is not an int or an (height, width) pair")


def _increasing_pair(values: Any, what: str) -> tuple[float, float]:
    if (not isinstance(values, Sequence) or isinstance(values, str) or len(values) != 2
            or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values)):
        raise UserError(f"{what}={values!r} is not a (low, high) pair of numbers")
    low, high = float(values[0]), float(values[1])
    if not 0.0 < low <= high or not math.isfinite(high):
        raise UserError(f"{what}={values!r} must satisfy 0 < low <= high < inf")
    return low, high


def _padding(padding: Any) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``."""
    if padding is None:
        return 0, 0, 0, 0
    if isinstance(padding, Integral) and not isinstance(padding, bool):
        values: tuple[Any, ...] = (padding,) * 4
    elif isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 2:
        values = (padding[0], padding[1], padding[0], padding[1])
    elif isinstance(padding, Sequence) and not isinstance(padding, str) and len(padding) == 4:
        values = tuple(padding)
    else:
        raise UserError(f"padding={padding!r} is not an int, (left/right, top/bottom) or (left, top, right, bottom)")
    if not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UserError(f"padding={padding!r} must be non-negative integers")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _pad(image: Image.Image, padding: tuple[int, int, int, int], mode: str) -> Image.Image:
    left, top, right, bottom = padding
    array = np.asarray(image)
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
    if mode == "reflect" and (max(top, bottom) >= array.shape[0] or max(left, right) >= array.shape[1]):
        raise UserError(f"reflect padding {padding} needs an image larger than the padding, got "
                         f"{array.shape[0]}x{array.shape[1]}")
    return Image.fromarray(np.pad(array, widths, mode=_PAD_MODES[mode]))
