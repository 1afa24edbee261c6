"""Cityscapes files: disparity → metric depth, camera JSONs, and cheap checks of each image.

Discovery of the files (both layouts, per-package extraction folders, split selection) is in
:mod:`depth_common.data.discovery`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from depth_common.errors import DataError

RGB_SUFFIX = "_leftImg8bit"
DISPARITY_SUFFIX = "_disparity"
CAMERA_SUFFIX = "_camera"

# PIL modes of a 16-bit single-channel PNG: "I;16" (current Pillow), "I;16B"/"I" (older ones).
_DISPARITY_MODES = ("I;16", "I;16B", "I;16L", "I")
_RGB_MODES = ("RGB", "RGBA", "L", "P")

#: The Cityscapes rig's horizontal focal (``intrinsic.fx``, pixels) at its 2048 px width: its
#: field of view is the canonical camera's (see :func:`canonical_focal_px`).
CITYSCAPES_FOCAL_PX, CITYSCAPES_WIDTH_PX = 2262.52, 2048


def canonical_focal_px(width: int) -> float:
    """The canonical camera's horizontal focal (pixels) at an image ``width`` pixels wide: the
    Cityscapes rig's field of view, what a camera-aware model predicts depth for."""
    return CITYSCAPES_FOCAL_PX * int(width) / CITYSCAPES_WIDTH_PX


#: Frames per split of the full Cityscapes release (leftImg8bit + disparity packages).
CITYSCAPES_COUNTS = {"train": 2975, "val": 500, "test": 1525, "train_extra": 19998}


@dataclass(frozen=True)
class CameraIntrinsics:
    """What disparity → depth needs from a camera: stereo ``baseline`` (metres) and ``fx`` (pixels)."""

    baseline: float
    focal_length: float


@dataclass(frozen=True)
class Sample:
    """One RGB/disparity pair on disk.

    ``camera_path`` is the frame's camera JSON, or None when the layout has none for it (then
    ``data.baseline`` / ``data.focal_length`` apply).
    """

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
    resolution). Invalid (0): ``p = 0``, ``p = 1`` (``d = 0``, infinitely far) and every depth
    at or beyond ``max_depth``: far pixels are dropped, never clamped, so the data keeps
    exactly the pixels the community protocol scores (``gt < 80 m`` on unclamped depth).

    The division by 256 alone, without the ``- 1``, would bias every depth low (most at long
    range, where ``d`` is small); this follows the official definition.

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
    depth[depth >= max_depth] = 0.0
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    baseline = _require(
        _require(raw, "extrinsic", path, "extrinsic"), "baseline", path, "extrinsic.baseline"
    )
    fx = _require(_require(raw, "intrinsic", path, "intrinsic"), "fx", path, "intrinsic.fx")
    for key, value in (("extrinsic.baseline", baseline), ("intrinsic.fx", fx)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise DataError(f"{path}: {key} is {value!r}, expected a number > 0")
    return CameraIntrinsics(baseline=float(baseline), focal_length=float(fx))


@contextmanager
def open_image(path: Path, what: str) -> Iterator[Image.Image]:
    """``PIL.Image.open(path)`` with every failure a ``DataError`` naming ``path`` and ``what``
    it should be (including Pillow's decompression-bomb guard, whose own message names no file)."""
    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{path}: {what} has more pixels than Pillow's decompression-bomb limit "
            f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {exc}; expected a "
            "Cityscapes-sized image"
        ) from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from exc


def check_disparity_png(path: Path) -> None:
    """Cheap header check (no pixel decode): ``path`` must be a 16-bit single-channel PNG."""
    with open_image(path, "disparity file") as img:
        mode, fmt = img.mode, img.format
    if fmt != "PNG" or mode not in _DISPARITY_MODES:
        raise DataError(
            f"{path}: expected a 16-bit single-channel disparity PNG (Cityscapes uint16), "
            f"got {fmt} mode {mode}"
        )


def check_rgb_image(path: Path) -> None:
    """Cheap header check (no pixel decode): ``path`` must be a readable 8-bit colour image."""
    with open_image(path, "RGB image") as img:
        mode = img.mode
    if mode not in _RGB_MODES:
        raise DataError(f"{path}: expected an 8-bit RGB image, got mode {mode}")


def frame_id(path: Path) -> str:
    """``aachen_000000_000019_leftImg8bit.png`` → ``aachen_000000_000019`` (other names: the stem)."""
    stem = path.stem
    for suffix in (RGB_SUFFIX, DISPARITY_SUFFIX):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem
