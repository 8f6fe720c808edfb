"""SSD training augmentation (NVIDIA DeepLearningExamples PyTorch/Detection/SSD semantics) in numpy + PIL.

Boxes are always ``float`` arrays ``(n, 4)`` of ``(left, top, right, bottom)`` RELATIVE to the
current image (``[0, 1]``, x to the right, y down); images are ``(H, W, 3)`` uint8 arrays until
:func:`color_jitter` (float32 in ``[0, 1]``) and :func:`normalize` (float32 tensor ``(3, S, S)``).

The training pipeline (:func:`ssd_train_transform`) runs, like the reference's ``COCOPipeline``
(``ssd/coco_pipeline.py``) and ``SSDTransformer`` (``ssd/utils.py``): IoU-constrained random crop
-> horizontal flip -> resize to ``S x S`` -> colour jitter -> ImageNet normalisation. Evaluation
(:func:`ssd_eval_transform`) is resize + normalisation only (``SSDTransformer(val=True)``).

Parameter values and where they come from (DeepLearningExamples commit 729963dd, ``ssd/utils.py``):

* crop (``SSDCropping``, lines 294-385; same values as DALI ``RandomBBoxCrop`` in
  ``coco_pipeline.py`` lines 56-62): each attempt picks uniformly one of :data:`CROP_MODES`,
  i.e. keep the whole image, a minimum IoU of 0.1, 0.3, 0.5, 0.7 or 0.9 with EVERY box (strictly
  greater), or no IoU constraint; crop width and height are independent ``U[0.3, 1)`` fractions of
  the image, rejected unless ``0.5 <= w / h <= 2`` (fractions, as the reference: not pixels); the
  left/top corner is uniform over the positions that keep the window inside the image; the
  attempt is rejected unless at least one box centre lies strictly inside the window; kept boxes
  (centre inside) are clipped to the window. The reference loops forever (``while True``, one
  try per mode); here at most :data:`CROP_MAX_ATTEMPTS` attempts are made and the whole image is
  kept after that (probability ``(6/7)^100 < 2e-7`` per image of reaching the bound with boxes).
  Difference on purpose: the window is snapped to whole pixels (``int(fraction * size)``, the
  reference's pixel crop) BEFORE the IoU and centre tests and the box re-mapping, so the boxes
  are exact for the pixels actually cropped (the reference maps boxes with the unsnapped window).
* flip (``RandomHorizontalFlip``, lines 388-398, and DALI ``CoinFlip(0.5)``): probability 0.5,
  ``l' = 1 - r``, ``r' = 1 - l``.
* resize: bilinear to ``S x S`` (reference: ``transforms.Resize((300, 300))`` / DALI ``Resize``),
  aspect ratio NOT kept.
* colour jitter (``SSDTransformer``, lines 420-421: ``ColorJitter(brightness=0.125,
  contrast=0.5, saturation=0.5, hue=0.05)``): factors ``b ~ U[0.875, 1.125]``,
  ``c ~ U[0.5, 1.5]``, ``s ~ U[0.5, 1.5]``, hue shift ``~ U[-0.05, 0.05]`` of a full turn,
  applied in a random order (as torchvision's ``ColorJitter``), on float pixels with clipping to
  ``[0, 1]`` after each step. (The DALI path draws the same b, c, s ranges but a hue of only
  ``U[-0.5, 0.5]`` DEGREES, ``coco_pipeline.py`` line 93; we keep the PyTorch path's values.)
* normalisation: ImageNet mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``
  (``main.py`` ``generate_mean_std`` lines 38-50, applied in ``train.py`` line 29 and
  ``SSDTransformer.normalize``).

Why hand-written: torchvision (whose ``ColorJitter``/``Resize`` the reference uses) is not a
dependency, the DALI operators need a GPU build, and neither library draws from an explicit
generator, which is what makes an item a pure function of ``(seed, index, epoch)``. All
randomness here comes from the ``numpy.random.Generator`` passed in, in a fixed order of calls.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..ops.boxes import box_iou as ops_box_iou
from .base import check_count
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "CROP_ASPECT_RANGE",
    "CROP_MAX_ATTEMPTS",
    "CROP_MODES",
    "CROP_SCALE_RANGE",
    "FLIP_PROBABILITY",
    "HUE",
    "SATURATION",
    "box_iou",
    "color_jitter",
    "crop_boxes",
    "hflip",
    "normalize",
    "random_hflip",
    "resize",
    "sample_crop_window",
    "ssd_eval_transform",
    "ssd_random_crop",
    "ssd_train_transform",
]

#: Crop modes (``SSDCropping.sample_options``): ``None`` keeps the whole image, a number is the
#: minimum IoU every box must exceed, ``-inf`` is a crop without IoU constraint.
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)
CROP_SCALE_RANGE = (0.3, 1.0)  # crop width and height, as fractions of the image's
CROP_ASPECT_RANGE = (0.5, 2.0)  # allowed (width fraction) / (height fraction)
CROP_MAX_ATTEMPTS = 100  # bound on attempts (the reference retries forever)
FLIP_PROBABILITY = 0.5
BRIGHTNESS = 0.125  # factor ~ U[1 - 0.125, 1 + 0.125]
CONTRAST = 0.5  # factor ~ U[0.5, 1.5]
SATURATION = 0.5  # factor ~ U[0.5, 1.5]
HUE = 0.05  # shift ~ U[-0.05, 0.05] of a full hue turn

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's "L" and torchvision


def _as_image_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise UserError(f"image of dtype {array.dtype} and shape {array.shape} is not valid; "
                        "expected an (H, W, 3) uint8 array or a PIL image")
    return array


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    return out


def box_iou(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """IoU ``(n,)`` of ltrb ``boxes (n, 4)`` with one ltrb ``window (4,)`` (same units); 0 for empty unions
    (:func:`sparsetrain.ops.box_iou` on numpy arrays)."""
    window = torch.as_tensor(np.asarray(window, dtype=np.float64)).reshape(1, 4)
    return ops_box_iou(torch.from_numpy(_as_boxes(boxes)), window)[:, 0].numpy()


def sample_crop_window(boxes: np.ndarray, width: int, height: int, rng: np.random.Generator,
                       max_attempts: int = CROP_MAX_ATTEMPTS) -> tuple[tuple[int, int, int, int] | None, float | None]:
    """Draw SSD's IoU-constrained crop window for an image of ``width x height`` pixels.

    ``boxes``: ``(n, 4)`` relative ltrb. Returns ``((left, top, right, bottom) in whole pixels,
    min IoU of the mode that produced it)``, or ``(None, None)`` for "keep the whole image" (the
    mode drawn, or no success within ``max_attempts``). A returned window satisfies: every box has
    IoU > min IoU with the window (relative units), at least one box centre lies strictly inside,
    ``0.5 <= w / h <= 2`` for the drawn (unsnapped) fractions and the pixel window is non-empty.
    Each attempt draws, in order: mode index, w, h, and (only if the aspect test passes) left, top.
    """
    boxes = _as_boxes(boxes)
    for _ in range(max_attempts):
        mode = CROP_MODES[int(rng.integers(len(CROP_MODES)))]
        if mode is None:
            return None, None
        w = rng.uniform(*CROP_SCALE_RANGE)
        h = rng.uniform(*CROP_SCALE_RANGE)
        if not CROP_ASPECT_RANGE[0] <= w / h <= CROP_ASPECT_RANGE[1]:
            continue
        left = rng.uniform(0.0, 1.0 - w)
        top = rng.uniform(0.0, 1.0 - h)
        lp, tp = int(left * width), int(top * height)
        rp, bp = int((left + w) * width), int((top + h) * height)
        if rp <= lp or bp <= tp:
            continue
        window = np.array([lp / width, tp / height, rp / width, bp / height])
        if not np.all(box_iou(boxes, window) > mode):
            continue
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        inside = (cx > window[0]) & (cx < window[2]) & (cy > window[1]) & (cy < window[3])
        if not inside.any():
            continue
        return (lp, tp, rp, bp), float(mode)
    return None, None


def crop_boxes(boxes: np.ndarray, labels: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (relative ltrb) whose centre lies strictly inside relative ``window``, clipped to it and
    re-expressed relative to it; with their labels. Order is kept."""
    boxes = _as_boxes(boxes)
    labels = np.asarray(labels)
    l, t, r, b = (float(v) for v in window)
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    keep = (cx > l) & (cx < r) & (cy > t) & (cy < b)
    kept = np.clip(boxes[keep], [l, t, l, t], [r, b, r, b])
    kept = (kept - [l, t, l, t]) / [r - l, b - t, r - l, b - t]
    return kept, labels[keep]


