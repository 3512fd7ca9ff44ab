"""The built-in demo scene: a procedurally textured room with a few objects, ray cast in numpy.

A closed room (floor, four walls, ceiling) holds five objects (boxes, spheres, a cylinder). Every
surface carries its own multi-scale random texture (no repeats, few flat areas), so SIFT finds
many well-spread features. Shading is Lambertian under fixed lights with object shadows, so a
surface point looks the same from every view (what SfM and Gaussian splatting assume).

Cameras stand on a ring around the centre at varying heights and look inward. Everything is
deterministic given ``seed``. :func:`make_demo_scene` writes ``view_000.png ...`` and
``ground_truth.json``; :func:`load_demo_scene` reads such a folder back; :meth:`DemoScene.render`
renders any camera (rgb, depth, object ids).
World axes: z up, floor at z = 0. Cameras: COLMAP world-to-camera, OpenCV axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import zoom

from . import logger
from .io import atomic_dir, read_json, write_json

log = logger.getChild("demo")

ROOM_HALF = 5.0  # the room spans [-5, 5] x [-5, 5] x [0, ROOM_HEIGHT] metres
ROOM_HEIGHT = 4.0
TEXEL = 0.02  # texture resolution in metres
EPS = 1e-6
KEY_LIGHT = np.array([0.45, 0.3, 1.0]) / np.linalg.norm([0.45, 0.3, 1.0])
FILL_LIGHT = np.array([-0.6, -0.8, 0.35]) / np.linalg.norm([-0.6, -0.8, 0.35])


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


@dataclass(frozen=True)
class DemoView:
    """A ground-truth camera: ``K [3, 3]``, ``w2c [4, 4]`` (world-to-camera, OpenCV axes)."""

    name: str
    K: np.ndarray
    w2c: np.ndarray
    width: int
    height: int


@dataclass
class DemoScene:
    """Geometry, textures and cameras of the demo scene (``views``, ``objects``, ``extent``)."""

    objects: list[DemoObject]
    views: list[DemoView]
    seed: int
    supersample: int = 1
    textures: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def extent(self) -> float:
        """Scene extent: the largest distance between two camera centres (the ring diameter)."""
        c = np.array([-v.w2c[:3, :3].T @ v.w2c[:3, 3] for v in self.views])
        return float(np.max(np.linalg.norm(c[:, None] - c[None], axis=-1))) if len(c) > 1 else 1.0

    def render(
        self, K: np.ndarray, w2c: np.ndarray, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render one camera.

        Returns ``rgb [H, W, 3] uint8`` (``supersample``² rays per pixel), ``depth [H, W] float32``
        (z in the camera frame at the pixel centre) and ``object_id [H, W] int32`` (index into
        ``objects`` at the pixel centre, -1 for the room). Pixel (i, j) covers
        ``[j, j+1) x [i, i+1)`` in COLMAP pixel coordinates.
        """
        K, w2c = np.asarray(K, np.float64), np.asarray(w2c, np.float64)
        R, center = w2c[:3, :3], -w2c[:3, :3].T @ w2c[:3, 3]
        ss = max(1, int(self.supersample))
        offs = (np.arange(ss) + 0.5) / ss
        rgb = np.zeros((height * width, 3))
        centre = None
        for oy in offs:
            for ox in offs:
                dirs = _ray_dirs(K, R, width, height, ox, oy)
                t, surf, normal, local = _intersect(self, center, dirs)
                rgb += self._shade(center + dirs * t[:, None], surf, normal, local)
                if ox == oy == 0.5:
                    centre = dirs, t, surf
        if centre is None:
            dirs = _ray_dirs(K, R, width, height, 0.5, 0.5)
            centre = (dirs, *_intersect(self, center, dirs)[:2])
        dirs, t, surf = centre
        depth = (t * np.einsum("ij,j->i", dirs, R[2])).reshape(height, width).astype(np.float32)
        object_id = np.where(surf >= 6, surf - 6, -1).reshape(height, width).astype(np.int32)
        rgb = rgb.reshape(height, width, 3) / (ss * ss)
        srgb = np.clip(rgb, 0, 1) ** (1 / 2.2)
        return (srgb * 255 + 0.5).astype(np.uint8), depth, object_id

    def _shade(self, p: np.ndarray, surf: np.ndarray, n: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Linear radiance ``[N, 3]`` of hit points ``p [N, 3]`` (Lambertian, fixed lights)."""
        albedo = np.zeros_like(p)
        for s in np.unique(surf):
            m = surf == s
            albedo[m] = _lookup(self.textures[s], uv[m])
        lit = np.ones(len(p), bool)
        facing = n @ KEY_LIGHT > 0
        origins = p[facing] + n[facing] * 1e-4
        t_occ = np.full(int(facing.sum()), np.inf)
        for obj in self.objects:
            t_occ = np.minimum(t_occ, _hit_object(obj, origins, KEY_LIGHT)[0])
        lit[facing] = ~np.isfinite(t_occ)
        light = 0.25 + 0.75 * np.clip(n @ KEY_LIGHT, 0, None) * lit + 0.3 * np.clip(n @ FILL_LIGHT, 0, None)
        return albedo * light[:, None]


def _ray_dirs(K: np.ndarray, R: np.ndarray, w: int, h: int, ox: float, oy: float) -> np.ndarray:
    """Unit world-space ray directions ``[h*w, 3]`` through pixel offsets ``(ox, oy)``."""
    M = np.linalg.inv(K).T @ R  # camera -> world: d = R^T K^-1 (u, v, 1)
    d = (np.arange(w) + ox)[None, :, None] * M[0] + (np.arange(h) + oy)[:, None, None] * M[1] + M[2]
    d = d.reshape(-1, 3)
    return d / np.sqrt(np.einsum("ij,ij->i", d, d))[:, None]


def _intersect(scene: DemoScene, o: np.ndarray, d: np.ndarray):
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
    for k, obj in enumerate(scene.objects):
        t_obj, n_obj = _hit_object(obj, o, d)
        closer = t_obj < t
        t[closer], normal[closer], surf[closer] = t_obj[closer], n_obj[closer], 6 + k
    p = o + d * t[:, None]
    return t, surf, normal, _surface_uv(scene, p, surf, normal)


def _hit_object(obj: DemoObject, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    """:func:`_hit_object` for every ray ``o [N, 3] + t d [N, 3]``."""
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


def _surface_uv(scene: DemoScene, p: np.ndarray, surf: np.ndarray, n: np.ndarray) -> np.ndarray:
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
    for k, obj in enumerate(scene.objects):
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


def _lookup(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup: ``tex [Ht, Wt, 3]`` at ``uv [N, 2]`` metres -> ``[N, 3]``."""
    h, w = tex.shape[:2]
    x = np.clip(uv[:, 0] / TEXEL - 0.5, 0, w - 1.001)
    y = np.clip(uv[:, 1] / TEXEL - 0.5, 0, h - 1.001)
    x0, y0 = x.astype(int), y.astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x0 + 1] * fx
    bottom = tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(
    rng: np.random.Generator, size_u: float, size_v: float, palette: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """A non-repeating multi-scale texture ``[Ht, Wt, 3]`` (linear albedo) of ``size_u x size_v`` m.

    Two base colours mixed by low-frequency noise, luminance detail at wavelengths from
    ``0.8 scale`` m down to ``0.1 scale`` m, and sharp-edged spots of a third colour (strong,
    well-localised SIFT features).
    """
    h, w = int(np.ceil(size_v / TEXEL)) + 2, int(np.ceil(size_u / TEXEL)) + 2

    def octave(wavelength: float) -> np.ndarray:
        wavelength = max(wavelength * scale, 4 * TEXEL)
        gh, gw = int(np.ceil(size_v / wavelength)) + 4, int(np.ceil(size_u / wavelength)) + 4
        grid = rng.standard_normal((gh, gw))
        return zoom(grid, (h / (gh - 3), w / (gw - 3)), order=3, grid_mode=True, mode="mirror")[:h, :w]

    mix = 1 / (1 + np.exp(-2.5 * octave(1.6)))[..., None]
    base = palette[0] * (1 - mix) + palette[1] * mix
    detail = sum(a * octave(lam) for lam, a in ((0.8, 0.5), (0.4, 0.45), (0.2, 0.4), (0.1, 0.35)))
    lum = np.clip(1 + 0.3 * detail, 0.35, 1.8)[..., None]
    spots = np.clip((octave(0.3) - 1.0) * 4, 0, 1)[..., None]
    dots = np.clip((octave(0.12) - 1.6) * 4, 0, 1)[..., None]
    tex = base * lum * (1 - spots) + palette[2] * spots
    tex = tex * (1 - dots) + (1 - palette[2]) * dots
    return np.clip(tex, 0.02, 1.0).astype(np.float32)


def _objects(rng: np.random.Generator) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Object ``(name, kind, box_min, box_max, palette)``: fixed layout, seeded small jitter."""
    j = lambda s=0.08: rng.uniform(-s, s, size=2)  # noqa: E731
    red_c = np.array([-0.9, -0.5]) + j()
    red = (np.r_[red_c - (0.45, 0.35), 0.0], np.r_[red_c + (0.45, 0.35), 0.7])
    blue_c = np.array([0.9, -0.7]) + j()
    green_c = np.array([0.5, 0.9]) + j()
    yellow_c = np.array([-0.6, 1.0]) + j()
    pr = 0.28
    purple_c = red_c + j(0.1)
    pal = lambda *c: np.array(c, dtype=np.float64)  # noqa: E731
    return [
        ("red box", "box", *red, pal((0.75, 0.08, 0.05), (0.55, 0.15, 0.1), (0.95, 0.85, 0.7))),
        ("blue sphere", "sphere", np.r_[blue_c - 0.5, 0.0], np.r_[blue_c + 0.5, 1.0],
         pal((0.05, 0.15, 0.7), (0.1, 0.35, 0.85), (0.9, 0.9, 0.95))),
        ("green cylinder", "cylinder", np.r_[green_c - 0.38, 0.0], np.r_[green_c + 0.38, 1.2],
         pal((0.08, 0.5, 0.1), (0.2, 0.65, 0.15), (0.95, 0.95, 0.6))),
        ("yellow box", "box", np.r_[yellow_c - (0.3, 0.25), 0.0], np.r_[yellow_c + (0.3, 0.25), 1.5],
         pal((0.85, 0.7, 0.05), (0.75, 0.55, 0.05), (0.15, 0.1, 0.3))),
        ("purple sphere", "sphere", np.r_[purple_c - pr, 0.7], np.r_[purple_c + pr, 0.7 + 2 * pr],
         pal((0.45, 0.1, 0.6), (0.6, 0.2, 0.7), (0.95, 0.95, 0.8))),
    ]


ROOM_PALETTES = [  # floor, ceiling, walls -x, +x, -y, +y: distinct, muted, high-contrast spots
    ((0.45, 0.32, 0.2), (0.3, 0.2, 0.12), (0.85, 0.8, 0.7)),
    ((0.7, 0.7, 0.68), (0.5, 0.55, 0.6), (0.15, 0.2, 0.3)),
    ((0.55, 0.6, 0.45), (0.35, 0.45, 0.4), (0.95, 0.9, 0.8)),
    ((0.6, 0.45, 0.45), (0.4, 0.3, 0.35), (0.1, 0.15, 0.1)),
    ((0.4, 0.5, 0.65), (0.6, 0.6, 0.7), (0.95, 0.8, 0.3)),
    ((0.65, 0.6, 0.4), (0.45, 0.5, 0.35), (0.2, 0.1, 0.15)),
]


def ring_cameras(
    n_views: int, width: int, height: int, rng: np.random.Generator, fov_x_deg: float = 65.0
) -> list[DemoView]:
    """``n_views`` cameras on a ring (radius ~3.2 m, height 0.9-1.9 m) looking at the centre."""
    f = width / 2 / np.tan(np.radians(fov_x_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    views = []
    for i in range(n_views):
        az = 2 * np.pi * i / n_views + rng.uniform(-0.05, 0.05)
        radius = 3.2 + rng.uniform(-0.2, 0.2)
        z = 1.4 + 0.4 * np.sin(3 * az) + rng.uniform(-0.1, 0.1)
        center = np.array([radius * np.cos(az), radius * np.sin(az), z])
        target = np.array([0.0, 0.0, 0.5]) + rng.uniform(-0.2, 0.2, size=3)
        fwd = (target - center) / np.linalg.norm(target - center)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        R = np.stack([right, np.cross(fwd, right), fwd])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = R, -R @ center
        views.append(DemoView(f"view_{i:03d}.png", K.copy(), w2c, width, height))
    return views


def build_demo_scene(
    n_views: int = 36, width: int = 320, height: int = 240, seed: int = 0, supersample: int = 1
) -> DemoScene:
    """The demo scene in memory (geometry, textures, ``n_views`` ring cameras); no files.

    Geometry and textures depend on ``seed`` only; ``n_views``/``width``/``height`` only change
    the cameras.
    """
    rng = np.random.default_rng(seed)
    objs = _objects(rng)
    room_sizes = [(10, 10), (10, 10), (10, ROOM_HEIGHT), (10, ROOM_HEIGHT), (10, ROOM_HEIGHT), (10, ROOM_HEIGHT)]
    textures = [_texture(rng, su, sv, np.array(p)) for (su, sv), p in zip(room_sizes, ROOM_PALETTES)]
    objects = []
    for name, kind, lo, hi, palette in objs:
        size = float(np.max(hi - lo))
        # u: six faces or a sphere/cylinder circumference; v: a face, or half a sphere's meridian
        textures.append(_texture(rng, 10 * size, 1.6 * size + 0.1, palette, scale=0.4))
        objects.append(DemoObject(name, kind, lo.astype(np.float64), hi.astype(np.float64)))
    views = ring_cameras(n_views, width, height, rng)
    return DemoScene(objects, views, seed, supersample, textures)


def make_demo_scene(
    out_dir: Path, n_views: int = 36, width: int = 320, height: int = 240, seed: int = 0,
    supersample: int = 1, extra: dict | None = None,
) -> DemoScene:
    """Render the demo scene into ``out_dir`` (replaced atomically) and return it.

    Writes ``view_000.png ...`` and ``ground_truth.json``:
    ``{"views": {name: {"K": 3x3, "w2c": 4x4}}, "objects": [{"name", "kind", "box_min", "box_max"}],
    "extent": float, "width", "height", "seed", "supersample"}`` plus the keys of ``extra``
    (e.g. provenance). :func:`load_demo_scene` turns the folder back into a :class:`DemoScene`.
    """
    from tqdm import tqdm

    scene = build_demo_scene(n_views, width, height, seed, supersample)
    with atomic_dir(Path(out_dir)) as tmp:
        for view in tqdm(scene.views, desc="demo views", unit="view", disable=None):
            rgb, _, _ = scene.render(view.K, view.w2c, width, height)
            Image.fromarray(rgb).save(tmp / view.name)
        write_json(tmp / "ground_truth.json", ground_truth(scene) | (extra or {}))
    log.info("demo scene: %d views %dx%d (seed %d) -> %s", n_views, width, height, seed, out_dir)
    return scene


def ground_truth(scene: DemoScene) -> dict:
    """The ``ground_truth.json`` record of ``scene`` (cameras, object boxes, extent)."""
    return {
        "views": {v.name: {"K": v.K.tolist(), "w2c": v.w2c.tolist()} for v in scene.views},
        "objects": [
            {"name": o.name, "kind": o.kind, "box_min": o.box_min.tolist(), "box_max": o.box_max.tolist()}
            for o in scene.objects
        ],
        "extent": scene.extent,
        "width": scene.views[0].width if scene.views else None,
        "height": scene.views[0].height if scene.views else None,
        "seed": scene.seed,
        "supersample": scene.supersample,
    }


def load_demo_scene(input_dir: Path) -> DemoScene:
    """The :class:`DemoScene` behind ``input_dir/ground_truth.json`` (rebuilt from its seed,
    cameras from the file), e.g. to render object masks for the written views."""
    gt = read_json(Path(input_dir) / "ground_truth.json")
    scene = build_demo_scene(0, gt["width"], gt["height"], gt["seed"], gt.get("supersample", 1))
    scene.views = [
        DemoView(name, np.array(v["K"]), np.array(v["w2c"]), gt["width"], gt["height"])
        for name, v in sorted(gt["views"].items())
    ]
    return scene
