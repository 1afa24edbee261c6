"""Charts of the evaluation report (matplotlib, headless): error by distance band, the
predicted-vs-true density and the training curves, each returned as PNG bytes.

matplotlib is imported inside each function (about half a second): only a report pays it.
"""

from __future__ import annotations

# matplotlib is imported where a chart is drawn: the evaluation numbers and the deploy
# report's tables need no plotting library.
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from depth_common.evaluation.analysis import BandErrors

_DPI = 100


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod: render to memory only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    return fig, fig.subplots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def band_chart(bands: Sequence[BandErrors]) -> bytes:
    """Bars per distance band: AbsRel, δ1 and pixel share (left), RMSE in metres (right)."""
    fig, subplots = _figure(8.0, 3.2)
    left, right = subplots(1, 2)
    labels = [f"{b.low:g}–{b.high:g} m" for b in bands]
    x = np.arange(len(bands))
    for i, (key, name) in enumerate(
        (("abs_rel", "AbsRel"), ("delta_1", "δ1"), ("pixel_share", "pixel share"))
    ):
        left.bar(x + (i - 1) * 0.27, [getattr(b, key) for b in bands], 0.27, label=name)
    left.set_xticks(x, labels)
    left.set_ylim(0, 1.25)  # headroom: the legend sits above bars that reach 1
    left.legend(fontsize=8, ncol=3, loc="upper center")
    left.set_title("error by true distance (fractions)")
    right.bar(x, [b.rmse for b in bands], 0.5, color="tab:red")
    right.set_xticks(x, labels)
    right.set_ylabel("RMSE [m]")
    right.set_title("RMSE by true distance")
    return _png(fig)


def density_plot(density: np.ndarray, max_depth: float) -> bytes:
    """Predicted (y) against true (x) depth, pixel counts on a log scale; the diagonal is exact."""
    from matplotlib.colors import LogNorm

    fig, subplots = _figure(4.2, 3.8)
    ax = subplots(1, 1)
    counts = np.asarray(density, dtype=np.float64).T  # rows: predicted bin, columns: true bin
    shown = np.where(counts > 0, counts, np.nan)
    vmax = max(float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0, 1.0)
    image = ax.imshow(
        shown,
        origin="lower",
        extent=(0, max_depth, 0, max_depth),
        cmap="viridis",
        norm=LogNorm(vmin=1, vmax=max(vmax, 1.0 + 1e-9)),
        aspect="equal",
    )
    ax.plot([0, max_depth], [0, max_depth], color="white", linewidth=0.8, linestyle="--")
    ax.set_xlabel("true depth [m]")
    ax.set_ylabel("predicted depth [m]")
    ax.set_title("predicted vs true (pixels)")
    fig.colorbar(image, ax=ax, label="pixels")
    return _png(fig)


def training_curves(history: Mapping[str, Sequence[tuple[int, float]]]) -> bytes:
    """One panel per metric (e.g. train_loss, val_rmse, learning_rate) against the epoch."""
    keys = [k for k, points in history.items() if points]
    if not keys:
        raise ValueError("training_curves: no metric has any point")
    fig, subplots = _figure(3.2 * len(keys), 2.8)
    axes = np.atleast_1d(subplots(1, len(keys)))
    for ax, key in zip(axes, keys, strict=True):
        steps, values = zip(*history[key], strict=True)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return _png(fig)


def step_chart(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], xlabel: str
) -> bytes:
    """One panel per title, each a few named series of (x, y) points (e.g. a canary's figures
    per traffic step)."""
    shown = {t: series for t, series in panels.items() if any(series.values())}
    if not shown:
        raise ValueError("step_chart: no series has any point")
    fig, subplots = _figure(3.4 * len(shown), 2.8)
    axes = np.atleast_1d(subplots(1, len(shown)))
    for ax, (title, series) in zip(axes, shown.items(), strict=True):
        for name, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=4, label=name)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _png(fig)
