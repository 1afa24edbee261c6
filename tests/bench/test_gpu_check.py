"""bench/gpu_check: the dry run end to end (through the shell wrapper), its input errors, and
the parts the GPU run uses, exercised on CPU with a small DPT (vit_tiny at 32x32).

The real figures need a CUDA GPU; what can be checked here is that the script checks its
inputs, builds the ONNX with the project's exporter, records every GPU part as skipped with
its reason, and that the training step, the latency/parity measurement and the target
evaluation compute the right numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import gpu_check
from bench.bench_export import time_calls
from bench.gpu_check_infer import Runtime, build_tensorrt, measure_latency, runtimes
from bench.gpu_check_train import WARMUP_STEPS, loss_trend, run_training, synthetic_batches
from depth_common.config import load_params

ROOT = Path(__file__).resolve().parents[2]
SMALL = (
    "model.encoder=vit_tiny_patch16_224",
    "data.img_size=32",
    "model.decoder_features=16",
)
SMALL_ARGS = [a for s in SMALL for a in ("--set", s)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on 2 shared, busy cores two spinning OpenMP threads were measured
    20x slower than one for this small model (the figures here are not speed figures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_params(*extra: str):
    return load_params(ROOT / "params.yaml", (*gpu_check.DEFAULT_MODEL, *SMALL, *extra))


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory: pytest.TempPathFactory):
    from depth_common.export.onnx import export_model
    from depth_common.model.dpt import build_model

    torch.manual_seed(0)
    model = build_model(small_params()).eval()
    path = tmp_path_factory.mktemp("gpu-check-onnx") / "model.onnx"
    return export_model(model, path, img_size=(32, 32)).path, model


# --- the dry run, as a GPU node would start it -------------------------------------------


def test_dry_run_through_the_wrapper_records_every_gpu_part_as_skipped(tmp_path: Path) -> None:
    out_dir, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"),
        "PYTHONPATH": "",
        "OMP_NUM_THREADS": "1",  # see one_torch_thread
    }
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out_dir), "--dry-run"]
    cmd += [*SMALL_ARGS, "--work-dir", str(work)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out_dir / "results_gpu.json").read_text())
    log = (out_dir / "results_gpu.log").read_text()

    assert (result["schema"], result["kind"], result["mode"]) == (1, "gpu_check", "dry-run")
    assert result["complete"] is True
    assert result["config"]["encoder"] == "vit_tiny_patch16_224"
    assert result["config"]["img_size"] == [32, 32]
    assert result["config"]["trt_profile"]["max"] == [8, 3, 32, 32]
    sections = result["sections"]
    assert list(sections) == [
        "inputs",
        "onnx",
        "training",
        "tensorrt",
        "latency",
        "triton_tensorrt_plan",
    ]
    assert sections["inputs"]["status"] == "ok" and result["config"]["weights"] == "random"
    model_check = "model vit_tiny_patch16_224 at 32x32 pixels, decoder 16, random weights"
    assert model_check in sections["inputs"]["checks"]
    onnx = sections["onnx"]
    assert onnx["status"] == "ok" and onnx["size_mb"] > 1  # vit_tiny: ~22 MB of weights
    assert onnx["input"] == ["image", "batch", 3, 32, 32]
    assert set(onnx["parity_vs_torch"]) == {"batch_1", "batch_4"}
    assert all(0 <= v < onnx["atol_m"] for v in onnx["parity_vs_torch"].values())
    for name in ("tensorrt", "latency", "training", "triton_tensorrt_plan"):
        assert sections[name]["status"] == "skipped", name
        assert result["skipped"][name] == sections[name]["reason"]
        assert f"SKIPPED {name}" in log
    assert sections["tensorrt"]["reason"].startswith("--dry-run")
    rehearsal = sections["training"]["cpu_rehearsal"]
    assert rehearsal["steps"] == len(rehearsal["losses"]) == 2 and rehearsal["finite"]
    assert {t["status"] for t in result["targets"]} == {"not run"}
    assert "wrote " in log and "Traceback" not in log
    assert not list(work.iterdir())  # the ONNX scratch directory is gone


def test_full_run_on_cpu_measures_latency_and_trains(tmp_path: Path) -> None:
    """The GPU run's code path end to end, on CPU: the runtimes CPU has, a real training run."""
    out = tmp_path / "cpu.json"
    argv = ["--device", "cpu", *SMALL_ARGS, "--out", str(out), "--work-dir", str(tmp_path)]
    argv += ["--set", "training.decoder_lr=1.0e-3", "--set", "training.encoder_lr=1.0e-3"]
    argv += ["--train-steps", "6", "--train-batch", "2", "--latency-runs", "2"]
    argv += ["--latency-warmup", "0"]
    assert gpu_check.main(argv) == 0
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["mode"] == "cpu" and result["complete"]
    assert sections["tensorrt"]["status"] == "skipped"
    assert "No module named 'tensorrt'" in sections["tensorrt"]["reason"]
    latency = sections["latency"]
    assert latency["status"] == "ok"
    assert [(r["runtime"], r["batch"], r["runs"]) for r in latency["rows"]] == [
        (name, b, 2) for b in (1, 8) for name in ("onnxruntime-cpu", "torch-cpu-fp32")
    ]
    assert latency["parity_vs_onnxruntime_cpu"]["torch-cpu-fp32"]["pass"]
    assert set(result["skipped"]) == {"tensorrt", "latency.tensorrt-fp16", "triton_tensorrt_plan"}
    training = sections["training"]
    assert training["status"] == "ok" and training["steps"] == 6 and training["batch"] == 2
    assert training["amp"] == "off (fp32)" and "peak_memory_allocated_mib" not in training
    status = {t["key"]: t["status"] for t in result["targets"]}
    assert status["train_loss_finite_decreasing"] == "PASS"
    assert status["trt_fp16_vs_ort_cuda_b8"] == "not run"
    log = out.with_suffix(".log").read_text()
    assert log.count("SKIPPED") == 3
    assert "SKIPPED tensorrt " in log and "latency: SKIPPED tensorrt-fp16: no engine" in log


