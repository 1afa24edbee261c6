"""One raw pair → its processed files: hood crop, resize, disparity → depth, stamped outputs.

Per pair, in this order:

1. The bottom ``crop_bottom`` of the frame (the ego car's hood, which has valid stereo
   disparity but is never part of the scene) is cut from RGB and disparity alike: the first
   ``round(H * (1 - crop_bottom))`` rows are kept.
2. The RGB is resized bicubic to ``img_size`` → ``<frame>.png``; the disparity nearest to the
   same size, then converted to metres → ``<frame>.npy`` (float32, 0 = invalid, depth at or
   beyond ``max_depth`` invalid). Nearest resizing copies values, so resizing before the
   conversion gives exactly the depths of converting first; the disparity values stay those
   of the original resolution, so the camera's full-resolution ``fx`` applies.
3. Evaluation splits also keep the ground truth at full resolution (after the crop) →
   ``<frame>_depth.png``: 16-bit PNG, metres × 256, 0 = invalid (the KITTI depth-PNG
   convention). Rounding to 1/256 m moves a depth by at most 1/512 m ≈ 2 mm.

The RGB PNG is written last and carries a stamp (PNG text chunk): the params fingerprint, the
SHA-256 of every sibling output and the camera source. A later run skips the pair only when
the stamp's fingerprint is the current one and every sibling still has the stamped digest, so
a file left by a run that was killed between two writes is never kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from depth_common.data.cityscapes import Sample, disparity_to_depth, open_image, read_camera
from depth_common.data.io import save_npy, save_png
from depth_common.data.transforms import resize_depth_nearest
from depth_common.errors import DataError

STAMP_KEY = "depth_common.preprocess"
GT_SUFFIX = "_depth.png"
GT_SCALE = 256.0  # stored value = round(metres * 256); 0 = invalid
GT_MAX_DEPTH = 65535 / GT_SCALE  # the deepest value a 16-bit PNG at this scale can hold
HIST_BIN_M = 0.01  # depth histogram resolution (metres) for the manifest's percentiles
CAMERA_JSON, CAMERA_DEFAULT = "camera_json", "default"


@dataclass(frozen=True)
class PairJob:
    sample: Sample
    png: Path
    npy: Path
    gt: Path | None  # full-resolution ground truth (evaluation splits), else None
    size: tuple[int, int]
    crop_bottom: float
    baseline: float
    focal_length: float
    max_depth: float
    camera: str  # "require" | "default": what an unreadable camera JSON does
    fingerprint: str


@dataclass(frozen=True)
class PairResult:
    skipped: bool
    hist: np.ndarray  # counts of valid depths per HIST_BIN_M bin
    valid: int
    total: int
    camera_source: str
    # Horizontal focal (pixels) at the processed width: fx x processed width / original width.
    focal_px: float


def gt_path(png: Path) -> Path:
    """The full-resolution ground truth stored next to a processed ``<frame>.png``."""
    return png.with_name(png.stem + GT_SUFFIX)


def kept_rows(height: int, crop_bottom: float) -> int:
    """Rows kept from the top of a frame of ``height`` rows when ``crop_bottom`` is cut."""
    return int(round(height * (1.0 - crop_bottom)))


def depth_to_png_values(depth: np.ndarray) -> np.ndarray:
    """Metres (0 = invalid) → uint16 ``round(depth * 256)``; a valid depth never becomes 0."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.size and float(depth.max()) > GT_MAX_DEPTH:
        raise ValueError(f"depth {depth.max():.2f} m: above {GT_MAX_DEPTH:.2f} m, the 16-bit limit")
    values = np.rint(depth * GT_SCALE)
    values[(depth > 0) & (values < 1)] = 1
    return values.astype(np.uint16)


def load_depth_png(path: Path) -> np.ndarray:
    """A ``<frame>_depth.png`` → float32 metres (0 = invalid); ``DataError`` naming the file."""
    with open_image(path, "ground-truth depth PNG") as img:
        img.load()
        values = np.array(img)
    if values.ndim != 2 or values.dtype.kind not in "iu":
        raise DataError(
            f"{path}: expected a 16-bit single-channel depth PNG (metres x 256), got "
            f"{values.dtype} {values.shape}"
        )
    return (values.astype(np.float64) / GT_SCALE).astype(np.float32)


