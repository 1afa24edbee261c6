"""Depth metrics against independent plain-numpy references: the Eigen protocol, and a port of
manydepth's evaluation loop (``evaluate_depth.py``) for the median-scaled figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from depth_refs import manydepth_reference

from depth_common.evaluation.metrics import (
    METRIC_KEYS,
    DepthMetricsAccumulator,
    compute_depth_metrics,
)


def reference(pred: np.ndarray, gt: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """Per image with explicit loops over images, then the mean over images with valid pixels."""
    rows = []
    for p_img, g_img in zip(pred, gt, strict=True):
        ok = np.isfinite(g_img) & (g_img > lo) & (g_img < hi)
        if not ok.any():
            continue
        g = g_img[ok].astype(np.float64)
        p = np.clip(p_img[ok].astype(np.float64), lo, hi)
        thresh = np.maximum(p / g, g / p)
        rows.append(
            [
                np.mean(np.abs(p - g) / g),
                np.mean((p - g) ** 2 / g),
                math.sqrt(np.mean((p - g) ** 2)),
                math.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
                np.mean(thresh < 1.25),
                np.mean(thresh < 1.25**2),
                np.mean(thresh < 1.25**3),
            ]
        )
    if not rows:
        return {k: math.nan for k in METRIC_KEYS}
    return dict(zip(METRIC_KEYS, np.mean(rows, axis=0), strict=True))


def random_batch(seed: int, n: int = 5, h: int = 12, w: int = 16):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 100.0, (n, h, w)).astype(np.float32)  # some above max_depth=80
    gt[rng.random((n, h, w)) < 0.3] = 0.0  # invalid
    gt[0, 0, 0] = np.nan
    gt[n - 1] = 0.0  # an image without any valid pixel: must not count
    pred = (gt * rng.uniform(0.6, 1.5, gt.shape)).astype(np.float32)
    pred[rng.random((n, h, w)) < 0.1] = rng.uniform(-5, 200)  # out of range: clipped
    return np.nan_to_num(pred, nan=3.0), gt


def test_metrics_keys() -> None:
    pred, gt = random_batch(0)
    assert tuple(compute_depth_metrics(pred, gt)) == METRIC_KEYS


def test_perfect_prediction() -> None:
    _, gt = random_batch(1)
    m = compute_depth_metrics(np.where(np.isfinite(gt), gt, 1.0), gt)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert m[k] == pytest.approx(0.0, abs=1e-9)
    for k in ("delta_1", "delta_2", "delta_3"):
        assert m[k] == 1.0


def test_empty_valid_mask() -> None:
    gt = np.zeros((2, 8, 8), np.float32)
    m = compute_depth_metrics(np.ones_like(gt), gt)
    assert set(m) == set(METRIC_KEYS) and all(math.isnan(v) for v in m.values())


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_matches_numpy_reference(seed: int) -> None:
    pred, gt = random_batch(seed)
    got = compute_depth_metrics(pred, gt, 1e-3, 80.0)
    ref = reference(pred, gt, 1e-3, 80.0)
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    assert 0.0 < got["delta_1"] < got["delta_2"] <= got["delta_3"] <= 1.0


def test_shapes_and_types_agree() -> None:
    pred, gt = random_batch(5)
    base = compute_depth_metrics(pred, gt)
    as_torch = compute_depth_metrics(torch.from_numpy(pred)[:, None], torch.from_numpy(gt)[:, None])
    assert as_torch == pytest.approx(base)
    single = compute_depth_metrics(pred[1], gt[1])
    assert single == pytest.approx(reference(pred[1:2], gt[1:2], 1e-3, 80.0))


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="pred shape"):
        compute_depth_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"pred: got shape \(2, 3, 4, 4\)"):
        compute_depth_metrics(np.ones((2, 3, 4, 4)), np.ones((2, 3, 4, 4)))


def test_accumulator_streams_and_merges() -> None:
    pred, gt = random_batch(6, n=7)
    full = compute_depth_metrics(pred, gt)
    acc = DepthMetricsAccumulator()
    for i in range(0, 7, 3):  # uneven batches
        acc.update(pred[i : i + 3], gt[i : i + 3])
    assert acc.compute() == pytest.approx(full)
    assert acc.count == 6  # the last image has no valid pixel
    # two "ranks" merged, and via the summed state vectors (what all_reduce does)
    a, b = DepthMetricsAccumulator(), DepthMetricsAccumulator()
    a.update(pred[:4], gt[:4])
    b.update(pred[4:], gt[4:])
    summed = DepthMetricsAccumulator.from_state(a.state() + b.state())
    assert summed.compute() == pytest.approx(full)
    assert a.merge(b).compute() == pytest.approx(full)
    assert (
        DepthMetricsAccumulator().compute()["rmse"] != DepthMetricsAccumulator().compute()["rmse"]
    )
    with pytest.raises(ValueError, match="expected \\(8,\\)"):
        DepthMetricsAccumulator.from_state(torch.zeros(3))


@pytest.mark.parametrize("seed", [7, 8])
def test_median_scaled_matches_manydepth_loop(seed: int) -> None:
    pred, gt = random_batch(seed, n=6, h=15, w=17)  # odd pixel counts: the median averages
    pred = pred * 2.7  # a global scale error: median scaling removes most of it
    got = compute_depth_metrics(pred, gt, 1e-3, 80.0, median_scaling=True)
    ref = manydepth_reference(pred, gt, 1e-3, 80.0)
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    metric = compute_depth_metrics(pred, gt, 1e-3, 80.0)
    assert got["abs_rel"] < metric["abs_rel"] / 2


def test_median_scaling_ignores_scale_only() -> None:
    _, gt = random_batch(9)
    scaled = np.where(np.isfinite(gt), gt, 1.0) * 3.0
    m = compute_depth_metrics(scaled, gt, 1e-3, 1e3, median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6) and m["delta_1"] == 1.0  # float32 input


def test_ground_truth_at_the_cap_is_invalid() -> None:
    gt = np.array([[[10.0, 80.0, 80.5]]])
    pred = np.array([[[20.0, 1.0, 1.0]]])  # only the 10 m pixel counts
    assert compute_depth_metrics(pred, gt, 1e-3, 80.0)["abs_rel"] == pytest.approx(1.0)
