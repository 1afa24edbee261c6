"""A synthetic Cityscapes: street scenes ray-cast through a Cityscapes-like stereo camera.

Nothing can be downloaded here, so every test and the default demo train on this. Each image is
a real 3-D scene (a ground plane seen from ~1.22 m, building facades along both sides of a
street closed by a cross-street facade, car-sized boxes at random distances, open sky) rendered
by a pinhole camera with the Cityscapes intrinsics scaled to the chosen width. The depth cues a
network can learn are the ones of real photos: position relative to the horizon, distance haze,
world-anchored textures whose image scale falls with distance, occlusion, shading. Sky has no
depth (disparity 0 = invalid, as in Cityscapes). As in every Cityscapes frame, the recording
car's own hood fills the bottom of the image (about the lowest 13-20 % of the rows, inside the
25 % the community crops) with valid, near disparity.

Output is the official layout (``leftImg8bit/``, ``disparity/``, ``camera/``) with disparity
encoded as Cityscapes does: ``p = round(d * 256) + 1`` for disparity ``d = baseline * fx / z``
pixels, ``p = 0`` invalid.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depth_common.data.io import save_json, save_png

# The Cityscapes rig at full resolution (2048 x 1024): intrinsics in pixels, extrinsics in
# metres/radians (values of a typical camera/*.json).
FULL_WIDTH, FULL_HEIGHT = 2048, 1024
FX_FULL, FY_FULL = 2262.52, 2265.30
U0_FULL, V0_FULL = 1096.98, 513.137
BASELINE = 0.209313
CAMERA_HEIGHT = 1.22
CAMERA_PITCH = 0.038  # radians, looking slightly down
# The ego car's hood, fixed to the camera: a surface HOOD_DROP metres below it whose front
# edge is HOOD_FRONT metres ahead on the axis and bows back by HOOD_BOW * x^2 to the sides.
HOOD_DROP, HOOD_FRONT, HOOD_BOW = 0.331, 1.9, 0.4
_HOOD_PAINT = np.array([0.10, 0.11, 0.13])

SPLIT_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}

_HAZE = np.array([0.74, 0.78, 0.84], dtype=np.float64)
_SKY_TOP = np.array([0.52, 0.66, 0.88])
_SKY_HORIZON = np.array([0.86, 0.89, 0.93])


def cityscapes_camera(
    size: tuple[int, int],
    baseline: float = BASELINE,
    height: float = CAMERA_HEIGHT,
    pitch: float = CAMERA_PITCH,
) -> dict[str, dict[str, float]]:
    """A Cityscapes camera JSON (dict) for images of ``size`` = (H, W) pixels.

    The focal length scales with the width (``fx = 2262.52 * W / 2048``) so the horizontal field
    of view is Cityscapes'; ``fy`` uses the same factor (square pixels) and the principal point
    keeps its relative position.
    """
    h, w = size
    s = w / FULL_WIDTH
    return {
        "extrinsic": {
            "baseline": float(baseline),
            "pitch": float(pitch),
            "roll": 0.0,
            "x": 1.7,
            "y": 0.1,
            "z": float(height),
            "yaw": 0.0,
        },
        "intrinsic": {
            "fx": FX_FULL * s,
            "fy": FY_FULL * s,
            "u0": U0_FULL * s,
            "v0": V0_FULL * h / FULL_HEIGHT,
        },
    }


def depth_to_disparity_png(depth: np.ndarray, baseline: float, focal: float) -> np.ndarray:
    """Depth (metres, 0 = invalid) → Cityscapes disparity PNG values (uint16).

    ``p = round(d * 256) + 1`` with ``d = baseline * focal / depth`` pixels; invalid → 0. A
    depth too far to encode (``d < 1/512`` px) becomes ``p = 1``, which decodes as invalid, and
    ``p`` saturates at 65535 for depths nearer than ``baseline * focal / 256`` metres.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    d = np.zeros_like(depth)
    d[valid] = baseline * focal / depth[valid]
    p = np.where(valid, np.rint(d * 256.0) + 1.0, 0.0)
    return np.clip(p, 0, 65535).astype(np.uint16)


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic value noise in [0, 1) per integer lattice cell (a, b)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ salt
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float64) / 65536.0


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _plane_hit(num: float, den: np.ndarray) -> np.ndarray:
    """Ray parameter where ``origin + t * dir`` meets a plane: ``num / den`` (inf if behind)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    return np.where(np.isfinite(t) & (t > 1e-6), t, np.inf)


def _hood(
    dx: np.ndarray, dy: np.ndarray, dz: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ego hood: (ray parameter = z-depth, hit mask, colour) per pixel.

    Dark paint whose sheen brightens towards the front edge (the sky reflected at a grazing
    angle) and a light emblem on the axis near the edge, so the hood is visible in the RGB.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dy < 0, HOOD_DROP / -dy, np.inf)
    x, z = dx * t, dz * t
    front = HOOD_FRONT - HOOD_BOW * x * x
    m = np.isfinite(t) & (z < front)
    sheen = np.clip(z / HOOD_FRONT, 0.0, 1.0) ** 4
    colour = _HOOD_PAINT + sheen[..., None] * np.array([0.30, 0.33, 0.38])
    emblem = (x * x + (z - (HOOD_FRONT - 0.12)) ** 2) < 0.05**2
    colour[emblem] = 0.8
    return t, m, colour


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    camera: dict[str, Any],
    hood: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one random street scene.

    ``size`` is (H, W) pixels; ``camera`` a Cityscapes camera dict (see :func:`cityscapes_camera`:
    ``intrinsic.fx/fy/u0/v0`` in pixels, ``extrinsic.z`` height and ``extrinsic.pitch``).
    ``hood`` adds the ego car's hood at the bottom of the frame (it draws no random numbers,
    so the rest of the scene is the same either way). Returns ``rgb`` uint8 (H, W, 3) and
    ``depth`` float32 (H, W): camera z-depth in metres (what stereo disparity measures), 0
    where the ray sees sky.
    """
    h_px, w_px = size
    intr, extr = camera["intrinsic"], camera["extrinsic"]
    cam_h, pitch = float(extr["z"]), float(extr["pitch"])
    u = np.arange(w_px, dtype=np.float64)
    v = np.arange(h_px, dtype=np.float64)
    xn = np.broadcast_to((u - intr["u0"]) / intr["fx"], (h_px, w_px))
    yn = np.broadcast_to(((v - intr["v0"]) / intr["fy"])[:, None], (h_px, w_px))
    # World frame: X right, Y up (ground at Y = 0), Z forward; camera at (0, cam_h, 0) pitched
    # down. Ray directions have camera-frame z = 1, so the ray parameter t IS the z-depth.
    cp, sp = np.cos(pitch), np.sin(pitch)
    dx = np.array(xn)
    dy = -yn * cp - sp
    dz = -yn * sp + cp

    depth = np.full((h_px, w_px), np.inf)
    colour = np.zeros((h_px, w_px, 3))
    normal = np.zeros((h_px, w_px, 3))

    def hit_point(t: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return dx[m] * t[m], cam_h + dy[m] * t[m], dz[m] * t[m]

    def paint(t: np.ndarray, rgb: np.ndarray, n: Sequence[float], m: np.ndarray) -> None:
        depth[m] = t[m]
        colour[m] = rgb
        normal[m] = n

    # --- street geometry -------------------------------------------------------------------
    half_left, half_right = rng.uniform(4.5, 9.0), rng.uniform(4.5, 9.0)
    z_end = rng.uniform(42.0, 74.0)  # the cross-street facade closing the view
    sidewalk = 2.5
    salt = int(rng.integers(0, 2**31))

    # Ground: asphalt with world-anchored grain and dashed lane lines; lighter tiled sidewalks.
    t = _plane_hit(-cam_h, dy)
    m = np.isfinite(t)
    gx, _, gz = hit_point(t, m)
    grain = _hash01(np.floor(gx * 3), np.floor(gz * 3), salt)
    road = 0.24 + 0.10 * grain
    on_walk = (gx < -half_left + sidewalk) | (gx > half_right - sidewalk)
    tiles = (np.floor(gx * 2) + np.floor(gz * 2)) % 2
    walk = 0.46 + 0.06 * tiles + 0.05 * grain
    lane_x = (half_right - half_left) / 2
    dash = (np.abs(gx - lane_x) < 0.08) & (_frac(gz / 6.0) < 0.5)
    g = np.where(on_walk, walk, np.where(dash, 0.85, road))
    tint = np.array([1.0, 1.0, 1.03])
    paint(t, g[:, None] * tint, (0.0, 1.0, 0.0), m)

    # Facades: blocks along each side; every block a plane X = ±(half width + setback).
    palette = np.array(
        [[0.62, 0.55, 0.48], [0.70, 0.66, 0.60], [0.55, 0.45, 0.40], [0.75, 0.72, 0.66],
         [0.50, 0.52, 0.55], [0.66, 0.58, 0.42], [0.58, 0.36, 0.30]]
    )  # fmt: skip
    for side in (-1.0, 1.0):
        half = half_left if side < 0 else half_right
        z0 = 0.0
        while z0 < z_end:
            z1 = min(z0 + rng.uniform(6.0, 20.0), z_end)
            gap = rng.random() < 0.15  # a gap shows a facade set far back
            setback = rng.uniform(8.0, 14.0) if gap else rng.uniform(0.0, 2.5)
            height = rng.uniform(5.0, 24.0)
            base = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1)
            win_dz, win_dy = rng.uniform(2.4, 3.6), rng.uniform(3.0, 3.5)
            x_plane = side * (half + setback)
            t = _plane_hit(x_plane, dx)
            with np.errstate(invalid="ignore"):
                py, pz = cam_h + dy * t, dz * t
            m = np.isfinite(t) & (pz >= z0) & (pz < z1) & (py >= 0) & (py <= height) & (t < depth)
            wy, wz = py[m], pz[m]
            window = (
                (_frac(wz / win_dz) > 0.25)
                & (_frac(wz / win_dz) < 0.75)
                & (_frac(wy / win_dy) > 0.3)
                & (_frac(wy / win_dy) < 0.8)
                & (wy > 3.0)
            )
            bricks = 0.06 * _hash01(np.floor(wz * 4), np.floor(wy * 4), salt + 1)
            rgb = base[None, :] * (0.94 + bricks[:, None])
            rgb = np.where(window[:, None], np.array([0.16, 0.19, 0.24]), rgb)
            paint(t, rgb, (-side, 0.0, 0.0), m)
            z0 = z1

    # The cross-street facade at Z = z_end.
    t = _plane_hit(z_end, dz)
    with np.errstate(invalid="ignore"):
        px, py = dx * t, cam_h + dy * t
    end_h = rng.uniform(5.0, 15.0)
    m = np.isfinite(t) & (px > -half_left - 14) & (px < half_right + 14) & (py >= 0)
    m &= (py <= end_h) & (t < depth)
    wx, wy = px[m], py[m]
    window = (_frac(wx / 3.0) > 0.3) & (_frac(wx / 3.0) < 0.7) & (_frac(wy / 3.2) > 0.35)
    base = palette[rng.integers(len(palette))]
    rgb = np.where(window[:, None], np.array([0.18, 0.2, 0.26]), base[None, :])
    paint(t, rgb, (0.0, 0.0, -1.0), m)

    # Cars: axis-aligned boxes, slab intersection.
    for _ in range(int(rng.integers(2, 8))):
        width, tall, length = rng.uniform(1.6, 2.0), rng.uniform(1.35, 1.8), rng.uniform(3.8, 4.9)
        cx = rng.uniform(-half_left + 1.3, half_right - 1.3)
        cz = rng.uniform(6.0, z_end - 4.0)
        lo = np.array([cx - width / 2, 0.0, cz])
        hi = np.array([cx + width / 2, tall, cz + length])
        t_near = np.full(depth.shape, -np.inf)
        t_far = np.full(depth.shape, np.inf)
        axis = np.zeros(depth.shape, dtype=np.int64)
        for k, (o, dk) in enumerate(((0.0, dx), (cam_h, dy), (0.0, dz))):
            with np.errstate(divide="ignore", invalid="ignore"):
                ta = (lo[k] - o) / dk
                tb = (hi[k] - o) / dk
            parallel = dk == 0
            inside = (o >= lo[k]) & (o <= hi[k])
            ta = np.where(parallel, np.where(inside, -np.inf, np.inf), ta)
            tb = np.where(parallel, np.where(inside, np.inf, -np.inf), tb)
            t1, t2 = np.minimum(ta, tb), np.maximum(ta, tb)
            axis = np.where(t1 > t_near, k, axis)
            t_near = np.maximum(t_near, t1)
            t_far = np.minimum(t_far, t2)
        m = (t_near <= t_far) & (t_near > 1e-6) & (t_near < depth)
        body = rng.uniform(0.1, 0.9, size=3)
        py = cam_h + dy[m] * t_near[m]
        glass = py > 0.62 * tall
        rgb = np.where(glass[:, None], np.array([0.12, 0.14, 0.18]), body[None, :] * 0.9)
        n = np.zeros((int(m.sum()), 3))
        ax = axis[m]
        sign = -np.sign(np.stack([dx[m], dy[m], dz[m]], axis=1)[np.arange(ax.size), ax])
        n[np.arange(ax.size), ax] = sign
        depth[m] = t_near[m]
        colour[m] = rgb
        normal[m] = n

    if hood:  # nearest of all: it occludes whatever the ray would reach beyond it
        t, m, rgb = _hood(dx, dy, dz)
        paint(t, rgb[m], (0.0, 1.0, 0.0), m)

    # --- shading, haze, sky ----------------------------------------------------------------
    sun = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.5, 0.9), rng.uniform(-0.6, 0.2)])
    sun /= np.linalg.norm(sun)
    hit = np.isfinite(depth)
    lambert = 0.55 + 0.45 * np.clip(normal @ sun, 0.0, 1.0)
    shaded = colour * lambert[..., None]
    beta = rng.uniform(70.0, 130.0)  # haze distance (m): contrast fades with depth
    f = np.exp(-np.where(hit, depth, 0.0) / beta)[..., None]
    shaded = shaded * f + _HAZE * (1 - f)
    up = np.clip((-dy - 0.0) * 3.0, 0.0, 1.0)[..., None]  # 0 at the horizon, 1 well above
    sky = _SKY_HORIZON * (1 - up) + _SKY_TOP * up
    img = np.where(hit[..., None], shaded, sky)
    img += rng.normal(0.0, 0.012, size=img.shape)
    rgb = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    out_depth = np.where(hit, depth, 0.0).astype(np.float32)
    return rgb, out_depth


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode())  # stable across runs and processes (unlike hash())


