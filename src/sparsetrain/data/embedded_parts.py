"""An offline stand-in for ShapeNet part segmentation: parametric shapes written in the real format.

What it is: :func:`embedded_part_dataset` builds shapes of eight real ShapeNet-part categories
(Airplane, Chair, Guitar, Knife, Lamp, Mug, Rocket, Table) from parametric primitives (boxes,
frustums/cylinders/cones, ellipsoids, partial tori), labels every surface point with a real global
part id of its category (:data:`~sparsetrain.data.shapenet_part.SEG_CLASSES`), and writes them
with :func:`~sparsetrain.data.shapenet_part.write_shapenet_part` in the exact
``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout, so the demo and the tests run
the real reader (:class:`~sparsetrain.data.shapenet_part.ShapeNetPart`) on it.

Why hand-written: the real dataset is a 700 MB download and this project must run offline; no
package ships labelled part meshes (pyvista's example meshes are unlabelled and most need a
download). The part NAMES below are this module's choice of a plausible meaning for each id; only
the id ranges per category come from the reference, not which id is which real part.

How a shape is built (all draws from ``numpy.random.default_rng([seed, shape index])``, so a
shape does not depend on how many others are built):

* a category-specific builder draws proportions (lengths, radii, thicknesses, tilts, sweep
  angles, the number and placement of legs/engines/fins, optional parts such as chair arms or
  table shelves) and returns a list of primitives, each with its part id and placement;
* ``points_per_shape`` points are split between primitives proportionally to their surface area
  (multinomial), and each primitive samples its surface area-uniformly (inverse-CDF along a
  frustum's slant, rejection on ellipsoids and tori) with analytic outward unit normals;
* the whole shape turns by a uniform random angle about the up axis (y, as in ShapeNet), then
  points within 3% of the shape's size of a differently labelled point (6 nearest neighbours) take
  that neighbour's label with probability 0.4 (like the inconsistent borders of human annotation),
  then every point is jittered (Gaussian, sigma 1% of the shape's size) and every normal perturbed
  and renormalised. Primitives of different parts touch or interpenetrate (legs run into seats,
  poles into shades, wings into fuselages), so part boundaries are ambiguous.

Parts differ only by geometry (position, shape, size); sizes, counts and positions vary per shape,
and some parts are small (engines, lamp canopies, guitar heads), so a small PointNet++ is not
expected to segment perfectly. The split is fixed: shapes ``0..n_train-1`` are ``train``, the next
``n_val`` ``val``, the rest ``test``; categories cycle so every split has every category.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError
from .base import check_count
from .shapenet_part import write_shapenet_part

__all__ = ["EMBEDDED_CATEGORIES", "GENERATOR_VERSION", "PART_NAMES", "embedded_part_dataset", "generate_shape"]

#: Bumped whenever generation changes, so a cache directory never mixes two generators.
GENERATOR_VERSION = 1

#: This module's meaning for each part id it uses (a choice, not the annotation's naming).
PART_NAMES: dict[str, dict[int, str]] = {
    "Airplane": {0: "body", 1: "wing", 2: "tail", 3: "engine"},
    "Chair": {12: "back", 13: "seat", 14: "leg", 15: "arm"},
    "Guitar": {19: "head", 20: "neck", 21: "body"},
    "Knife": {22: "blade", 23: "handle"},
    "Lamp": {24: "base", 25: "shade", 26: "canopy", 27: "tube"},
    "Mug": {36: "handle", 37: "cup"},
    "Rocket": {41: "body", 42: "fin", 43: "nose"},
    "Table": {47: "top", 48: "leg", 49: "shelf"},
}
EMBEDDED_CATEGORIES: tuple[str, ...] = tuple(PART_NAMES)

_NOISE = 0.01  # position jitter, as a fraction of the shape's bounding radius
_BOUNDARY = 0.03  # points this close (fraction of the bounding radius) to another part are "at a boundary"
_FLIP = 0.4  # probability that a boundary point takes a neighbouring part's label
_NORMAL_NOISE = 0.05

# --------------------------------------------------------------------------------------------
# Primitives: each samples its surface in a local frame (axis of revolution = local z) and
# returns (points (n, 3), outward unit normals (n, 3)); ``area`` gives the surface area.


def _frame(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is the unit vector ``axis`` (local z -> ``axis``)."""
    z = np.asarray(axis, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Box:
    """Axis-aligned box of sizes ``(sx, sy, sz)`` centred at the origin."""

    def __init__(self, sx: float, sy: float, sz: float):
        self.size = np.array([sx, sy, sz], dtype=np.float64)

    def area(self) -> float:
        sx, sy, sz = self.size
        return 2.0 * (sx * sy + sy * sz + sx * sz)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        sx, sy, sz = self.size
        face_axis = np.array([0, 1, 2])
        face_area = np.array([sy * sz, sx * sz, sx * sy])
        axis = rng.choice(face_axis, size=n, p=face_area / face_area.sum())
        sign = rng.choice(np.array([-1.0, 1.0]), size=n)
        points = (rng.random((n, 3)) - 0.5) * self.size
        rows = np.arange(n)
        points[rows, axis] = sign * self.size[axis] / 2.0
        normals = np.zeros((n, 3))
        normals[rows, axis] = sign
        return points, normals


class _Frustum:
    """Truncated cone about local z from ``-h/2`` (radius ``r0``) to ``h/2`` (radius ``r1``).

    ``r0 == r1`` is a cylinder, ``r1 == 0`` a cone; ``caps`` selects which end disks exist.
    """

    def __init__(self, r0: float, r1: float, h: float, caps: tuple[bool, bool] = (True, True)):
        self.r0, self.r1, self.h, self.caps = float(r0), float(r1), float(h), caps

    def _areas(self) -> np.ndarray:
        slant = math.hypot(self.h, self.r0 - self.r1)
        return np.array([math.pi * (self.r0 + self.r1) * slant,
                         math.pi * self.r0 ** 2 if self.caps[0] else 0.0,
                         math.pi * self.r1 ** 2 if self.caps[1] else 0.0])

    def area(self) -> float:
        return float(self._areas().sum())

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        areas = self._areas()
        counts = rng.multinomial(n, areas / areas.sum())
        r0, r1, h = self.r0, self.r1, self.h
        # lateral surface: theta uniform, t in [0, 1] with density proportional to r(t)
        m = counts[0]
        theta = rng.uniform(0.0, 2.0 * math.pi, m)
        u = rng.random(m)
        if abs(r1 - r0) < 1e-9:
            t = u
        else:
            t = (-r0 + np.sqrt(r0 * r0 + (r1 * r1 - r0 * r0) * u)) / (r1 - r0)
        radius = r0 + (r1 - r0) * t
        c, s = np.cos(theta), np.sin(theta)
        parts_p = [np.stack([radius * c, radius * s, (t - 0.5) * h], axis=1)]
        normal = np.stack([c, s, np.full(m, (r0 - r1) / h)], axis=1)
        parts_n = [normal / np.linalg.norm(normal, axis=1, keepdims=True)]
        for count, radius_cap, z, nz in ((counts[1], r0, -h / 2, -1.0), (counts[2], r1, h / 2, 1.0)):
            rr = radius_cap * np.sqrt(rng.random(count))
            phi = rng.uniform(0.0, 2.0 * math.pi, count)
            parts_p.append(np.stack([rr * np.cos(phi), rr * np.sin(phi), np.full(count, z)], axis=1))
            parts_n.append(np.tile([0.0, 0.0, nz], (count, 1)))
        return np.concatenate(parts_p), np.concatenate(parts_n)


class _Ellipsoid:
    """Ellipsoid with semi-axes ``(a, b, c)`` along local x, y, z, centred at the origin."""

    def __init__(self, a: float, b: float, c: float):
        self.axes = np.array([a, b, c], dtype=np.float64)

    def area(self) -> float:  # Knud Thomsen's approximation (relative error < 1.1%)
        p = 1.6075
        a, b, c = self.axes ** p
        return 4.0 * math.pi * ((a * b + a * c + b * c) / 3.0) ** (1.0 / p)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        # sphere -> ellipsoid scales the area element by abc * |u / axes|: accept in proportion
        chunks_u: list[np.ndarray] = []
        have = 0
        w_max = 1.0 / self.axes.min()
        while have < n:
            u = rng.normal(size=(2 * (n - have) + 16, 3))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            w = np.linalg.norm(u / self.axes, axis=1)
            u = u[rng.random(len(u)) * w_max < w]
            chunks_u.append(u)
            have += len(u)
        u = np.concatenate(chunks_u)[:n]
        normal = u / self.axes
        return u * self.axes, normal / np.linalg.norm(normal, axis=1, keepdims=True)


class _Torus:
    """Torus about local z (ring radius ``R``, tube radius ``r``), ring angle limited to ``arc``."""

    def __init__(self, big_r: float, r: float, arc: tuple[float, float] = (0.0, 2.0 * math.pi)):
        self.big_r, self.r, self.arc = float(big_r), float(r), arc

    def area(self) -> float:
        return (self.arc[1] - self.arc[0]) * self.big_r * 2.0 * math.pi * self.r

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        chunks: list[np.ndarray] = []
        have = 0
        while have < n:
            v = rng.uniform(0.0, 2.0 * math.pi, 2 * (n - have) + 16)
            keep = rng.random(len(v)) * (self.big_r + self.r) < self.big_r + self.r * np.cos(v)
            chunks.append(v[keep])
            have += int(keep.sum())
        v = np.concatenate(chunks)[:n]
        u = rng.uniform(self.arc[0], self.arc[1], n)
        ring = self.big_r + self.r * np.cos(v)
        points = np.stack([ring * np.cos(u), ring * np.sin(u), self.r * np.sin(v)], axis=1)
        normals = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)
        return points, normals


