"""Evaluate a checkpoint on a split: ``metrics.json``, an HTML report, and MLflow test metrics.

How the split is scored is :mod:`depth_common.evaluation.protocol` (``params.evaluation``): by
default at the full resolution of the ground truth, with metric figures (``test_abs_rel``,
..., ``test_delta_3``) and per-image median-scaled ones (``test_median_scaled_abs_rel``, ...)
side by side. The report states the protocol in one line, shows where the model errs (error
maps, error by distance band, predicted vs true density, training curves) and embeds its
images as base64 PNGs, so it is one file that an MLflow artifact view or a KFP HTML
visualisation shows as is.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from depth_common.atomic import atomic_write
from depth_common.config import Params
from depth_common.data.convert import gt_path, load_depth_png
from depth_common.data.dataset import DepthDataset, build_dataloader, read_manifest
from depth_common.data.digest import manifest_digest
from depth_common.data.preprocess import manifest_path
from depth_common.errors import DataError
from depth_common.evaluation.analysis import ErrorAnalysis
from depth_common.evaluation.metrics import DepthMetricsAccumulator
from depth_common.evaluation.protocol import Scorer, describe
from depth_common.evaluation.report import Sample, format_metrics_table, report_html
from depth_common.model.checkpoint import model_from_checkpoint, resolve_device
from depth_common.registry import tracking
from depth_common.registry.tracking import TaskContext
from depth_common.threads import apply_torch_threads

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "format_metrics_table", "median_baseline_metrics"]

#: The training run's metrics the report draws per epoch.
CURVE_METRICS = ("train_loss", "val_rmse", "learning_rate")


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # split-prefixed, e.g. test_rmse (metres)
    metrics_path: Path
    report_path: Path
    protocol: str = ""


def _check_size(model_size: tuple[int, int], batch: torch.Tensor, processed_dir: Path) -> None:
    if tuple(batch.shape[-2:]) != tuple(model_size):
        raise DataError(
            f"{processed_dir}: images are {tuple(batch.shape[-2:])} (H, W), but the checkpoint's "
            f"model was built for {tuple(model_size)}; preprocess at the model's data.img_size"
        )


def _full_gt_paths(processed_dir: Path, split: str, dataset: Any) -> list[Path]:
    """The full-resolution ground truth of every item of ``dataset``, checked to exist."""

    kept = read_manifest(processed_dir).get("full_resolution_gt", {}).get("splits", [])
    paths = [gt_path(png) for png, _ in dataset.items]
    if split not in kept or not all(p.is_file() for p in paths):
        raise DataError(
            f"{processed_dir}: no full-resolution ground truth for split '{split}' (kept for: "
            f"{', '.join(kept) or 'none'}); preprocess it as an evaluation split (not in "
            "data.train_splits), or set evaluation.resolution: model"
        )
    return paths


def metric_scales(ckpt: dict[str, Any], focals: list[float]) -> list[float]:
    """Per item, the factor from the model's output to metres: ``f / canonical_focal_px`` for
    a camera-aware checkpoint (``f`` the item's focal at the model input), else 1."""
    canonical = ckpt.get("canonical_focal_px")
    return [1.0] * len(focals) if canonical is None else [f / canonical for f in focals]


@torch.no_grad()
def _score_split(
    model, loader, device, scorer: Scorer, gts: list[Path] | None, num_samples, analysis, scales
):
    """Predict every batch (times its item's ``scales``: metres); score at model resolution,
    or against ``gts`` (full resolution); ``analysis`` (error by band, density) always at model
    resolution."""

    samples: list[Sample] = []
    seen = 0
    for image, depth in loader:
        _check_size(model.img_size, image, Path(loader.dataset.root))
        pred = model(image.to(device)).float().cpu()
        pred = pred * torch.tensor(scales[seen : seen + len(image)]).view(-1, 1, 1, 1)
        analysis.update(pred.numpy(), depth.numpy())
        if gts is None:
            scorer.update(pred, depth)
        else:
            scorer.update_full(pred, [load_depth_png(p) for p in gts[seen : seen + len(image)]])
        seen += len(image)
        for i in range(min(len(image), num_samples - len(samples))):
            samples.append((image[i].numpy(), depth[i, 0].numpy(), pred[i, 0].numpy()))
    return samples


def _log_to_mlflow(
    params: Params, run_id: str, checkpoint, metrics, files, processed_dir: Path, split: str,
    context: TaskContext,
) -> None:  # fmt: skip
    """test_* metrics and the report to the training run ``run_id`` (what promotion reads);
    in a pipeline also an ``<kfp run>/evaluate`` child run with the dataset as its testing
    input, the same metrics and files."""

    tracking.configure(params.mlflow)
    if not tracking.run_exists(run_id):
        raise DataError(
            f"{checkpoint}: MLflow run {run_id!r} not found at "
            f"{params.mlflow.tracking_uri} (pass run_id=... or the right mlflow.tracking_uri)"
        )
    tracking.log_test_metrics(run_id, metrics)
    for path in files:
        tracking.log_artifact(run_id, path, f"evaluation/{split}")
    with tracking.task_run(params, context, "evaluate", {"train_run_id": run_id}) as child:
        if not child:  # outside a pipeline: the training run holds it all
            return
        manifest = read_manifest(processed_dir)
        digest = manifest_digest(manifest, manifest_path(processed_dir))
        uri = context.dataset_uri or str(processed_dir.resolve())
        tracking.log_dataset(child, uri, digest, manifest["counts"], ("testing",))
        tracking.log_metrics(child, metrics)
        for path in files:
            tracking.log_artifact(child, path, f"evaluation/{split}")


def evaluate(
    checkpoint_path: str | Path,
    processed_dir: str | Path,
    params: Params,
    *,
    split: str = "test",
    out_dir: str | Path = "reports",
    run_id: str | None = None,
    num_samples: int = 4,
    context: TaskContext | None = None,
) -> EvalResult:
    """Evaluate ``checkpoint_path`` on ``split`` of ``processed_dir`` under ``params.evaluation``.

    Writes ``out_dir/metrics.json`` (``{split}_abs_rel`` ... ``{split}_delta_3`` and, with
    median scaling, ``{split}_median_scaled_*``) and ``out_dir/report.html`` (the protocol
    line, the metrics table, ``num_samples`` input | ground truth | prediction | error-map rows
    on one colour scale, error by distance band, predicted vs true depth, and the training
    curves from the run's MLflow history). Logs the metrics and both files to the MLflow run ``run_id`` or, if None,
    the run recorded in the checkpoint (none: no logging); with ``context.kfp_run`` also to an
    ``<kfp run>/evaluate`` child of the pipeline run, with the dataset as its testing input.
    """

    processed_dir, out_dir = Path(processed_dir), Path(out_dir)
    apply_torch_threads(params.training.threads, role="evaluate")
    device = resolve_device(params.training.device)
    model, ckpt = model_from_checkpoint(checkpoint_path, map_location=device)
    loader = build_dataloader(processed_dir, split, params, train=False)
    full = params.evaluation.resolution == "full"
    gts = _full_gt_paths(processed_dir, split, loader.dataset) if full else None
    data = params.data
    scorer = Scorer(params.evaluation, data.min_depth, data.max_depth)
    analysis = ErrorAnalysis(data.min_depth, data.max_depth)
    scales = metric_scales(ckpt, loader.dataset.focals)
    samples = _score_split(model, loader, device, scorer, gts, num_samples, analysis, scales)
    if scorer.count == 0:
        log.warning(
            "%s/%s: no image with a valid depth pixel; metrics are NaN", processed_dir, split
        )
    metrics = scorer.compute(split)
    crop = float(read_manifest(processed_dir)["params"].get("crop_bottom", 0.0))
    gt_size = _gt_size(gts[0]) if gts else None
    protocol = describe(params.evaluation, data.min_depth, data.max_depth, crop, gt_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = write_metrics_json(out_dir / "metrics.json", metrics)
    info = {
        "checkpoint": str(checkpoint_path),
        "epoch": str(ckpt["epoch"]),
        "model": f"{model.encoder_name}, decoder {model.decoder_features}, "
        f"{model.img_size[0]}x{model.img_size[1]}",
        "data": f"{processed_dir} ({split}, {scorer.count} images with valid depth)",
    }
    title = f"Depth evaluation: {split}"
    run_id = run_id or ckpt.get("mlflow_run_id")
    curves = _training_curves(params, run_id) if run_id else None
    page = report_html(
        metrics, samples, title, info, data.max_depth, protocol, analysis=analysis, curves=curves
    )
    report_path = atomic_write(out_dir / "report.html", lambda fh: fh.write(page.encode()))

    if run_id:
        files = (metrics_path, report_path)
        context = context or TaskContext()
        _log_to_mlflow(
            params, run_id, checkpoint_path, metrics, files, processed_dir, split, context
        )
    else:
        log.info("no MLflow run id in %s and none given: metrics not logged", checkpoint_path)
    return EvalResult(metrics, metrics_path, report_path, protocol)


def _training_curves(params: Params, run_id: str) -> dict[str, list[tuple[int, float]]] | None:
    """train_loss, val_rmse and learning_rate per epoch from the MLflow run's history (None
    when the run is not in the store: logging then reports that)."""

    tracking.configure(params.mlflow)
    if not tracking.run_exists(run_id):
        return None
    return {k: tracking.metric_history(run_id, k) for k in CURVE_METRICS}


def _gt_size(path: Path) -> tuple[int, int]:

    with Image.open(path) as img:
        return img.height, img.width


def training_median_depth(processed_dir: str | Path, params: Params, bin_m: float = 0.01) -> float:
    """Median of every valid training-set depth pixel, metres (to ``bin_m``).

    A histogram over (0, max_depth) keeps memory constant on a full dataset.
    """

    lo, hi = params.data.min_depth, params.data.max_depth
    edges = np.arange(0.0, hi + bin_m, bin_m)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for _, depth in DepthDataset(processed_dir, "train"):
        d = np.asarray(depth, dtype=np.float64).ravel()
        d = d[np.isfinite(d) & (d > lo) & (d < hi)]
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
