"""The GPU check's inference parts: the TensorRT FP16 engine, and latency + parity per runtime.

Every runtime is timed the same way: float32 numpy ``[B, 3, H, W]`` in, float32 numpy depth out
(what a serving backend hands over), so host-to-device and device-to-host copies are inside
every figure, CUDA work is finished when a call returns (TensorRT's runner and ONNX Runtime
synchronise; the torch runtimes copy the result to the host). Parity of each runtime is measured
against FP32 ONNX Runtime on CPU on the export's seeded inputs, FP16 runtimes with the TensorRT
module's tolerance (``FP16_ATOL_M + FP16_RTOL * |depth|``), FP32 ones with ``export.parity_atol``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_export import time_calls
from bench.bench_serving import load_stats
from depth_common.config import ExportConfig
from depth_common.export.onnx import INPUT_NAME, OUTPUT_NAME, parity_inputs
from depth_common.export.tensorrt import FP16_ATOL_M, FP16_RTOL, compare_outputs

#: Why the GPU builds of TensorRT / ONNX Runtime may be missing on an offline GPU node: the
#: size and shape of what would have to be carried there (pip's own download figures).
TENSORRT_WHEELS = (
    "PyPI's tensorrt-cu13-libs 11.4.0.106 is a 15 kB stub that downloads the TensorRT "
    "libraries from NVIDIA's package index at install time, so an offline node cannot install "
    "it from carried wheels; the libraries are far over a 64 MiB carry (TensorRT's own wheels "
    "were ~800 MB per Python version)"
)
ORT_GPU_WHEEL = (
    "the GPU build is the separate onnxruntime-gpu package, whose 1.31.1 cp312 CUDA 13 wheel is "
    "255.6 MB, four times a 64 MiB carry"
)


@dataclass
class Runtime:
    """One way to run the model: ``call`` maps float32 images to float32 depth (numpy)."""

    name: str
    device: str
    precision: str
    call: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None


def ort_session(onnx_path: Path, provider: str) -> Any:
    """An ONNX Runtime session on ``provider``; raises if it silently fell back to CPU."""
    import onnxruntime as ort

    options: dict[str, Any] = {}
    if provider == "CUDAExecutionProvider":
        options = {"use_tf32": 0}  # held to the FP32 tolerance: no 10-bit-mantissa matmuls
    providers = [(provider, options)] + (
        [] if provider == "CPUExecutionProvider" else ["CPUExecutionProvider"]
    )
    session = ort.InferenceSession(str(onnx_path), providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"ONNX Runtime fell back to {session.get_providers()} from {provider}")
    return session


def _ort_runtime(onnx_path: Path, provider: str, name: str, device: str) -> Runtime:
    session = ort_session(onnx_path, provider)
    return Runtime(name, device, "fp32", lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def _torch_runtime(model: torch.nn.Module, device: torch.device, fp16: bool) -> Runtime:
    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=fp16):
            out = model(torch.from_numpy(x).to(device))
        return out.float().cpu().numpy()

    precision = "fp16-autocast" if fp16 else "fp32"
    return Runtime(f"torch-{device.type}-{precision}", device.type, precision, call)


def _ort_cuda_runtime(onnx_path: Path) -> Runtime | str:
    """ONNX Runtime's CUDA EP, or why not (a CPU-only build, or a session that fails)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
            f"{ort.get_available_providers()}); {ORT_GPU_WHEEL}"
        )
    try:
        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels torch uses
            ort.preload_dlls()
        return _ort_runtime(onnx_path, "CUDAExecutionProvider", "onnxruntime-cuda", "cuda")
    except Exception as exc:  # e.g. a cuDNN the GPU build cannot load: the others still run
        return f"onnxruntime {ort.__version__} CUDA EP session failed: {exc}"


def _tensorrt_runtime(plan_path: Path) -> Runtime | str:
    from depth_common.export.tensorrt import TrtRunner

    try:
        runner = TrtRunner(plan_path)
    except Exception as exc:
        return f"the engine does not load: {exc}"
    return Runtime("tensorrt-fp16", "cuda", "fp16", runner.infer, runner.close)