def test_sections_past_the_deadline_are_skipped_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    argv = ["--dry-run", *SMALL_ARGS, "--out", str(out), "--deadline-s", "0.001"]
    assert gpu_check.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["complete"] and result["sections"]["inputs"]["status"] == "ok"
    for name in ("onnx", "tensorrt", "latency", "training"):
        section = result["sections"][name]
        assert section["status"] == "skipped" and section["reason"].startswith("time budget")


# --- bad inputs: a clear message, exit 2, nothing written --------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--set", "data.img_size=40"], "img_size"),
        (["--set", "model.pretrained=true"], "model.pretrained"),
        (["--set", "export.trt_max_batch=4", "--set", "export.trt_opt_batch=2"], "trt_max_batch"),
        (["--set", "export.trt_fp16=false"], "export.trt_fp16"),
        (["--set", "model.encoder=resnet50"], "model.encoder"),
        (["--set", "model.encoder=no_such_vit"], "model.encoder"),
        (["--out", "{tmp}/result.txt"], "--out"),
        (["--work-dir", "{tmp}/missing"], "--work-dir"),
    ],
)
def test_bad_inputs_exit_2_naming_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], names: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out" / "r.json"
    rc = gpu_check.main(["--dry-run", *SMALL_ARGS, "--out", str(out), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: error:") and names in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "result.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_gpu_mode_without_a_gpu_points_at_dry_run(tmp_path: Path, capsys) -> None:
    assert gpu_check.main([*SMALL_ARGS, "--out", str(tmp_path / "r.json")]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# --- the training step --------------------------------------------------------------------


def test_training_step_matches_a_reference_loss_and_decreases() -> None:
    from depth_common.model.dpt import build_model
    from depth_common.training.distributed import seed_everything as seed_all
    from depth_common.training.losses import DepthLoss

    params = small_params("training.decoder_lr=1.0e-3", "training.encoder_lr=1.0e-3")
    result = run_training(params, torch.device("cpu"), steps=6, batch=2, amp=False, n_batches=2)
    losses = result["losses"]
    assert len(losses) == result["steps"] == 6 and result["timed_steps"] == 6 - WARMUP_STEPS
    assert result["status"] == "ok" and result["loss_trend"]["decreasing"]
    assert result["samples_per_s"] > 0 and not result["grad_scaler"]["enabled"]
    # Step 0's loss, recomputed from scratch: same seed, same data, same initial head bias.
    seed_all(0)
    data = synthetic_batches(2, 2, (32, 32), params.data.max_depth, seed=0)
    depth = torch.cat([d.flatten() for _, d in data])
    model = build_model(params, init_depth=float(depth[depth > 0].median())).train()
    image, gt = data[0]
    expected = DepthLoss.from_params(params)(model(image), gt)
    assert losses[0] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert result["loss_last"] == losses[-1]


def test_synthetic_batches_are_normalised_scenes_with_valid_clamped_depth() -> None:
    (image, depth), *_ = synthetic_batches(1, 3, (32, 48), max_depth=20.0, seed=1)
    assert image.shape == (3, 3, 32, 48) and depth.shape == (3, 1, 32, 48)
    assert image.dtype == depth.dtype == torch.float32
    assert float(image.min()) > -2.2 and float(image.max()) < 2.7  # ImageNet-normalised uint8
    valid = depth[depth > 0]
    assert 0.3 < valid.numel() / depth.numel() < 1  # the sky is invalid
    assert float(valid.max()) <= 20.0


def test_loss_trend_windows_are_whole_cycles() -> None:
    # Two batches with very different loss levels, cycled over 51 steps, flat: a window of
    # an odd length would hold more of one batch at one end and report a trend.
    flat = [1.0 if i % 2 == 0 else 5.0 for i in range(51)]
    trend = loss_trend(flat, period=2)
    assert trend["window"] % 2 == 0
    assert trend["first_window_mean"] == trend["last_window_mean"] == 3.0
    assert not trend["decreasing"]
    falling = [v - 0.01 * i for i, v in enumerate(flat)]
    trend = loss_trend(falling, period=2)
    w = trend["window"]
    assert trend["decreasing"]
    assert trend["last_window_mean"] == pytest.approx(np.mean(falling[-w:]))
    broken = [*falling[:-1], math.nan]
    assert not loss_trend(broken, period=2)["finite"]
    assert not loss_trend(broken, period=2)["decreasing"]


# --- latency and parity -------------------------------------------------------------------


def test_latency_rows_and_parity_on_cpu(small_onnx) -> None:
    from depth_common.config import ExportConfig

    onnx_path, model = small_onnx
    found, skipped = runtimes(onnx_path, model, torch.device("cpu"), plan_path=None)
    assert [r.name for r in found] == ["onnxruntime-cpu", "torch-cpu-fp32"] and skipped == {}
    reference = found[0]
    # FP16 stand-ins: 0.04 m off is inside FP16_ATOL_M (0.05 m); 2 % too deep is outside.
    found += [
        Runtime("near-fp16", "cpu", "fp16", lambda x: reference.call(x) + 0.04),
        Runtime("scaled-fp16", "cpu", "fp16", lambda x: reference.call(x) * 1.02 + 0.06),
    ]
    result = measure_latency(
        found, (32, 32), (1, 2), ExportConfig(), runs=3, warmup=1, budget_s=5.0
    )
    rows = result["rows"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        (rt.name, b) for b in (1, 2) for rt in found
    ]
    assert all(r["runs"] == 3 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
    parity = result["parity_vs_onnxruntime_cpu"]
    assert set(parity) == {"torch-cpu-fp32", "near-fp16", "scaled-fp16"}
    torch_fp32 = parity["torch-cpu-fp32"]
    assert torch_fp32["pass"] and torch_fp32["atol_m"] == ExportConfig().parity_atol
    assert torch_fp32["batch_2"]["max_abs_diff"] < 1e-4
    assert parity["near-fp16"]["pass"] and parity["near-fp16"]["rtol"] == 1e-2
    assert parity["near-fp16"]["batch_1"]["max_abs_diff"] == pytest.approx(0.04, abs=1e-5)
    assert not parity["scaled-fp16"]["pass"]


def test_time_calls_warms_up_then_stops_at_the_budget() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.01)

    times = time_calls(fn, runs=100, warmup=2, budget_s=0.05, min_runs=3)
    assert 3 <= len(times) <= 10 and len(calls) == len(times) + 2
    assert all(t >= 0.009 for t in times)
    assert len(time_calls(fn, runs=4, warmup=0, budget_s=100.0)) == 4


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT present"
)
def test_tensorrt_section_says_why_it_is_skipped(small_onnx, tmp_path: Path) -> None:
    from depth_common.config import ExportConfig

    result = build_tensorrt(small_onnx[0], tmp_path, ExportConfig())
    assert result["status"] == "skipped"
    assert "No module named 'tensorrt'" in result["reason"] and "15 kB" in result["reason"]
    assert not list(tmp_path.iterdir())


# --- targets ------------------------------------------------------------------------------


def _latency(trt8: float | None, ort8: float | None, skipped: dict[str, str]) -> dict:
    rows = [{"runtime": "torch-cuda-fp32", "batch": 8, "p50_ms": 9.0}]
    rows += [{"runtime": "tensorrt-fp16", "batch": 8, "p50_ms": trt8}] if trt8 else []
    rows += [{"runtime": "onnxruntime-cuda", "batch": 8, "p50_ms": ort8}] if ort8 else []
    parity = {"torch-cuda-fp16-autocast": {"pass": True}}
    return {"status": "ok", "rows": rows, "skipped": skipped, "parity_vs_onnxruntime_cpu": parity}


def test_targets_pass_miss_fail_and_not_run() -> None:
    ok = {"status": "ok"}
    sections = {"latency": _latency(2.0, 5.0, {}), "tensorrt": ok, "training": ok}
    status = {t["key"]: t["status"] for t in gpu_check.evaluate_targets(sections)}
    assert status == {
        "trt_fp16_vs_ort_cuda_b8": "PASS",
        "trt_fp16_parity": "PASS",
        "train_loss_finite_decreasing": "PASS",
        "torch_cuda_fp16_parity": "PASS",
    }
    speed = gpu_check.evaluate_targets({**sections, "latency": _latency(3.0, 5.0, {})})[0]
    assert speed["measured"] == pytest.approx(0.6) and speed["status"] == "MISSED"

    no_ort = _latency(2.0, None, {"onnxruntime-cuda": "onnxruntime 1.30 has no CUDA EP"})
    failed = {"status": "failed", "reason": "loss did not decrease"}
    targets = gpu_check.evaluate_targets(
        {
            "latency": no_ort,
            "tensorrt": {"status": "skipped", "reason": "no TRT"},
            "training": failed,
        }
    )
    by_key = {t["key"]: t for t in targets}
    assert by_key["trt_fp16_vs_ort_cuda_b8"]["status"] == "not run"
    assert "onnxruntime 1.30 has no CUDA EP" in by_key["trt_fp16_vs_ort_cuda_b8"]["reason"]
    assert by_key["trt_fp16_parity"] == {
        "key": "trt_fp16_parity",
        "target": by_key["trt_fp16_parity"]["target"],
        "status": "not run",
        "reason": "no TRT",
    }
    assert by_key["train_loss_finite_decreasing"]["status"] == "FAILED"
    assert gpu_check.skipped_summary(
        {"latency": no_ort, "tensorrt": {"status": "skipped", "reason": "no TRT"}}
    ) == {"tensorrt": "no TRT", "latency.onnxruntime-cuda": "onnxruntime 1.30 has no CUDA EP"}
