"""Evaluate a checkpoint on a split: ``metrics.json``, an HTML report, and MLflow test metrics.

Metrics follow :mod:`depth_common.metrics` (per image, then averaged; ``data.min_depth`` /
``data.max_depth`` cap), keys prefixed with the split (``test_abs_rel``, ..., ``test_delta_3``
for the default split). The report embeds its images as base64 PNGs, so it is one file that
an MLflow artifact view or a KFP HTML visualisation can show as is.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from depth_common.config import Params
from depth_common.data.io import atomic_write
from depth_common.errors import DataError
from depth_common.metrics import METRIC_KEYS, DepthMetricsAccumulator

log = logging.getLogger(__name__)

_DESCRIPTIONS = {
    "abs_rel": ("mean |pred − gt| / gt", "lower is better"),
    "sq_rel": ("mean (pred − gt)² / gt  [m]", "lower is better"),
    "rmse": ("sqrt mean (pred − gt)²  [m]", "lower is better"),
    "rmse_log": ("sqrt mean (log pred − log gt)²", "lower is better"),
    "delta_1": ("fraction max(pred/gt, gt/pred) < 1.25", "higher is better"),
    "delta_2": ("… < 1.25²", "higher is better"),
    "delta_3": ("… < 1.25³", "higher is better"),
}


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # split-prefixed, e.g. test_rmse (metres)
    metrics_path: Path
    report_path: Path


def _base_key(key: str) -> str:
    for k in METRIC_KEYS:
        if key == k or key.endswith("_" + k):
            return k
    return key


def format_metrics_table(metrics: dict[str, float]) -> str:
    """A plain-text table of metrics (prefixed or not), one per line, with what each means."""
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric':<{width}}  {'value':>10}  meaning"]
    for key, value in metrics.items():
        desc, better = _DESCRIPTIONS.get(_base_key(key), ("", ""))
        shown = "nan" if not math.isfinite(value) else f"{value:.4f}"
        lines.append(
            f"{key:<{width}}  {shown:>10}  {desc} ({better})" if desc else f"{key}  {shown}"
        )
    return "\n".join(lines)


def _check_size(model_size: tuple[int, int], batch: torch.Tensor, processed_dir: Path) -> None:
    if tuple(batch.shape[-2:]) != tuple(model_size):
        raise DataError(
            f"{processed_dir}: images are {tuple(batch.shape[-2:])} (H, W), but the checkpoint's "
            f"model was built for {tuple(model_size)}; preprocess at the model's data.img_size"
        )


@torch.no_grad()
def _predict_split(model, loader, device, params, num_samples, processed_dir):
    acc = DepthMetricsAccumulator(params.data.min_depth, params.data.max_depth)
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for image, depth in loader:
        _check_size(model.img_size, image, processed_dir)
        pred = model(image.to(device)).float().cpu()
        acc.update(pred, depth)
        for i in range(min(len(image), num_samples - len(samples))):
            samples.append((image[i].numpy(), depth[i, 0].numpy(), pred[i, 0].numpy()))
    return acc, samples


def _report_html(
    metrics: dict[str, float],
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    info: dict[str, str],
    max_depth: float,
) -> str:
    from depth_common.data.transforms import denormalize_image
    from depth_common.viz import colorbar, colorize_depth, png_data_uri

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
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td>"
        f"<td>{html.escape(' — '.join(_DESCRIPTIONS.get(_base_key(k), ('', ''))))}</td></tr>"
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


def evaluate(
    checkpoint_path: str | Path,
    processed_dir: str | Path,
    params: Params,
    *,
    split: str = "test",
    out_dir: str | Path = "reports",
    run_id: str | None = None,
    num_samples: int = 4,
) -> EvalResult:
    """Evaluate ``checkpoint_path`` on ``split`` of ``processed_dir``.

    Writes ``out_dir/metrics.json`` (``{split}_abs_rel`` ... ``{split}_delta_3``) and
    ``out_dir/report.html`` (metrics table + ``num_samples`` input | ground truth |
    prediction rows on one colour scale). Logs the metrics and both files to the MLflow run
    ``run_id`` or, if None, the run recorded in the checkpoint (none: no logging).
    """
    from depth_common.checkpoint import model_from_checkpoint
    from depth_common.data import build_dataloader
    from depth_common.distributed import resolve_device
    from depth_common.threads import apply_torch_threads

    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    apply_torch_threads(params.training.threads, role="evaluate")
    device = resolve_device(params.training.device)
    model, ckpt = model_from_checkpoint(checkpoint_path, map_location=device)
    loader = build_dataloader(processed_dir, split, params, train=False)
    acc, samples = _predict_split(model, loader, device, params, num_samples, processed_dir)
    if acc.count == 0:
        log.warning(
            "%s/%s: no image with a valid depth pixel; metrics are NaN", processed_dir, split
        )
    metrics = {f"{split}_{k}": v for k, v in acc.compute().items()}

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = write_metrics_json(out_dir / "metrics.json", metrics)
    info = {
        "checkpoint": str(checkpoint_path),
        "epoch": str(ckpt["epoch"]),
        "model": f"{model.encoder_name}, decoder {model.decoder_features}, "
        f"{model.img_size[0]}x{model.img_size[1]}",
        "data": f"{processed_dir} ({split}, {acc.count} images with valid depth)",
        "protocol": f"per image, then mean; valid gt in ({params.data.min_depth}, "
        f"{params.data.max_depth}] m; pred clipped to that range",
    }
    page = _report_html(metrics, samples, f"Depth evaluation: {split}", info, params.data.max_depth)
    report_path = atomic_write(out_dir / "report.html", lambda fh: fh.write(page.encode()))

    run_id = run_id or ckpt.get("mlflow_run_id")
    if run_id:
        from depth_common import tracking

        tracking.configure(params.mlflow)
        if not tracking.run_exists(run_id):
            raise DataError(
                f"{checkpoint_path}: MLflow run {run_id!r} not found at "
                f"{params.mlflow.tracking_uri} (pass run_id=... or the right mlflow.tracking_uri)"
            )
        tracking.log_test_metrics(run_id, metrics)
        tracking.log_artifact(run_id, metrics_path, f"evaluation/{split}")
        tracking.log_artifact(run_id, report_path, f"evaluation/{split}")
    else:
        log.info("no MLflow run id in %s and none given: metrics not logged", checkpoint_path)
    return EvalResult(metrics, metrics_path, report_path)


def training_median_depth(processed_dir: str | Path, params: Params, bin_m: float = 0.01) -> float:
    """Median of every valid training-set depth pixel, metres (to ``bin_m``).

    A histogram over (0, max_depth] keeps memory constant on a full dataset.
    """
    from depth_common.data import DepthDataset

    lo, hi = params.data.min_depth, params.data.max_depth
    edges = np.arange(0.0, hi + bin_m, bin_m)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for _, depth in DepthDataset(processed_dir, "train"):
        d = np.asarray(depth, dtype=np.float64).ravel()
        d = d[np.isfinite(d) & (d > lo) & (d <= hi)]
        counts += np.histogram(d, bins=edges)[0]
    total = counts.sum()
    if total == 0:
        raise DataError(f"{processed_dir}/train: no valid depth pixel to take a median of")
    i = int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return float((edges[i] + edges[i + 1]) / 2)


def median_baseline_metrics(
    processed_dir: str | Path, params: Params, split: str = "val"
) -> dict[str, float]:
    """Metrics (unprefixed keys) of predicting the training median depth at every pixel of ``split``."""
    from depth_common.data import DepthDataset

    median = training_median_depth(processed_dir, params)
    acc = DepthMetricsAccumulator(params.data.min_depth, params.data.max_depth)
    for _, depth in DepthDataset(processed_dir, split):
        gt = torch.as_tensor(depth)
        acc.update(torch.full_like(gt, median), gt)
    return acc.compute()


def write_metrics_json(path: str | Path, metrics: dict[str, float]) -> Path:
    """Atomically write ``metrics`` as JSON (NaN written as null: strict JSON)."""
    clean = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    return atomic_write(Path(path), lambda fh: fh.write(json.dumps(clean, indent=2).encode()))
