"""A reference profile of images: per-image statistics that do not depend on image size.

Each image becomes one row of :data:`FEATURES` (colour, luminance distribution, contrast,
saturation, sharpness at two scales, aspect ratio, layout, edge orientation). Every statistic is
taken on a working copy resampled to :data:`WORK_AREA` pixels with the aspect ratio kept, so a
2048 x 1024 frame and its 256 x 128 thumbnail give the same row (sharpness included: a Laplacian's
energy grows with the resolution it is measured at). The profile keeps the rows themselves,
since the drift test compares distributions, not summaries; it is a small JSON file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from depth_common.atomic import write_text
from depth_common.errors import DataError
from depth_common.serving.codec import DEFAULT_MAX_PIXELS, load_rgb

FORMAT = "depth-image-profile/1"
WORK_AREA = 128 * 256  # pixels of the working copy: the training resolution of the demo
HIST_BINS = 32
DECIMALS = 6  # of every feature value, in memory and in the file
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_MAX_IMAGES = 4000  # a profile of more rows tests no better, and the JSON stays < 2 MB
FEATURES: tuple[str, ...] = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "luma_p05",
    "luma_p50",
    "luma_p95",
    "contrast",  # RMS contrast: the standard deviation of luminance
    "saturation",  # mean HSV saturation
    "sharpness",  # log10 mean squared Laplacian of luminance (working size)
    "fine_to_coarse",  # log10 of that energy over the energy at half the working size
    "aspect_ratio",  # log(width / height)
    "top_minus_bottom",  # mean luminance of the top third minus that of the bottom third
    "edge_orientation",  # log of horizontal-gradient energy over vertical-gradient energy
    "luma_entropy",  # bits, of the HIST_BINS-bin luminance histogram
)
_EPS = 1e-8


def _working_copy(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 resampled to about WORK_AREA pixels → float32 in [0, 1]."""
    h, w = rgb.shape[:2]
    scale = math.sqrt(WORK_AREA / (h * w))
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    if size == (w, h):
        return rgb.astype(np.float32) / 255.0
    # Area averaging when reducing: the working copy of a large frame then has the sharpness of
    # a well-made thumbnail of it, not the aliasing of a point-sampled one.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    img = Image.fromarray(rgb).resize(size, method)
    return np.asarray(img, dtype=np.float32) / 255.0