def _city_names(split: str, n: int) -> list[str]:
    known = SPLIT_CITIES.get(split, ())
    return [known[i] if i < len(known) else f"{split}city{i:02d}" for i in range(n)]


def generate_cityscapes(
    out_dir: str | Path,
    cities: int = 2,
    per_split: int = 8,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    splits: Sequence[str] = ("train", "val", "test"),
    hood: bool = True,
) -> dict[str, Any]:
    """Write a synthetic dataset in the official Cityscapes layout; return a summary dict.

    ``cities`` cities per split, ``per_split`` images per city per split, ``size`` = (H, W)
    pixels. Files: ``leftImg8bit/{split}/{city}/{frame}_leftImg8bit.png`` (RGB),
    ``disparity/{split}/{city}/{frame}_disparity.png`` (uint16, official encoding) and
    ``camera/{split}/{city}/{frame}_camera.json``. ``hood``: every frame shows the ego car's
    hood at the bottom (valid disparity), as real Cityscapes frames do. The same ``seed``
    always gives the same bytes: each image draws from its own generator keyed by (seed,
    split, city, frame), so the result does not depend on which other splits or cities are
    generated.
    """
    if cities < 1 or per_split < 1:
        raise ValueError(f"cities ({cities}) and per_split ({per_split}) must be >= 1")
    h, w = (int(v) for v in size)
    if h < 8 or w < 8:
        raise ValueError(f"size: expected (height, width) of at least 8 pixels, got {size}")
    root = Path(out_dir)
    counts: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for split in splits:
        names[split] = _city_names(split, cities)
        for ci, city in enumerate(names[split]):
            # One camera per city (Cityscapes calibrates per recording): small rig differences
            # make the per-image camera JSON matter.
            crng = np.random.default_rng([seed, _split_key(split), ci])
            camera = cityscapes_camera(
                (h, w),
                baseline=BASELINE * crng.uniform(0.98, 1.02),
                height=CAMERA_HEIGHT + crng.uniform(-0.04, 0.04),
                pitch=CAMERA_PITCH + crng.uniform(-0.01, 0.01),
            )
            fx, baseline = camera["intrinsic"]["fx"], camera["extrinsic"]["baseline"]
            for fi in range(per_split):
                rng = np.random.default_rng([seed, _split_key(split), ci, fi])
                rgb, depth = render_scene(rng, (h, w), camera, hood=hood)
                frame = f"{city}_{fi:06d}_000019"
                save_png(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", rgb)
                save_png(
                    root / "disparity" / split / city / f"{frame}_disparity.png",
                    depth_to_disparity_png(depth, baseline, fx),
                )
                save_json(root / "camera" / split / city / f"{frame}_camera.json", camera)
        counts[split] = cities * per_split
    return {
        "root": str(root),
        "layout": "cityscapes",
        "size": [h, w],
        "seed": seed,
        "hood": hood,
        "cities": names,
        "counts": counts,
    }
