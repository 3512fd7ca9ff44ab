"""Ray casting of the demo scene (:mod:`pipeline.demo.scene`): camera rays, the closed room and its
objects (:class:`DemoObject`: axis-aligned boxes, spheres, z-aligned cylinders), and surface texture
coordinates.

World axes: z up, floor at z = 0; the room spans ``[-ROOM_HALF, ROOM_HALF]^2 x [0, ROOM_HEIGHT]``.
Surfaces are numbered 0-5 for the room (floor, ceiling, walls -x, +x, -y, +y) and ``6 + k`` for
object ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROOM_HALF = 5.0  # the room spans [-5, 5] x [-5, 5] x [0, ROOM_HEIGHT] metres
ROOM_HEIGHT = 4.0
EPS = 1e-6


@dataclass(frozen=True)
class DemoObject:
    """One object: ``kind`` box|sphere|cylinder inside its axis-aligned ``box_min/box_max [3]``."""

    name: str
    kind: str
    box_min: np.ndarray
    box_max: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2

    @property
    def radius(self) -> float:
        return float(self.box_max[0] - self.box_min[0]) / 2


def ray_dirs(K: np.ndarray, R: np.ndarray, w: int, h: int, ox: float, oy: float) -> np.ndarray:
    """Unit world-space ray directions ``[h*w, 3]`` through pixel offsets ``(ox, oy)``."""
    M = np.linalg.inv(K).T @ R  # camera -> world: d = R^T K^-1 (u, v, 1)
    d = (np.arange(w) + ox)[None, :, None] * M[0] + (np.arange(h) + oy)[:, None, None] * M[1] + M[2]
    d = d.reshape(-1, 3)
    return d / np.sqrt(np.einsum("ij,ij->i", d, d))[:, None]


def intersect(objects: list[DemoObject], o: np.ndarray, d: np.ndarray):
    """Nearest hit of rays ``o + t d``: ``t [N]``, surface id ``[N]`` (0-5 room, 6+ objects),
    normal ``[N, 3]`` and texture coordinates ``[N, 2]`` in metres."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.array([-ROOM_HALF, -ROOM_HALF, 0.0])
        hi = np.array([ROOM_HALF, ROOM_HALF, ROOM_HEIGHT])
        t_axes = np.where(d > 0, (hi - o) / d, (lo - o) / d)
        t_axes[~np.isfinite(t_axes)] = np.inf
    axis = np.argmin(t_axes, axis=1)
    idx = np.arange(len(d))
    t = t_axes[idx, axis]
    positive = d[idx, axis] > 0
    surf = np.where(axis == 2, np.where(positive, 1, 0), 2 + 2 * axis + positive)  # floor, ceiling, walls
    normal = np.zeros_like(d)
    normal[idx, axis] = np.where(positive, -1.0, 1.0)
    for k, obj in enumerate(objects):
        t_obj, n_obj = hit_object(obj, o, d)
        closer = t_obj < t
        t[closer], normal[closer], surf[closer] = t_obj[closer], n_obj[closer], 6 + k
    p = o + d * t[:, None]
    return t, surf, normal, _surface_uv(objects, p, surf, normal)