def _laplacian_energy(luma: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of ``luma`` (interior pixels)."""
    lap = luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1] - 4 * luma[1:-1, 1:-1]
    return float(np.mean(lap * lap))


def _half(luma: np.ndarray) -> np.ndarray:
    h, w = (luma.shape[0] // 2) * 2, (luma.shape[1] // 2) * 2
    x = luma[:h, :w]
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def luminance_histogram(rgb: np.ndarray) -> np.ndarray:
    """HIST_BINS-bin histogram (fractions) of Rec. 601 luminance of a uint8 RGB image."""
    luma = _working_copy(rgb) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    hist, _ = np.histogram(luma, bins=HIST_BINS, range=(0.0, 1.0))
    return hist / max(1, hist.sum())


def image_features(rgb: np.ndarray) -> np.ndarray:
    """One row of :data:`FEATURES` for a uint8 RGB image (H, W, 3), any size."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 8:
        raise DataError(f"image_features: expected an RGB image of at least 8x8, got {rgb.shape}")
    x = _working_copy(rgb)
    luma = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    cmax, cmin = x.max(axis=2), x.min(axis=2)
    saturation = np.where(cmax > _EPS, (cmax - cmin) / np.maximum(cmax, _EPS), 0.0)
    fine = _laplacian_energy(luma)
    coarse = _laplacian_energy(_half(luma))
    gx, gy = np.diff(luma, axis=1), np.diff(luma, axis=0)
    third = max(1, luma.shape[0] // 3)
    hist, _ = np.histogram(luma, bins=HIST_BINS, range=(0.0, 1.0))
    p = hist[hist > 0] / hist.sum()
    h, w = rgb.shape[:2]
    row = [
        *x.mean(axis=(0, 1)),
        *x.std(axis=(0, 1)),
        *np.percentile(luma, [5, 50, 95]),
        luma.std(),
        saturation.mean(),
        math.log10(fine + _EPS),
        math.log10((fine + _EPS) / (coarse + _EPS)),
        math.log(w / h),
        luma[:third].mean() - luma[-third:].mean(),
        math.log((np.mean(gx * gx) + _EPS) / (np.mean(gy * gy) + _EPS)),
        float(-(p * np.log2(p)).sum()),
    ]
    # Rounded as the profile file stores them: a served image's row must equal its training
    # row exactly, or a feature constant in training (the aspect ratio) reads as moved.
    return np.round(np.asarray(row, dtype=np.float64), DECIMALS)


@dataclass(frozen=True)
class Profile:
    """The features of a set of images: ``rows`` (N, len(FEATURES)), one per image."""

    rows: np.ndarray
    features: tuple[str, ...] = FEATURES
    luminance_histogram: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS))
    source: str = ""

    @property
    def images(self) -> int:
        return int(self.rows.shape[0])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per feature: mean, std, 5th and 95th percentile (for a person reading the file)."""
        out = {}
        for j, name in enumerate(self.features):
            col = self.rows[:, j]
            p05, p95 = np.percentile(col, [5, 95])
            out[name] = {
                "mean": float(col.mean()),
                "std": float(col.std()),
                "p05": float(p05),
                "p95": float(p95),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "source": self.source,
            "images": self.images,
            "work_area_pixels": WORK_AREA,
            "features": list(self.features),
            "summary": self.summary(),
            "luminance_histogram": [round(float(v), 6) for v in self.luminance_histogram],
            "rows": [[round(float(v), DECIMALS) for v in row] for row in self.rows],
        }


def profile_from_images(
    images: Iterable[np.ndarray], source: str = "", max_images: int = DEFAULT_MAX_IMAGES
) -> Profile:
    """The profile of uint8 RGB arrays (at most ``max_images`` are read)."""
    rows, hist = [], np.zeros(HIST_BINS)
    for rgb in images:
        if len(rows) >= max_images:
            break
        rows.append(image_features(rgb))
        hist += luminance_histogram(rgb)
    if not rows:
        raise DataError(f"profile of {source or 'images'}: no images")
    return Profile(np.stack(rows), FEATURES, hist / len(rows), source)


def image_files(root: str | Path) -> list[Path]:
    """PNG/JPEG files under ``root`` (recursive, hidden entries skipped), sorted."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"--images {base}: not a directory")
    return sorted(
        p
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )


def evenly_spaced(paths: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``paths``, spread over the whole list (every city, not the first few)."""
    if len(paths) <= n:
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round()]


def profile_directory(
    root: str | Path, max_images: int = DEFAULT_MAX_IMAGES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Profile:
    """The profile of the PNG/JPEG images under ``root`` (recursive)."""
    files = image_files(root)
    if not files:
        raise DataError(f"--images {root}: no PNG or JPEG files found (searched recursively)")
    chosen = evenly_spaced(files, max_images)
    images = (load_rgb(p, max_pixels=max_pixels) for p in chosen)
    return profile_from_images(images, source=str(root), max_images=max_images)


def save_profile(profile: Profile, path: str | Path) -> Path:
    return write_text(path, json.dumps(profile.to_json()) + "\n")


def _field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in doc:
        raise DataError(f"{where}: missing key {key!r}")
    if not isinstance(doc[key], kind):
        raise DataError(f"{where}: {key!r} should be a {kind.__name__}")
    return doc[key]


def load_profile(path: str | Path) -> Profile:
    """A profile written by :func:`save_profile`; a bad file is a DataError naming it and the key."""
    where = f"profile {path}"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{where}: 'format' is not {FORMAT!r}")
    names = tuple(_field(doc, "features", list, where))
    if names != FEATURES:
        raise DataError(f"{where}: 'features' {list(names)} differ from this version's")
    rows_field = _field(doc, "rows", list, where)
    try:
        rows = np.asarray(rows_field, dtype=np.float64)
        hist = np.asarray(doc.get("luminance_histogram", np.zeros(HIST_BINS)), dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'rows' must be a list of lists of numbers") from None
    if rows.ndim != 2 or rows.shape[1] != len(FEATURES) or rows.shape[0] < 2:
        raise DataError(
            f"{where}: 'rows' has shape {rows.shape}, expected (N >= 2, {len(FEATURES)})"
        )
    if not np.isfinite(rows).all():
        raise DataError(f"{where}: 'rows' holds non-finite values")
    return Profile(rows, names, hist, str(doc.get("source", "")))
