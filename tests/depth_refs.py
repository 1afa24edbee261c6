"""Independent plain-numpy references the depth tests compare the library against.

Written from the published protocol (nianticlabs/manydepth ``evaluate_depth.py``) and the
textbook definitions, sharing no code with ``depth_common``.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta_1", "delta_2", "delta_3")


def manydepth_reference(pred: np.ndarray, gt: np.ndarray, lo: float, hi: float) -> dict:
    """manydepth's per-image loop: mask lo < gt < hi, ratio = median(gt) / median(pred),
    pred *= ratio, clip to [lo, hi], compute_errors, then the mean over images."""
    errors = []
    for p_img, g_img in zip(pred, gt, strict=True):
        g_img = np.nan_to_num(g_img.astype(np.float64), nan=0.0)
        mask = np.logical_and(g_img > lo, g_img < hi)
        if not mask.any():
            continue
        g = g_img[mask]
        p = np.clip(p_img.astype(np.float64)[mask], lo, hi)  # our prediction, clipped first
        p = p * (np.median(g) / np.median(p))
        p[p < lo] = lo
        p[p > hi] = hi
        thresh = np.maximum(g / p, p / g)
        errors.append(
            (
                np.mean(np.abs(g - p) / g),
                np.mean(((g - p) ** 2) / g),
                np.sqrt(((g - p) ** 2).mean()),
                np.sqrt(((np.log(g) - np.log(p)) ** 2).mean()),
                (thresh < 1.25).mean(),
                (thresh < 1.25**2).mean(),
                (thresh < 1.25**3).mean(),
            )
        )
    return dict(zip(METRIC_NAMES, np.array(errors).mean(0), strict=True))


def bilinear_reference(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel-centre bilinear resampling (cv2.resize INTER_LINEAR's rule), plain numpy."""

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, x - lo

    (r0, r1, fr), (c0, c1, fc) = coords(size[0], img.shape[0]), coords(size[1], img.shape[1])
    rows = img[r0] * (1 - fr)[:, None] + img[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc
