"""Error by distance band and the predicted-vs-true density, against plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_common.evaluation.analysis import BANDS, DENSITY_BINS, ErrorAnalysis


def _reference(pred: np.ndarray, gt: np.ndarray, lo: float, hi: float) -> list[dict]:
    ok = np.isfinite(gt) & (gt > lo) & (gt < hi)
    p, g = np.clip(pred[ok], lo, hi), gt[ok]
    out = []
    for a, b in BANDS:
        m = (g >= a) & (g < b)
        pm, gm = p[m], g[m]
        out.append(
            {
                "abs_rel": float(np.mean(np.abs(pm - gm) / gm)) if m.any() else math.nan,
                "rmse": float(np.sqrt(np.mean((pm - gm) ** 2))) if m.any() else math.nan,
                "delta_1": float(np.mean(np.maximum(pm / gm, gm / pm) < 1.25))
                if m.any()
                else math.nan,
                "pixel_share": m.sum() / ok.sum(),
                "pixels": int(m.sum()),
            }
        )
    return out


def test_bands_match_numpy_over_streamed_batches() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.0, 90.0, size=(6, 1, 16, 24))
    gt[0, 0, :2] = np.nan  # invalid pixels: no ground truth
    pred = gt * rng.uniform(0.7, 1.4, size=gt.shape)
    acc = ErrorAnalysis(min_depth=1e-3, max_depth=80.0)
    for i in range(0, 6, 4):  # two batches of different sizes
        acc.update(pred[i : i + 4], gt[i : i + 4])
    ref = _reference(pred.ravel(), gt.ravel(), 1e-3, 80.0)
    got = acc.bands()
    assert [(b.low, b.high) for b in got] == list(BANDS)
    for band, r in zip(got, ref, strict=True):
        assert band.pixels == r["pixels"] > 0
        for key in ("abs_rel", "rmse", "delta_1", "pixel_share"):
            assert getattr(band, key) == pytest.approx(r[key], rel=1e-12), key
    assert sum(b.pixel_share for b in got) == pytest.approx(1.0)
    assert acc.density.shape == (DENSITY_BINS, DENSITY_BINS)
    assert acc.density.sum() == sum(r["pixels"] for r in ref)


def test_density_puts_a_perfect_prediction_on_the_diagonal_and_empty_bands_are_nan() -> None:
    gt = np.full((1, 4, 4), 5.0)
    acc = ErrorAnalysis(min_depth=1e-3, max_depth=80.0)
    acc.update(gt.copy(), gt)
    k = int(5.0 / (80.0 / DENSITY_BINS))
    assert acc.density[k, k] == 16 and acc.density.sum() == 16
    near, *far = acc.bands()
    assert (near.abs_rel, near.rmse, near.delta_1, near.pixel_share) == (0.0, 0.0, 1.0, 1.0)
    assert all(math.isnan(b.abs_rel) and b.pixels == 0 for b in far)
    with pytest.raises(ValueError, match="expected one shape"):
        acc.update(np.zeros(3), np.zeros(4))
