"""The evaluation report: one self-contained HTML page (images embedded as base64 PNGs) and
the plain-text metrics table, both stating what each figure means."""

from __future__ import annotations

import html
import math

import numpy as np

from depth_common.evaluation.metrics import METRIC_KEYS
from depth_common.evaluation.protocol import MEDIAN_SCALED

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


def report_html(
    metrics: dict[str, float],
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    info: dict[str, str],
    max_depth: float,
    protocol: str,
) -> str:
    """The HTML page: protocol line, run facts, the metrics table, sample rows on one scale."""
    from depth_common.data.transforms import denormalize_image
    from depth_common.evaluation.viz import colorbar, colorize_depth, png_data_uri

    # One scale for every map in the report: 0 m to the 99th percentile of the shown ground
    # truth, so colours compare across images and between ground truth and prediction.
    valid = [g[(g > 0) & np.isfinite(g)] for _, g, _ in samples]
    flat = np.concatenate(valid) if valid else np.zeros(0)
    vmax = float(np.percentile(flat, 99)) if flat.size else max_depth
    vmin = 0.0
    rows = []
    for image, gt, pred in samples:
        cells = [
            png_data_uri(denormalize_image(image)),
            png_data_uri(colorize_depth(gt, vmin, vmax)),
            png_data_uri(colorize_depth(pred, vmin, vmax, invalid=np.zeros(pred.shape, bool))),
        ]
        rows.append("<tr>" + "".join(f'<td><img src="{c}"></td>' for c in cells) + "</tr>")
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_shown(v)}</td><td>{html.escape(_label(k))}</td></tr>"
        for k, v in metrics.items()
    )
    meta = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in info.items()
    )
    bar = png_data_uri(colorbar(vmin, vmax))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 10px; border: 1px solid #ccc; text-align: left; }}
.grid td {{ border: none; padding: 2px; }}
.grid img {{ image-rendering: pixelated; width: 320px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>Protocol:</b> {html.escape(protocol)}</p>
<ul>{meta}</ul>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>{table}</table>
<h2>Samples</h2>
<p>Depth colour scale (metres, inferno: dark = near, bright = far; grey = no ground truth):</p>
<img src="{bar}" alt="colour bar {vmin:.1f} to {vmax:.1f} m">
<table class="grid"><tr><th>input</th><th>ground truth</th><th>prediction</th></tr>
{"".join(rows)}</table>
</body></html>
"""
