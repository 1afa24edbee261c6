"""Drift of a window of served images from the reference profile: per-feature two-sample
Kolmogorov-Smirnov tests (``scipy.stats.ks_2samp``) with a Benjamini-Hochberg correction
(``scipy.stats.false_discovery_control``).

Why this test: it is distribution-free (the features are skewed, bounded, some nearly constant),
it needs no training and no tuning beyond one significance level, each feature's p-value says
*what* moved (darker, blurrier, another aspect ratio), and scipy is BSD-licensed and maintained
with the rest of the scientific Python stack. alibi-detect, which KServe's samples pair with the
payload logger, moved to the Business Source License, so it is not used.

The window drifts when the smallest BH-adjusted p-value falls below ``alpha``. That is Simes'
global test: under no drift it alarms with probability at most ``alpha`` when the features are
independent or positively dependent (ours are mostly positively correlated), and it is less
conservative than Bonferroni when several features move together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control, ks_2samp

from depth_common.errors import ConfigError, DataError
from depth_common.monitoring.profile import Profile

DETECTOR = "ks-bh (scipy.stats.ks_2samp per feature, Benjamini-Hochberg)"
DEFAULT_ALPHA = 0.001
MIN_WINDOW = 8  # below this a KS test cannot reject anything at useful levels


@dataclass(frozen=True)
class DriftResult:
    """One window's test. ``score`` is the smallest adjusted p-value: drift when < threshold."""

    drift: bool
    score: float
    threshold: float
    images: int
    feature: str  # the feature with the smallest p-value: what moved most
    p_values: dict[str, float]  # BH-adjusted, per feature

    def to_json(self) -> dict[str, object]:
        return {
            "drift": self.drift,
            "score": self.score,
            "threshold": self.threshold,
            "images": self.images,
            "feature": self.feature,
            "p_values": self.p_values,
        }


class KSDriftDetector:
    """Tests windows of feature rows (see :mod:`depth_common.monitoring.profile`) against a
    reference profile."""

    name = DETECTOR

    def __init__(self, reference: Profile, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"alpha: expected a significance level in (0, 1), got {alpha}")
        self.reference = reference
        self.alpha = alpha

    def test(self, rows: np.ndarray) -> DriftResult:
        """The drift test of ``rows`` (K, len(features)) against the reference."""
        rows = np.asarray(rows, dtype=np.float64)
        ref = self.reference.rows
        if rows.ndim != 2 or rows.shape[1] != ref.shape[1]:
            raise DataError(f"drift test: window shape {rows.shape}, expected (K, {ref.shape[1]})")
        if rows.shape[0] < MIN_WINDOW:
            raise DataError(f"drift test: {rows.shape[0]} images, need at least {MIN_WINDOW}")
        raw = np.asarray(ks_2samp(ref, rows, axis=0, method="asymp").pvalue, dtype=np.float64)
        raw = np.nan_to_num(raw, nan=1.0)  # a feature constant in both samples did not move
        adjusted = np.asarray(false_discovery_control(raw, method="bh"), dtype=np.float64)
        k = int(np.argmin(adjusted))
        score = float(adjusted[k])
        names = self.reference.features
        return DriftResult(
            drift=score < self.alpha,
            score=score,
            threshold=self.alpha,
            images=int(rows.shape[0]),
            feature=names[k],
            p_values={n: float(p) for n, p in zip(names, adjusted, strict=True)},
        )
