"""Raw Cityscapes (either layout) → training-ready files at the model's input size.

Each pair goes through :func:`depth_common.data.convert.process_pair` (hood crop, resize,
disparity → metres, far pixels invalid, full-resolution ground truth for evaluation splits,
stamped outputs). This module runs the pairs of every split and writes ``manifest.json``.

Re-runs are cheap and safe: a pair is skipped only when its stamp says it was written with
the same params and its sibling files are the stamped ones. While it runs, preprocessing holds
a lock on the output directory; with it held, the temp files a killed run left are deleted.
``manifest.json`` is removed at the start and written last: a directory without a manifest is
an unfinished (or failed) run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from depth_common.atomic import claim_dir, remove_leftovers
from depth_common.config import DataConfig
from depth_common.data.cityscapes import CITYSCAPES_COUNTS, Sample
from depth_common.data.convert import (
    GT_MAX_DEPTH,
    GT_SCALE,
    GT_SUFFIX,
    HIST_BIN_M,
    PairJob,
    PairResult,
    gt_path,
    process_pair,
)
from depth_common.data.digest import content_digest, file_hashes
from depth_common.data.discovery import discover, resolve_layout
from depth_common.data.io import save_json
from depth_common.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "depth_common.processed/v3"  # v3: per-frame focal_px
LOCK = ".preprocess.lock"


def params_fingerprint(data_cfg: DataConfig, crop_bottom: float) -> str:
    """Hash of the params that change output bytes (not paths, layout or city selection)."""
    relevant = {
        "format": FORMAT,
        "img_size": list(data_cfg.img_size),
        "max_depth": data_cfg.max_depth,
        "baseline": data_cfg.baseline,
        "focal_length": data_cfg.focal_length,
        "crop_bottom": crop_bottom,
        "camera": data_cfg.camera,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``out/.preprocess.lock`` (released by the kernel even when the process is killed)."""
    claim_dir(out)  # never write into a directory this project did not make
    with open(out / LOCK, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"{out}: another preprocessing run is writing here (it holds {out / LOCK}); "
                "wait for it or use another output directory"
            ) from None
        yield


def _run(jobs: list[PairJob], workers: int, progress: bool) -> list[PairResult]:
    results: list[PairResult] = []
    bar = tqdm(total=len(jobs), desc="preprocess", unit="img", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                results.append(process_pair(job))
                bar.update()
            return results
        # fork: workers inherit the imports, and `python -m depth_common` has no
        # __main__ guard that spawn/forkserver would need.
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            try:
                chunk = max(1, len(jobs) // (workers * 8))
                for res in pool.map(process_pair, jobs, chunksize=chunk):
                    results.append(res)
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()
    return results


def _percentile(hist: np.ndarray, q: float, max_depth: float) -> float | None:
    """The q-th percentile (0..100) of the histogrammed depths (bin centre, metres)."""
    total = int(hist.sum())
    if total == 0:
        return None
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))
    return round(min((k + 0.5) * HIST_BIN_M, max_depth), 4)


def count_warnings(counts: dict[str, int], layout: str, data_cfg: DataConfig) -> list[str]:
    """A line per known Cityscapes split whose frame count is not the full release's."""
    if layout != "cityscapes" or data_cfg.num_cities is not None:
        return []  # a chosen subset of cities is expected to be smaller
    return [
        f"split '{split}': {n} frames, the full Cityscapes release has "
        f"{CITYSCAPES_COUNTS[split]} (a subset, or an incomplete download or extraction?)"
        for split, n in counts.items()
        if split in CITYSCAPES_COUNTS and n != CITYSCAPES_COUNTS[split]
    ]


def _split_entry(
    part: list[PairResult], max_depth: float
) -> tuple[dict[str, Any], list[str], dict[str, int]]:
    hist = np.sum([r.hist for r in part], axis=0)
    total = sum(r.total for r in part)
    stats = {
        "valid_fraction": round(sum(r.valid for r in part) / total, 6),
        "depth_p5": _percentile(hist, 5, max_depth),
        "depth_p50": _percentile(hist, 50, max_depth),
        "depth_p95": _percentile(hist, 95, max_depth),
    }
    sources = [r.camera_source for r in part]
    summary: dict[str, int] = {}
    for src in sources:
        key = src.split(" ")[0]
        summary[key] = summary.get(key, 0) + 1
    return stats, sources, summary


