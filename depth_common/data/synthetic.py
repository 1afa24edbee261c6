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
from depth_common.data.scene import render_scene

# The Cityscapes rig at full resolution (2048 x 1024): intrinsics in pixels, extrinsics in
# metres/radians (values of a typical camera/*.json).
FULL_WIDTH, FULL_HEIGHT = 2048, 1024
FX_FULL, FY_FULL = 2262.52, 2265.30
U0_FULL, V0_FULL = 1096.98, 513.137
BASELINE = 0.209313
CAMERA_HEIGHT = 1.22
CAMERA_PITCH = 0.038  # radians, looking slightly down

SPLIT_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"),
}


def cityscapes_camera(
    size: tuple[int, int],
    baseline: float = BASELINE,
    height: float = CAMERA_HEIGHT,
    pitch: float = CAMERA_PITCH,
    zoom: float = 1.0,
) -> dict[str, dict[str, float]]:
    """A Cityscapes camera JSON (dict) for images of ``size`` = (H, W) pixels.

    The focal length scales with the width (``fx = 2262.52 * W / 2048``) so the horizontal field
    of view is Cityscapes'; ``fy`` uses the same factor (square pixels) and the principal point
    keeps its relative position. ``zoom`` multiplies both focals (another lens on the same
    sensor: > 1 narrower, < 1 wider).
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
            "fx": FX_FULL * s * zoom,
            "fy": FY_FULL * s * zoom,
            "u0": U0_FULL * s,
            "v0": V0_FULL * h / FULL_HEIGHT,
        },
    }


PROBE_SEED = 20_240_601  # any fixed number: the same probes at every step and every deploy


def probe_scenes(
    size: tuple[int, int], count: int, seed: int = PROBE_SEED
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """``count`` rendered street scenes of ``size`` = (H, W) pixels: (uint8 RGB images, their
    true float32 depth in metres, 0 = sky), the same for the same seed (a canary's probes)."""
    if count < 1:
        raise ValueError(f"count: got {count}, expected >= 1 probe image")
    camera = cityscapes_camera(size)
    scenes = [render_scene(np.random.default_rng([seed, i]), size, camera) for i in range(count)]
    return (
        tuple(rgb for rgb, _ in scenes),
        tuple(depth.astype(np.float32) for _, depth in scenes),
    )


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


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode())  # stable across runs and processes (unlike hash())


def _city_names(split: str, n: int) -> list[str]:
    known = SPLIT_CITIES.get(split, ())
    return [known[i] if i < len(known) else f"{split}city{i:02d}" for i in range(n)]


def _city_zoom(focal_range: tuple[float, float] | None, seed: int, split: str, city: int) -> float:
    """The focal factor of one city's lens, from a generator of its own (so the other draws,
    and with ``focal_range`` None every byte, stay what they were)."""
    if focal_range is None:
        return 1.0
    lo, hi = focal_range
    return float(np.random.default_rng([seed, _split_key(split), city, 0xF0CA1]).uniform(lo, hi))


def generate_cityscapes(
    out_dir: str | Path,
    cities: int = 2,
    per_split: int = 8,
    size: tuple[int, int] = (128, 256),
    seed: int = 0,
    splits: Sequence[str] = ("train", "val", "test"),
    hood: bool = True,
    focal_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Write a synthetic dataset in the official Cityscapes layout; return a summary dict.

    ``cities`` cities per split, ``per_split`` images per city per split, ``size`` = (H, W)
    pixels. Files: ``leftImg8bit/{split}/{city}/{frame}_leftImg8bit.png`` (RGB),
    ``disparity/{split}/{city}/{frame}_disparity.png`` (uint16, official encoding) and
    ``camera/{split}/{city}/{frame}_camera.json``. ``hood``: every frame shows the ego car's
    hood at the bottom (valid disparity), as real Cityscapes frames do. The same ``seed``
    always gives the same bytes: each image draws from its own generator keyed by (seed,
    split, city, frame), so the result does not depend on which other splits or cities are
    generated. ``focal_range`` = (low, high): each city's lens has a focal of the Cityscapes
    focal times a factor drawn uniformly from it (None: the Cityscapes field of view).
    """
    if cities < 1 or per_split < 1:
        raise ValueError(f"cities ({cities}) and per_split ({per_split}) must be >= 1")
    if focal_range is not None and not 0 < focal_range[0] <= focal_range[1]:
        raise ValueError(f"focal_range: expected 0 < low <= high (factors), got {focal_range}")
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
                zoom=_city_zoom(focal_range, seed, split, ci),
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
        "focal_range": list(focal_range) if focal_range is not None else None,
        "cities": names,
        "counts": counts,
    }
