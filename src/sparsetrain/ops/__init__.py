"""Tensor operations that sparsetrain writes itself rather than importing from an extension.

:mod:`sparsetrain.ops.point_ops` holds the point-cloud primitives PointNet++ needs (farthest point
sampling, ball query, grouping, 3-nearest-neighbour interpolation), in plain vectorised torch.
:mod:`sparsetrain.ops.boxes` holds the box primitives detection needs (IoU, ltrb/xywh conversion, NMS
and per-category NMS with torchvision's semantics).
"""

from sparsetrain.ops.boxes import batched_nms, box_iou, ltrb_to_xywh, nms, xywh_to_ltrb
from sparsetrain.ops.point_ops import (
    ball_query,
    farthest_point_sample,
    index_points,
    sample_and_group,
    sample_and_group_all,
    square_distance,
    three_nn_interpolate,
)

__all__ = [
    "ball_query",
    "batched_nms",
    "box_iou",
    "farthest_point_sample",
    "index_points",
    "ltrb_to_xywh",
    "nms",
    "sample_and_group",
    "sample_and_group_all",
    "square_distance",
    "three_nn_interpolate",
    "xywh_to_ltrb",
]
