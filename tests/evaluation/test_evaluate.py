"""Evaluation (metrics.json, HTML report, MLflow) under both resolutions, against independent
numpy references (bilinear upsampling, centre crop, median scaling), the median baseline, and
predict."""

from __future__ import annotations

import html
import json
import math
import shutil

import numpy as np
import pytest
import torch
from depth_refs import bilinear_reference, manydepth_reference
from PIL import Image

from depth_common.data.convert import GT_SUFFIX, gt_path, load_depth_png
from depth_common.data.dataset import DepthDataset
from depth_common.errors import DataError
from depth_common.evaluation.evaluate import evaluate, format_metrics_table, median_baseline_metrics
from depth_common.evaluation.metrics import METRIC_KEYS, compute_depth_metrics
from depth_common.evaluation.protocol import centre_crop_box
from depth_common.model.checkpoint import model_from_checkpoint
from depth_common.training.train import train


@pytest.fixture(scope="module")
def trained(processed_data, tiny_params, tmp_path_factory):
    """A 0-epoch model (cheap) logged to a fresh MLflow store."""
    tmp = tmp_path_factory.mktemp("eval")
    params = tiny_params.with_overrides(
        ["training.epochs=0", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db"]
    )
    result = train(params, processed_data, tmp / "ckpt")
    return params, result


def _predict_test_split(checkpoint, processed_data):
    model, _ = model_from_checkpoint(checkpoint)
    ds = DepthDataset(processed_data, "test")
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    depths = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(images)
    return ds, pred[:, 0].double().numpy(), depths


def test_evaluate_writes_metrics_report_and_logs(processed_data, trained, tmp_path) -> None:
    import mlflow

    params, result = trained
    ev = evaluate(result.checkpoint_path, processed_data, params, out_dir=tmp_path / "rep")
    scaled = [f"test_median_scaled_{k}" for k in METRIC_KEYS]
    assert list(ev.metrics) == [f"test_{k}" for k in METRIC_KEYS] + scaled
    assert json.loads(ev.metrics_path.read_text()) == pytest.approx(ev.metrics)
    # Independent recomputation at full resolution: the stored ground truth (metres x 256),
    # the prediction upsampled by a numpy bilinear, then the metric formulas per image.
    ds, pred, _ = _predict_test_split(result.checkpoint_path, processed_data)
    lo, hi = params.data.min_depth, params.data.max_depth
    gts = [np.array(Image.open(gt_path(png))).astype(np.float64) / 256 for png, _ in ds.items]
    assert gts[0].shape == (48, 128)  # 64-row frames minus the 25 % hood crop
    up = np.stack([bilinear_reference(p, g.shape) for p, g in zip(pred, gts, strict=True)])
    gt = np.stack(gts)
    ref = compute_depth_metrics(up, gt, lo, hi)
    ref_scaled = manydepth_reference(up, gt, lo, hi)
    for k in METRIC_KEYS:
        assert ev.metrics[f"test_{k}"] == pytest.approx(ref[k], rel=1e-6), k
        assert ev.metrics[f"test_median_scaled_{k}"] == pytest.approx(ref_scaled[k], rel=1e-6), k
    assert "full resolution" in ev.protocol and "bottom 25% (ego car) cropped" in ev.protocol
    page = ev.report_path.read_text()
    # Two colour bars, 4 sample rows of input | gt | prediction | error, the band chart, the
    # density plot and the training curves (epochs=0: val_rmse at epoch 0 only).
    assert page.count("data:image/png;base64,") == 2 + 4 * 4 + 3
    assert "Error by distance band" in page and "40–80 m" in page and "Training curves" in page
    assert "test_rmse" in page and "ground truth" in page
    assert html.escape(ev.protocol) in page and "median-scaled (per image)" in page
    run = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["test_rmse"] == pytest.approx(ev.metrics["test_rmse"])
    assert run.data.metrics["test_median_scaled_abs_rel"] == pytest.approx(
        ev.metrics["test_median_scaled_abs_rel"]
    )


def test_evaluate_at_model_resolution_and_centre_crop(processed_data, trained, tmp_path) -> None:
    params, result = trained
    model_res = params.with_overrides(
        ["evaluation.resolution=model", "evaluation.median_scaling=false"]
    )
    ev = evaluate(result.checkpoint_path, processed_data, model_res, out_dir=tmp_path, run_id="")
    ds, pred, depths = _predict_test_split(result.checkpoint_path, processed_data)
    lo, hi = params.data.min_depth, params.data.max_depth
    ref = compute_depth_metrics(pred, depths, lo, hi)
    assert ev.metrics == pytest.approx({f"test_{k}": v for k, v in ref.items()}, rel=1e-5)
    assert ev.protocol.startswith("model resolution")
    # manydepth's centre crop: rows from 1/3 of the (hood-cropped) height, columns
    # 9.375 %..90.625 % -- [256:, 192:1856] on the official 768 x 2048 frame.
    assert centre_crop_box(768, 2048) == (256, 768, 192, 1856)
    cropped = params.with_overrides(["evaluation.centre_crop=true"])
    ev = evaluate(result.checkpoint_path, processed_data, cropped, out_dir=tmp_path, run_id="")
    gts = np.stack([load_depth_png(gt_path(png)) for png, _ in ds.items]).astype(np.float64)
    up = np.stack([bilinear_reference(p, gts.shape[1:]) for p in pred])
    top, left, right = 16, 12, 116  # round(48 / 3), round(128 * 0.09375), round(128 * 0.90625)
    ref = compute_depth_metrics(up[:, top:, left:right], gts[:, top:, left:right], lo, hi)
    for k in METRIC_KEYS:
        assert ev.metrics[f"test_{k}"] == pytest.approx(ref[k], rel=1e-6), k
    assert "manydepth centre crop" in ev.protocol


def test_full_resolution_needs_the_kept_ground_truth(processed_data, trained, tmp_path) -> None:
    params, result = trained
    root = tmp_path / "copy"
    shutil.copytree(processed_data, root)
    next((root / "test").rglob(f"*{GT_SUFFIX}")).unlink()
    with pytest.raises(DataError, match=r"no full-resolution ground truth for split 'test'"):
        evaluate(result.checkpoint_path, root, params, out_dir=tmp_path, run_id="")


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
    median = float(np.median(all_train[(all_train > lo) & (all_train < hi)]))
    gt = np.stack([val_ds[i][1].numpy()[0] for i in range(len(val_ds))])
    expected = compute_depth_metrics(np.full_like(gt, median), gt, lo, hi)
    got = median_baseline_metrics(processed_data, demo_params, "val")
    # the histogram median is exact to its 1 cm bins
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(expected[k], rel=2e-3, abs=2e-3), k


def test_predict_files(trained, tmp_path) -> None:
    from depth_common.serving.predict import predict_files

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


def test_predict_files_focal_scales_depth_and_points_go_to_a_ply(trained, tmp_path) -> None:
    from depth_common.errors import FocalError
    from depth_common.serving.camera import back_project, decode_ply
    from depth_common.serving.predict import predict_files

    _, result = trained
    rng = np.random.default_rng(1)
    img = tmp_path / "street.png"
    rgb = rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img)
    one = predict_files(result.checkpoint_path, [img], tmp_path / "f1", focal_px=60.0)
    ply = tmp_path / "cloud" / "street.ply"
    two = predict_files(result.checkpoint_path, [img], tmp_path / "f2", focal_px=120.0, points=ply)
    assert two[-1] == ply
    d1, d2 = np.load(one[1]), np.load(two[1])
    np.testing.assert_array_equal(d2, 2 * d1)  # exactly twice the depth at twice the focal
    xyz, colours = decode_ply(ply.read_bytes())
    valid = d2 > 0
    assert len(xyz) == int(valid.sum())
    np.testing.assert_allclose(xyz, back_project(d2, 120.0)[valid], rtol=1e-6)
    np.testing.assert_array_equal(colours, rgb[valid])
    three = predict_files(result.checkpoint_path, [img], tmp_path / "f3", confidence=True)
    assert [p.name for p in three] == ["street_depth.png", "street_depth.npy",
                                       "street_confidence.png"]  # fmt: skip
    conf = np.asarray(Image.open(three[2]))
    assert conf.shape == (40, 70) and conf.dtype == np.uint8 and conf.max() > 0
    plain = predict_files(result.checkpoint_path, [img], tmp_path / "f0")
    # the depth is the image's own whether or not its mirror ran beside it
    np.testing.assert_allclose(np.load(three[1]), np.load(plain[1]), rtol=1e-5, atol=1e-5)
    with pytest.raises(FocalError, match="--focal-px"):
        predict_files(result.checkpoint_path, [img], tmp_path / "f3", focal_px=0.5)
    with pytest.raises(ValueError, match="one PLY path takes one image"):
        predict_files(result.checkpoint_path, [img, one[0]], tmp_path / "f4", points=ply)


def test_metric_scales_turn_canonical_depth_into_metres() -> None:
    from depth_common.evaluation.evaluate import metric_scales

    # A frame shot at twice the canonical focal is twice as far as the model's canonical depth.
    assert metric_scales({"canonical_focal_px": 100.0}, [200.0, 50.0]) == [2.0, 0.5]
    assert metric_scales({"canonical_focal_px": None}, [200.0, 50.0]) == [1.0, 1.0]
    assert metric_scales({}, [200.0]) == [1.0]  # a checkpoint from before the canonical camera
