"""The smoke test both deploy targets run on a fresh v2 endpoint.

Health, metadata, and one inference on a seeded input through :class:`DepthClient` (the same
client users call), checked for shape and finiteness and -- when the ONNX file is at hand --
against ONNX Runtime in-process on the same input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_common.export.onnx import parity_inputs


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke test saw. ``latency_ms`` is the inference round trip (milliseconds)."""

    ok: bool
    detail: str  # a one-line reason (what failed, or what was checked)
    latency_ms: float | None = None
    output_shape: tuple[int, ...] | None = None
    max_abs_diff: float | None = None  # metres, vs ONNX Runtime; None when not compared


def onnx_reference(onnx_path: str | Path, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output (CPU) for ``batch`` on the model file ``onnx_path``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def smoke_test_v2(
    url: str,
    model_name: str = "depth",
    *,
    onnx_path: str | Path | None = None,
    atol: float = 1e-3,
    ready_timeout_s: float = 30.0,
    request_timeout_s: float = 60.0,
    seed: int = 0,
    model_version: str = "",
) -> SmokeResult:
    """Smoke-test the v2 endpoint at ``url`` (``host:port`` or ``http://host[:port]``).

    Passes when the server and model report ready within ``ready_timeout_s`` seconds, the
    metadata names a ``[batch, 3, H, W]`` input, one inference on a seeded ``[1, 3, H, W]``
    input returns a finite ``[1, 1, H, W]`` depth map and, with ``onnx_path``, that map is
    within ``atol`` metres of ONNX Runtime's. ``model_version`` ("" = the one served) picks one
    version of a model served in several. Never raises for a bad endpoint: the reason is in
    the result (a deploy rolls back on it).
    """
    from depth_common.serving.client import DepthClient

    try:
        with DepthClient(
            url, "http", model_name, model_version, timeout_s=request_timeout_s
        ) as client:
            deadline = time.monotonic() + ready_timeout_s
            while not client.ready():
                if time.monotonic() > deadline:
                    return SmokeResult(
                        False, f"{url}: model {model_name!r} not ready after {ready_timeout_s} s"
                    )
                time.sleep(0.2)
            info = client.info
            batch = parity_inputs(1, (info.height, info.width), seed)
            start = time.perf_counter()
            out = client.infer_tensor(batch)
            latency_ms = (time.perf_counter() - start) * 1e3
    # Any failure here is a failed smoke test, not a crash: tritonclient raises plain
    # exceptions for transport errors (refused, reset, timeouts) besides DepthServingError.
    except Exception as exc:
        return SmokeResult(False, f"{url}: {type(exc).__name__}: {exc}")

    shape = tuple(int(d) for d in out.shape)
    expected = (1, 1, info.height, info.width)
    if shape != expected:
        return SmokeResult(False, f"output shape {shape}, expected {expected}", latency_ms, shape)
    if not np.isfinite(out).all():
        return SmokeResult(False, "output has NaN or inf values", latency_ms, shape)
    if onnx_path is None:
        return SmokeResult(True, f"output {shape} finite", latency_ms, shape)
    diff = float(np.max(np.abs(out.astype(np.float64) - onnx_reference(onnx_path, batch))))
    if not diff <= atol:
        return SmokeResult(
            False,
            f"max |served - ONNX Runtime| = {diff:.3g} m above atol {atol:g} m",
            latency_ms,
            shape,
            diff,
        )
    return SmokeResult(
        True, f"output {shape} within {atol:g} m of ONNX Runtime", latency_ms, shape, diff
    )
