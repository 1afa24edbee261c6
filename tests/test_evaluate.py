"""Evaluation (metrics.json, HTML report, MLflow), the median baseline, and predict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from depth_common.checkpoint import model_from_checkpoint
from depth_common.data import DepthDataset
from depth_common.errors import DataError
from depth_common.evaluate import evaluate, format_metrics_table, median_baseline_metrics
from depth_common.metrics import METRIC_KEYS, compute_depth_metrics
from depth_common.train import train


@pytest.fixture(scope="module")
def trained(processed_data, tiny_params, tmp_path_factory):
    """A 0-epoch model (cheap) logged to a fresh MLflow store."""
    tmp = tmp_path_factory.mktemp("eval")
    params = tiny_params.with_overrides(
        ["training.epochs=0", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db"]
    )
    result = train(params, processed_data, tmp / "ckpt")
    return params, result


def test_evaluate_writes_metrics_report_and_logs(processed_data, trained, tmp_path) -> None:
    import mlflow

    params, result = trained
    ev = evaluate(result.checkpoint_path, processed_data, params, out_dir=tmp_path / "rep")
    assert list(ev.metrics) == [f"test_{k}" for k in METRIC_KEYS]
    assert json.loads(ev.metrics_path.read_text()) == pytest.approx(ev.metrics)
    # independent recomputation: the model over the test split, all at once
    model, _ = model_from_checkpoint(result.checkpoint_path)
    ds = DepthDataset(processed_data, "test")
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    depths = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(images)
    ref = compute_depth_metrics(pred, depths, params.data.min_depth, params.data.max_depth)
    assert ev.metrics == pytest.approx({f"test_{k}": v for k, v in ref.items()}, rel=1e-5)
    page = ev.report_path.read_text()
    assert page.count("data:image/png;base64,") == 1 + 3 * 4  # colour bar + 4 sample rows
    assert "test_rmse" in page and "ground truth" in page
    run = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["test_rmse"] == pytest.approx(ev.metrics["test_rmse"])


def test_evaluate_unknown_run_is_a_clear_error(processed_data, trained, tmp_path) -> None:
    params, result = trained
    with pytest.raises(DataError, match="MLflow run 'no-such-run' not found"):
        evaluate(
            result.checkpoint_path, processed_data, params, out_dir=tmp_path, run_id="no-such-run"
        )


def test_format_metrics_table() -> None:
    text = format_metrics_table({"test_rmse": 3.25, "test_delta_1": math.nan})
    lines = text.splitlines()
    assert len(lines) == 3 and "3.2500" in lines[1] and "metres" not in lines[0]
    assert "lower is better" in lines[1] and "nan" in lines[2]


def test_median_baseline_against_numpy(processed_data, demo_params) -> None:
    train_ds, val_ds = DepthDataset(processed_data, "train"), DepthDataset(processed_data, "val")
    lo, hi = demo_params.data.min_depth, demo_params.data.max_depth
    all_train = np.concatenate([train_ds[i][1].numpy().ravel() for i in range(len(train_ds))])
    median = float(np.median(all_train[(all_train > lo) & (all_train <= hi)]))
    gt = np.stack([val_ds[i][1].numpy()[0] for i in range(len(val_ds))])
    expected = compute_depth_metrics(np.full_like(gt, median), gt, lo, hi)
    got = median_baseline_metrics(processed_data, demo_params, "val")
    # the histogram median is exact to its 1 cm bins
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(expected[k], rel=2e-3, abs=2e-3), k


def test_predict_files(trained, tmp_path) -> None:
    from depth_common.predict import predict_files

    _, result = trained
    rng = np.random.default_rng(0)
    img = tmp_path / "street.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(img)
    out = predict_files(result.checkpoint_path, [img], tmp_path / "pred")
    assert [p.name for p in out] == ["street_depth.png", "street_depth.npy"]
    depth = np.load(out[1])
    assert depth.shape == (90, 150) and depth.dtype == np.float32 and (depth >= 0).all()
    assert Image.open(out[0]).size == (150, 90)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        predict_files(result.checkpoint_path, [bad], tmp_path / "pred")
