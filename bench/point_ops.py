"""Benchmark: PointNet++ point operations and part-segmentation forward passes on the CPU.

In one process, on uniform random clouds in [-1, 1]^3 (the unit-sphere scale the reference radii
assume): farthest point sampling 2048 -> 512 points, ball query (radius 0.2, 32 neighbours, 512
queries), grouping (gathering 32 neighbours' coordinates and 3 feature channels, relative
coordinates), 3-NN interpolation (512 -> 2048 points, 128 channels), all at batch 16 (``--quick``:
batch 4); then one eval-mode forward pass of the reference MSG and SSG networks at 2048 points
(batch 16; ``--quick``: batch 4).

Competitor in the same process: a naive implementation looping over the points in Python (lists
of floats, one distance at a time), for farthest point sampling (512 -> 128) and ball query (128
queries in 512 points) at the same batch, one cloud after the other -- small enough for it to
finish -- against :mod:`sparsetrain.ops.point_ops` on the same input; the ratio is naive time / ours.
Both return the same indices (checked).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, machine_line, median_time, share  # noqa: E402

from sparsetrain.models.pointnet2 import build_pointnet2  # noqa: E402
from sparsetrain.ops import (  # noqa: E402
    ball_query,
    farthest_point_sample,
    index_points,
    three_nn_interpolate,
)


def naive_fps(cloud: list[list[float]], npoint: int, start: int) -> list[int]:
    """Farthest point sampling with a Python loop over every point at every step."""
    nearest = [float("inf")] * len(cloud)
    chosen, current = [], start
    for _ in range(npoint):
        chosen.append(current)
        cx, cy, cz = cloud[current]
        best, best_d = 0, -1.0
        for i, (x, y, z) in enumerate(cloud):
            d = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
            if d < nearest[i]:
                nearest[i] = d
            if nearest[i] > best_d:
                best, best_d = i, nearest[i]
        current = best
    return chosen


def naive_ball_query(radius: float, nsample: int, cloud: list[list[float]], queries: list[list[float]]):
    """First ``nsample`` points within ``radius`` of each query, padded with the first, point by point."""
    r2, rows = radius * radius, []
    for qx, qy, qz in queries:
        found = []
        for i, (x, y, z) in enumerate(cloud):
            if (x - qx) ** 2 + (y - qy) ** 2 + (z - qz) ** 2 <= r2:
                found.append(i)
                if len(found) == nsample:
                    break
        rows.append(found + [found[0]] * (nsample - len(found)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 everywhere, 3 repeats")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch, repeats = (4, 3) if args.quick else (args.batch, args.repeats)
    n, s, k, channels = 2048, 512, 32, 128
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(batch, n, 3, generator=g) * 2 - 1
    feats = torch.randn(batch, n, 3, generator=g)
    start = torch.zeros(batch, dtype=torch.long)
    centres = index_points(xyz, farthest_point_sample(xyz, s, start=start))
    idx = ball_query(0.2, k, xyz, centres)
    coarse_feats = torch.randn(batch, s, channels, generator=g)

    def grouping():
        relative = index_points(xyz, idx) - centres.unsqueeze(2)
        return torch.cat([relative, index_points(feats, idx)], dim=-1)

    rows = []
    with OtherProcesses() as others, torch.no_grad():
        ops = [
            (f"farthest point sample {n} -> {s}", lambda: farthest_point_sample(xyz, s, start=start)),
            (f"ball query r=0.2, {k} of {n} for {s} centroids", lambda: ball_query(0.2, k, xyz, centres)),
            (f"grouping {s} x {k} neighbours (xyz + 3 channels)", grouping),
            (f"3-NN interpolation {s} -> {n} points, {channels} channels",
             lambda: three_nn_interpolate(xyz, centres, coarse_feats)),
        ]
        for label, fn in ops:
            rows.append((label, batch, median_time(fn, repeats, 1).median_s))
        for name in ("pointnet2_part_seg_msg", "pointnet2_part_seg_ssg"):
            torch.manual_seed(0)
            model = build_pointnet2(name).eval()
            points = xyz.transpose(1, 2).contiguous()
            category = torch.nn.functional.one_hot(torch.arange(batch) % 16, 16).float()
            timing = median_time(lambda: model(points, category), repeats, 1)
            rows.append((f"{name} forward (eval), {n} points", batch, timing.median_s))

        # naive per-point Python loops against ours, same batch, 512 points
        small_n, small_s = 512, 128
        cloud = (torch.rand(batch, small_n, 3, generator=g) * 2 - 1).double()
        as_lists = cloud.tolist()
        ours_fps = median_time(lambda: farthest_point_sample(cloud, small_s, start=start), repeats, 1)
        naive = median_time(lambda: [naive_fps(c, small_s, 0) for c in as_lists], repeats, 1)
        assert ours_fps.result.tolist() == naive.result, "FPS disagrees with the naive reference"
        queries = index_points(cloud, ours_fps.result)
        query_lists = queries.tolist()
        ours_ball = median_time(lambda: ball_query(0.2, k, cloud, queries), repeats, 1)
        naive_ball = median_time(lambda: [naive_ball_query(0.2, k, c, q) for c, q in zip(as_lists, query_lists)],
                                 repeats, 1)
        assert ours_ball.result.tolist() == naive_ball.result, "ball query disagrees with the naive reference"
        competitors = [(f"farthest point sample {small_n} -> {small_s}", ours_fps.median_s, naive.median_s),
                       (f"ball query r=0.2, {k} of {small_n} for {small_s} centroids", ours_ball.median_s,
                        naive_ball.median_s)]

    print(machine_line())
    print(f"Median of {repeats} calls after 1 warm-up; float32, torch.no_grad; sampling starts at index 0.\n")
    print("| operation | batch | median (ms) | ms per cloud |")
    print("|---|---:|---:|---:|")
    for label, b, seconds in rows:
        print(f"| {label} | {b} | {seconds * 1e3:.1f} | {seconds * 1e3 / b:.2f} |")
    print(f"\nCompetitor in the same process: naive per-point Python loops, batch {batch}, float64 "
          "(same indices returned).\n")
    print("| operation | ours (ms) | naive loops (ms) | naive / ours |")
    print("|---|---:|---:|---:|")
    for label, ours_s, naive_s in competitors:
        print(f"| {label} | {ours_s * 1e3:.2f} | {naive_s * 1e3:.1f} | {naive_s / ours_s:.0f}x |")
    print(f"\nOther processes used {share(others)} of the CPUs.")


if __name__ == "__main__":
    main()
