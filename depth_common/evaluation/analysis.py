"""Where the model errs: error by distance band and the predicted-vs-true depth density.

Both are pooled over every valid pixel of the split at the model's resolution (the
ground truth the loader gives, ``min_depth < gt < max_depth``, predictions clipped to the same
range), so a band's figures weigh each pixel once — unlike the headline metrics, which average
per image. They say where the error lives; the headline table stays the score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Distance bands in metres (lower bound inclusive, upper exclusive).
BANDS: tuple[tuple[float, float], ...] = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
#: Bins per axis of the predicted-vs-true density (over 0 .. max_depth).
DENSITY_BINS = 64


@dataclass(frozen=True)
class BandErrors:
    """Pooled figures of one band: AbsRel, RMSE (metres), δ1 and its share of valid pixels."""

    low: float
    high: float
    abs_rel: float
    rmse: float
    delta_1: float
    pixel_share: float
    pixels: int


@dataclass
class ErrorAnalysis:
    """Streams (prediction, ground truth) batches; ``bands()`` and ``density`` at the end."""

    min_depth: float
    max_depth: float
    _sums: np.ndarray = field(init=False)  # per band: |e|/gt, e², δ1 hits, pixels
    density: np.ndarray = field(init=False)  # (true bin, predicted bin) pixel counts

    def __post_init__(self) -> None:
        self._sums = np.zeros((len(BANDS), 4), dtype=np.float64)
        self.density = np.zeros((DENSITY_BINS, DENSITY_BINS), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one batch: ``pred`` and ``gt`` in metres, same shape (any layout)."""
        p = np.asarray(pred, dtype=np.float64).ravel()
        g = np.asarray(gt, dtype=np.float64).ravel()
        if p.shape != g.shape:
            raise ValueError(f"pred {np.shape(pred)} and gt {np.shape(gt)}: expected one shape")
        ok = np.isfinite(g) & (g > self.min_depth) & (g < self.max_depth)
        p = np.clip(np.nan_to_num(p[ok], nan=self.min_depth), self.min_depth, self.max_depth)
        g = g[ok]
        ratio = np.maximum(p / g, g / p)
        for i, (lo, hi) in enumerate(BANDS):
            m = (g >= lo) & (g < hi)
            e = p[m] - g[m]
            self._sums[i] += (
                np.sum(np.abs(e) / g[m]),
                np.sum(e * e),
                np.sum(ratio[m] < 1.25),
                m.sum(),
            )
        edges = np.linspace(0.0, self.max_depth, DENSITY_BINS + 1)
        self.density += np.histogram2d(g, p, bins=(edges, edges))[0].astype(np.int64)

    def bands(self) -> list[BandErrors]:
        """One entry per band of :data:`BANDS` (NaN figures for a band without pixels)."""
        total = self._sums[:, 3].sum()
        out = []
        for (lo, hi), (rel, sq, hits, n) in zip(BANDS, self._sums, strict=True):
            figures = (rel / n, float(np.sqrt(sq / n)), hits / n) if n else (float("nan"),) * 3
            share = n / total if total else float("nan")
            out.append(BandErrors(lo, hi, *figures, pixel_share=share, pixels=int(n)))
        return out
