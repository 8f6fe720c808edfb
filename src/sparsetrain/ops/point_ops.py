"""Point-cloud primitives for PointNet++: distances, farthest point sampling, ball query, grouping
and 3-nearest-neighbour interpolation, in plain vectorised torch (CPU and CUDA alike).

Why hand-written: the usual providers of these operations (the ``pointnet2`` CUDA extension,
``torch_cluster``, torchvision's ops) are not available here, and the model must run on a CPU. The
semantics follow the widely used PyTorch PointNet++ implementation
(``yanx27/Pointnet_Pointnet2_pytorch``, ``models/pointnet2_utils.py``), so that its checkpoints
give the same outputs; where that implementation leaves something unspecified (the random start of
farthest point sampling, ties, queries without neighbours) the choice made here is documented on the
function.

Conventions: clouds are ``(B, N, C)`` tensors, batch first and channels last; coordinates are in the
units of the data (ShapeNet part clouds are normalised to the unit sphere, which is what the
reference radii 0.1 to 0.8 assume); "distance" below is the *squared* Euclidean distance unless
stated otherwise; indices are ``torch.long`` and index the point axis of their own cloud.

No per-point Python loops: farthest point sampling loops over the sampled points (each iteration is
inherently sequential), everything else is a handful of batched tensor operations.
"""

from __future__ import annotations

import torch

from ..errors import UserError

__all__ = [
    "ball_query",
    "farthest_point_sample",
    "index_points",
    "sample_and_group",
    "sample_and_group_all",
    "square_distance",
    "three_nn_interpolate",
]

# The reference adds this to squared distances before inverting them (interpolation weights).
INTERPOLATION_EPS = 1e-8


def _check_cloud(name: str, tensor: torch.Tensor, channels: int | None = None) -> tuple[int, int, int]:
    """``(B, N, C)`` of a ``(B, N, C)`` tensor, or a ``UserError`` naming ``name``."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise UserError(f"{name} must be a (B, N, C) tensor; got shape {shape}")
    if channels is not None and tensor.shape[2] != channels:
        raise UserError(f"{name} must have {channels} channels in its last axis; got shape {tuple(tensor.shape)}")
    return tuple(tensor.shape)  # type: ignore[return-value]


def _check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise UserError(f"{name_b} has batch size {b.shape[0]}; it must equal {name_a}'s {a.shape[0]}")


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between every point of ``src`` and every point of ``dst``.

    Args:
        src: ``(B, N, C)`` points.
        dst: ``(B, M, C)`` points, same ``B`` and ``C``.

    Returns:
        ``(B, N, M)``: ``out[b, n, m] = |src[b, n] - dst[b, m]|^2`` in squared input units.

    Computed as ``|s|^2 + |d|^2 - 2 s.d`` (one batched matrix product), as the reference does; the
    result can therefore be slightly negative (about ``-1e-7 * |s|^2`` in float32) for coincident
    points, and :func:`ball_query` inherits exactly the reference's rounding at the radius.
    """
    _, _, c = _check_cloud("src", src)
    _check_cloud("dst", dst, c)
    _check_same_batch("src", src, "dst", dst)
    dist = torch.bmm(src, dst.transpose(1, 2)).mul_(-2.0)
    dist += src.square().sum(-1).unsqueeze(2)
    dist += dst.square().sum(-1).unsqueeze(1)
    return dist


