"""One random street scene, ray-cast through a pinhole camera (the synthetic Cityscapes' renderer).

:func:`render_scene` builds the scene in layers, each a small function that paints the pixels
its surface is nearest for: the ground (asphalt, lane dashes, sidewalks), the facades along both
sides, the cross-street facade closing the view, car-sized boxes, optionally the ego car's hood,
then shading, distance haze and sky. The random numbers are drawn in one fixed order (street,
side facades, end facade, cars, light and haze, sensor noise), so the same generator state
always gives the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The ego car's hood, fixed to the camera: a surface HOOD_DROP metres below it whose front
# edge is HOOD_FRONT metres ahead on the axis and bows back by HOOD_BOW * x^2 to the sides.
HOOD_DROP, HOOD_FRONT, HOOD_BOW = 0.331, 1.9, 0.4
_HOOD_PAINT = np.array([0.10, 0.11, 0.13])

_HAZE = np.array([0.74, 0.78, 0.84], dtype=np.float64)
_SKY_TOP = np.array([0.52, 0.66, 0.88])
_SKY_HORIZON = np.array([0.86, 0.89, 0.93])
_FACADE_PALETTE = np.array(
    [[0.62, 0.55, 0.48], [0.70, 0.66, 0.60], [0.55, 0.45, 0.40], [0.75, 0.72, 0.66],
     [0.50, 0.52, 0.55], [0.66, 0.58, 0.42], [0.58, 0.36, 0.30]]
)  # fmt: skip
_SIDEWALK_WIDTH = 2.5  # metres, inside each side's half width


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


@dataclass
class _Canvas:
    """Per-pixel ray directions and the nearest surface found so far (depth, colour, normal).

    World frame: X right, Y up (ground at Y = 0), Z forward; the camera sits at (0, cam_h, 0).
    Ray directions have camera-frame z = 1, so the ray parameter t IS the z-depth.
    """

    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray
    cam_h: float
    depth: np.ndarray
    colour: np.ndarray
    normal: np.ndarray

    def hit_point(self, t: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.dx[m] * t[m], self.cam_h + self.dy[m] * t[m], self.dz[m] * t[m]

    def paint(self, t: np.ndarray, rgb: np.ndarray, n: Sequence[float], m: np.ndarray) -> None:
        self.depth[m] = t[m]
        self.colour[m] = rgb
        self.normal[m] = n


@dataclass(frozen=True)
class _Street:
    """The street's layout: half widths left/right of the camera, where the cross-street
    facade closes the view (metres) and the texture noise salt."""

    half_left: float
    half_right: float
    z_end: float
    salt: int


def _camera_canvas(size: tuple[int, int], camera: dict[str, Any]) -> _Canvas:
    """The rays of every pixel of a (H, W) image through ``camera``, pitched down; empty scene."""
    h_px, w_px = size
    intr, extr = camera["intrinsic"], camera["extrinsic"]
    cam_h, pitch = float(extr["z"]), float(extr["pitch"])
    u = np.arange(w_px, dtype=np.float64)
    v = np.arange(h_px, dtype=np.float64)
    xn = np.broadcast_to((u - intr["u0"]) / intr["fx"], (h_px, w_px))
    yn = np.broadcast_to(((v - intr["v0"]) / intr["fy"])[:, None], (h_px, w_px))
    cp, sp = np.cos(pitch), np.sin(pitch)
    return _Canvas(
        dx=np.array(xn),
        dy=-yn * cp - sp,
        dz=-yn * sp + cp,
        cam_h=cam_h,
        depth=np.full((h_px, w_px), np.inf),
        colour=np.zeros((h_px, w_px, 3)),
        normal=np.zeros((h_px, w_px, 3)),
    )


def _random_street(rng: np.random.Generator) -> _Street:
    half_left, half_right = rng.uniform(4.5, 9.0), rng.uniform(4.5, 9.0)
    z_end = rng.uniform(42.0, 74.0)
    return _Street(half_left, half_right, z_end, int(rng.integers(0, 2**31)))


def _paint_ground(c: _Canvas, street: _Street) -> None:
    """Asphalt with world-anchored grain and dashed lane lines; lighter tiled sidewalks."""
    t = _plane_hit(-c.cam_h, c.dy)
    m = np.isfinite(t)
    gx, _, gz = c.hit_point(t, m)
    grain = _hash01(np.floor(gx * 3), np.floor(gz * 3), street.salt)
    road = 0.24 + 0.10 * grain
    on_walk = (gx < -street.half_left + _SIDEWALK_WIDTH) | (
        gx > street.half_right - _SIDEWALK_WIDTH
    )
    tiles = (np.floor(gx * 2) + np.floor(gz * 2)) % 2
    walk = 0.46 + 0.06 * tiles + 0.05 * grain
    lane_x = (street.half_right - street.half_left) / 2
    dash = (np.abs(gx - lane_x) < 0.08) & (_frac(gz / 6.0) < 0.5)
    g = np.where(on_walk, walk, np.where(dash, 0.85, road))
    tint = np.array([1.0, 1.0, 1.03])
    c.paint(t, g[:, None] * tint, (0.0, 1.0, 0.0), m)


def _paint_facade_block(
    c: _Canvas, rng: np.random.Generator, salt: int, side: float, half: float, z0: float, z1: float
) -> None:
    """One block of a side's facades between Z = z0 and z1: the plane X = ±(half + setback),
    brick noise and a grid of windows above the ground floor."""
    gap = rng.random() < 0.15  # a gap shows a facade set far back
    setback = rng.uniform(8.0, 14.0) if gap else rng.uniform(0.0, 2.5)
    height = rng.uniform(5.0, 24.0)
    base = _FACADE_PALETTE[rng.integers(len(_FACADE_PALETTE))] * rng.uniform(0.85, 1.1)
    win_dz, win_dy = rng.uniform(2.4, 3.6), rng.uniform(3.0, 3.5)
    x_plane = side * (half + setback)
    t = _plane_hit(x_plane, c.dx)
    with np.errstate(invalid="ignore"):
        py, pz = c.cam_h + c.dy * t, c.dz * t
    m = np.isfinite(t) & (pz >= z0) & (pz < z1) & (py >= 0) & (py <= height) & (t < c.depth)
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
    c.paint(t, rgb, (-side, 0.0, 0.0), m)


def _paint_side_facades(c: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """Blocks of 6-20 m along each side, left then right, up to the cross street."""
    for side in (-1.0, 1.0):
        half = street.half_left if side < 0 else street.half_right
        z0 = 0.0
        while z0 < street.z_end:
            z1 = min(z0 + rng.uniform(6.0, 20.0), street.z_end)
            _paint_facade_block(c, rng, street.salt, side, half, z0, z1)
            z0 = z1


def _paint_end_facade(c: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """The cross-street facade at Z = z_end, wider than the street, with a window grid."""
    t = _plane_hit(street.z_end, c.dz)
    with np.errstate(invalid="ignore"):
        px, py = c.dx * t, c.cam_h + c.dy * t
    end_h = rng.uniform(5.0, 15.0)
    m = np.isfinite(t) & (px > -street.half_left - 14) & (px < street.half_right + 14) & (py >= 0)
    m &= (py <= end_h) & (t < c.depth)
    wx, wy = px[m], py[m]
    window = (_frac(wx / 3.0) > 0.3) & (_frac(wx / 3.0) < 0.7) & (_frac(wy / 3.2) > 0.35)
    base = _FACADE_PALETTE[rng.integers(len(_FACADE_PALETTE))]
    rgb = np.where(window[:, None], np.array([0.18, 0.2, 0.26]), base[None, :])
    c.paint(t, rgb, (0.0, 0.0, -1.0), m)


def _box_hit(
    c: _Canvas, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab intersection of every ray with the axis-aligned box [lo, hi]: entry and exit ray
    parameters and the axis (0 = X, 1 = Y, 2 = Z) of the face the ray enters through."""
    t_near = np.full(c.depth.shape, -np.inf)
    t_far = np.full(c.depth.shape, np.inf)
    axis = np.zeros(c.depth.shape, dtype=np.int64)
    for k, (o, dk) in enumerate(((0.0, c.dx), (c.cam_h, c.dy), (0.0, c.dz))):
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
    return t_near, t_far, axis


