"""Raw Cityscapes (either layout) → training-ready files at the model's input size.

For every pair: the RGB is resized bicubic to ``data.img_size`` and saved as
``out_dir/{split}/{city}/{frame}.png``; the raw disparity is resized **nearest** to the same
size and then converted to metres (``{frame}.npy``, float32, 0 = invalid). Nearest resizing
copies values, so resizing the disparity before conversion (the seed's order, cheaper) gives
exactly the same depths as converting first. The disparity values stay those of the original
resolution, so they are converted with the camera's full-resolution ``fx``: the per-image
camera JSON when there is one, else ``data.baseline`` / ``data.focal_length``.

Idempotent: an output pair is skipped when it is newer than all its inputs and was produced
with the same relevant params (a fingerprint stored in the PNG's text chunk, written after the
``.npy`` so the PNG certifies the pair). Each file is written atomically, and
``manifest.json`` is removed at the start and written last: a directory without a manifest is
an unfinished (or failed) run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from tqdm import tqdm

from depth_common.config import DataConfig
from depth_common.data.cityscapes import (
    Sample,
    detect_layout,
    discover,
    disparity_to_depth,
    read_camera,
)
from depth_common.data.io import save_json, save_npy, save_png
from depth_common.data.transforms import resize_depth_nearest
from depth_common.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "depth_common.processed/v1"
FINGERPRINT_KEY = "depth_common.preprocess"
HIST_BIN_M = 0.01  # depth histogram resolution (metres) for the manifest's percentiles


@dataclass(frozen=True)
class _Job:
    sample: Sample
    png: Path
    npy: Path
    size: tuple[int, int]
    baseline: float
    focal_length: float
    max_depth: float
    fingerprint: str


@dataclass(frozen=True)
class _Result:
    skipped: bool
    hist: np.ndarray  # counts of valid depths per HIST_BIN_M bin
    valid: int
    total: int


def params_fingerprint(data_cfg: DataConfig) -> str:
    """Hash of the params that change output bytes (not paths, layout or city selection)."""
    relevant = {
        "format": FORMAT,
        "img_size": list(data_cfg.img_size),
        "max_depth": data_cfg.max_depth,
        "baseline": data_cfg.baseline,
        "focal_length": data_cfg.focal_length,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _n_bins(max_depth: float) -> int:
    return int(np.ceil(max_depth / HIST_BIN_M)) + 1


def _histogram(depth: np.ndarray, max_depth: float) -> tuple[np.ndarray, int]:
    v = depth[depth > 0]
    n = _n_bins(max_depth)
    idx = np.minimum((v / HIST_BIN_M).astype(np.int64), n - 1)
    return np.bincount(idx, minlength=n), int(v.size)


def _up_to_date(job: _Job) -> bool:
    s = job.sample
    try:
        inputs = [s.rgb_path, s.disparity_path] + ([s.camera_path] if s.camera_path else [])
        newest_in = max(p.stat().st_mtime_ns for p in inputs)
        oldest_out = min(job.png.stat().st_mtime_ns, job.npy.stat().st_mtime_ns)
        if oldest_out < newest_in:
            return False
        with Image.open(job.png) as img:
            return img.info.get(FINGERPRINT_KEY) == job.fingerprint
    except (OSError, UnidentifiedImageError):
        return False  # missing or unreadable output: redo it


def _load_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable RGB image ({exc})") from exc


def _load_disparity(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.array(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable disparity PNG ({exc})") from exc
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 65535:
        raise DataError(
            f"{path}: expected a 16-bit single-channel disparity PNG, got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.uint16)


def _process(job: _Job) -> _Result:
    """Convert one pair (or reuse its up-to-date outputs); return its depth statistics."""
    if _up_to_date(job):
        depth = np.load(job.npy, allow_pickle=False)
        hist, valid = _histogram(depth, job.max_depth)
        return _Result(True, hist, valid, depth.size)
    s = job.sample
    h, w = job.size
    rgb = _load_rgb(s.rgb_path)
    disparity = _load_disparity(s.disparity_path)
    if disparity.shape != (rgb.height, rgb.width):
        raise DataError(
            f"{s.disparity_path}: size {disparity.shape[1]}x{disparity.shape[0]} differs from "
            f"its RGB {s.rgb_path} ({rgb.width}x{rgb.height}); expected the same size"
        )
    if s.camera_path is not None:
        cam = read_camera(s.camera_path)
        baseline, focal = cam.baseline, cam.focal_length
    else:
        baseline, focal = job.baseline, job.focal_length
    depth = disparity_to_depth(
        resize_depth_nearest(disparity, (h, w)), baseline, focal, job.max_depth
    )
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    info = PngImagePlugin.PngInfo()
    info.add_text(FINGERPRINT_KEY, job.fingerprint)
    save_npy(job.npy, depth)
    save_png(job.png, rgb, pnginfo=info)  # last: the PNG's fingerprint vouches for the pair
    hist, valid = _histogram(depth, job.max_depth)
    return _Result(False, hist, valid, depth.size)


def _percentile(hist: np.ndarray, q: float, max_depth: float) -> float | None:
    """The q-th percentile (0..100) of the histogrammed depths (bin centre, metres).

    The last bin holds depths clamped at ``max_depth``; it reports ``max_depth`` itself.
    """
    total = int(hist.sum())
    if total == 0:
        return None
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))
    return round(min((k + 0.5) * HIST_BIN_M, max_depth), 4)


def preprocess_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    data_cfg: DataConfig,
    splits: Sequence[str] = ("train", "val", "test"),
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess every split of ``raw_dir`` into ``out_dir``; return the manifest (also written).

    All splits are discovered first (see :func:`~depth_common.data.cityscapes.discover`: files
    are checked by their PNG headers there), so a missing split or bad file is reported before
    anything is written; a file whose pixels cannot be decoded is reported during conversion,
    and then no manifest is written. Work runs in a process pool of ``data_cfg.num_workers``
    processes (0 or 1: in this process).

    The manifest holds the layout, the params used and their fingerprint, per split the count,
    the frames (``city/frame``), the valid-pixel fraction and the p5/p50/p95 of valid depths
    (metres, from a 1 cm histogram), and how many pairs this run converted or skipped.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    layout = detect_layout(raw) if data_cfg.layout == "auto" else data_cfg.layout
    samples = {s: discover(raw, s, layout, data_cfg.num_cities) for s in splits}
    fingerprint = params_fingerprint(data_cfg)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is "unfinished"

    jobs = [
        _Job(
            sample=smp,
            png=out / split / smp.city / f"{smp.frame_id}.png",
            npy=out / split / smp.city / f"{smp.frame_id}.npy",
            size=data_cfg.img_size,
            baseline=data_cfg.baseline,
            focal_length=data_cfg.focal_length,
            max_depth=data_cfg.max_depth,
            fingerprint=fingerprint,
        )
        for split in splits
        for smp in samples[split]
    ]
    results: list[_Result] = []
    bar = tqdm(total=len(jobs), desc="preprocess", unit="img", disable=not progress)
    try:
        if data_cfg.num_workers <= 1:
            for job in jobs:
                results.append(_process(job))
                bar.update()
        else:
            # fork: workers inherit the imports, and `python -m depth_common` has no
            # __main__ guard that spawn/forkserver would need.
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=data_cfg.num_workers, mp_context=ctx) as pool:
                try:
                    chunk = max(1, len(jobs) // (data_cfg.num_workers * 8))
                    for res in pool.map(_process, jobs, chunksize=chunk):
                        results.append(res)
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "raw_dir": str(raw),
        "layout": layout,
        "params": {
            "img_size": list(data_cfg.img_size),
            "max_depth": data_cfg.max_depth,
            "baseline": data_cfg.baseline,
            "focal_length": data_cfg.focal_length,
            "num_cities": data_cfg.num_cities,
        },
        "fingerprint": fingerprint,
        "counts": {},
        "stats": {},
        "frames": {},
        "run": {
            "converted": sum(not r.skipped for r in results),
            "skipped": sum(r.skipped for r in results),
        },
    }
    pos = 0
    for split in splits:
        n = len(samples[split])
        part = results[pos : pos + n]
        pos += n
        hist = np.sum([r.hist for r in part], axis=0)
        total = sum(r.total for r in part)
        manifest["counts"][split] = n
        manifest["stats"][split] = {
            "valid_fraction": round(sum(r.valid for r in part) / total, 6),
            "depth_p5": _percentile(hist, 5, data_cfg.max_depth),
            "depth_p50": _percentile(hist, 50, data_cfg.max_depth),
            "depth_p95": _percentile(hist, 95, data_cfg.max_depth),
        }
        manifest["frames"][split] = [f"{s.city}/{s.frame_id}" for s in samples[split]]
    save_json(out / MANIFEST, manifest)
    return manifest


def manifest_path(out_dir: str | Path) -> Path:
    """Where :func:`preprocess_dataset` writes its manifest."""
    return Path(out_dir) / MANIFEST


__all__ = ["MANIFEST", "manifest_path", "params_fingerprint", "preprocess_dataset"]