def _manifest(
    raw: Path,
    layout: str,
    data_cfg: DataConfig,
    crop: float,
    samples: dict[str, list[Sample]],
    results: list[PairResult],
    gt_splits: list[str],
) -> dict[str, Any]:
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
            "crop_bottom": crop,
            "camera": data_cfg.camera,
        },
        "fingerprint": params_fingerprint(data_cfg, crop),
        "train_splits": [s for s in data_cfg.train_splits if s in samples],
        "full_resolution_gt": {
            "splits": gt_splits,
            "file": f"<frame>{GT_SUFFIX}",
            "encoding": f"16-bit PNG, metres x {GT_SCALE:g}, 0 = invalid, after the hood crop",
        },
        "counts": {},
        "stats": {},
        "frames": {},
        "camera_sources": {},
        "camera_summary": {},
        # Each frame's horizontal focal (pixels) at img_size: the canonical-camera transform.
        "focal_px": {},
    }
    pos = 0
    for split, smp in samples.items():
        part = results[pos : pos + len(smp)]
        pos += len(smp)
        stats, sources, summary = _split_entry(part, data_cfg.max_depth)
        manifest["counts"][split] = len(smp)
        manifest["stats"][split] = stats
        manifest["frames"][split] = [f"{s.city}/{s.frame_id}" for s in smp]
        manifest["camera_sources"][split] = sources
        manifest["camera_summary"][split] = summary
        manifest["focal_px"][split] = [round(r.focal_px, 6) for r in part]
    manifest["warnings"] = count_warnings(manifest["counts"], layout, data_cfg)
    return manifest


def preprocess_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    data_cfg: DataConfig,
    splits: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Preprocess ``splits`` (default ``data.splits``) of ``raw_dir`` into ``out_dir``; return
    the manifest (also written).

    All splits are discovered first (see :func:`~depth_common.data.discovery.discover`: files
    are checked by their headers there, camera JSONs by ``data.camera``), so a missing split or
    bad file is reported before anything is written; a file whose pixels cannot be decoded is
    reported during conversion, and then no manifest is written. Work runs in a process pool
    of ``data.num_workers`` processes (0 or 1: in this process). Splits outside
    ``data.train_splits`` also get the full-resolution ground truth that evaluation scores.

    The manifest holds the layout, the params used (with the resolved ``crop_bottom``) and
    their fingerprint, the training splits, per split the count, the frames (``city/frame``),
    each frame's camera source, the valid-pixel fraction and the p5/p50/p95 of valid depths
    (metres, from a 1 cm histogram), warnings about unexpected Cityscapes split sizes, and how
    many pairs this run converted or skipped, and the SHA-256 of every file written with the
    dataset's content digest (:mod:`depth_common.data.digest`).
    """
    raw, out = Path(raw_dir), Path(out_dir)
    splits = tuple(splits if splits is not None else data_cfg.splits)
    layout = resolve_layout(raw, data_cfg.layout)
    crop = data_cfg.crop_bottom_for(layout)
    samples = {s: discover(raw, s, layout, data_cfg.num_cities, data_cfg.camera) for s in splits}
    gt_splits = [s for s in splits if s not in data_cfg.train_splits]
    if gt_splits and data_cfg.max_depth > GT_MAX_DEPTH:
        raise DataError(
            f"data.max_depth {data_cfg.max_depth}: the full-resolution ground truth of "
            f"{', '.join(gt_splits)} is stored as metres x {GT_SCALE:g} in 16-bit PNGs, so at "
            f"most {GT_MAX_DEPTH:.2f} m; expected data.max_depth <= {GT_MAX_DEPTH:.2f}"
        )
    fingerprint = params_fingerprint(data_cfg, crop)
    with _exclusive(out):
        (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is "unfinished"
        removed = remove_leftovers(out)
        if removed:
            log.warning("%s: removed %d temp file(s) of an interrupted run", out, len(removed))
        jobs = [
            PairJob(
                sample=smp,
                png=(png := out / split / smp.city / f"{smp.frame_id}.png"),
                npy=png.with_suffix(".npy"),
                gt=gt_path(png) if split in gt_splits else None,
                size=data_cfg.img_size,
                crop_bottom=crop,
                baseline=data_cfg.baseline,
                focal_length=data_cfg.focal_length,
                max_depth=data_cfg.max_depth,
                camera=data_cfg.camera,
                fingerprint=fingerprint,
            )
            for split in splits
            for smp in samples[split]
        ]
        results = _run(jobs, data_cfg.num_workers, progress)
        manifest = _manifest(raw, layout, data_cfg, crop, samples, results, gt_splits)
        # The content digest (depth_common.data.digest): what lineage calls "the data".
        outputs = [f for job in jobs for f in (job.png, job.npy, job.gt) if f is not None]
        manifest["files"] = file_hashes(out, outputs)
        manifest["digest"] = content_digest(manifest["files"])
        manifest["run"] = {
            "converted": sum(not r.skipped for r in results),
            "skipped": sum(r.skipped for r in results),
            "removed_temp_files": len(removed),
        }
        for line in manifest["warnings"]:
            log.warning("%s: %s", raw, line)
        save_json(out / MANIFEST, manifest)
    return manifest


def manifest_path(out_dir: str | Path) -> Path:
    """Where :func:`preprocess_dataset` writes its manifest."""
    return Path(out_dir) / MANIFEST


def counts_line(manifest: dict[str, Any]) -> str:
    """``train 2975, val 500, test 1525 frames (converted 10, skipped 4990)``: for logs."""
    counts = ", ".join(f"{s} {n}" for s, n in manifest["counts"].items())
    run = manifest.get("run", {})
    return f"{counts} frames (converted {run.get('converted')}, skipped {run.get('skipped')})"


__all__ = [
    "FORMAT",
    "MANIFEST",
    "counts_line",
    "manifest_path",
    "params_fingerprint",
    "preprocess_dataset",
]