def farthest_point_sample(
    xyz: torch.Tensor,
    npoint: int,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices of ``npoint`` points chosen by iterative farthest point sampling, per cloud.

    The first index of cloud ``b`` is ``start[b]``; each next one is the point whose distance to the
    nearest already-chosen point is largest (distances are exact squared differences, not the
    matrix-product form). Ties in that maximum go to the lowest index (``argmax`` semantics), so
    once every point is at distance 0 (a cloud with fewer distinct points than ``npoint``) the
    sampler repeats index 0 -- ``npoint`` itself may not exceed ``N``.

    The reference starts every cloud at a point drawn with ``torch.randint(0, N, (B,))`` from the
    global RNG on the CPU. Here the start is explicit: ``start`` when given, otherwise drawn the same
    way (on the CPU, then moved to ``xyz``'s device) from ``generator`` when given (a CPU generator,
    or one on ``xyz``'s device), else from torch's global CPU RNG -- so a seeded run reproduces its
    samples, and the CPU and CUDA paths draw the same start.

    Args:
        xyz: ``(B, N, 3)`` coordinates (any number of channels works; distances use all of them).
        npoint: how many points to pick, ``1 <= npoint <= N``.
        start: ``(B,)`` integer tensor of first indices in ``[0, N)``, or None.
        generator: RNG for the start when ``start`` is None.

    Returns:
        ``(B, npoint)`` long tensor on ``xyz``'s device; row ``b`` holds distinct indices while cloud
        ``b`` has at least ``npoint`` distinct points.
    """
    b, n, _ = _check_cloud("xyz", xyz)
    if isinstance(npoint, bool) or not isinstance(npoint, int) or not 1 <= npoint <= n:
        raise UserError(f"npoint={npoint!r} must be an int in [1, {n}] (the number of points in each cloud)")
    device = xyz.device
    if start is None:
        rng_device = generator.device if generator is not None else torch.device("cpu")
        start = torch.randint(0, n, (b,), generator=generator, device=rng_device, dtype=torch.long)
    else:
        if not isinstance(start, torch.Tensor) or start.shape != (b,) or start.dtype.is_floating_point \
                or start.dtype == torch.bool or start.is_complex():
            got = f"shape {tuple(start.shape)} {start.dtype}" if isinstance(start, torch.Tensor) else repr(start)
            raise UserError(f"start must be an integer tensor of shape ({b},); got {got}")
        low, high = int(start.min()), int(start.max())
        if low < 0 or high >= n:
            raise UserError(f"start holds {low if low < 0 else high}; start indices must lie in [0, {n - 1}]")
    farthest = start.to(device=device, dtype=torch.long)
    with torch.no_grad():
        points = xyz.detach()
        chosen = torch.empty(b, npoint, dtype=torch.long, device=device)
        # nearest[b, i]: squared distance of point i to the nearest chosen point so far. The reference
        # starts at 1e10; +inf differs only for clouds spanning more than 1e5 units.
        nearest = torch.full((b, n), float("inf"), dtype=points.dtype, device=device)
        rows = torch.arange(b, device=device)
        for i in range(npoint):
            chosen[:, i] = farthest
            centre = points[rows, farthest].unsqueeze(1)  # (B, 1, C)
            torch.minimum(nearest, (points - centre).square_().sum(-1), out=nearest)
            farthest = nearest.argmax(-1)  # first maximum: lowest index on ties
    return chosen


def ball_query(radius: float, nsample: int, xyz: torch.Tensor, new_xyz: torch.Tensor) -> torch.Tensor:
    """For each query point, the first ``nsample`` points of ``xyz`` within ``radius``, padded.

    The reference semantics exactly: a point ``j`` is inside when its squared distance (as computed
    by :func:`square_distance`) is ``<= radius**2``; the result lists the inside points in increasing
    index order, at most ``nsample`` of them (not the nearest ones: the first ones), and fills the
    remaining slots with the first inside index.

    A query with no point inside gets the row ``[N, N, ..., N]`` (one past the last valid index,
    which is what the reference returns as well); :func:`index_points` then raises ``IndexError``.
    This cannot happen when ``new_xyz`` is a subset of ``xyz`` (its own distance is ~0), which is
    how PointNet++ calls it.

    When ``nsample > N`` the reference returns only ``N`` columns, and so does this function (the
    result has ``min(nsample, N)`` columns); the batch-norm statistics of a model depend on it.

    Args:
        radius: ball radius in input units, ``> 0``.
        nsample: the most neighbours per query, ``>= 1``.
        xyz: ``(B, N, 3)`` all points.
        new_xyz: ``(B, S, 3)`` query points.

    Returns:
        ``(B, S, min(nsample, N))`` long tensor of indices into ``xyz``'s point axis.
    """
    if isinstance(nsample, bool) or not isinstance(nsample, int) or nsample < 1:
        raise UserError(f"nsample={nsample!r} must be an int >= 1")
    if not float(radius) > 0:
        raise UserError(f"radius={radius!r} must be > 0")
    b, n, c = _check_cloud("xyz", xyz)
    _check_cloud("new_xyz", new_xyz, c)
    _check_same_batch("xyz", xyz, "new_xyz", new_xyz)
    k = min(nsample, n)
    with torch.no_grad():
        dist = square_distance(new_xyz.detach(), xyz.detach())  # (B, S, N)
        # Inside points keep their index, outside ones become N; the k smallest values are then the
        # first k inside indices in increasing order, followed by N for missing ones. int32 halves
        # the memory traffic of the (B, S, N) candidates (about 3x faster on a CPU than int64).
        index = torch.arange(n, device=xyz.device, dtype=torch.int32 if n < 2**31 - 1 else torch.long)
        candidates = torch.where(dist <= float(radius) ** 2, index, n)
        found = candidates.topk(k, dim=-1, largest=False, sorted=True).values.long()
        return torch.where(found == n, found[..., :1], found)


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points by index, batch by batch.

    Args:
        points: ``(B, N, C)``.
        idx: ``(B, ...)`` long tensor of indices in ``[0, N)``.

    Returns:
        ``(B, ..., C)``: ``out[b, i...] = points[b, idx[b, i...]]``; differentiable in ``points``.
        An index outside ``[0, N)`` raises ``IndexError`` (CPU) or a device-side assertion (CUDA).
    """
    b, _, _ = _check_cloud("points", points)
    if idx.dim() < 1 or idx.shape[0] != b:
        raise UserError(f"idx must have shape (B, ...) with B = {b}; got {tuple(idx.shape)}")
    rows = torch.arange(b, device=points.device).view((b,) + (1,) * (idx.dim() - 1))
    return points[rows, idx]


def sample_and_group(
    npoint: int,
    radius: float,
    nsample: int,
    xyz: torch.Tensor,
    points: torch.Tensor | None,
    returnfps: bool = False,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
):
    """Farthest-point-sample ``npoint`` centroids, then group each one's ball neighbourhood.

    Args:
        npoint, radius, nsample: as for :func:`farthest_point_sample` and :func:`ball_query`.
        xyz: ``(B, N, 3)`` coordinates.
        points: ``(B, N, D)`` features, or None.
        returnfps: also return the grouped absolute coordinates and the sampled indices.
        start, generator: the sampler's first indices / RNG (:func:`farthest_point_sample`).

    Returns:
        ``(new_xyz, new_points)``, or ``(new_xyz, new_points, grouped_xyz, fps_idx)`` with
        ``returnfps``: ``new_xyz`` ``(B, S, 3)`` centroids; ``new_points`` ``(B, S, K, 3 + D)`` the
        neighbours' coordinates *relative to their centroid* followed by their features (``3``
        channels when ``points`` is None); ``grouped_xyz`` ``(B, S, K, 3)`` absolute coordinates;
        ``fps_idx`` ``(B, S)``. ``S = npoint``, ``K = min(nsample, N)``.
    """
    b, _, c = _check_cloud("xyz", xyz)
    fps_idx = farthest_point_sample(xyz, npoint, start=start, generator=generator)
    new_xyz = index_points(xyz, fps_idx)
    idx = ball_query(radius, nsample, xyz, new_xyz)
    grouped_xyz = index_points(xyz, idx)
    relative = grouped_xyz - new_xyz.unsqueeze(2)
    if points is not None:
        _check_cloud("points", points)
        _check_same_batch("xyz", xyz, "points", points)
        new_points = torch.cat([relative, index_points(points, idx)], dim=-1)
    else:
        new_points = relative
    if returnfps:
        return new_xyz, new_points, grouped_xyz, fps_idx
    return new_xyz, new_points


def sample_and_group_all(xyz: torch.Tensor, points: torch.Tensor | None):
    """Group the whole cloud around one centroid at the origin (PointNet++'s last set abstraction).

    Args:
        xyz: ``(B, N, 3)`` coordinates.
        points: ``(B, N, D)`` features, or None.

    Returns:
        ``(new_xyz, new_points)``: ``new_xyz`` ``(B, 1, 3)`` zeros; ``new_points`` ``(B, 1, N, 3 + D)``,
        the *absolute* coordinates (relative to the origin centroid) followed by the features.
    """
    b, n, c = _check_cloud("xyz", xyz)
    new_xyz = xyz.new_zeros(b, 1, c)
    grouped = xyz.unsqueeze(1)
    if points is not None:
        _check_cloud("points", points)
        _check_same_batch("xyz", xyz, "points", points)
        grouped = torch.cat([grouped, points.unsqueeze(1)], dim=-1)
    return new_xyz, grouped


def three_nn_interpolate(xyz1: torch.Tensor, xyz2: torch.Tensor, points2: torch.Tensor) -> torch.Tensor:
    """Features of ``xyz2`` carried to ``xyz1`` by inverse-squared-distance weighting of 3 neighbours.

    For each point of ``xyz1`` take its 3 nearest points of ``xyz2`` (squared distances ``d_k`` from
    :func:`square_distance`), weight them by ``1 / (d_k + 1e-8)`` normalised to sum to 1, and sum
    their features. As in the reference, ``S == 1`` copies the single feature vector to every point.
    The reference cannot handle ``S == 2``; here it uses the 2 points there are. Distances rounded
    below zero by the matrix-product form are clamped to 0 before inverting (the reference leaves
    them, which can flip a weight's sign for a point that coincides with a point of ``xyz2``).

    Args:
        xyz1: ``(B, N, 3)`` points to interpolate at.
        xyz2: ``(B, S, 3)`` points carrying features, ``S >= 1``.
        points2: ``(B, S, D)`` their features.

    Returns:
        ``(B, N, D)`` interpolated features, differentiable in ``points2``.
    """
    b, n, c = _check_cloud("xyz1", xyz1)
    _, s, _ = _check_cloud("xyz2", xyz2, c)
    _check_same_batch("xyz1", xyz1, "xyz2", xyz2)
    _, s2, _ = _check_cloud("points2", points2)
    _check_same_batch("xyz1", xyz1, "points2", points2)
    if s2 != s or s < 1:
        raise UserError(f"points2 has {s2} points; it must have xyz2's {s} (>= 1)")
    if s == 1:
        return points2.repeat(1, n, 1)
    with torch.no_grad():
        dist, idx = square_distance(xyz1.detach(), xyz2.detach()).topk(min(3, s), dim=-1, largest=False)
        weight = dist.clamp_min_(0).add_(INTERPOLATION_EPS).reciprocal_()
        weight /= weight.sum(-1, keepdim=True)
    return (index_points(points2, idx) * weight.unsqueeze(-1).to(points2.dtype)).sum(2)