class _Parts:
    """Primitives of one shape: ``(part id, primitive, rotation (3, 3), translation (3,))``."""

    def __init__(self) -> None:
        self.items: list[tuple[int, object, np.ndarray, np.ndarray]] = []

    def add(self, part: int, primitive: object, at=(0.0, 0.0, 0.0), rotation: np.ndarray | None = None) -> None:
        self.items.append((part, primitive, np.eye(3) if rotation is None else rotation,
                           np.asarray(at, dtype=np.float64)))

    def rod(self, part: int, start, end, r0: float, r1: float | None = None, caps=(True, True)) -> None:
        """A cylinder (or frustum ``r0 -> r1``) from point ``start`` to point ``end``."""
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        axis = end - start
        self.add(part, _Frustum(r0, r0 if r1 is None else r1, float(np.linalg.norm(axis)), caps),
                 (start + end) / 2.0, _frame(axis))


# --------------------------------------------------------------------------------------------
# Category builders (y is up; sizes roughly in [-1, 1]; the reader normalises anyway).


def _airplane(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    length = rng.uniform(1.6, 2.3)
    radius = rng.uniform(0.09, 0.16)
    s.add(0, _Ellipsoid(length / 2, radius, radius * rng.uniform(0.9, 1.1)))
    span = rng.uniform(0.6, 1.1)  # half span
    chord = rng.uniform(0.22, 0.45)
    sweep = rng.uniform(0.0, 0.6)
    wing_x = rng.uniform(-0.15, 0.2)
    wing_y = rng.uniform(-0.7, 0.5) * radius
    dihedral = rng.uniform(-0.05, 0.15)
    for side in (-1.0, 1.0):
        rot = _rot_y(-side * sweep) @ _rot_x(-side * dihedral)
        centre = np.array([wing_x, wing_y, 0.0]) + rot @ np.array([0.0, 0.0, side * span / 2])
        s.add(1, _Box(chord, rng.uniform(0.02, 0.04), span), centre, rot)
    tail_x = -length / 2 + rng.uniform(0.08, 0.2)
    tail_span = rng.uniform(0.2, 0.4)
    s.add(2, _Box(rng.uniform(0.12, 0.22), 0.02, 2 * tail_span), (tail_x, rng.uniform(0.0, 1.0) * radius, 0.0),
          _rot_y(0.0))
    fin_h = rng.uniform(0.18, 0.4)
    s.add(2, _Box(rng.uniform(0.15, 0.28), fin_h, 0.025), (tail_x - 0.02, radius * 0.6 + fin_h / 2, 0.0),
          _rot_z(rng.uniform(-0.5, 0.0)))
    engines = rng.choice([0, 1, 2], p=[0.2, 0.6, 0.2])  # pairs
    for k in range(engines):
        z = span * rng.uniform(0.3, 0.45) if k == 0 else span * rng.uniform(0.6, 0.8)
        er = rng.uniform(0.04, 0.08)
        el = rng.uniform(0.2, 0.4)
        for side in (-1.0, 1.0):
            pos = np.array([wing_x - sweep * z + 0.05, wing_y - er - 0.02, side * z])
            s.rod(3, pos + [el / 2, 0, 0], pos - [el / 2, 0, 0], er, er * rng.uniform(0.7, 1.0))
    return s


def _chair(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    width, depth = rng.uniform(0.8, 1.1), rng.uniform(0.75, 1.05)
    seat_h, seat_t = rng.uniform(0.8, 1.1), rng.uniform(0.05, 0.15)
    s.add(13, _Box(depth, seat_t, width), (0.0, seat_h, 0.0))
    back_h, back_t = rng.uniform(0.7, 1.2), rng.uniform(0.04, 0.1)
    tilt = rng.uniform(0.0, 0.3)
    rot = _rot_z(tilt)
    s.add(12, _Box(back_t, back_h, width * rng.uniform(0.85, 1.0)),
          np.array([-depth / 2 + back_t / 2, seat_h + seat_t / 2, 0.0]) + rot @ [0.0, back_h / 2, 0.0], rot)
    inset = rng.uniform(0.03, 0.12)
    leg_r = rng.uniform(0.025, 0.06)
    splay = rng.uniform(0.0, 0.1)
    if rng.random() < 0.8:
        for sx in (-1, 1):
            for sz in (-1, 1):
                top = [sx * (depth / 2 - inset), seat_h - seat_t / 2, sz * (width / 2 - inset)]
                bottom = [sx * (depth / 2 - inset + splay), 0.0, sz * (width / 2 - inset + splay)]
                if rng.random() < 0.5:
                    s.rod(14, bottom, top, leg_r)
                else:
                    s.add(14, _Box(2 * leg_r, seat_h - seat_t / 2, 2 * leg_r),
                          [(a + b) / 2 for a, b in zip(top, bottom)])
    else:  # swivel chair: a column and a star of feet
        s.rod(14, [0.0, 0.1, 0.0], [0.0, seat_h - seat_t / 2, 0.0], rng.uniform(0.04, 0.07))
        for k in range(5):
            a = 2 * math.pi * k / 5
            s.rod(14, [0.0, 0.1, 0.0], [0.5 * width * math.cos(a), 0.03, 0.5 * width * math.sin(a)], 0.03)
    if rng.random() < 0.45:
        arm_h = rng.uniform(0.2, 0.3)
        for sz in (-1, 1):
            z = sz * (width / 2 + 0.03)
            s.add(15, _Box(depth * 0.9, 0.05, 0.08), (0.0, seat_h + arm_h, z))
            s.rod(15, [depth * 0.35, seat_h, z], [depth * 0.35, seat_h + arm_h, z], 0.03)
    return s


def _guitar(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    thick = rng.uniform(0.08, 0.16)
    lower_r, upper_r = rng.uniform(0.35, 0.45), rng.uniform(0.25, 0.33)
    lower_y = lower_r
    upper_y = lower_y + lower_r * rng.uniform(0.8, 1.1)
    for r, y in ((lower_r, lower_y), (upper_r, upper_y)):
        s.add(21, _Frustum(r, r, thick), (0.0, y, 0.0))
    neck_start = upper_y + upper_r * 0.7
    neck_len = rng.uniform(0.8, 1.2)
    neck_w = rng.uniform(0.07, 0.1)
    s.add(20, _Box(neck_w, neck_len, thick * 0.6), (0.0, neck_start + neck_len / 2, 0.0))
    head_len = rng.uniform(0.2, 0.32)
    tilt = rng.uniform(0.0, 0.3)
    rot = _rot_x(tilt)
    top = np.array([0.0, neck_start + neck_len, 0.0])
    s.add(19, _Box(neck_w * rng.uniform(1.3, 2.0), head_len, thick * 0.5), top + rot @ [0.0, head_len / 2, 0.0], rot)
    return s


def _knife(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    blade_len, blade_w = rng.uniform(0.8, 1.5), rng.uniform(0.12, 0.3)
    handle_len = rng.uniform(0.4, 0.7)
    s.add(22, _Box(blade_len, blade_w, rng.uniform(0.01, 0.03)), (blade_len / 2, 0.0, 0.0))
    tip = rng.uniform(0.1, 0.3)
    s.add(22, _Box(tip, blade_w * 0.5, 0.015), (blade_len + tip / 2 - 0.02, blade_w * 0.2, 0.0))
    if rng.random() < 0.6:
        s.rod(23, [-handle_len, 0.0, 0.0], [0.02, 0.0, 0.0], rng.uniform(0.04, 0.07))
    else:
        s.add(23, _Box(handle_len, blade_w * rng.uniform(0.6, 1.0), rng.uniform(0.05, 0.1)), (-handle_len / 2, 0, 0))
    if rng.random() < 0.5:  # a guard, part of the handle
        s.add(23, _Box(0.04, blade_w * 1.5, 0.08), (0.0, 0.0, 0.0))
    return s


def _lamp(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    base_r, base_h = rng.uniform(0.2, 0.4), rng.uniform(0.04, 0.12)
    s.add(24, _Frustum(base_r, base_r * rng.uniform(0.6, 1.0), base_h), (0.0, base_h / 2, 0.0), _frame([0, 1, 0]))
    pole_h = rng.uniform(0.8, 1.5)
    pole_r = rng.uniform(0.015, 0.04)
    bend = rng.uniform(0.0, 0.5) if rng.random() < 0.5 else 0.0
    mid = np.array([0.0, base_h + pole_h * 0.6, 0.0])
    top = mid + np.array([bend, pole_h * 0.4, 0.0])
    s.rod(27, [0.0, base_h * 0.5, 0.0], mid, pole_r)
    s.rod(27, mid, top, pole_r)
    canopy_r = rng.uniform(0.04, 0.08)
    s.add(26, _Ellipsoid(canopy_r, canopy_r * 1.3, canopy_r), top)
    shade_h = rng.uniform(0.25, 0.45)
    r_top, r_bottom = rng.uniform(0.08, 0.18), rng.uniform(0.2, 0.35)
    s.add(25, _Frustum(r_bottom, r_top, shade_h, caps=(False, rng.random() < 0.5)),
          top + [0.0, shade_h * rng.uniform(0.05, 0.3), 0.0], _frame([0, 1, 0]))
    return s


def _mug(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    r0 = rng.uniform(0.3, 0.45)
    r1 = r0 * rng.uniform(0.95, 1.25)
    h = rng.uniform(0.6, 1.1)
    s.add(37, _Frustum(r0, r1, h, caps=(True, False)), (0.0, h / 2, 0.0), _frame([0, 1, 0]))
    s.add(37, _Frustum(r0 * 0.92, r1 * 0.92, h * 0.95, caps=(True, False)), (0.0, h / 2 + h * 0.025, 0.0),
          _frame([0, 1, 0]))  # inner wall (its normals point inward to the wall, i.e. outward of the solid)
    big_r = rng.uniform(0.22, 0.38) * h
    tube = rng.uniform(0.04, 0.08)
    mean_r = (r0 + r1) / 2
    # handle: a C-shaped arc in the x-y plane, open towards the cup
    s.add(36, _Torus(big_r, tube, (-math.pi / 2 - 0.2, math.pi / 2 + 0.2)),
          (mean_r + big_r * 0.1, h * rng.uniform(0.4, 0.6), 0.0))
    return s


def _rocket(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    radius, length = rng.uniform(0.1, 0.2), rng.uniform(1.2, 2.0)
    s.rod(41, [0.0, 0.0, 0.0], [0.0, length, 0.0], radius, radius * rng.uniform(0.9, 1.0), caps=(True, False))
    nose = rng.uniform(0.25, 0.6)
    if rng.random() < 0.5:
        s.rod(43, [0.0, length, 0.0], [0.0, length + nose, 0.0], radius, 0.0, caps=(False, False))
    else:
        s.add(43, _Ellipsoid(radius, nose, radius), (0.0, length, 0.0))
    fins = int(rng.choice([3, 4]))
    fin_h, fin_w = rng.uniform(0.2, 0.45), rng.uniform(0.12, 0.3)
    offset = rng.uniform(0.0, 2 * math.pi)
    for k in range(fins):
        angle = offset + 2 * math.pi * k / fins
        rot = _rot_y(angle)
        s.add(42, _Box(fin_w, fin_h, 0.02), rot @ [radius + fin_w / 2 - 0.02, fin_h / 2, 0.0], rot)
    return s


def _table(rng: np.random.Generator) -> _Parts:
    s = _Parts()
    height, top_t = rng.uniform(0.6, 0.9), rng.uniform(0.03, 0.1)
    round_top = rng.random() < 0.3
    if round_top:
        r = rng.uniform(0.5, 0.8)
        s.add(47, _Frustum(r, r, top_t), (0.0, height, 0.0), _frame([0, 1, 0]))
        s.rod(48, [0.0, 0.0, 0.0], [0.0, height - top_t / 2, 0.0], rng.uniform(0.04, 0.1))
        foot = rng.uniform(0.2, 0.4)
        s.add(48, _Frustum(foot, foot * 0.8, 0.05), (0.0, 0.025, 0.0), _frame([0, 1, 0]))
        if rng.random() < 0.5:
            s.add(49, _Frustum(r * 0.5, r * 0.5, 0.03), (0.0, height * rng.uniform(0.3, 0.5), 0.0), _frame([0, 1, 0]))
        return s
    length, width = rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.1)
    s.add(47, _Box(length, top_t, width), (0.0, height, 0.0))
    inset = rng.uniform(0.03, 0.15)
    leg = rng.uniform(0.025, 0.07)
    for sx in (-1, 1):
        for sz in (-1, 1):
            s.add(48, _Box(2 * leg, height - top_t / 2, 2 * leg),
                  (sx * (length / 2 - inset), (height - top_t / 2) / 2, sz * (width / 2 - inset)))
    kind = rng.choice(3, p=[0.35, 0.35, 0.3])
    if kind == 0:  # a lower shelf between the legs
        s.add(49, _Box(length - 2 * inset, 0.03, width - 2 * inset), (0.0, height * rng.uniform(0.15, 0.4), 0.0))
    elif kind == 1:  # a drawer block under the top
        dh = rng.uniform(0.1, 0.2)
        s.add(49, _Box(length * rng.uniform(0.3, 0.6), dh, width - 2 * inset - 2 * leg),
              (rng.uniform(-0.2, 0.2) * length, height - top_t / 2 - dh / 2, 0.0))
    return s


_BUILDERS: dict[str, Callable[[np.random.Generator], _Parts]] = {
    "Airplane": _airplane, "Chair": _chair, "Guitar": _guitar, "Knife": _knife,
    "Lamp": _lamp, "Mug": _mug, "Rocket": _rocket, "Table": _table,
}


def _blur_boundaries(rng: np.random.Generator, xyz: np.ndarray, parts: np.ndarray, radius: float) -> np.ndarray:
    """Relabel some points near a part boundary with a neighbouring part's label.

    A point with a differently labelled point among its 6 nearest neighbours within ``radius``
    takes that neighbour's label with probability :data:`_FLIP`, like the inconsistent borders of
    human part annotation: no classifier can get these points right, so IoU stays below 1.
    """
    from scipy.spatial import cKDTree

    distance, neighbour = cKDTree(xyz).query(xyz, k=7, distance_upper_bound=radius)
    valid = np.isfinite(distance[:, 1:])
    labels = np.where(valid, parts[np.minimum(neighbour[:, 1:], len(parts) - 1)], parts[:, None])
    other = labels != parts[:, None]
    flip = other.any(axis=1) & (rng.random(len(parts)) < _FLIP)
    pick = np.argmax(rng.random(other.shape) * other, axis=1)  # a uniformly random differing neighbour
    return np.where(flip, labels[np.arange(len(parts)), pick], parts)


def generate_shape(category: str, rng: np.random.Generator, points: int) -> tuple[np.ndarray, np.ndarray]:
    """One random shape of ``category``: ``points`` float64 ``(points, 6)`` (xyz, unit normals) and
    ``parts`` int64 ``(points,)`` with ids in ``SEG_CLASSES[category]``; deterministic given ``rng``'s state."""
    if category not in _BUILDERS:
        raise UserError(f"category {category!r} has no embedded generator; valid: {', '.join(EMBEDDED_CATEGORIES)}")
    shape = _BUILDERS[category](rng)
    areas = np.array([primitive.area() for _, primitive, _, _ in shape.items])
    counts = rng.multinomial(points, areas / areas.sum())
    xyz, normals, parts = [], [], []
    for (part, primitive, rotation, translation), count in zip(shape.items, counts):
        if count == 0:
            continue
        p, n = primitive.sample(rng, int(count))
        xyz.append(p @ rotation.T + translation)
        normals.append(n @ rotation.T)
        parts.append(np.full(int(count), part, dtype=np.int64))
    xyz_all, normals_all, parts_all = np.concatenate(xyz), np.concatenate(normals), np.concatenate(parts)
    spin = _rot_y(rng.uniform(0.0, 2.0 * math.pi))
    xyz_all = xyz_all @ spin.T
    normals_all = normals_all @ spin.T
    centre = xyz_all.mean(axis=0)
    size = float(np.linalg.norm(xyz_all - centre, axis=1).max())
    parts_all = _blur_boundaries(rng, xyz_all, parts_all, _BOUNDARY * size)
    xyz_all = xyz_all + rng.normal(scale=_NOISE * size, size=xyz_all.shape)
    normals_all = normals_all + rng.normal(scale=_NORMAL_NOISE, size=normals_all.shape)
    normals_all /= np.linalg.norm(normals_all, axis=1, keepdims=True)
    order = rng.permutation(points)  # files list points in no particular part order
    return np.concatenate([xyz_all, normals_all], axis=1)[order], parts_all[order]


def _token(seed: int, index: int) -> str:
    return f"emb{seed:x}s{index:06d}"



def embedded_part_dataset(cache_root: str | os.PathLike[str], seed: int = 0, n_train: int = 600, n_val: int = 100,
                          n_test: int = 200, points_per_shape: int = 2048) -> Path:
    """Write (or reuse) the embedded part dataset under ``cache_root``; return its root directory.

    The root is ``<cache_root>/shapenet_part_embedded_v<GENERATOR_VERSION>_seed<seed>_<n_train>-<n_val>-
    <n_test>_p<points_per_shape>``, laid out exactly like ``shapenetcore_partanno_segmentation_
    benchmark_v0_normal`` (read it with :class:`~sparsetrain.data.shapenet_part.ShapeNetPart`).
    Shape ``i`` (token ``emb<seed hex>s<i:06d>``) has category ``EMBEDDED_CATEGORIES[i % 8]`` and is
    drawn from ``default_rng([seed, i])``; shapes ``0..n_train-1`` are ``train``, then ``n_val``
    ``val``, then ``n_test`` ``test``. The same arguments give byte-identical files; an existing
    complete directory with the same parameters is reused without generating anything. Needs
    ``n_train, n_test >= 1``, ``n_val >= 0``, ``points_per_shape >= 64``; ``seed >= 0``.
    """
    check_count("seed", seed, 0)
    check_count("n_train", n_train, 1)
    check_count("n_val", n_val, 0)
    check_count("n_test", n_test, 1)
    check_count("points_per_shape", points_per_shape, 64)
    name = f"shapenet_part_embedded_v{GENERATOR_VERSION}_seed{seed}_{n_train}-{n_val}-{n_test}_p{points_per_shape}"
    root = Path(cache_root) / name
    total = n_train + n_val + n_test
    params = {"generator": "sparsetrain.data.embedded_parts", "version": GENERATOR_VERSION, "seed": seed,
              "n_train": n_train, "n_val": n_val, "n_test": n_test, "points_per_shape": points_per_shape}

    def shapes() -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
        for index in range(total):
            category = EMBEDDED_CATEGORIES[index % len(EMBEDDED_CATEGORIES)]
            points, parts = generate_shape(category, np.random.default_rng([seed, index]), points_per_shape)
            yield category, _token(seed, index), points, parts

    tokens = [_token(seed, i) for i in range(total)]
    splits = {"train": tokens[:n_train], "val": tokens[n_train:n_train + n_val], "test": tokens[n_train + n_val:]}
    return write_shapenet_part(root, shapes(), splits, params=params)

