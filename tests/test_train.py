"""Training loop: schedule, epochs=0, resume, MLflow logging, and the learning test."""

from __future__ import annotations

import math
import time

import pytest
import torch

from depth_common.checkpoint import load_checkpoint
from depth_common.config import Params, load_params
from depth_common.presets import DEMO
from depth_common.train import lr_factor, train


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-5)


def with_mlflow(params: Params, tmp_path) -> Params:
    return params.with_overrides([f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])


def test_lr_factor_warmup_then_cosine() -> None:
    # 2 warmup steps then cosine over 8: linear up, 1 at the top, 0.5 halfway, 0 at the end
    assert [lr_factor(s, 2, 10) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 2, 10) == pytest.approx(1.0)
    assert lr_factor(6, 2, 10) == pytest.approx(0.5)
    assert lr_factor(10, 2, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(5, 0, 10, "constant") == 1.0
    values = [lr_factor(s, 2, 10) for s in range(2, 11)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_epochs_zero_saves_initial_model_and_logs(processed_data, tiny_params, tmp_path) -> None:
    import mlflow

    params = with_mlflow(tiny_params, tmp_path).with_overrides(["training.epochs=0"])
    result = train(params, processed_data, tmp_path / "ckpt")
    assert result.epochs_run == 0 and result.checkpoint_path.name == "best.pt"
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["epoch"] == 0 and ckpt["mlflow_run_id"] == result.mlflow_run_id
    assert ckpt["metrics"]["val_rmse"] == pytest.approx(result.best_val["val_rmse"])
    assert math.isfinite(result.best_val["val_rmse"]) and result.best_val["val_rmse"] > 0
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "0"
    assert (
        run.data.tags["encoder"] == "vit_tiny_patch16_224" and run.data.tags["img_size"] == "64x128"
    )
    assert run.data.metrics["val_rmse"] == pytest.approx(result.best_val["val_rmse"])
    names = {a.path for a in client.list_artifacts(result.mlflow_run_id, "checkpoint")}
    assert names == {"checkpoint/best.pt"}
    # the MLflow model loads back and predicts like the checkpoint
    model = mlflow.pytorch.load_model(f"runs:/{result.mlflow_run_id}/model")
    assert model(torch.zeros(1, 3, 64, 128)).shape == (1, 1, 64, 128)


def test_mlflow_per_epoch_metrics(processed_data, tiny_params, tmp_path) -> None:
    from depth_common import tracking

    params = with_mlflow(tiny_params, tmp_path).with_overrides(["training.max_train_batches=1"])
    result = train(params, processed_data, tmp_path / "ckpt")
    assert result.epochs_run == 2 and len(result.history) == 2
    for key in ("train_loss", "val_rmse", "val_abs_rel", "val_delta_1", "learning_rate"):
        hist = tracking.metric_history(result.mlflow_run_id, key)
        assert [s for s, _ in hist] == [1, 2], key
        assert [v for _, v in hist] == pytest.approx([h[key] for h in result.history]), key
    best = min(result.history, key=lambda h: h["val_rmse"])
    assert result.best_val["val_rmse"] == best["val_rmse"]
    assert load_checkpoint(result.checkpoint_path)["epoch"] == best["epoch"]
    last = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert last["epoch"] == 2 and {"optimizer_state", "scheduler_state"} <= set(last)


def test_resume_continues_exactly(processed_data, tiny_params, tmp_path) -> None:
    """A job killed after epoch 1 and resumed ends with the uninterrupted run's weights."""
    params = tiny_params.with_overrides(["training.max_train_batches=2", "training.epochs=2"])
    full = train(params, processed_data, tmp_path / "full", tracking=False)
    out = tmp_path / "killed"
    _train_one_epoch_of(params, processed_data, out)
    resumed = train(params, processed_data, out, resume=True, tracking=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.epochs_run == 2
    assert_same_history(resumed.history, full.history)
    a = load_checkpoint(out / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    for k in b:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # resuming a finished run trains nothing more; no last.pt at all starts from scratch
    again = train(params, processed_data, out, resume=True, tracking=False)
    assert again.history == resumed.history
    fresh = train(params, processed_data, tmp_path / "fresh", resume=True, tracking=False)
    assert_same_history(fresh.history, full.history)


def _train_one_epoch_of(params: Params, data, out) -> None:
    """Run ``params`` but stop after epoch 1, as a kill would (patience cannot do this)."""
    import depth_common.train as train_mod

    calls = {"n": 0}
    real = train_mod.validate

    def validate_then_die(*args, **kwargs):
        calls["n"] += 1
        metrics = real(*args, **kwargs)
        if calls["n"] == 2:  # after epoch 1's last.pt was saved, epoch 2's validation dies
            raise KeyboardInterrupt
        return metrics

    train_mod.validate = validate_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(params, data, out, tracking=False)
    finally:
        train_mod.validate = real
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_resume_refuses_a_different_model(processed_data, tiny_params, tmp_path) -> None:
    from depth_common.config import ConfigError

    params = tiny_params.with_overrides(["training.max_train_batches=1", "training.epochs=1"])
    train(params, processed_data, tmp_path, tracking=False)
    other = params.with_overrides(["model.decoder_features=32", "training.epochs=2"])
    with pytest.raises(ConfigError, match="last.pt: model_config"):
        train(other, processed_data, tmp_path, resume=True, tracking=False)


@pytest.mark.slow
def test_learning_beats_median_baseline(tmp_path) -> None:
    """vit_tiny DPT, 64x128, DEMO preset: val AbsRel well below the training-median baseline."""
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.evaluate import median_baseline_metrics
    from depth_common.synthetic import generate_cityscapes

    raw, processed = tmp_path / "raw", tmp_path / "processed"
    # 64 training images: enough optimizer steps (8 per epoch) for a random-init ViT to learn
    generate_cityscapes(raw, cities=2, per_split=32, size=(64, 128), seed=0)
    params = load_params(
        "params.yaml",
        DEMO + ("training.epochs=8", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"),
    )
    preprocess_dataset(raw, processed, params.data, splits=("train", "val"), progress=False)
    baseline = median_baseline_metrics(processed, params, "val")
    t0 = time.perf_counter()
    result = train(params, processed, tmp_path / "ckpt", tracking=False)
    seconds = time.perf_counter() - t0
    trained = result.best_val["val_abs_rel"]
    print(
        f"\nlearning test: median-baseline val AbsRel {baseline['abs_rel']:.4f}, "
        f"trained val AbsRel {trained:.4f} (val RMSE {result.best_val['val_rmse']:.3f} m vs "
        f"{baseline['rmse']:.3f} m), {result.epochs_run} epochs in {seconds:.1f} s"
    )
    assert trained < 0.75 * baseline["abs_rel"]
    assert result.best_val["val_rmse"] < baseline["rmse"]
