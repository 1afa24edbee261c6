"""Cityscapes on disk: file discovery for both layouts, camera JSONs, disparity → metric depth.

Two layouts are understood (``layout="auto"`` picks whichever the root holds):

* ``cityscapes`` (official): ``leftImg8bit/{split}/{city}/<frame>_leftImg8bit.png`` +
  ``disparity/{split}/{city}/<frame>_disparity.png`` + optional
  ``camera/{split}/{city}/<frame>_camera.json``.
* ``seed`` (the reference design's): ``depth_X/{split}/{city}/*.png`` (RGB) +
  ``depth_y/{split}/{city}/*.png`` (disparity); pairs match by frame id (the file stem with a
  trailing ``_leftImg8bit`` / ``_disparity`` removed). No camera files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from depth_common.errors import DataError

LAYOUTS = ("cityscapes", "seed")
RGB_SUFFIX = "_leftImg8bit"
DISPARITY_SUFFIX = "_disparity"
CAMERA_SUFFIX = "_camera"

# PIL modes of a 16-bit single-channel PNG: "I;16" (current Pillow), "I;16B"/"I" (older ones).
_DISPARITY_MODES = ("I;16", "I;16B", "I;16L", "I")
_RGB_MODES = ("RGB", "RGBA", "L", "P")

# Layout → (RGB folder, disparity folder, camera folder or None).
_FOLDERS: dict[str, tuple[str, str, str | None]] = {
    "cityscapes": ("leftImg8bit", "disparity", "camera"),
    "seed": ("depth_X", "depth_y", None),
}


@dataclass(frozen=True)
class CameraIntrinsics:
    """What disparity → depth needs from a camera: stereo ``baseline`` (metres) and ``fx`` (pixels)."""

    baseline: float
    focal_length: float


@dataclass(frozen=True)
class Sample:
    """One RGB/disparity pair on disk (``camera_path`` is None when there is no camera JSON)."""

    split: str
    city: str
    frame_id: str
    rgb_path: Path
    disparity_path: Path
    camera_path: Path | None = None


def disparity_to_depth(
    disparity: np.ndarray,
    baseline: float,
    focal_length: float,
    max_depth: float = 80.0,
) -> np.ndarray:
    """Raw Cityscapes disparity PNG values → metric depth in metres (float32, 0 = invalid).

    Official Cityscapes encoding: a stored value ``p > 0`` means disparity ``d = (p - 1) / 256``
    pixels; ``p = 0`` is an invalid pixel. Depth is ``baseline * focal_length / d`` (metres,
    with ``baseline`` in metres and ``focal_length`` in pixels at the disparity map's original
    resolution); pixels with ``p = 0`` or ``d <= 0`` (``p = 1``) are 0; valid depths are clamped to
    ``max_depth``.

    Note: the seed design divides by 256 **without** the ``- 1``; that biases every depth low
    (most at long range, where ``d`` is small), so this follows the official definition instead.

    Raises ``DataError`` unless ``disparity`` is a 2-D uint16 array, and ``ValueError`` for a
    non-positive ``baseline``/``focal_length``/``max_depth``.
    """
    if not isinstance(disparity, np.ndarray) or disparity.ndim != 2:
        shape = getattr(disparity, "shape", type(disparity).__name__)
        raise DataError(f"disparity: expected a 2-D uint16 array (H, W), got {shape}")
    if disparity.dtype != np.uint16:
        raise DataError(
            f"disparity: expected dtype uint16 (Cityscapes 16-bit PNG), got {disparity.dtype}"
        )
    if not (baseline > 0 and focal_length > 0 and max_depth > 0):
        raise ValueError(
            f"disparity_to_depth: baseline ({baseline} m), focal_length ({focal_length} px) and "
            f"max_depth ({max_depth} m) must all be > 0"
        )
    d = (disparity.astype(np.float64) - 1.0) / 256.0
    valid = d > 0  # p = 0 gives d < 0, p = 1 gives d = 0: both invalid
    depth = np.zeros(disparity.shape, dtype=np.float64)
    depth[valid] = baseline * focal_length / d[valid]
    np.minimum(depth, max_depth, out=depth)
    return depth.astype(np.float32)


def _require(mapping: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise DataError(f"{path}: camera JSON has no '{where}' (expected Cityscapes camera format)")
    return mapping[key]


def read_camera(path: str | Path) -> CameraIntrinsics:
    """Read a Cityscapes camera JSON: ``extrinsic.baseline`` (metres) and ``intrinsic.fx`` (pixels)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read the camera JSON ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    baseline = _require(
        _require(raw, "extrinsic", path, "extrinsic"), "baseline", path, "extrinsic.baseline"
    )
    fx = _require(_require(raw, "intrinsic", path, "intrinsic"), "fx", path, "intrinsic.fx")
    for key, value in (("extrinsic.baseline", baseline), ("intrinsic.fx", fx)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise DataError(f"{path}: {key} is {value!r}, expected a number > 0")
    return CameraIntrinsics(baseline=float(baseline), focal_length=float(fx))


def check_disparity_png(path: Path) -> None:
    """Cheap header check (no pixel decode): ``path`` must be a 16-bit single-channel PNG."""
    try:
        with Image.open(path) as img:
            mode, fmt = img.mode, img.format
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable disparity file ({exc})") from exc
    if fmt != "PNG" or mode not in _DISPARITY_MODES:
        raise DataError(
            f"{path}: expected a 16-bit single-channel disparity PNG (Cityscapes uint16), "
            f"got {fmt} mode {mode}"
        )


def check_rgb_image(path: Path) -> None:
    """Cheap header check (no pixel decode): ``path`` must be a readable 8-bit colour image."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable RGB image ({exc})") from exc
    if mode not in _RGB_MODES:
        raise DataError(f"{path}: expected an 8-bit RGB image, got mode {mode}")


def frame_id(path: Path) -> str:
    """``aachen_000000_000019_leftImg8bit.png`` → ``aachen_000000_000019`` (seed files: the stem)."""
    stem = path.stem
    for suffix in (RGB_SUFFIX, DISPARITY_SUFFIX):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def detect_layout(raw_dir: str | Path) -> str:
    """``cityscapes`` if ``raw_dir/leftImg8bit`` exists, else ``seed`` if ``raw_dir/depth_X`` does."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError(f"{root}: raw data root does not exist or is not a directory")
    for layout in LAYOUTS:
        if (root / _FOLDERS[layout][0]).is_dir():
            return layout
    raise DataError(
        f"{root}: expected leftImg8bit/ + disparity/ (Cityscapes layout) or depth_X/ + depth_y/ "
        "(seed layout), found neither"
    )


def discover(
    raw_dir: str | Path,
    split: str,
    layout: str = "auto",
    num_cities: int | None = None,
) -> list[Sample]:
    """All RGB/disparity pairs of ``split``, sorted by city then frame id.

    ``num_cities`` keeps the first N cities in sorted order (as the seed does). Every pair's
    files are checked here, cheaply, by reading only the PNG headers: the RGB must be a
    readable 8-bit image, the disparity a 16-bit single-channel PNG. Raises ``DataError``
    naming the file or directory for: a missing root or split directory, an empty split, an
    RGB without its disparity, a wrong-mode or unreadable file.
    """
    root = Path(raw_dir)
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DataError(f"layout {layout!r}: expected one of auto, {', '.join(LAYOUTS)}")
    elif not root.is_dir():
        raise DataError(f"{root}: raw data root does not exist or is not a directory")
    rgb_name, disp_name, cam_name = _FOLDERS[layout]
    rgb_split = root / rgb_name / split
    if not rgb_split.is_dir():
        raise DataError(
            f"{rgb_split}: split '{split}' not found (expected {rgb_name}/{split}/<city>/)"
        )
    cities = sorted(p.name for p in rgb_split.iterdir() if p.is_dir())
    if num_cities is not None:
        cities = cities[:num_cities]

    samples: list[Sample] = []
    for city in cities:
        disp_dir = root / disp_name / split / city
        disparities = {frame_id(p): p for p in disp_dir.glob("*.png")} if disp_dir.is_dir() else {}
        pattern = f"*{RGB_SUFFIX}.png" if layout == "cityscapes" else "*.png"
        for rgb in sorted((rgb_split / city).glob(pattern)):
            fid = frame_id(rgb)
            disp = disparities.get(fid)
            if disp is None:
                expected = disp_dir / (
                    f"{fid}{DISPARITY_SUFFIX}.png" if layout == "cityscapes" else rgb.name
                )
                raise DataError(f"{rgb}: no disparity for frame {fid} (expected {expected})")
            check_rgb_image(rgb)
            check_disparity_png(disp)
            camera = None
            if cam_name is not None:
                cam = root / cam_name / split / city / f"{fid}{CAMERA_SUFFIX}.json"
                camera = cam if cam.is_file() else None
            samples.append(Sample(split, city, fid, rgb, disp, camera))
    if not samples:
        raise DataError(
            f"{rgb_split}: split '{split}' is empty (expected <city>/*.png RGB images"
            + (f" in the first {num_cities} cities" if num_cities is not None else "")
            + ")"
        )
    return samples
