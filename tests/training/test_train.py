"""Training loop: schedule, epochs=0, resume (after SIGTERM, with workers), validation and
checkpoint cadence, non-finite runs, MLflow logging, and the learning test."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEMO

from depth_common.atomic import MARKER
from depth_common.config import Params, load_params
from depth_common.errors import TrainingError, TrainingInterrupted, UnmanagedDirectoryError
from depth_common.model.checkpoint import load_checkpoint, model_from_checkpoint
from depth_common.training.state import lr_factor
from depth_common.training.train import train


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
    # camera-aware by default: the canonical camera (Cityscapes FoV at 128 px) travels along
    assert ckpt["canonical_focal_px"] == pytest.approx(2262.52 * 128 / 2048)
    assert ckpt["metrics"]["val_rmse"] == pytest.approx(result.best_val["val_rmse"])
    assert math.isfinite(result.best_val["val_rmse"]) and result.best_val["val_rmse"] > 0
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "0"
    assert run.data.tags["threads"].startswith("intra-op ")
    assert (
        run.data.tags["encoder"] == "vit_tiny_patch16_224" and run.data.tags["img_size"] == "64x128"
    )
    assert run.data.metrics["val_rmse"] == pytest.approx(result.best_val["val_rmse"])
    names = {a.path for a in client.list_artifacts(result.mlflow_run_id, "checkpoint")}
    assert names == {"checkpoint/best.pt"}
    # the MLflow model loads back (no pickle in it) and predicts like the checkpoint
    files = {a.path for a in client.list_artifacts(result.mlflow_run_id, "model")}
    assert not any(f.endswith((".pkl", ".pth", "pickle")) for f in files), files
    model = mlflow.pyfunc.load_model(f"runs:/{result.mlflow_run_id}/model")
    x = torch.rand(2, 3, 64, 128)
    reference, _ = model_from_checkpoint(result.checkpoint_path)
    with torch.no_grad():
        want = reference(x).numpy()
    np.testing.assert_array_equal(model.predict(x.numpy()), want)


def test_mlflow_per_epoch_metrics(processed_data, tiny_params, tmp_path) -> None:
    from depth_common.registry import tracking

    params = with_mlflow(tiny_params, tmp_path).with_overrides(
        ["training.max_train_batches=1", "training.val_every=1", "training.checkpoint_every=1"]
    )
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


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-identical model weights in two checkpoints."""
    wa, wb = load_checkpoint(a)["model_state"], load_checkpoint(b)["model_state"]
    assert wa.keys() == wb.keys()
    for k in wb:
        assert torch.equal(wa[k], wb[k]), k