def load_depth_npy(path: Path) -> np.ndarray:
    """A processed ``<frame>.npy`` (float32 metres); non-finite values are a ``DataError``."""
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable depth array ({exc})") from exc
    if depth.dtype.kind != "f" or not np.isfinite(depth).all():
        bad = int(np.size(depth) - np.isfinite(depth).sum()) if depth.dtype.kind == "f" else "?"
        raise DataError(
            f"{path}: {bad} non-finite depth value(s) or dtype {depth.dtype}; expected finite "
            "float32 metres (0 = invalid): preprocess again"
        )
    return depth


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(job: PairJob) -> dict[str, Any] | None:
    """The stamp of an up-to-date pair, or None when anything must be redone."""
    s = job.sample
    outputs = [job.png, job.npy] + ([job.gt] if job.gt else [])
    try:
        inputs = [s.rgb_path, s.disparity_path] + ([s.camera_path] if s.camera_path else [])
        if min(p.stat().st_mtime_ns for p in outputs) < max(p.stat().st_mtime_ns for p in inputs):
            return None
        with Image.open(job.png) as img:
            stamp = json.loads(img.info.get(STAMP_KEY, "null"))
        if not isinstance(stamp, dict) or stamp.get("fingerprint") != job.fingerprint:
            return None
        if stamp.get("npy_sha256") != _sha256(job.npy):
            return None
        if not isinstance(stamp.get("focal_px"), int | float):
            return None  # written before stamps carried the focal
        if job.gt is not None and stamp.get("gt_sha256") != _sha256(job.gt):
            return None
    except (OSError, ValueError, SyntaxError):
        return None  # missing or unreadable output: redo it
    return stamp


def _load_rgb(path: Path) -> Image.Image:
    with open_image(path, "RGB image") as img:
        img.load()
        return img.convert("RGB")


def _load_disparity(path: Path) -> np.ndarray:
    with open_image(path, "disparity PNG") as img:
        img.load()
        arr = np.array(img)
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 65535:
        raise DataError(
            f"{path}: expected a 16-bit single-channel disparity PNG, got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.uint16)


def _camera(job: PairJob) -> tuple[float, float, str]:
    """(baseline m, fx px, source) for the pair: its camera JSON, else the configured default."""
    path = job.sample.camera_path
    if path is None:
        return job.baseline, job.focal_length, CAMERA_DEFAULT
    try:
        cam = read_camera(path)
    except DataError as exc:
        if job.camera == "require":
            raise DataError(f"{exc} (data.camera: require; 'default' falls back)") from None
        return job.baseline, job.focal_length, f"{CAMERA_DEFAULT} (unreadable {path.name})"
    return cam.baseline, cam.focal_length, CAMERA_JSON


def histogram(depth: np.ndarray, max_depth: float) -> tuple[np.ndarray, int]:
    """Counts of the valid depths per ``HIST_BIN_M`` bin over [0, max_depth], and their number."""
    v = depth[depth > 0]
    n = int(np.ceil(max_depth / HIST_BIN_M)) + 1
    idx = np.minimum((v / HIST_BIN_M).astype(np.int64), n - 1)
    return np.bincount(idx, minlength=n), int(v.size)


def _result(
    skipped: bool, depth: np.ndarray, job: PairJob, source: str, focal: float
) -> PairResult:
    hist, valid = histogram(depth, job.max_depth)
    return PairResult(skipped, hist, valid, int(depth.size), source, focal)


def process_pair(job: PairJob) -> PairResult:
    """Convert one pair (or reuse its up-to-date outputs); return its depth statistics."""
    stamp = _stamp(job)
    if stamp is not None:
        depth = load_depth_npy(job.npy)
        return _result(True, depth, job, str(stamp.get("camera")), float(stamp["focal_px"]))
    s = job.sample
    h, w = job.size
    rgb, disparity = _load_rgb(s.rgb_path), _load_disparity(s.disparity_path)
    if disparity.shape != (rgb.height, rgb.width):
        raise DataError(
            f"{s.disparity_path}: size {disparity.shape[1]}x{disparity.shape[0]} differs from "
            f"its RGB {s.rgb_path} ({rgb.width}x{rgb.height}); expected the same size"
        )
    keep = kept_rows(rgb.height, job.crop_bottom)
    if keep < 1:
        raise DataError(f"{s.rgb_path}: data.crop_bottom {job.crop_bottom} leaves no row")
    rgb, disparity = rgb.crop((0, 0, rgb.width, keep)), disparity[:keep]
    baseline, focal, source = _camera(job)
    depth = disparity_to_depth(
        resize_depth_nearest(disparity, (h, w)), baseline, focal, job.max_depth
    )
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    # The resize to the model input scales the horizontal focal by w / original width (the
    # hood crop removes rows only); the vertical scale differs when the aspect ratio changes,
    # and the canonical camera is defined on the horizontal focal (serving/camera.py).
    focal_in = focal * w / disparity.shape[1]
    stamp = {"fingerprint": job.fingerprint, "camera": source, "gt_sha256": None,
             "focal_px": focal_in}  # fmt: skip
    if job.gt is not None:
        full = disparity_to_depth(disparity, baseline, focal, job.max_depth)
        save_png(job.gt, depth_to_png_values(full))
        stamp["gt_sha256"] = _sha256(job.gt)
    save_npy(job.npy, depth)
    stamp["npy_sha256"] = _sha256(job.npy)
    info = PngImagePlugin.PngInfo()
    info.add_text(STAMP_KEY, json.dumps(stamp, sort_keys=True))
    save_png(job.png, rgb, pnginfo=info)  # last: its stamp vouches for the pair
    return _result(False, depth, job, source, focal_in)
