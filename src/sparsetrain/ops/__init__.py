"""Tensor operations that sparsetrain writes itself rather than importing from an extension.

:mod:`sparsetrain.ops.point_ops` holds the point-cloud primitives PointNet++ needs (farthest point
sampling, ball query, grouping, 3-nearest-neighbour interpolation), in plain vectorised torch.
"""

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
    "farthest_point_sample",
    "index_points",
    "sample_and_group",
    "sample_and_group_all",
    "square_distance",
    "three_nn_interpolate",
]
