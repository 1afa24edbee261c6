"""The evaluation report: one self-contained HTML page (images embedded as base64 PNGs) and
the plain-text metrics table, both stating what each figure means. The page shows where the
model errs: per-sample error maps, error by distance band, predicted vs true depth, and the
training curves."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np

from depth_common.data.transforms import denormalize_image
from depth_common.evaluation.analysis import ErrorAnalysis
from depth_common.evaluation.charts import band_chart, density_plot, training_curves
from depth_common.evaluation.metrics import METRIC_KEYS
from depth_common.evaluation.protocol import MEDIAN_SCALED
from depth_common.evaluation.viz import bytes_data_uri, colorbar, colorize_depth, png_data_uri

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (3,h,w), gt (h,w), pred (h,w), metres

_DESCRIPTIONS = {
    "abs_rel": ("mean |pred − gt| / gt", "lower is better"),
    "sq_rel": ("mean (pred − gt)² / gt  [m]", "lower is better"),
    "rmse": ("sqrt mean (pred − gt)²  [m]", "lower is better"),
    "rmse_log": ("sqrt mean (log pred − log gt)²", "lower is better"),
    "delta_1": ("fraction max(pred/gt, gt/pred) < 1.25", "higher is better"),
    "delta_2": ("… < 1.25²", "higher is better"),
    "delta_3": ("… < 1.25³", "higher is better"),
}


def _base_key(key: str) -> str:
    for k in METRIC_KEYS:
        if key == k or key.endswith("_" + k):
            return k
    return key


def _label(key: str) -> str:
    """What a metric key means: ``median-scaled, <meaning>`` for the median-scaled figures."""
    desc, better = _DESCRIPTIONS.get(_base_key(key), ("", ""))
    if not desc:
        return ""
    scaled = "median-scaled (per image), " if f"_{MEDIAN_SCALED}_" in f"_{key}" else ""
    return f"{scaled}{desc} ({better})"


def _shown(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4f}"


def format_metrics_table(metrics: dict[str, float]) -> str:
    """A plain-text table of metrics (prefixed or not), one per line, with what each means."""
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric':<{width}}  {'value':>10}  meaning"]
    for key, value in metrics.items():
        label = _label(key)
        shown = _shown(value)
        lines.append(f"{key:<{width}}  {shown:>10}  {label}" if label else f"{key}  {shown}")
    return "\n".join(lines)


#: Upper end of the error maps' common scale: AbsRel 0.5 (50 % off) and beyond is one colour.
ERROR_MAP_MAX = 0.5


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _sample_rows(samples: list[Sample], vmax: float) -> str:
    """input | ground truth | prediction | AbsRel error map, depth maps on one scale (0..vmax
    metres), error maps on another (0..ERROR_MAP_MAX)."""

    rows = []
    for n, (image, gt, pred) in enumerate(samples):
        no_gt = ~(np.isfinite(gt) & (gt > 0))
        err = np.abs(pred - gt) / np.where(no_gt, 1.0, gt)
        cells = [
            (png_data_uri(denormalize_image(image)), f"sample {n} input"),
            (png_data_uri(colorize_depth(gt, 0.0, vmax)), f"sample {n} ground truth"),
            (
                png_data_uri(colorize_depth(pred, 0.0, vmax, invalid=np.zeros(pred.shape, bool))),
                f"sample {n} prediction",
            ),
            (
                png_data_uri(colorize_depth(err, 0.0, ERROR_MAP_MAX, invalid=no_gt)),
                f"sample {n} error",
            ),
        ]
        rows.append("<tr>" + "".join(f"<td>{_img(u, a)}</td>" for u, a in cells) + "</tr>")
    return "".join(rows)


def _band_section(analysis: ErrorAnalysis | None) -> str:
    """The chart and table of error by distance band, and the density plot."""
    if analysis is None:
        return ""

    bands = analysis.bands()
    rows = "".join(
        f"<tr><td>{b.low:g}–{b.high:g} m</td><td>{_shown(b.abs_rel)}</td><td>{_shown(b.rmse)}</td>"
        f"<td>{_shown(b.delta_1)}</td><td>{_shown(b.pixel_share)}</td><td>{b.pixels}</td></tr>"
        for b in bands
    )
    return f"""<h2>Error by distance band</h2>
<p>Pooled over every valid pixel of the split at the model's resolution.</p>
{_img(bytes_data_uri(band_chart(bands)), "error by distance band chart")}
<table><tr><th>true depth</th><th>AbsRel</th><th>RMSE [m]</th><th>δ1</th>
<th>pixel share</th><th>pixels</th></tr>{rows}</table>
<h2>Predicted vs true depth</h2>
{_img(bytes_data_uri(density_plot(analysis.density, analysis.max_depth)), "density plot")}
"""


def _curves_section(curves: Mapping[str, Sequence[tuple[int, float]]] | None) -> str:
    if not curves or not any(curves.values()):
        return ""

    chart = bytes_data_uri(training_curves(curves))
    return f"<h2>Training curves</h2>\n<p>From the MLflow run's history.</p>\n{_img(chart, 'training curves')}\n"


def report_html(
    metrics: dict[str, float],
    samples: list[Sample],
    title: str,
    info: dict[str, str],
    max_depth: float,
    protocol: str,
    analysis: ErrorAnalysis | None = None,
    curves: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> str:
    """The HTML page: protocol line, run facts, the metrics table, sample rows on one scale
    with their error maps, error by distance band, the density plot and the training curves
    (``curves``: metric → [(epoch, value)]); every image inline (base64 PNG)."""

    # One scale for every map in the report: 0 m to the 99th percentile of the shown ground
    # truth, so colours compare across images and between ground truth and prediction.
    valid = [g[(g > 0) & np.isfinite(g)] for _, g, _ in samples]
    flat = np.concatenate(valid) if valid else np.zeros(0)
    vmax = float(np.percentile(flat, 99)) if flat.size else max_depth
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_shown(v)}</td><td>{html.escape(_label(k))}</td></tr>"
        for k, v in metrics.items()
    )
    meta = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in info.items()
    )
    bar = _img(png_data_uri(colorbar(0.0, vmax)), f"depth colour bar 0 to {vmax:.1f} m")
    err_bar = _img(png_data_uri(colorbar(0.0, ERROR_MAP_MAX)), "error colour bar")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 10px; border: 1px solid #ccc; text-align: left; }}
.grid td {{ border: none; padding: 2px; }}
.grid img {{ image-rendering: pixelated; width: 240px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>Protocol:</b> {html.escape(protocol)}</p>
<ul>{meta}</ul>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>{table}</table>
<h2>Samples</h2>
<p>Depth colour scale (metres, inferno: dark = near, bright = far; grey = no ground truth):</p>
{bar}
<p>Error maps: |pred − gt| / gt on one scale, 0 to {ERROR_MAP_MAX:g} (bright = worse; grey = no
ground truth):</p>
{err_bar}
<table class="grid"><tr><th>input</th><th>ground truth</th><th>prediction</th><th>AbsRel error</th></tr>
{_sample_rows(samples, vmax)}</table>
{_band_section(analysis)}{_curves_section(curves)}</body></html>
"""