def _sigterm_after_epoch_1(out: Path) -> threading.Thread:
    """SIGTERM to this process once ``out/last.pt`` holds epoch 1: a pod being stopped."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if load_checkpoint(out / "last.pt")["epoch"] >= 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            except Exception:  # not written yet (or being replaced)
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_then_resume_is_bit_identical(processed_data, tiny_params, tmp_path, workers):
    """SIGTERM in epoch 2 saves a resumable last.pt; resuming ends bit-identical to a run
    that was never stopped, with DataLoader workers too (their draws are keyed by epoch)."""
    params = tiny_params.with_overrides(
        (
            "training.max_train_batches=3",
            "training.epochs=3",
            "training.val_every=1",
            "training.checkpoint_every=1",
            "data.batch_size=2",
            f"data.num_workers={workers}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        )
    )
    full = train(params, processed_data, tmp_path / "full", tracking=False)
    out = tmp_path / "stopped"
    watcher = _sigterm_after_epoch_1(out)
    with pytest.raises(TrainingInterrupted, match="SIGTERM after [12] epochs"):
        train(params, processed_data, out)
    watcher.join(5)
    stopped = load_checkpoint(out / "last.pt")
    assert {"optimizer_state", "scheduler_state", "early_stop"} <= set(stopped)
    if "epoch_progress" in stopped:  # stopped inside an epoch: it resumes from that step
        assert 0 < stopped["epoch_progress"]["micro_batches"] < 3
    import mlflow

    run = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(stopped["mlflow_run_id"])
    assert run.info.status == "KILLED"
    resumed = train(params, processed_data, out, resume=True, tracking=False)
    assert resumed.history == full.history  # exact, not approximate
    assert resumed.mlflow_run_id == stopped["mlflow_run_id"]
    assert_same_weights(out / "last.pt", tmp_path / "full" / "last.pt")
    assert_same_weights(out / "best.pt", tmp_path / "full" / "best.pt")


def test_workers_do_not_change_the_batches(processed_data, tiny_params, tmp_path):
    """Augmentation keyed by (seed, epoch, index): 0 and 2 workers train the same model."""
    runs = {}
    for workers in (0, 2):
        params = tiny_params.with_overrides(
            ("training.max_train_batches=2", f"data.num_workers={workers}")
        )
        runs[workers] = train(params, processed_data, tmp_path / f"w{workers}", tracking=False)
    assert runs[0].history == runs[2].history
    assert_same_weights(tmp_path / "w0" / "last.pt", tmp_path / "w2" / "last.pt")


def test_resume_of_a_finished_run_trains_nothing(processed_data, tiny_params, tmp_path) -> None:
    params = tiny_params.with_overrides(["training.max_train_batches=2", "training.epochs=2"])
    full = train(params, processed_data, tmp_path / "full", tracking=False)
    again = train(params, processed_data, tmp_path / "full", resume=True, tracking=False)
    assert again.history == full.history
    # no last.pt at all: resume starts from scratch
    fresh = train(params, processed_data, tmp_path / "fresh", resume=True, tracking=False)
    assert_same_history(fresh.history, full.history)


def test_validation_and_checkpoint_cadence(processed_data, tiny_params, tmp_path) -> None:
    from depth_common.registry import tracking

    params = with_mlflow(tiny_params, tmp_path).with_overrides(
        (
            "training.max_train_batches=1",
            "training.epochs=3",
            "training.val_every=2",
            "training.checkpoint_every=2",
        )
    )
    result = train(params, processed_data, tmp_path / "ckpt")
    # validation after epoch 2 and after the last epoch; train_loss every epoch
    assert [("val_rmse" in h) for h in result.history] == [False, True, True]
    assert [s for s, _ in tracking.metric_history(result.mlflow_run_id, "val_rmse")] == [2, 3]
    assert [s for s, _ in tracking.metric_history(result.mlflow_run_id, "train_loss")] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt")["epoch"] == 3  # always at the end
    # the same run with validation every epoch trains the same weights (validation is pure)
    every = params.with_overrides(("training.val_every=1", "training.checkpoint_every=1"))
    train(every, processed_data, tmp_path / "every", tracking=False)
    assert_same_weights(tmp_path / "ckpt" / "last.pt", tmp_path / "every" / "last.pt")


def test_a_run_with_no_finite_validation_fails(processed_data, tiny_params, tmp_path) -> None:
    """Every validation non-finite: an error, not an earlier run's best.pt reported as this one's."""
    import mlflow

    out = tmp_path / "ckpt"
    params = with_mlflow(tiny_params, tmp_path).with_overrides(["training.max_train_batches=1"])
    train(params, processed_data, out)
    assert (out / "best.pt").is_file()  # an earlier, healthy run's model
    diverging = params.with_overrides(
        ["training.encoder_lr=1.0e+6", "training.decoder_lr=1.0e+6", "training.grad_clip=0"]
    )
    with pytest.raises(TrainingError, match=r"every validation gave a non-finite val_rmse"):
        train(diverging, processed_data, out)
    assert not (out / "best.pt").exists()
    run_id = load_checkpoint(out / "last.pt")["mlflow_run_id"]  # the diverging run's
    run = mlflow.MlflowClient(params.mlflow.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.params["training.encoder_lr"] == "1000000.0"


def test_resume_refuses_a_different_model(processed_data, tiny_params, tmp_path) -> None:
    from depth_common.errors import ConfigError

    params = tiny_params.with_overrides(["training.max_train_batches=1", "training.epochs=1"])
    train(params, processed_data, tmp_path, tracking=False)
    other = params.with_overrides(["model.decoder_features=32", "training.epochs=2"])
    with pytest.raises(ConfigError, match="last.pt: model_config"):
        train(other, processed_data, tmp_path, resume=True, tracking=False)


def test_a_camera_blind_checkpoint_names_no_canonical_focal(processed_data, tiny_params, tmp_path):
    params = tiny_params.with_overrides(["training.epochs=0", "data.camera_aware=false"])
    result = train(params, processed_data, tmp_path, tracking=False)
    assert load_checkpoint(result.checkpoint_path)["canonical_focal_px"] is None


@pytest.mark.slow
def test_learning_beats_median_baseline(tmp_path) -> None:
    """vit_tiny DPT, 64x128, DEMO preset: val AbsRel well below the training-median baseline."""
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.data.synthetic import generate_cityscapes
    from depth_common.evaluation.evaluate import median_baseline_metrics

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


def test_checkpoints_never_go_into_a_foreign_directory(processed_data, tiny_params, tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "best.pt").write_bytes(b"someone else's")
    with pytest.raises(UnmanagedDirectoryError, match=f"^{foreign}: not empty"):
        train(tiny_params, processed_data, foreign)
    assert (foreign / "best.pt").read_bytes() == b"someone else's"
    assert sorted(p.name for p in foreign.iterdir()) == ["best.pt"]
    assert MARKER not in {p.name for p in foreign.iterdir()}
