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

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import zoom

from pipeline.core.io import atomic_dir, read_json, write_json
from pipeline.core.progress import progress
from pipeline.demo.raycast import ROOM_HEIGHT, DemoObject, hit_object, intersect, ray_dirs

log = logging.getLogger(__name__)

TEXEL = 0.02  # texture resolution in metres
KEY_LIGHT = np.array([0.45, 0.3, 1.0]) / np.linalg.norm([0.45, 0.3, 1.0])
FILL_LIGHT = np.array([-0.6, -0.8, 0.35]) / np.linalg.norm([-0.6, -0.8, 0.35])


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
                dirs = ray_dirs(K, R, width, height, ox, oy)
                t, surf, normal, local = intersect(self.objects, center, dirs)
                rgb += self._shade(center + dirs * t[:, None], surf, normal, local)
                if ox == oy == 0.5:
                    centre = dirs, t, surf
        if centre is None:
            dirs = ray_dirs(K, R, width, height, 0.5, 0.5)
            centre = (dirs, *intersect(self.objects, center, dirs)[:2])
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
            t_occ = np.minimum(t_occ, hit_object(obj, origins, KEY_LIGHT)[0])
        lit[facing] = ~np.isfinite(t_occ)
        light = 0.25 + 0.75 * np.clip(n @ KEY_LIGHT, 0, None) * lit + 0.3 * np.clip(n @ FILL_LIGHT, 0, None)
        return albedo * light[:, None]


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
        (
            "blue sphere",
            "sphere",
            np.r_[blue_c - 0.5, 0.0],
            np.r_[blue_c + 0.5, 1.0],
            pal((0.05, 0.15, 0.7), (0.1, 0.35, 0.85), (0.9, 0.9, 0.95)),
        ),
        (
            "green cylinder",
            "cylinder",
            np.r_[green_c - 0.38, 0.0],
            np.r_[green_c + 0.38, 1.2],
            pal((0.08, 0.5, 0.1), (0.2, 0.65, 0.15), (0.95, 0.95, 0.6)),
        ),
        (
            "yellow box",
            "box",
            np.r_[yellow_c - (0.3, 0.25), 0.0],
            np.r_[yellow_c + (0.3, 0.25), 1.5],
            pal((0.85, 0.7, 0.05), (0.75, 0.55, 0.05), (0.15, 0.1, 0.3)),
        ),
        (
            "purple sphere",
            "sphere",
            np.r_[purple_c - pr, 0.7],
            np.r_[purple_c + pr, 0.7 + 2 * pr],
            pal((0.45, 0.1, 0.6), (0.6, 0.2, 0.7), (0.95, 0.95, 0.8)),
        ),
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
    out_dir: Path,
    n_views: int = 36,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
    supersample: int = 1,
    extra: dict | None = None,
    label_every: int = 0,
) -> DemoScene:
    """Render the demo scene into ``out_dir`` (replaced atomically) and return it.

    Writes ``view_000.png ...`` and ``ground_truth.json``:
    ``{"views": {name: {"K": 3x3, "w2c": 4x4}}, "objects": [{"name", "kind", "box_min", "box_max"}],
    "extent": float, "width", "height", "seed", "supersample"}`` plus the keys of ``extra``
    (e.g. provenance), and with ``label_every`` > 0 LERF-OVS-style annotations of every
    ``label_every``-th view in ``labels/`` (:mod:`pipeline.demo.labels`).
    :func:`load_demo_scene` turns the folder back into a :class:`DemoScene`.
    """
    from pipeline.demo.labels import write_frame_labels

    scene = build_demo_scene(n_views, width, height, seed, supersample)
    names = [o.name for o in scene.objects]
    with atomic_dir(Path(out_dir)) as tmp:
        for i, view in enumerate(progress(scene.views, desc="demo views", unit="view")):
            rgb, _, object_id = scene.render(view.K, view.w2c, width, height)
            Image.fromarray(rgb).save(tmp / view.name)
            if label_every > 0 and i % label_every == 0:
                write_frame_labels(tmp / "labels", view.name, object_id, names)
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
