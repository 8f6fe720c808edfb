"""PointNet++ part segmentation (ShapeNet part: 16 object categories, 50 part classes), MSG and SSG.

What it is: the two part-segmentation networks of PointNet++ (Qi et al., 2017) as laid out by the
widely used PyTorch implementation ``yanx27/Pointnet_Pointnet2_pytorch``
(``models/pointnet2_part_seg_msg.py`` / ``_ssg.py``), the GaP paper's third task. Module names,
parameter shapes and channel orders are that implementation's, so its checkpoints (``{'model_state_dict': ...}``,
read by ``sparsetrain eval`` through the safe loader, never a plain ``torch.load``) load with ``strict=True`` and
compute the same function:

* ``sa1``, ``sa2``: set abstraction. SSG: ``mlp_convs.J`` (``Conv2d`` 1x1) and ``mlp_bns.J``
  (``BatchNorm2d``) applied to ``[relative xyz, features]`` of each ball. MSG: one branch per radius,
  ``conv_blocks.I.J`` / ``bn_blocks.I.J``, applied to ``[features, relative xyz]`` (note the other
  order), branch outputs concatenated.
* ``sa3``: set abstraction over the whole cloud (``mlp_convs``, ``mlp_bns``), input
  ``[absolute xyz, features]``; its output is the global feature ``l3_points`` ``(B, 1024, 1)``.
* ``fp3``, ``fp2``, ``fp1``: feature propagation, ``mlp_convs.J`` (``Conv1d`` 1x1) and
  ``mlp_bns.J`` (``BatchNorm1d``) applied to ``[skip features, 3-NN interpolated features]``;
  ``fp1``'s skip features are ``[category one-hot, xyz, input channels]``.
* head: ``conv1`` (``Conv1d``) -> ``bn1`` -> ReLU -> ``drop1`` (dropout 0.5) -> ``conv2`` ->
  log-softmax over the part classes.

Why hand-written: the reference needs nothing beyond torch, but its point operations are slow
Python-heavy code and the CUDA ``pointnet2`` extension / ``torch_cluster`` are not available here;
:mod:`sparsetrain.ops.point_ops` supplies vectorised equivalents. Every weight layer is an
``nn.Conv1d`` / ``nn.Conv2d`` so the default pruning targets find them.

Farthest point sampling and randomness: in training mode each set abstraction starts its sampler
at a random point per cloud drawn from torch's global CPU RNG (as the reference does; the runner
seeds and checkpoints that RNG, so runs are reproducible); in eval mode it starts at index 0, so
evaluation is deterministic and independent of the RNG state.

Small variants: both classes take a ``width`` multiplier (every hidden channel count scaled and
rounded, at least 1) and the centroid counts / radii / neighbourhood sizes as options;
:func:`build_pointnet2` names the reference configurations and two small ones for CPU runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..ops.point_ops import (
    ball_query,
    farthest_point_sample,
    index_points,
    sample_and_group,
    sample_and_group_all,
    three_nn_interpolate,
)
from ..options import check_options

__all__ = [
    "FeaturePropagation",
    "POINTNET2_MODELS",
    "PointNet2PartSegMSG",
    "PointNet2PartSegSSG",
    "SetAbstraction",
    "SetAbstractionMSG",
    "build_pointnet2",
]


def _fps_start(module: nn.Module, xyz: torch.Tensor) -> torch.Tensor | None:
    """None (random start from the global RNG) in training mode, index 0 in eval mode."""
    if module.training:
        return None
    return torch.zeros(xyz.shape[0], dtype=torch.long, device=xyz.device)


def _shared_mlp(conv: type[nn.Module], norm: type[nn.Module], in_channels: int, widths: Sequence[int]):
    convs, norms = nn.ModuleList(), nn.ModuleList()
    last = in_channels
    for width in widths:
        convs.append(conv(last, width, 1))
        norms.append(norm(width))
        last = width
    return convs, norms


def _run_mlp(convs: nn.ModuleList, norms: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for conv, norm in zip(convs, norms):
        x = F.relu(norm(conv(x)))
    return x


class SetAbstraction(nn.Module):
    """Single-scale set abstraction: sample centroids, group a ball around each, shared MLP, max-pool.

    ``in_channel`` counts the MLP's input channels, i.e. 3 (relative xyz) plus the feature channels;
    ``group_all`` groups the whole cloud around one centroid at the origin instead (``npoint``,
    ``radius``, ``nsample`` unused). Parameters: ``mlp_convs.J`` (``Conv2d`` 1x1), ``mlp_bns.J``.
    """

    def __init__(self, npoint: int | None, radius: float | None, nsample: int | None, in_channel: int,
                 mlp: Sequence[int], group_all: bool):
        super().__init__()
        self.npoint, self.radius, self.nsample, self.group_all = npoint, radius, nsample, group_all
        self.mlp_convs, self.mlp_bns = _shared_mlp(nn.Conv2d, nn.BatchNorm2d, in_channel, mlp)
        self.out_channels = mlp[-1]

    def forward(self, xyz: torch.Tensor, points: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyz`` ``(B, 3, N)``, ``points`` ``(B, D, N)`` or None -> ``new_xyz`` ``(B, 3, S)``,
        ``new_points`` ``(B, mlp[-1], S)`` (``S = npoint``, or 1 with ``group_all``)."""
        xyz = xyz.transpose(1, 2)
        feats = points.transpose(1, 2) if points is not None else None
        if self.group_all:
            new_xyz, grouped = sample_and_group_all(xyz, feats)
        else:
            new_xyz, grouped = sample_and_group(self.npoint, self.radius, self.nsample, xyz, feats,
                                                start=_fps_start(self, xyz))
        grouped = grouped.permute(0, 3, 2, 1)  # (B, 3 + D, K, S)
        new_points = _run_mlp(self.mlp_convs, self.mlp_bns, grouped).max(2).values
        return new_xyz.transpose(1, 2), new_points


