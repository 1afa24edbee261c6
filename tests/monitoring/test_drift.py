"""The drift detector: per-feature KS with Benjamini-Hochberg, checked against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from depth_common.errors import ConfigError, DataError
from depth_common.monitoring.drift import KSDriftDetector
from depth_common.monitoring.profile import FEATURES, Profile

F = len(FEATURES)


def reference(n: int = 600, seed: int = 0) -> Profile:
    return Profile(np.random.default_rng(seed).normal(size=(n, F)))


def bh_min(p: np.ndarray) -> float:
    """min over ranks k of p_(k) * F / k (Benjamini-Hochberg's adjusted minimum), by hand."""
    s = np.sort(p)
    return float(min(1.0, np.min(s * len(s) / np.arange(1, len(s) + 1))))


def test_same_population_rarely_alarms() -> None:
    detector = KSDriftDetector(reference(), alpha=0.01)
    rng = np.random.default_rng(1)
    alarms = sum(detector.test(rng.normal(size=(48, F))).drift for _ in range(200))
    assert alarms <= 6  # 1 % expected; 6 of 200 is above its 99.9th percentile


def test_one_moved_feature_is_found_and_named() -> None:
    detector = KSDriftDetector(reference())
    window = np.random.default_rng(2).normal(size=(48, F))
    window[:, FEATURES.index("sharpness")] -= 1.0
    result = detector.test(window)
    assert result.drift and result.feature == "sharpness"
    raw = np.array(
        [
            ks_2samp(detector.reference.rows[:, j], window[:, j], method="asymp").pvalue
            for j in range(F)
        ]
    )
    assert result.score == pytest.approx(bh_min(raw), rel=0.05)
    assert result.score < result.threshold and result.images == 48
    assert set(result.to_json()["p_values"]) == set(FEATURES)


def test_constant_features_do_not_count_as_drift() -> None:
    ref = reference()
    rows = ref.rows.copy()
    rows[:, 0] = 1.0
    detector = KSDriftDetector(Profile(rows))
    window = np.random.default_rng(3).normal(size=(48, F))
    window[:, 0] = 1.0
    assert np.isfinite(detector.test(window).score)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        KSDriftDetector(reference(), alpha=1.5)
    detector = KSDriftDetector(reference())
    with pytest.raises(DataError, match="at least"):
        detector.test(np.zeros((3, F)))
    with pytest.raises(DataError, match="window shape"):
        detector.test(np.zeros((48, F + 1)))