def ssd_random_crop(image: Image.Image | np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSD's random crop: ``(image (h, w, 3) uint8, boxes (m, 4) relative to the crop, labels (m,))``."""
    array = _as_image_array(image)
    height, width = array.shape[:2]
    window_px, _ = sample_crop_window(boxes, width, height, rng)
    boxes = _as_boxes(boxes)
    labels = np.asarray(labels)
    if window_px is None:
        return array, boxes, labels
    lp, tp, rp, bp = window_px
    kept, kept_labels = crop_boxes(boxes, labels, np.array([lp / width, tp / height, rp / width, bp / height]))
    return array[tp:bp, lp:rp], kept, kept_labels


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: image columns reversed, ``(l, t, r, b) -> (1 - r, t, 1 - l, b)``."""
    boxes = _as_boxes(boxes)
    flipped = boxes.copy()
    flipped[:, 0] = 1.0 - boxes[:, 2]
    flipped[:, 2] = 1.0 - boxes[:, 0]
    return np.ascontiguousarray(np.asarray(image)[:, ::-1]), flipped


def random_hflip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                 p: float = FLIP_PROBABILITY) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hflip` when ``rng.random() < p`` (one draw, always made)."""
    if rng.random() < p:
        return hflip(image, boxes)
    return np.asarray(image), _as_boxes(boxes)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(size, size, 3)`` (PIL, with its antialiasing)."""
    array = _as_image_array(image)
    if array.shape[0] == size and array.shape[1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), _BILINEAR))


def _shift_hue(image: np.ndarray, turns: float) -> np.ndarray:
    """Rotate the hue by ``turns`` of a full turn through PIL's uint8 HSV (as torchvision's PIL path does): the
    pixels are quantised to 8 bits for this operation only. PIL's C conversion costs a tenth of a float HSV
    round trip in numpy, which took most of a training item's time."""
    shift = int(round(turns * 256.0)) % 256
    if shift == 0:
        return image
    pixels = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
    h, s, v = pixels.convert("HSV").split()
    h = Image.fromarray(((np.asarray(h).astype(np.int16) + shift) % 256).astype(np.uint8))  # around the wheel
    return np.asarray(Image.merge("HSV", (h, s, v)).convert("RGB"), dtype=np.float32) / 255.0


def _adjust(image: np.ndarray, op: int, factor: float) -> np.ndarray:
    if op == 0:  # brightness: blend with black
        out = image * factor
    elif op == 1:  # contrast: blend with the mean grey level of the whole image
        mean = float((image @ _LUMA).mean())
        out = (image - mean) * factor + mean
    elif op == 2:  # saturation: blend with the per-pixel grey level
        grey = (image @ _LUMA)[..., None]
        out = (image - grey) * factor + grey
    else:  # hue: rotate the HSV hue by ``factor`` of a turn
        out = _shift_hue(image, factor)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = BRIGHTNESS,
                 contrast: float = CONTRAST, saturation: float = SATURATION, hue: float = HUE) -> np.ndarray:
    """Random brightness/contrast/saturation/hue of an ``(H, W, 3)`` uint8 or [0, 1] float image.

    Draws, in order: a permutation of the four operations, then the brightness, contrast,
    saturation factors (``U[1 - x, 1 + x]``) and the hue shift (``U[-hue, hue]`` turns). Returns
    float32 ``(H, W, 3)`` in ``[0, 1]``; each operation clips to ``[0, 1]``.
    """
    array = np.asarray(image)
    out = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    order = rng.permutation(4)
    factors = (rng.uniform(1.0 - brightness, 1.0 + brightness), rng.uniform(1.0 - contrast, 1.0 + contrast),
               rng.uniform(1.0 - saturation, 1.0 + saturation), rng.uniform(-hue, hue))
    for op in order:
        out = _adjust(out, int(op), float(factors[op]))
    return out


def normalize(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 (scaled by 1/255) or [0, 1] float -> float32 ``(3, H, W)``, ``(x - mean) / std``
    with the ImageNet mean and std."""
    array = np.asarray(image)
    x = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    x = (x - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


AUGMENTATIONS = ("ssd", "flip", "none")
"""Training augmentations: ``ssd`` (IoU-constrained crop, flip, colour jitter: the reference's), ``flip`` (horizontal
flip only: for short schedules, where the crop's zoomed views slow learning, and data whose colours already say
nothing, as the embedded shapes'), ``none`` (resize only)."""


def ssd_train_transform(image: Image.Image | np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int,
                        rng: np.random.Generator, augment: str = "ssd") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Crop -> flip -> resize -> colour jitter -> normalise (``augment="ssd"``; ``"flip"`` skips the crop and the
    jitter, ``"none"`` is :func:`ssd_eval_transform`); returns ``(image float32 (3, size, size), boxes float32 (m, 4)
    relative ltrb in [0, 1], labels (m,))``. Deterministic given ``rng``'s state."""
    size = check_count("image_size", size, 1)
    if augment not in AUGMENTATIONS:
        raise UserError(f"augment={augment!r} is not valid; valid: {', '.join(AUGMENTATIONS)}")
    if augment == "none":
        return ssd_eval_transform(image, size), _as_boxes(boxes).astype(np.float32), labels
    if augment == "ssd":
        array, boxes, labels = ssd_random_crop(image, boxes, labels, rng)
    else:
        array, boxes = _as_image_array(image), _as_boxes(boxes)
    array, boxes = random_hflip(array, boxes, rng)
    array = resize(array, size)
    if augment == "ssd":
        array = color_jitter(array, rng)
    return normalize(array), np.clip(boxes, 0.0, 1.0).astype(np.float32), labels


def ssd_eval_transform(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """Resize to ``size x size`` (bilinear) and normalise: float32 ``(3, size, size)``; boxes (relative) unchanged."""
    return normalize(resize(_as_image_array(image), check_count("image_size", size, 1)))