def _paint_car(c: _Canvas, rng: np.random.Generator, street: _Street) -> None:
    """One car-sized box on the road (body colour, darker glass above 62 % of its height)."""
    width, tall, length = rng.uniform(1.6, 2.0), rng.uniform(1.35, 1.8), rng.uniform(3.8, 4.9)
    cx = rng.uniform(-street.half_left + 1.3, street.half_right - 1.3)
    cz = rng.uniform(6.0, street.z_end - 4.0)
    lo = np.array([cx - width / 2, 0.0, cz])
    hi = np.array([cx + width / 2, tall, cz + length])
    t_near, t_far, axis = _box_hit(c, lo, hi)
    m = (t_near <= t_far) & (t_near > 1e-6) & (t_near < c.depth)
    body = rng.uniform(0.1, 0.9, size=3)
    py = c.cam_h + c.dy[m] * t_near[m]
    glass = py > 0.62 * tall
    rgb = np.where(glass[:, None], np.array([0.12, 0.14, 0.18]), body[None, :] * 0.9)
    n = np.zeros((int(m.sum()), 3))
    ax = axis[m]
    sign = -np.sign(np.stack([c.dx[m], c.dy[m], c.dz[m]], axis=1)[np.arange(ax.size), ax])
    n[np.arange(ax.size), ax] = sign
    c.depth[m] = t_near[m]
    c.colour[m] = rgb
    c.normal[m] = n


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


