"""The camera behind a depth map: which focal length applies, how depth scales with it, and 3-D
points from depth.

The model predicts depth for one **canonical camera**: a horizontal focal of
``canonical_focal_px`` pixels at the model's input width (:class:`CanonicalCamera`). A photo
taken with focal ``f`` (pixels of the photo, width ``W``) has the focal ``f * W_in / W`` once
resized to the model input, so its depth is the prediction times ``f / default_focal(W)``, with
``default_focal(W) = canonical_focal_px * W / W_in`` the focal that gives the canonical camera's
horizontal field of view at that width. Only the horizontal focal counts: a non-uniform resize
(the photo's aspect ratio differs from the model input's) stretches rows and columns by
different factors, and the width is the axis the field of view and the default are defined on;
training applies the same convention, so both sides agree (see docs in README, "Camera").

The focal of a request is resolved in a fixed order (:func:`resolve_focal`):

1. the request's ``focal_px`` (v1 instance key, v2 input), pixels of the image as sent
   (upright);
2. EXIF ``FocalLengthIn35mmFilm``: ``f_px = f35 * hypot(W, H) / hypot(36, 24)`` with W, H the
   displayed size (after the EXIF orientation);
3. the default: the canonical camera's field of view at the image's width.

Back-projection (:func:`back_project`): camera frame X right, Y down, Z forward; ``Z = depth``,
``X = (u - cx) * Z / f``, ``Y = (v - cy) * Z / f``, ``u`` the column, ``v`` the row,
``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``. :func:`encode_ply` writes points with colours as a
binary PLY.

numpy and Pillow only: the transformer image installs no torch.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from depth_common.data.cityscapes import CITYSCAPES_FOCAL_PX, CITYSCAPES_WIDTH_PX
from depth_common.errors import DataError, FocalError
from depth_common.serving.codec import ALLOWED_FORMATS

FOCAL_KEY = "focal_px"
#: The canonical camera's focal (pixels at the model input width) under the name every carrier
#: uses: checkpoint key, ONNX metadata, Triton model config parameter.
CANONICAL_FOCAL_PARAMETER = "canonical_focal_px"
#: A focal outside (MIN_FOCAL_PX, MAX_FOCAL_PX] pixels is refused: below 1 px the field of view
#: is over 180 degrees for any image; 100000 px is past any real lens on any sensor.
MIN_FOCAL_PX, MAX_FOCAL_PX = 1.0, 100_000.0
SOURCE_REQUEST, SOURCE_EXIF, SOURCE_DEFAULT = "request", "exif", "default"
#: A 35 mm film frame's diagonal (36 x 24 mm), what FocalLengthIn35mmFilm is relative to.
FILM_35MM_DIAGONAL_MM = math.hypot(36.0, 24.0)
_EXIF_IFD = 0x8769
_FOCAL_35MM_TAG = 0xA405  # FocalLengthIn35mmFilm, in the Exif sub-IFD


@dataclass(frozen=True)
class CanonicalCamera:
    """The camera the model's depth is for: horizontal focal ``focal_px`` at ``width_px``
    (the model input's width)."""

    focal_px: float
    width_px: int

    def __post_init__(self) -> None:
        if self.width_px <= 0:
            raise ValueError(f"width_px: expected a positive width in pixels, got {self.width_px}")
        check_focal(self.focal_px, "canonical focal_px")

    @classmethod
    def cityscapes(cls, width_px: int) -> CanonicalCamera:
        """The Cityscapes rig's field of view at ``width_px``: the canonical camera of training
        (``depth_common.data.cityscapes.canonical_focal_px``), and the one assumed for a model
        whose export names none (trained before the canonical camera, on that rig)."""
        return cls(CITYSCAPES_FOCAL_PX * width_px / CITYSCAPES_WIDTH_PX, width_px)

    def default_focal(self, image_width: int) -> float:
        """Focal (pixels) with the canonical horizontal field of view at ``image_width``."""
        return self.focal_px * image_width / self.width_px

    def depth_scale(self, focal_px: float, image_width: int) -> float:
        """Factor from the model's (canonical) depth to metres for a photo of focal
        ``focal_px`` and width ``image_width`` pixels: 1 at the default focal."""
        return focal_px / self.default_focal(image_width)


def check_focal(value: Any, where: str = FOCAL_KEY) -> float:
    """``value`` as a float focal length in pixels, or :class:`FocalError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise FocalError(
            f"{where}: expected a number of pixels in ({MIN_FOCAL_PX:g}, {MAX_FOCAL_PX:g}], "
            f"got {type(value).__name__} {value!r}"
        )
    f = float(value)
    if not (math.isfinite(f) and MIN_FOCAL_PX < f <= MAX_FOCAL_PX):
        raise FocalError(
            f"{where}: {f!r} is not a finite number of pixels in "
            f"({MIN_FOCAL_PX:g}, {MAX_FOCAL_PX:g}]"
        )
    return f


def focal_from_35mm(f35_mm: float, width: int, height: int) -> float:
    """A 35 mm-equivalent focal length (mm) → pixels of a W x H image (diagonal field of view)."""
    return float(f35_mm) * math.hypot(width, height) / FILM_35MM_DIAGONAL_MM


def exif_focal_35mm(data: bytes) -> float | None:
    """EXIF ``FocalLengthIn35mmFilm`` (mm) of encoded image bytes; None when absent, zero
    (EXIF's "unknown") or unreadable. Reads the header only, never the pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            value = img.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_35MM_TAG)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, KeyError):
        return None  # no usable EXIF: the next source in the order applies
    try:
        f35 = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return None
    return f35 if math.isfinite(f35) and f35 > 0 else None


def resolve_focal(
    requested: float | None,
    f35_mm: float | None,
    size: tuple[int, int],
    camera: CanonicalCamera,
) -> tuple[float, str]:
    """(focal in pixels, source) for an upright image of ``size`` = (H, W): the request's
    focal, else EXIF's 35 mm equivalent, else the canonical camera's field of view."""
    h, w = size
    if requested is not None:
        return check_focal(requested), SOURCE_REQUEST
    if f35_mm is not None:
        f = focal_from_35mm(f35_mm, w, h)
        if MIN_FOCAL_PX < f <= MAX_FOCAL_PX:
            return f, SOURCE_EXIF
    return camera.default_focal(w), SOURCE_DEFAULT


def scale_depth(depth: np.ndarray, scale: float) -> np.ndarray:
    """``depth * scale`` as float32, rounded once from float64, so doubling ``scale`` doubles
    every value exactly (a power-of-two factor commutes with the rounding)."""
    return (np.asarray(depth, dtype=np.float64) * float(scale)).astype(np.float32)


def back_project(depth: np.ndarray, focal_px: float, out: np.ndarray | None = None) -> np.ndarray:
    """Depth (H, W) metres → points (H, W, 3) float32 metres in the camera frame (X right,
    Y down, Z forward), principal point at the image centre ``((W-1)/2, (H-1)/2)``; written
    into ``out`` (float32 (H, W, 3)) when given."""
    if depth.ndim != 2:
        raise ValueError(f"depth: expected a 2-D map (H, W), got shape {depth.shape}")
    f = check_focal(focal_px)
    h, w = depth.shape
    if out is not None and (out.shape != (h, w, 3) or out.dtype != np.float32):
        raise ValueError(f"out: expected float32 {(h, w, 3)}, got {out.dtype} {out.shape}")
    z = np.asarray(depth, dtype=np.float32)
    # float32 throughout, written in place: a 12 MP photo's points are 144 MB in float64.
    u = ((np.arange(w, dtype=np.float64) - (w - 1) / 2.0) / f).astype(np.float32)
    v = ((np.arange(h, dtype=np.float64) - (h - 1) / 2.0) / f).astype(np.float32)
    points = np.empty((h, w, 3), dtype=np.float32) if out is None else out
    np.multiply(z, u[None, :], out=points[..., 0])
    np.multiply(z, v[:, None], out=points[..., 1])
    points[..., 2] = z
    return points


def encode_ply(points: np.ndarray, colors: np.ndarray) -> bytes:
    """Points (H, W, 3) metres and colours (H, W, 3) uint8 → a binary little-endian PLY.

    Only points with a finite, positive Z are written (0 marks no depth, as in the depth PNG).
    Each vertex: float x, y, z; uchar red, green, blue.
    """
    if points.shape[-1:] != (3,) or colors.shape != points.shape or colors.dtype != np.uint8:
        raise ValueError(
            f"points {points.shape} and colors {colors.shape} {colors.dtype}: expected "
            "(H, W, 3) float and (H, W, 3) uint8 of the same size"
        )
    xyz = points.reshape(-1, 3).astype("<f4")
    rgb = colors.reshape(-1, 3)
    keep = np.isfinite(xyz).all(axis=1) & (xyz[:, 2] > 0)
    vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rows = np.empty(int(keep.sum()), dtype=vertex)
    rows["xyz"], rows["rgb"] = xyz[keep], rgb[keep]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(rows)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    return header.encode("ascii") + rows.tobytes()


def decode_ply(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """An :func:`encode_ply` file → (points (N, 3) float32, colours (N, 3) uint8)."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise DataError("PLY: no 'ply' magic or no 'end_header' line")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    counts = [int(line.split()[2]) for line in header if line.startswith("element vertex")]
    if len(counts) != 1:
        raise DataError("PLY: expected one 'element vertex N' line")
    vertex = np.dtype([("xyz", "<f4", 3), ("rgb", "u1", 3)])
    body = data[end + len(b"end_header\n") :]
    if len(body) != counts[0] * vertex.itemsize:
        raise DataError(
            f"PLY: {counts[0]} vertices need {counts[0] * vertex.itemsize} bytes, got {len(body)}"
        )
    rows = np.frombuffer(body, dtype=vertex)
    return rows["xyz"].copy(), rows["rgb"].copy()
