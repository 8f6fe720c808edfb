"""SSD object detectors in NVIDIA's SSD300 v1.1 layout (ResNet-50 backbone), plus small CPU variants.

Layout (module and state-dict names as ``NVIDIA/DeepLearningExamples``,
``PyTorch/Detection/SSD/ssd/model.py``, so their checkpoints load with ``strict=True``):

* ``feature_extractor.feature_extractor``: ``nn.Sequential`` of a ResNet's ``conv1``, ``bn1``,
  ``relu``, ``maxpool``, ``layer1``, ``layer2``, ``layer3`` (indices 0..6; only 0, 1, 4, 5, 6
  hold state). For ResNet-50 the first block of ``layer3`` runs at stride 1 (NVIDIA sets the
  stride of its ``conv1``, ``conv2`` and ``downsample[0]`` to 1; in torchvision's v1.5
  Bottleneck only ``conv2`` and ``downsample[0]`` carried stride 2), so a 300x300 image gives a
  38x38 map with 1024 channels.
* ``additional_blocks``: ``nn.ModuleList`` of ``Sequential(1x1 conv (no bias), BN, ReLU,
  3x3 conv (no bias), BN, ReLU)``; each block's input is the previous feature map. SSD300:
  intermediate channels 256, 256, 128, 128, 128, outputs 512, 512, 256, 256, 256; the first three
  3x3 convs have stride 2 and padding 1, the last two stride 1 and no padding. Maps: 38, 19, 10, 5,
  3, 1 (side length at 300x300).
* ``loc[k]`` / ``conf[k]``: 3x3 convs (padding 1, with bias) on feature map ``k`` with
  ``num_defaults[k] * 4`` / ``num_defaults[k] * num_classes`` outputs (SSD300: 4, 6, 6, 6, 4, 4
  boxes per location on maps with 1024, 512, 512, 256, 256, 256 channels; 81 classes including
  background, class 0).

Initialisation: the backbone keeps its ResNet initialisation (Kaiming normal convs, BN weight 1 /
bias 0); every parameter with ``dim() > 1`` in ``additional_blocks``, ``loc`` and ``conf`` is
re-drawn with ``xavier_uniform_`` (as NVIDIA's ``_init_weights``); biases and BN keep PyTorch's
defaults.

Forward: ``images (B, 3, S, S)`` float, ``S = model.image_size`` -> ``(offsets (B, 4, D),
logits (B, num_classes, D))`` where ``D = sum_k num_defaults[k] * f_k**2`` (8,732 for SSD300).
Per map the head output ``(B, n*4, f, f)`` is reshaped to ``(B, 4, n*f*f)`` (and ``(B, n*C, f, f)``
to ``(B, C, n*f*f)``), then the maps are concatenated along the last axis in map order; column
``d`` thus belongs to default box ``d`` of :meth:`SSD.default_boxes` (box shape outer, cell ``(i,
j)`` row-major inner, as NVIDIA's ``DefaultBoxes``). Offsets are raw regression outputs (NVIDIA's
encoding with ``scale_xy = 0.1``, ``scale_wh = 0.2`` is the loss's business, not the model's).

Default boxes (:func:`default_boxes`, NVIDIA's ``DefaultBoxes`` semantics): for map ``k`` with
``fk = fig_size / steps[k]``, ``sk1 = scales[k] / fig_size``, ``sk2 = scales[k+1] / fig_size``,
shapes ``(sk1, sk1)``, ``(sqrt(sk1*sk2),) * 2``, then ``(sk1*sqrt(a), sk1/sqrt(a))`` and its
transpose for every aspect ratio ``a`` of the map; centres ``((j + 0.5) / fk, (i + 0.5) / fk)``.
Boxes are ``(cx, cy, w, h)`` relative to the image side (0..1), float32, clamped to [0, 1]. They
are computed from the configuration on demand and are never buffers, so the state dict equals
NVIDIA's.

Registered models (:data:`SSD_MODELS`, :func:`build_ssd`):

* ``ssd300_resnet50``: NVIDIA's SSD300 (22,894,902 parameters at 81 classes), 300x300, 8,732 boxes;
* ``ssd_small``: a narrow BasicBlock backbone for 2-core CPU demos (default 128x128, width 16);
* ``ssd_tiny``: the same at width 4, 64x64, for tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..options import check_options
from .resnet import BasicBlock, conv1x1, resnet50

__all__ = [
    "NVIDIA_SCALE_FRACTIONS",
    "SSD",
    "SSD_MODELS",
    "SSDFeatureExtractor",
    "build_ssd",
    "dboxes300_coco",
    "default_boxes",
    "load_backbone",
    "nvidia_aspect_ratios",
    "nvidia_scales",
    "ssd300_resnet50",
    "ssd_small",
    "ssd_tiny",
]

# SSD300: feature sizes, steps, scales (pixels), aspect ratios; dboxes300_coco in NVIDIA's utils.py.
_SSD300_FEAT = (38, 19, 10, 5, 3, 1)
_SSD300_STEPS = (8, 16, 32, 64, 100, 300)
_SSD300_SCALES = (21, 45, 99, 153, 207, 261, 315)
_SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))

#: NVIDIA's SSD300 box scales ``[21, 45, 99, 153, 207, 261, 315]`` (pixels at 300x300) as
#: fractions of the image side; scale ``k`` is map ``k``'s base size, ``k+1`` sets its second box.
NVIDIA_SCALE_FRACTIONS: tuple[float, ...] = tuple(s / 300 for s in _SSD300_SCALES)


def default_boxes(
    fig_size: int,
    feat_size: Sequence[int],
    steps: Sequence[float],
    scales: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
) -> torch.Tensor:
    """Default boxes ``(D, 4)`` float32 on CPU, ``(cx, cy, w, h)`` relative to the image, in [0, 1].

    ``fig_size``: image side in pixels; ``feat_size[k]``: side of feature map ``k``;
    ``steps[k]``: its cell size in pixels (``fk = fig_size / steps[k]`` cells across, for the
    centres); ``scales``: ``len(feat_size) + 1`` box sizes in pixels; ``aspect_ratios[k]``: the
    ratios ``a`` of map ``k`` (each adds a ``sqrt(a)``-wide and a ``sqrt(a)``-tall box).
    ``D = sum_k (2 + 2 * len(aspect_ratios[k])) * feat_size[k]**2``. Order: map, then box shape,
    then cell row ``i``, then cell column ``j`` (NVIDIA's ``DefaultBoxes``).
    """
    k_maps = len(feat_size)
    if len(steps) != k_maps or len(aspect_ratios) != k_maps or len(scales) != k_maps + 1:
        raise UserError(f"default boxes need one step and aspect-ratio list per map ({k_maps}) and "
                        f"{k_maps + 1} scales; got {len(steps)} steps, {len(aspect_ratios)} ratio "
                        f"lists, {len(scales)} scales")
    parts = []
    for idx, sfeat in enumerate(feat_size):
        fk = fig_size / steps[idx]
        sk1 = scales[idx] / fig_size
        sk2 = scales[idx + 1] / fig_size
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in aspect_ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes += [(w, h), (h, w)]
        # float64 as NVIDIA's Python floats; cast to float32 once at the end.
        centre = (torch.arange(sfeat, dtype=torch.float64, device="cpu") + 0.5) / fk
        cy = centre.repeat_interleave(sfeat)  # row i
        cx = centre.repeat(sfeat)  # column j
        for w, h in sizes:
            wh = torch.tensor([w, h], dtype=torch.float64, device="cpu").expand(sfeat * sfeat, 2)
            parts.append(torch.cat([torch.stack([cx, cy], 1), wh], 1))
    return torch.cat(parts).to(torch.float32).clamp_(min=0, max=1)


def dboxes300_coco() -> torch.Tensor:
    """NVIDIA's SSD300 default boxes: ``(8732, 4)`` xywh float32 (``dboxes300_coco()('xywh')``)."""
    return default_boxes(300, _SSD300_FEAT, _SSD300_STEPS, _SSD300_SCALES, _SSD300_RATIOS)


def nvidia_scales(fig_size: int, num_maps: int) -> list[float]:
    """``num_maps + 1`` box scales in pixels, ``fig_size`` times NVIDIA's fractions.

    For 6 maps exactly ``fig_size * [21, 45, 99, 153, 207, 261, 315] / 300``; for other counts the
    fractions are linearly interpolated at ``num_maps + 1`` evenly spaced points of NVIDIA's 7
    (smallest 0.07, largest 1.05 of the image side either way).
    """
    fr = NVIDIA_SCALE_FRACTIONS
    if num_maps == len(fr) - 1:
        return [fig_size * f for f in fr]
    out = []
    for k in range(num_maps + 1):
        t = k * (len(fr) - 1) / num_maps
        lo = min(int(t), len(fr) - 2)
        out.append(fig_size * (fr[lo] + (t - lo) * (fr[lo + 1] - fr[lo])))
    return out


def nvidia_aspect_ratios(num_maps: int) -> list[tuple[int, ...]]:
    """NVIDIA's pattern: ratios ``(2,)`` on the first and last two maps, ``(2, 3)`` in between.

    Gives 4 boxes per location on ``(2,)`` maps and 6 on ``(2, 3)`` maps (SSD300: 4, 6, 6, 6, 4, 4).
    """
    return [(2,) if k == 0 or k >= num_maps - 2 else (2, 3) for k in range(num_maps)]


class SSDFeatureExtractor(nn.Module):
    """NVIDIA's backbone wrapper: ``self.feature_extractor`` is the ``nn.Sequential`` that is run.

    ``out_channels``: channels of the map it returns; ``downsampling``: ``(kernel, stride,
    padding)`` of the ops that shrink the map, in order, so sizes follow analytically
    (``n -> (n + 2p - k) // s + 1``).
    """

    def __init__(self, layers: nn.Sequential, out_channels: int,
                 downsampling: Sequence[tuple[int, int, int]]) -> None:
        super().__init__()
        self.feature_extractor = layers
        self.out_channels = out_channels
        self.downsampling = tuple(tuple(d) for d in downsampling)

    def output_size(self, image_size: int) -> int:
        """Side of the returned map for a square ``image_size`` input."""
        n = image_size
        for k, s, p in self.downsampling:
            n = (n + 2 * p - k) // s + 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_extractor(x)


class SSD(nn.Module):
    """Single-shot detector (see the module docstring for layout, forward and default boxes).

    ``backbone``: an :class:`SSDFeatureExtractor`; ``blocks``: one ``(mid_channels, out_channels,
    stride, padding)`` per additional block (1x1 conv to ``mid``, 3x3 conv to ``out``);
    ``num_classes`` includes background; ``image_size``: square input side in pixels the default
    boxes are laid out for; ``steps`` (pixels per cell, default ``image_size / f_k``), ``scales``
    (``maps + 1`` sizes in pixels, default :func:`nvidia_scales`), ``aspect_ratios`` (default
    :func:`nvidia_aspect_ratios`) configure the default boxes.
    """

    def __init__(
        self,
        backbone: SSDFeatureExtractor,
        blocks: Sequence[tuple[int, int, int, int]],
        num_classes: int,
        image_size: int,
        steps: Sequence[float] | None = None,
        scales: Sequence[float] | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        _check_int("num_classes", num_classes, 2)
        _check_int("image_size", image_size, 1)
        self.feature_extractor = backbone
        self.num_classes = num_classes
        self.image_size = image_size

        channels = [backbone.out_channels]
        sizes = [backbone.output_size(image_size)]
        additional = []
        for mid, out, stride, padding in blocks:
            additional.append(nn.Sequential(
                nn.Conv2d(channels[-1], mid, kernel_size=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, out, kernel_size=3, padding=padding, stride=stride, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ))
            channels.append(out)
            sizes.append((sizes[-1] + 2 * padding - 3) // stride + 1)
        if min(sizes) < 1:
            raise UserError(f"image_size={image_size} is too small for this SSD: feature map sides "
                            f"would be {sizes}; every side must be >= 1")
        self.additional_blocks = nn.ModuleList(additional)
        self.feature_sizes: tuple[int, ...] = tuple(sizes)
        self.out_channels: tuple[int, ...] = tuple(channels)

        n_maps = len(sizes)
        self.aspect_ratios = tuple(tuple(a) for a in (aspect_ratios or nvidia_aspect_ratios(n_maps)))
        self.steps = tuple(steps) if steps is not None else tuple(image_size / f for f in sizes)
        self.scales = tuple(scales) if scales is not None else tuple(nvidia_scales(image_size, n_maps))
        if not (len(self.aspect_ratios) == len(self.steps) == n_maps and len(self.scales) == n_maps + 1):
            raise UserError(f"SSD with {n_maps} feature maps needs {n_maps} steps and aspect-ratio "
                            f"lists and {n_maps + 1} scales")
        self.num_defaults = tuple(2 + 2 * len(a) for a in self.aspect_ratios)

        self.loc = nn.ModuleList(nn.Conv2d(c, nd * 4, kernel_size=3, padding=1)
                                 for nd, c in zip(self.num_defaults, channels))
        self.conf = nn.ModuleList(nn.Conv2d(c, nd * num_classes, kernel_size=3, padding=1)
                                  for nd, c in zip(self.num_defaults, channels))
        for layer in [*self.additional_blocks, *self.loc, *self.conf]:
            for param in layer.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)

    @property
    def num_boxes(self) -> int:
        """``D``: default boxes, = columns of the forward outputs."""
        return sum(nd * f * f for nd, f in zip(self.num_defaults, self.feature_sizes))

    def default_boxes(self) -> torch.Tensor:
        """``(D, 4)`` float32 CPU default boxes ``(cx, cy, w, h)`` in [0, 1], in output-column order."""
        return default_boxes(self.image_size, self.feature_sizes, self.steps, self.scales,
                             self.aspect_ratios)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps fed to the heads: ``(B, out_channels[k], f_k, f_k)`` for each map ``k``."""
        x = self.feature_extractor(images)
        feeds = [x]
        for block in self.additional_blocks:
            x = block(x)
            feeds.append(x)
        return feeds

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, 3, S, S)`` -> ``(offsets (B, 4, D), logits (B, num_classes, D))``."""
        s = self.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != s or images.shape[3] != s:
            raise UserError(f"images must have shape (B, 3, {s}, {s}); got {tuple(images.shape)}")
        locs, confs = [], []
        for feed, loc, conf in zip(self.features(images), self.loc, self.conf):
            b = feed.size(0)
            locs.append(loc(feed).reshape(b, 4, -1))
            confs.append(conf(feed).reshape(b, self.num_classes, -1))
        return torch.cat(locs, 2).contiguous(), torch.cat(confs, 2).contiguous()


def _resnet50_backbone() -> SSDFeatureExtractor:
    """ResNet-50 ``conv1 .. layer3`` with ``layer3``'s first block at stride 1 (1024 channels, /8)."""
    base = resnet50()
    layers = nn.Sequential(*list(base.children())[:7])
    block = layers[-1][0]
    block.conv1.stride = (1, 1)
    block.conv2.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    del base
    return SSDFeatureExtractor(layers, 1024, [(7, 2, 3), (3, 2, 1), (3, 2, 1)])


def ssd300_resnet50(num_classes: int = 81) -> SSD:
    """NVIDIA's SSD300 v1.1: ResNet-50 backbone, 300x300 input, 8,732 default boxes.

    State dict: exactly NVIDIA's 342 entries and shapes (258 backbone, 60 additional blocks, 24
    heads); 22,894,902 parameters at 81 classes (backbone 8,543,296, additional blocks 3,773,696,
    ``loc`` 497,784, ``conf`` 10,080,126). The default boxes are :func:`dboxes300_coco`.
    """
    return SSD(
        _resnet50_backbone(),
        blocks=[(256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)],
        num_classes=num_classes,
        image_size=300,
        steps=_SSD300_STEPS,
        scales=_SSD300_SCALES,
        aspect_ratios=_SSD300_RATIOS,
    )


def _small_backbone(width: int, stride: int = 8) -> SSDFeatureExtractor:
    """conv1 (3x3, stride 2) -> bn1 -> relu -> maxpool (3x3, stride 2) -> layer1..3 (one
    BasicBlock each, ``width``, ``2*width`` (stride 2), ``4*width`` (stride 1)); output /8. ``stride=4``:
    the max-pool is an identity (index 3 kept, so names and partition presets do not change); output /4."""
    w = width
    conv1 = nn.Conv2d(3, w, kernel_size=3, stride=2, padding=1, bias=False)

    def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or c_in != c_out:
            down = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
        return nn.Sequential(BasicBlock(c_in, c_out, stride, down))

    layers = nn.Sequential(
        conv1, nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stride == 8 else nn.Identity(),
        stage(w, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 1),
    )
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return SSDFeatureExtractor(layers, 4 * w, [(3, 2, 1)] * (3 if stride == 8 else 2))


def ssd_small(num_classes: int = 81, image_size: int = 128, width: int = 16, stride: int = 8) -> SSD:
    """Small SSD for CPU demos: :func:`_small_backbone` (``4*width`` channels at ``image_size/8``),
    then stride-2 padding-1 additional blocks until the map is 1x1.

    Additional block ``k`` outputs ``2*width`` channels for ``k < 2`` and ``width`` after
    (NVIDIA's halving and quartering of the backbone's channels), with half that as the
    intermediate width. At 128x128: maps 16, 8, 4, 2, 1, boxes 4, 6, 6, 4, 4 per location, D = 1,524;
    steps ``image_size / f_k``; scales :func:`nvidia_scales`. Width 16 at 128x128: 680,680
    parameters at 81 classes (132,736 at 2), about 6 ms (81 classes) / 3.3 ms (2 classes) forward
    plus backward per image on one CPU thread at batch 32. ``stride=4`` drops the stem's max-pool: the first
    map is ``image_size/4`` (an extra additional block follows), so objects of a tenth of the image side get
    several default boxes of IoU > 0.5 instead of one forced match.
    """
    _check_int("width", width, 2)
    _check_int("image_size", image_size, 16, 2048)
    if stride not in (4, 8):
        raise UserError(f"ssd_small stride={stride!r} is not valid; valid: 4 (finer first map, 4x the default boxes "
                        "there) or 8")
    backbone = _small_backbone(width, stride)
    size = backbone.output_size(image_size)
    blocks = []
    while size > 1:
        out = 2 * width if len(blocks) < 2 else width
        blocks.append((max(out // 2, 1), out, 2, 1))
        size = (size + 2 - 3) // 2 + 1
    return SSD(backbone, blocks, num_classes, image_size)


def ssd_tiny(num_classes: int = 81, image_size: int = 64, width: int = 4) -> SSD:
    """:func:`ssd_small` at width 4 and 64x64 (maps 8, 4, 2, 1; D = 4*64 + 6*16 + 4*4 + 4 = 372), for tests."""
    return ssd_small(num_classes, image_size, width)


SSD_MODELS: dict[str, Callable[..., SSD]] = {
    "ssd300_resnet50": ssd300_resnet50,
    "ssd_small": ssd_small,
    "ssd_tiny": ssd_tiny,
}


def build_ssd(name: str, num_classes: int = 81, **options: Any) -> SSD:
    """The SSD called ``name`` (a key of :data:`SSD_MODELS`) with ``num_classes`` (incl. background)
    and the builder's own ``options`` (``ssd_small``/``ssd_tiny``: ``image_size``, ``width``)."""
    if name not in SSD_MODELS:
        raise UserError(f"unknown SSD model {name!r} (models: {', '.join(SSD_MODELS)})")
    builder = SSD_MODELS[name]
    check_options("model", name, builder, options, supplied=("num_classes",))
    return builder(num_classes=num_classes, **options)


_BACKBONE_KEYS = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
_BACKBONE_PREFIX = "feature_extractor.feature_extractor."


def load_backbone(model: SSD, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy a torchvision-format ResNet state dict into ``model``'s backbone, in place.

    ``conv1``, ``bn1``, ``layer1..3`` keys map to ``feature_extractor.feature_extractor.{0, 1, 4, 5,
    6}``; ``fc.*`` and ``layer4.*`` are ignored. ``state_dict`` is plain, as the runner's checkpoint reader
    (``runner.checkpoint.load_state_dict_from``) returns it: wrappers such as ``{'model': ...}`` and ``module.``
    prefixes already removed. Every other key must match a backbone entry with the same shape, and every
    backbone entry must be given; otherwise ``UserError`` (nothing is copied then).
    """
    source = state_dict
    target = {k[len(_BACKBONE_PREFIX):]: v for k, v in model.state_dict().items()
              if k.startswith(_BACKBONE_PREFIX)}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        head, _, rest = key.partition(".")
        if head in ("fc", "layer4"):
            continue
        if head not in _BACKBONE_KEYS or not rest:
            raise UserError(f"backbone key {key!r} is not a ResNet conv1/bn1/layer1..3 key "
                            "(fc and layer4 are ignored)")
        new = f"{_BACKBONE_KEYS[head]}.{rest}"
        if new not in target:
            raise UserError(f"backbone key {key!r} has no counterpart in this SSD's backbone")
        if tuple(value.shape) != tuple(target[new].shape):
            raise UserError(f"backbone key {key!r} has shape {tuple(value.shape)}; this SSD needs "
                            f"{tuple(target[new].shape)}")
        mapped[_BACKBONE_PREFIX + new] = value
    missing = sorted(set(target) - {k[len(_BACKBONE_PREFIX):] for k in mapped})
    if missing:
        index, _, rest = missing[0].partition(".")
        name = {v: k for k, v in _BACKBONE_KEYS.items()}[index] + "." + rest
        raise UserError(f"backbone state dict lacks {len(missing)} ResNet entries, e.g. {name!r}")
    model.load_state_dict(mapped, strict=False)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        valid = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{name}={value!r} must be an integer {valid}")
