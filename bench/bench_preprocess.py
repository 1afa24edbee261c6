"""Preprocessing throughput: images/s of ``preprocess_dataset`` with 1 vs 2 worker processes.

The input is a synthetic Cityscapes set (``depth_common.data.synthetic``) at a Cityscapes-like raw
size (512 x 1024 by default: half the real 1024 x 2048, to keep the run short); each run writes
into a fresh output directory (preprocessing skips up-to-date outputs, which would measure
nothing). Output at the params' ``data.img_size``. Each worker count runs ``repeats`` times and
the best (least disturbed) time counts; all times are kept in the results.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def progress(line: str) -> None:
    """Progress lines, flushed: ``make bench`` output is often piped to a file."""
    print(line, flush=True)


def run(
    results: dict[str, Any],
    *,
    raw_size: tuple[int, int] = (512, 1024),
    cities: int = 2,
    per_split: int = 8,  # 48 images: enough that pool start-up does not dominate
    workers: Sequence[int] = (1, 2),
    repeats: int = 3,
    log: Callable[[str], None] = progress,
) -> dict[str, Any]:
    """Fill ``results["preprocess"]`` and return ``results``."""
    from depth_common.config import load_params
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.data.synthetic import generate_cityscapes

    data_cfg = load_params(ROOT / "params.yaml").data
    work = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        t0 = time.perf_counter()
        generate_cityscapes(work / "raw", cities=cities, per_split=per_split, size=raw_size)
        log(
            f"[preprocess] synthetic set at {raw_size[0]}x{raw_size[1]}: {time.perf_counter() - t0:.0f} s"
        )
        rows = []
        for n in workers:
            cfg = data_cfg.model_copy(update={"num_workers": n})
            times = []
            for k in range(repeats):
                out = work / f"processed-{n}-{k}"  # fresh: up-to-date outputs would be skipped
                t0 = time.perf_counter()
                manifest = preprocess_dataset(work / "raw", out, cfg, progress=False)
                times.append(time.perf_counter() - t0)
                images = sum(manifest["counts"].values())
                if manifest["run"]["converted"] != images:
                    raise RuntimeError(f"preprocess into fresh {out} skipped: {manifest['run']}")
                shutil.rmtree(out, ignore_errors=True)
            seconds = min(times)  # best of N: the run least disturbed by other processes
            rows.append(
                {
                    "workers": n,
                    "images": images,
                    "seconds": seconds,
                    "images_per_s": images / seconds,
                    "all_seconds": [round(t, 3) for t in times],
                }
            )
            log(
                f"[preprocess] {n} worker(s): {images} images, best of {repeats} "
                f"{seconds:.2f} s ({images / seconds:.1f} img/s)"
            )
        results["preprocess"] = {
            "raw_size": list(raw_size),
            "img_size": list(data_cfg.img_size),
            "rows": rows,
        }
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)