class SetAbstractionMSG(nn.Module):
    """Multi-scale set abstraction: one set of centroids, one ball + MLP branch per radius.

    ``in_channel`` counts the feature channels only (each branch adds the 3 relative-xyz channels,
    which come *after* the features). Parameters: ``conv_blocks.I.J`` (``Conv2d`` 1x1) and
    ``bn_blocks.I.J`` for branch ``I``; the output concatenates the branches' last channels.
    """

    def __init__(self, npoint: int, radius_list: Sequence[float], nsample_list: Sequence[int],
                 in_channel: int, mlp_list: Sequence[Sequence[int]]):
        super().__init__()
        if not len(radius_list) == len(nsample_list) == len(mlp_list):
            raise UserError(f"radius, nsample and mlp lists must have one entry per branch; got lengths "
                            f"{len(radius_list)}, {len(nsample_list)}, {len(mlp_list)}")
        self.npoint, self.radius_list, self.nsample_list = npoint, list(radius_list), list(nsample_list)
        self.conv_blocks, self.bn_blocks = nn.ModuleList(), nn.ModuleList()
        for widths in mlp_list:
            convs, norms = _shared_mlp(nn.Conv2d, nn.BatchNorm2d, in_channel + 3, widths)
            self.conv_blocks.append(convs)
            self.bn_blocks.append(norms)
        self.out_channels = sum(widths[-1] for widths in mlp_list)

    def forward(self, xyz: torch.Tensor, points: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyz`` ``(B, 3, N)``, ``points`` ``(B, D, N)`` or None -> ``new_xyz`` ``(B, 3, S)``,
        ``new_points`` ``(B, sum of branch widths, S)``."""
        xyz = xyz.transpose(1, 2)
        feats = points.transpose(1, 2) if points is not None else None
        new_xyz = index_points(xyz, farthest_point_sample(xyz, self.npoint, start=_fps_start(self, xyz)))
        outputs = []
        for radius, nsample, convs, norms in zip(self.radius_list, self.nsample_list, self.conv_blocks,
                                                 self.bn_blocks):
            idx = ball_query(radius, nsample, xyz, new_xyz)
            relative = index_points(xyz, idx) - new_xyz.unsqueeze(2)
            grouped = relative if feats is None else torch.cat([index_points(feats, idx), relative], dim=-1)
            outputs.append(_run_mlp(convs, norms, grouped.permute(0, 3, 2, 1)).max(2).values)
        return new_xyz.transpose(1, 2), torch.cat(outputs, dim=1)


class FeaturePropagation(nn.Module):
    """Carry features from a coarse level to a finer one (3-NN interpolation), concatenate the finer
    level's own features before them, shared MLP. Parameters: ``mlp_convs.J`` (``Conv1d`` 1x1),
    ``mlp_bns.J`` (``BatchNorm1d``); ``in_channel`` = skip channels + coarse channels."""

    def __init__(self, in_channel: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp_convs, self.mlp_bns = _shared_mlp(nn.Conv1d, nn.BatchNorm1d, in_channel, mlp)
        self.out_channels = mlp[-1]

    def forward(self, xyz1: torch.Tensor, xyz2: torch.Tensor, points1: torch.Tensor | None,
                points2: torch.Tensor) -> torch.Tensor:
        """``xyz1`` ``(B, 3, N)`` fine points, ``xyz2`` ``(B, 3, S)`` coarse points, ``points1``
        ``(B, D1, N)`` or None, ``points2`` ``(B, D2, S)`` -> ``(B, mlp[-1], N)``."""
        interpolated = three_nn_interpolate(xyz1.transpose(1, 2), xyz2.transpose(1, 2), points2.transpose(1, 2))
        interpolated = interpolated.transpose(1, 2)
        x = interpolated if points1 is None else torch.cat([points1, interpolated], dim=1)
        return _run_mlp(self.mlp_convs, self.mlp_bns, x)


def _scaled(widths: Sequence[int], width: float) -> list[int]:
    return [max(1, int(round(c * width))) for c in widths]


def _check_common(num_parts: int, num_categories: int, width: float) -> None:
    for name, value in (("num_parts", num_parts), ("num_categories", num_categories)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value!r} must be an int >= 1")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise UserError(f"width={width!r} must be a number > 0")


def _check_levels(npoint: Sequence[int], nsample: Sequence[Any]) -> None:
    if len(npoint) != 2 or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in npoint):
        raise UserError(f"npoint={tuple(npoint)!r} must be two ints >= 1 (centroids of sa1 and sa2)")
    if npoint[1] > npoint[0]:
        raise UserError(f"npoint={tuple(npoint)!r}: sa2's centroids ({npoint[1]}) cannot exceed sa1's ({npoint[0]})")
    if len(nsample) != 2:
        raise UserError(f"nsample={tuple(nsample)!r} must have one entry per level (sa1, sa2)")


class _PointNet2PartSeg(nn.Module):
    """Shared forward and head of both variants; subclasses build ``sa1..sa3`` and ``fp3..fp1``."""

    sa1: nn.Module
    sa2: nn.Module
    sa3: SetAbstraction
    fp3: FeaturePropagation
    fp2: FeaturePropagation
    fp1: FeaturePropagation

    def _init_head(self, head: int, num_parts: int, dropout: float) -> None:
        self.conv1 = nn.Conv1d(self.fp1.out_channels, head, 1)
        self.bn1 = nn.BatchNorm1d(head)
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(head, num_parts, 1)

    def forward(self, points: torch.Tensor, category_one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point part log-probabilities.

        Args:
            points: ``(B, C, N)`` clouds, channels first; ``C = 3`` (xyz) or, with ``normal_channel``,
                ``C = 6`` (xyz then normals). ``N >= npoint[0]``.
            category_one_hot: ``(B, num_categories)`` one-hot object category (any float dtype).

        Returns:
            ``(log_probs, l3_points)``: ``(B, N, num_parts)`` log-softmax over parts, and the global
            feature ``(B, sa3 width, 1)`` (1024 at width 1).
        """
        if points.dim() != 3 or points.shape[1] != self.in_channels:
            raise UserError(f"points must have shape (B, {self.in_channels}, N) (normal_channel="
                            f"{self.normal_channel}); got {tuple(points.shape)}")
        b, _, n = points.shape
        if n < self.npoint[0]:
            raise UserError(f"points has N={n} points per cloud; this model needs N >= {self.npoint[0]}")
        if tuple(category_one_hot.shape) != (b, self.num_categories):
            raise UserError(f"category_one_hot must have shape ({b}, {self.num_categories}); "
                            f"got {tuple(category_one_hot.shape)}")
        l0_xyz = points[:, :3, :]
        l0_points = points  # the reference feeds xyz (and normals) as features too
        l1_xyz, l1_points = self.sa1(l0_xyz, l0_points)
        l2_xyz, l2_points = self.sa2(l1_xyz, l1_points)
        l3_xyz, l3_points = self.sa3(l2_xyz, l2_points)
        l2_points = self.fp3(l2_xyz, l3_xyz, l2_points, l3_points)
        l1_points = self.fp2(l1_xyz, l2_xyz, l1_points, l2_points)
        category = category_one_hot.to(points.dtype).unsqueeze(2).expand(b, self.num_categories, n)
        l0_points = self.fp1(l0_xyz, l1_xyz, torch.cat([category, l0_xyz, l0_points], dim=1), l1_points)
        x = self.conv2(self.drop1(F.relu(self.bn1(self.conv1(l0_points)))))
        return F.log_softmax(x, dim=1).transpose(1, 2), l3_points

    def _set_io(self, num_parts: int, num_categories: int, normal_channel: bool, npoint: Sequence[int]) -> None:
        self.num_parts, self.num_categories = num_parts, num_categories
        self.normal_channel = bool(normal_channel)
        self.in_channels = 6 if normal_channel else 3
        self.npoint = tuple(npoint)


class PointNet2PartSegMSG(_PointNet2PartSeg):
    """PointNet++ part segmentation with multi-scale grouping (reference ``pointnet2_part_seg_msg``).

    At the defaults: ``sa1`` 512 centroids, radii (0.1, 0.2, 0.4), neighbours (32, 64, 128), branch
    MLPs [32, 32, 64], [64, 64, 128], [64, 96, 128]; ``sa2`` 128 centroids, radii (0.4, 0.8),
    neighbours (64, 128), MLPs [128, 128, 256], [128, 196, 256]; ``sa3`` [256, 512, 1024];
    ``fp3`` [256, 256], ``fp2`` [256, 128], ``fp1`` [128, 128]; head 128. ``width`` scales every
    hidden channel count (not the inputs, the one-hot or ``num_parts``).
    """

    def __init__(self, num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False,
                 width: float = 1.0, npoint: Sequence[int] = (512, 128),
                 radius: Sequence[Sequence[float]] = ((0.1, 0.2, 0.4), (0.4, 0.8)),
                 nsample: Sequence[Sequence[int]] = ((32, 64, 128), (64, 128)), dropout: float = 0.5):
        super().__init__()
        _check_common(num_parts, num_categories, width)
        _check_levels(npoint, nsample)
        self._set_io(num_parts, num_categories, normal_channel, npoint)
        extra = 3 if normal_channel else 0
        mlp1 = [_scaled(m, width) for m in ([32, 32, 64], [64, 64, 128], [64, 96, 128])]
        mlp2 = [_scaled(m, width) for m in ([128, 128, 256], [128, 196, 256])]
        if len(radius) != 2 or len(radius[0]) != len(mlp1) or len(radius[1]) != len(mlp2):
            raise UserError(f"radius={radius!r} must be ({len(mlp1)} radii for sa1, {len(mlp2)} for sa2)")
        self.sa1 = SetAbstractionMSG(npoint[0], radius[0], nsample[0], 3 + extra, mlp1)
        self.sa2 = SetAbstractionMSG(npoint[1], radius[1], nsample[1], self.sa1.out_channels, mlp2)
        self.sa3 = SetAbstraction(None, None, None, self.sa2.out_channels + 3, _scaled([256, 512, 1024], width), True)
        self.fp3 = FeaturePropagation(self.sa2.out_channels + self.sa3.out_channels, _scaled([256, 256], width))
        self.fp2 = FeaturePropagation(self.sa1.out_channels + self.fp3.out_channels, _scaled([256, 128], width))
        self.fp1 = FeaturePropagation(num_categories + 3 + 3 + extra + self.fp2.out_channels,
                                      _scaled([128, 128], width))
        self._init_head(_scaled([128], width)[0], num_parts, dropout)


class PointNet2PartSegSSG(_PointNet2PartSeg):
    """PointNet++ part segmentation with single-scale grouping (reference ``pointnet2_part_seg_ssg``).

    At the defaults: ``sa1`` 512 centroids, radius 0.2, 32 neighbours, MLP [64, 64, 128]; ``sa2`` 128
    centroids, radius 0.4, 64 neighbours, [128, 128, 256]; ``sa3`` [256, 512, 1024]; ``fp3``
    [256, 256], ``fp2`` [256, 128], ``fp1`` [128, 128, 128]; head 128. ``width`` scales every hidden
    channel count.
    """

    def __init__(self, num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False,
                 width: float = 1.0, npoint: Sequence[int] = (512, 128), radius: Sequence[float] = (0.2, 0.4),
                 nsample: Sequence[int] = (32, 64), dropout: float = 0.5):
        super().__init__()
        _check_common(num_parts, num_categories, width)
        _check_levels(npoint, nsample)
        if len(radius) != 2:
            raise UserError(f"radius={tuple(radius)!r} must have one radius per level (sa1, sa2)")
        self._set_io(num_parts, num_categories, normal_channel, npoint)
        extra = 3 if normal_channel else 0
        self.sa1 = SetAbstraction(npoint[0], radius[0], nsample[0], 3 + 3 + extra, _scaled([64, 64, 128], width), False)
        self.sa2 = SetAbstraction(npoint[1], radius[1], nsample[1], self.sa1.out_channels + 3,
                                  _scaled([128, 128, 256], width), False)
        self.sa3 = SetAbstraction(None, None, None, self.sa2.out_channels + 3, _scaled([256, 512, 1024], width), True)
        self.fp3 = FeaturePropagation(self.sa2.out_channels + self.sa3.out_channels, _scaled([256, 256], width))
        self.fp2 = FeaturePropagation(self.sa1.out_channels + self.fp3.out_channels, _scaled([256, 128], width))
        self.fp1 = FeaturePropagation(num_categories + 3 + 3 + extra + self.fp2.out_channels,
                                      _scaled([128, 128, 128], width))
        self._init_head(_scaled([128], width)[0], num_parts, dropout)


def _msg(num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False, **options) -> nn.Module:
    """The reference MSG network (2048-point clouds in the paper setting)."""
    return PointNet2PartSegMSG(num_parts, num_categories, normal_channel, **options)


def _ssg(num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False, **options) -> nn.Module:
    """The reference SSG network."""
    return PointNet2PartSegSSG(num_parts, num_categories, normal_channel, **options)


# SSG at a quarter of the channels, a quarter of the centroids and half the neighbours: the CPU demo
# model for 512-point clouds.
_SMALL = dict(width=0.25, npoint=(128, 32), nsample=(16, 32))
# For tests: a few centroids and channels; needs clouds of at least 32 points.
_TINY = dict(width=1 / 16, npoint=(32, 8), nsample=(8, 8))


def _small(num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False, **options) -> nn.Module:
    """SSG with width 1/4, centroids (128, 32), neighbours (16, 32); for clouds of >= 128 points."""
    return PointNet2PartSegSSG(num_parts, num_categories, normal_channel, **{**_SMALL, **options})


def _tiny(num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False, **options) -> nn.Module:
    """SSG with width 1/16, centroids (32, 8), neighbours (8, 8); for tests (clouds of >= 32 points)."""
    return PointNet2PartSegSSG(num_parts, num_categories, normal_channel, **{**_TINY, **options})


POINTNET2_MODELS: dict[str, Callable[..., nn.Module]] = {
    "pointnet2_part_seg_msg": _msg,
    "pointnet2_part_seg_ssg": _ssg,
    "pointnet2_part_seg_small": _small,
    "pointnet2_part_seg_tiny": _tiny,
}

_CLASS_OF = {"pointnet2_part_seg_msg": PointNet2PartSegMSG}


def build_pointnet2(name: str, num_parts: int = 50, num_categories: int = 16, normal_channel: bool = False,
                    **options: Any) -> nn.Module:
    """The PointNet++ part-segmentation model called ``name`` (a key of :data:`POINTNET2_MODELS`).

    ``options`` are further constructor arguments (``width``, ``npoint``, ``radius``, ``nsample``,
    ``dropout``) overriding the named configuration's values.
    """
    if name not in POINTNET2_MODELS:
        raise UserError(f"unknown PointNet++ model {name!r} (models: {', '.join(POINTNET2_MODELS)})")
    cls = _CLASS_OF.get(name, PointNet2PartSegSSG)
    check_options("model", name, cls.__init__, options, supplied=("self", "num_parts", "num_categories",
                                                                  "normal_channel"))
    return POINTNET2_MODELS[name](num_parts, num_categories, normal_channel, **options)