def hit_object(obj: DemoObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray-object hits: ``t [N]`` (inf on a miss) and outward normals ``[N, 3]``.

    Only rays that meet the object's bounding sphere are intersected exactly.
    """
    o, d = np.broadcast_arrays(np.asarray(o, np.float64), np.asarray(d, np.float64))
    oc = o - obj.center
    b = np.einsum("ij,ij->i", oc, d)
    r2 = float(np.sum((obj.box_max - obj.box_min) ** 2)) / 4
    near = b * b - np.einsum("ij,ij->i", oc, oc) + r2 >= 0
    t, n = np.full(len(d), np.inf), np.zeros_like(d)
    if near.any():
        t[near], n[near] = _hit_exact(obj, o[near], d[near])
    return t, n


def _hit_exact(obj: DemoObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hit_object` for every ray ``o [N, 3] + t d [N, 3]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.kind == "box":
            t1, t2 = (obj.box_min - o) / d, (obj.box_max - o) / d
            tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
            tn = np.where(np.isnan(tn), -np.inf, tn)
            axis = np.argmax(tn, axis=1)
            t_near, t_far = tn.max(axis=1), np.nanmin(tf, axis=1)
            hit = (t_near <= t_far) & (t_near > EPS)
            n = np.zeros_like(d)
            n[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
            return np.where(hit, t_near, np.inf), n
        if obj.kind == "sphere":
            oc = o - obj.center
            b = np.einsum("ij,ij->i", oc, d)
            disc = b * b - (np.einsum("ij,ij->i", oc, oc) - obj.radius**2)
            t = -b - np.sqrt(disc)
            t = np.where((disc >= 0) & (t > EPS), t, np.inf)
            n = (o + d * t[:, None] - obj.center) / obj.radius
            return t, n
        # vertical cylinder: side, then the top and bottom caps
        c, r, z0, z1 = obj.center, obj.radius, obj.box_min[2], obj.box_max[2]
        ox, oy, dx, dy = o[:, 0] - c[0], o[:, 1] - c[1], d[:, 0], d[:, 1]
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        disc = b * b - a * (ox * ox + oy * oy - r * r)
        t_side = (-b - np.sqrt(disc)) / a
        z = o[:, 2] + d[:, 2] * t_side
        t_side = np.where((disc >= 0) & (t_side > EPS) & (z >= z0) & (z <= z1), t_side, np.inf)
        t = t_side
        n = np.stack([ox + dx * t_side, oy + dy * t_side, np.zeros_like(t)], axis=1) / r
        for zc, nz in ((z1, 1.0), (z0, -1.0)):
            tc = (zc - o[:, 2]) / d[:, 2]
            inside = (ox + dx * tc) ** 2 + (oy + dy * tc) ** 2 <= r * r
            cap = inside & (tc > EPS) & (tc < t)
            t = np.where(cap, tc, t)
            n[cap] = (0.0, 0.0, nz)
        return t, n


def _surface_uv(objects: list[DemoObject], p: np.ndarray, surf: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Texture coordinates ``[N, 2]`` (metres, >= 0) of points ``p`` on surfaces ``surf``."""
    uv = np.zeros((len(p), 2))
    axis = np.argmax(np.abs(n), axis=1)
    # planar faces (room, boxes, cylinder caps): the two other coordinates; object faces are
    # laid side by side along u so that no two faces share a texture patch
    inplane = [(0, 1), (0, 1), (1, 2), (1, 2), (0, 2), (0, 2)]
    for s in range(6):
        m = surf == s
        a, b = inplane[s]
        uv[m] = p[m][:, [a, b]] + [ROOM_HALF, ROOM_HALF if b != 2 else 0.0]
    for k, obj in enumerate(objects):
        m = surf == 6 + k
        if not m.any():
            continue
        q = p[m] - obj.box_min
        size = float(np.max(obj.box_max - obj.box_min))
        ax = axis[m]
        face = ax * 2 + (n[m][np.arange(m.sum()), ax] > 0)
        if obj.kind == "sphere":
            v = p[m] - obj.center
            lon = np.arctan2(v[:, 1], v[:, 0]) + np.pi
            lat = np.arcsin(np.clip(v[:, 2] / obj.radius, -1, 1)) + np.pi / 2
            uv[m] = np.stack([lon * obj.radius, lat * obj.radius], axis=1)
            continue
        other = np.array([[1, 2], [0, 2], [0, 1]])[ax]
        planar = np.stack([q[np.arange(len(q)), other[:, 0]], q[np.arange(len(q)), other[:, 1]]], axis=1)
        uv_m = planar + np.stack([face * size, np.zeros(len(q))], axis=1)
        if obj.kind == "cylinder":
            side = ax != 2
            v = p[m][side] - obj.center
            ang = np.arctan2(v[:, 1], v[:, 0]) + np.pi
            uv_m[side] = np.stack([6 * size + ang * obj.radius, q[side, 2]], axis=1)
        uv[m] = uv_m
    return uv