def runtimes(
    onnx_path: Path, model: torch.nn.Module, device: torch.device, plan_path: Path | None
) -> tuple[list[Runtime], dict[str, str]]:
    """The runtimes available for ``device`` and the reason for each one that is not.

    CPU: ONNX Runtime (the reference) and torch FP32. CUDA adds torch FP16 autocast, ONNX
    Runtime's CUDA execution provider and the TensorRT plan when there is one. Run CUDA FP32
    inside :func:`strict_fp32` (TF32 off) to hold it to the FP32 tolerance.
    """
    found = [_ort_runtime(onnx_path, "CPUExecutionProvider", "onnxruntime-cpu", "cpu")]
    skipped: dict[str, str] = {}
    model = model.eval().to(device)
    found.append(_torch_runtime(model, device, fp16=False))
    if device.type != "cuda":
        return found, skipped
    found.append(_torch_runtime(model, device, fp16=True))
    optional = [("onnxruntime-cuda", lambda: _ort_cuda_runtime(onnx_path))]
    if plan_path is not None:
        optional.append(("tensorrt-fp16", lambda: _tensorrt_runtime(plan_path)))
    for name, make in optional:
        made = make()
        if isinstance(made, str):
            skipped[name] = made
        else:
            found.append(made)
    return found, skipped


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for torch's CUDA matmuls and convolutions, restored afterwards (training keeps
    torch's defaults)."""
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]
    for f in flags:
        f.allow_tf32 = False
    try:
        yield
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.allow_tf32 = value


def measure_latency(
    found: Sequence[Runtime],
    img_size: tuple[int, int],
    batches: Sequence[int],
    export_cfg: ExportConfig,
    *,
    runs: int,
    warmup: int,
    budget_s: float,
) -> dict[str, Any]:
    """Per runtime and batch: p50/p99/mean ms over the timed calls, and parity vs ONNX Runtime
    on CPU (``found[0]``) on the export's seeded inputs."""
    reference = found[0]
    rows, parity = [], {}
    for batch in batches:
        x = parity_inputs(batch, img_size)
        expected = reference.call(x)
        for rt in found:
            # At least 5 calls per cell, so that p99 is not a single call's time.
            lat = time_calls(lambda rt=rt, x=x: rt.call(x), runs, warmup, budget_s, min_runs=5)
            stats = load_stats(lat, wall_s=sum(lat), concurrency=1)
            rows.append(
                {
                    "runtime": rt.name,
                    "device": rt.device,
                    "precision": rt.precision,
                    "batch": batch,
                    "p50_ms": stats["p50_ms"],
                    "p99_ms": stats["p99_ms"],
                    "mean_ms": stats["mean_ms"],
                    "runs": stats["requests"],
                }
            )
            if rt is not reference:
                fp16 = rt.precision.startswith("fp16")
                atol, rtol = (FP16_ATOL_M, FP16_RTOL) if fp16 else (export_cfg.parity_atol, 0.0)
                diff = compare_outputs(expected, rt.call(x), atol=atol, rtol=rtol)
                entry = parity.setdefault(rt.name, {"atol_m": atol, "rtol": rtol, "pass": True})
                entry[f"batch_{batch}"] = diff
                entry["pass"] = entry["pass"] and diff["worst_excess"] <= 0
    return {"rows": rows, "parity_vs_onnxruntime_cpu": parity}


def build_tensorrt(onnx_path: Path, work: Path, export_cfg: ExportConfig) -> dict[str, Any]:
    """Build the FP16 engine with a cold timing cache and run the module's parity gate.

    Returns ``status`` (``ok`` / ``skipped`` / ``failed``), ``build_s`` (seconds, parse +
    build + serialise), ``plan_mb``, ``tensorrt`` (version), ``parity`` per profile batch
    (``check_trt_parity``'s statistics) and ``plan`` (its path) when the gate passed.
    """
    from depth_common.errors import ParityError, TensorRTUnavailable
    from depth_common.export.tensorrt import (
        build_engine,
        check_trt_parity,
        gpu_available,
        parity_batches,
    )

    ok, why = gpu_available()
    if not ok:
        return {"status": "skipped", "reason": f"{why}. {TENSORRT_WHEELS}"}
    import tensorrt as trt

    plan = work / "model.plan"
    start = time.perf_counter()
    try:
        cache = work / "model.plan.timing.cache"  # absent: a cold build, every tactic timed
        build_engine(onnx_path, plan, export_cfg, timing_cache_path=cache)
    except TensorRTUnavailable as exc:  # TensorRT 11 without ModelOpt AutoCast for FP16
        return {"status": "skipped", "tensorrt": trt.__version__, "reason": str(exc)}
    result: dict[str, Any] = {
        "status": "ok",
        "tensorrt": trt.__version__,
        "fp16": export_cfg.trt_fp16,
        "build_s": time.perf_counter() - start,
        "timing_cache": "cold",
        "plan_mb": plan.stat().st_size / 1e6,
        "profile_batches": list(parity_batches(export_cfg)),
        "tolerance": {"atol_m": FP16_ATOL_M, "rtol": FP16_RTOL},
    }
    try:
        result["parity"] = check_trt_parity(plan, onnx_path, parity_batches(export_cfg))
        result["plan"] = str(plan)
    except ParityError as exc:
        result.update(status="failed", reason=str(exc), max_abs_diff=exc.max_abs_diff)
    return result
