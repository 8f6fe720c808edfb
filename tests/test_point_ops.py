"""Point-cloud ops against brute-force Python references (tiny clouds, float64 so that only exact
ties, which the tests construct on purpose, can decide an order)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.ops import (
    ball_query,
    farthest_point_sample,
    index_points,
    sample_and_group,
    sample_and_group_all,
    square_distance,
    three_nn_interpolate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sq(p, q) -> float:
    return sum((a - b) ** 2 for a, b in zip(p, q))


def brute_fps(cloud: list[list[float]], npoint: int, start: int) -> list[int]:
    """Farthest point sampling, one point at a time; ties go to the lowest index."""
    chosen = [start]
    while len(chosen) < npoint:
        best, best_d = None, -1.0
        for i, p in enumerate(cloud):
            d = min(_sq(p, cloud[c]) for c in chosen)
            if d > best_d:  # strict: an equal distance later in index order does not win
                best, best_d = i, d
        chosen.append(best)
    return chosen


def brute_ball(cloud, queries, radius: float, nsample: int) -> list[list[int]]:
    rows = []
    for q in queries:
        inside = [i for i, p in enumerate(cloud) if _sq(p, q) <= radius * radius][:nsample]
        pad = inside[0] if inside else len(cloud)  # no neighbour at all: N, one past the last index
        rows.append(inside + [pad] * (min(nsample, len(cloud)) - len(inside)))
    return rows


def brute_three_nn(fine, coarse, feats) -> list[list[float]]:
    out = []
    for p in fine:
        order = sorted(range(len(coarse)), key=lambda j: (_sq(p, coarse[j]), j))[:3]
        w = [1.0 / (_sq(p, coarse[j]) + 1e-8) for j in order]
        total = sum(w)
        out.append([sum(w[k] / total * feats[j][d] for k, j in enumerate(order)) for d in range(len(feats[0]))])
    return out


def test_square_distance_matches_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 7, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    assert square_distance(a, b).shape == (2, 7, 5)
    torch.testing.assert_close(square_distance(a, b), torch.cdist(a, b) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_equals_brute_force_with_given_start(seed):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(3, 40, 3, generator=g, dtype=torch.float64)
    start = torch.tensor([0, 17, 39])
    got = farthest_point_sample(xyz, 12, start=start)
    assert got.dtype == torch.long and got.shape == (3, 12)
    for b in range(3):
        assert got[b].tolist() == brute_fps(xyz[b].tolist(), 12, int(start[b]))


def test_fps_ties_go_to_the_lowest_index():
    # Integer coordinates: every distance is exact, and many are equal.
    cube = torch.tensor([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=torch.float32)
    xyz = torch.stack([cube, cube.flip(0)])
    got = farthest_point_sample(xyz, 8, start=torch.tensor([0, 3]))
    for b in range(2):
        assert got[b].tolist() == brute_fps(xyz[b].tolist(), 8, [0, 3][b])
    assert got[0].tolist()[:2] == [0, 7]
    # a cloud of identical points: index 0 forever after the start
    same = torch.zeros(1, 5, 3)
    assert farthest_point_sample(same, 4, start=torch.tensor([2])).tolist() == [[2, 0, 0, 0]]


def test_fps_random_start_is_reproducible():
    xyz = torch.rand(4, 30, 3, generator=torch.Generator().manual_seed(0))
    a = farthest_point_sample(xyz, 6, generator=torch.Generator().manual_seed(5))
    b = farthest_point_sample(xyz, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    c = farthest_point_sample(xyz, 6)
    expected_start = torch.randint(0, 30, (4,), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    assert torch.equal(c, farthest_point_sample(xyz, 6))
    assert torch.equal(c[:, 0], expected_start)  # the global RNG draws the start like torch.randint(0, N, (B,))
    assert torch.equal(c, farthest_point_sample(xyz, 6, start=expected_start))


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(npoint=0), "npoint"),
    (dict(npoint=11), r"\[1, 10\]"),
    (dict(npoint=3, start=torch.tensor([0, 10])), r"\[0, 9\]"),
    (dict(npoint=3, start=torch.tensor([0])), r"shape \(2,\)"),
    (dict(npoint=3, start=torch.tensor([0.0, 1.0])), "integer"),
])
def test_fps_rejects_bad_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        farthest_point_sample(torch.rand(2, 10, 3), **kwargs)


@pytest.mark.parametrize(("radius", "nsample"), [(0.25, 4), (0.4, 16), (0.1, 3)])
def test_ball_query_equals_brute_force(radius, nsample):
    g = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    new_xyz = torch.cat([xyz[:, ::7], torch.rand(2, 3, 3, generator=g, dtype=torch.float64) * 0.2 + 0.4], dim=1)
    got = ball_query(radius, nsample, xyz, new_xyz)
    assert got.dtype == torch.long and got.shape == (2, new_xyz.shape[1], nsample)
    for b in range(2):
        assert got[b].tolist() == brute_ball(xyz[b].tolist(), new_xyz[b].tolist(), radius, nsample)


def test_ball_query_pads_with_first_and_caps_columns_at_n():
    xyz = torch.tensor([[[5.0, 0, 0], [0, 0, 0], [9, 9, 9], [0.1, 0, 0], [7, 0, 0]]])
    got = ball_query(0.5, 4, xyz, torch.tensor([[[0.0, 0, 0], [7, 0, 0]]]))
    assert got.tolist() == [[[1, 3, 1, 1], [4, 4, 4, 4]]]
    assert ball_query(100.0, 8, xyz, xyz[:, :1]).tolist() == [[[0, 1, 2, 3, 4]]]  # min(nsample, N) columns


def test_ball_query_without_neighbours_returns_n_and_indexing_refuses_it():
    xyz = torch.zeros(1, 4, 3)
    got = ball_query(0.1, 3, xyz, torch.ones(1, 1, 3))
    assert got.tolist() == [[[4, 4, 4]]]
    with pytest.raises(IndexError):
        index_points(xyz, got)


@pytest.mark.parametrize(("args", "match"), [((0.0, 4), "radius"), ((0.1, 0), "nsample")])
def test_ball_query_rejects_bad_arguments(args, match):
    with pytest.raises(UserError, match=match):
        ball_query(*args, torch.rand(1, 5, 3), torch.rand(1, 2, 3))


def test_index_points_gathers_per_batch():
    points = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    idx = torch.tensor([[[0, 4], [1, 1], [2, 3]], [[4, 4], [0, 1], [3, 2]]])
    got = index_points(points, idx)
    assert got.shape == (2, 3, 2, 2)
    for b in range(2):
        for s in range(3):
            for k in range(2):
                assert torch.equal(got[b, s, k], points[b, idx[b, s, k]])
    assert index_points(points, idx[:, 0]).shape == (2, 2, 2)


def test_sample_and_group_layout():
    g = torch.Generator().manual_seed(2)
    xyz, feats = torch.rand(2, 30, 3, generator=g), torch.randn(2, 30, 4, generator=g)
    start = torch.tensor([3, 8])
    new_xyz, new_points, grouped_xyz, fps_idx = sample_and_group(6, 0.3, 5, xyz, feats, returnfps=True, start=start)
    assert new_xyz.shape == (2, 6, 3) and new_points.shape == (2, 6, 5, 7)
    assert torch.equal(fps_idx, farthest_point_sample(xyz, 6, start=start))
    assert torch.equal(new_xyz, index_points(xyz, fps_idx))
    idx = ball_query(0.3, 5, xyz, new_xyz)
    torch.testing.assert_close(new_points[..., :3], index_points(xyz, idx) - new_xyz.unsqueeze(2))  # relative xyz first
    assert torch.equal(new_points[..., 3:], index_points(feats, idx))
    assert torch.equal(grouped_xyz, index_points(xyz, idx))
    only_xyz = sample_and_group(6, 0.3, 5, xyz, None, start=start)[1]
    assert torch.equal(only_xyz, new_points[..., :3])


def test_sample_and_group_all_layout():
    xyz, feats = torch.rand(2, 9, 3), torch.randn(2, 9, 4)
    new_xyz, grouped = sample_and_group_all(xyz, feats)
    assert torch.equal(new_xyz, torch.zeros(2, 1, 3))
    assert torch.equal(grouped, torch.cat([xyz, feats], -1).unsqueeze(1))
    assert torch.equal(sample_and_group_all(xyz, None)[1], xyz.unsqueeze(1))


def test_three_nn_interpolate_equals_brute_force():
    g = torch.Generator().manual_seed(4)
    fine, coarse = torch.rand(2, 20, 3, generator=g, dtype=torch.float64), torch.rand(2, 6, 3, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    got = three_nn_interpolate(fine, coarse, feats)
    assert got.shape == (2, 20, 4)
    for b in range(2):
        expected = torch.tensor(brute_three_nn(fine[b].tolist(), coarse[b].tolist(), feats[b].tolist()), dtype=torch.float64)
        torch.testing.assert_close(got[b], expected)


def test_three_nn_special_cases():
    fine = torch.rand(1, 5, 3)
    one = torch.randn(1, 1, 4)
    assert torch.equal(three_nn_interpolate(fine, torch.rand(1, 1, 3), one), one.expand(1, 5, 4))
    # S == 2 (the reference cannot): both points, inverse-distance weighted
    coarse = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0]]])
    feats = torch.tensor([[[1.0], [3.0]]])
    got = three_nn_interpolate(torch.tensor([[[0.25, 0, 0]]]), coarse, feats)
    w0, w1 = 1 / (0.0625 + 1e-8), 1 / (0.5625 + 1e-8)
    assert math.isclose(got.item(), (w0 * 1 + w1 * 3) / (w0 + w1), rel_tol=1e-6)
    # a fine point that coincides with a coarse one gets (almost exactly) its feature
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 8, 3, generator=g)
    feats = torch.randn(1, 8, 2, generator=g)
    torch.testing.assert_close(three_nn_interpolate(coarse, coarse, feats), feats, atol=1e-5, rtol=1e-5)


def test_three_nn_is_differentiable_in_features():
    feats = torch.randn(1, 4, 2, requires_grad=True)
    three_nn_interpolate(torch.rand(1, 6, 3), torch.rand(1, 4, 3), feats).sum().backward()
    # each fine point's weights sum to 1, so d(sum)/d(feats) summed over coarse points is N per channel
    torch.testing.assert_close(feats.grad.sum(1), torch.full((1, 2), 6.0))


def test_shape_errors_are_user_errors():
    with pytest.raises(UserError, match="channels"):
        square_distance(torch.rand(1, 3, 3), torch.rand(1, 3, 2))
    with pytest.raises(UserError, match="batch size"):
        three_nn_interpolate(torch.rand(2, 3, 3), torch.rand(1, 3, 3), torch.rand(1, 3, 2))
    with pytest.raises(UserError, match=r"\(B, N, C\)"):
        farthest_point_sample(torch.rand(5, 3), 2)