def _shade(c: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lambert shading under a random sun, distance haze, a sky gradient and sensor noise:
    the final ``rgb`` uint8 and ``depth`` float32 (0 where the ray sees sky)."""
    sun = np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.5, 0.9), rng.uniform(-0.6, 0.2)])
    sun /= np.linalg.norm(sun)
    hit = np.isfinite(c.depth)
    lambert = 0.55 + 0.45 * np.clip(c.normal @ sun, 0.0, 1.0)
    shaded = c.colour * lambert[..., None]
    beta = rng.uniform(70.0, 130.0)  # haze distance (m): contrast fades with depth
    f = np.exp(-np.where(hit, c.depth, 0.0) / beta)[..., None]
    shaded = shaded * f + _HAZE * (1 - f)
    up = np.clip((-c.dy - 0.0) * 3.0, 0.0, 1.0)[..., None]  # 0 at the horizon, 1 well above
    sky = _SKY_HORIZON * (1 - up) + _SKY_TOP * up
    img = np.where(hit[..., None], shaded, sky)
    img += rng.normal(0.0, 0.012, size=img.shape)
    rgb = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    out_depth = np.where(hit, c.depth, 0.0).astype(np.float32)
    return rgb, out_depth


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    camera: dict[str, Any],
    hood: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast one random street scene.

    ``size`` is (H, W) pixels; ``camera`` a Cityscapes camera dict (see
    :func:`depth_common.data.synthetic.cityscapes_camera`: ``intrinsic.fx/fy/u0/v0`` in pixels,
    ``extrinsic.z`` height and ``extrinsic.pitch``). ``hood`` adds the ego car's hood at the
    bottom of the frame (it draws no random numbers, so the rest of the scene is the same
    either way). Returns ``rgb`` uint8 (H, W, 3) and ``depth`` float32 (H, W): camera z-depth
    in metres (what stereo disparity measures), 0 where the ray sees sky.
    """
    canvas = _camera_canvas(size, camera)
    street = _random_street(rng)
    _paint_ground(canvas, street)
    _paint_side_facades(canvas, rng, street)
    _paint_end_facade(canvas, rng, street)
    for _ in range(int(rng.integers(2, 8))):
        _paint_car(canvas, rng, street)
    if hood:  # nearest of all: it occludes whatever the ray would reach beyond it
        t, m, rgb = _hood(canvas.dx, canvas.dy, canvas.dz)
        canvas.paint(t, rgb[m], (0.0, 1.0, 0.0), m)
    return _shade(canvas, rng)
