"""The smoke test both deploy targets run on a fresh endpoint: tensors, images, or both.

:func:`smoke_test_v2` looks at what ``url`` serves (its model metadata):

- a Triton tensor endpoint (input ``[batch, 3, H, W]`` FP32): health, metadata and one
  inference on an image (the caller's, e.g. a canary probe; else a seeded gradient), prepared
  as the transformer prepares it, through :class:`DepthClient` (the client users call), checked
  for shape and finiteness and -- with the ONNX file at hand -- against ONNX Runtime
  in-process on the same input;
- the image transformer (input ``image_bytes`` BYTES; an InferenceService with a transformer
  answers at its top-level URL with it): :func:`smoke_test_image`, one PNG through the v2 and
  v1 image endpoints, compared with ONNX Runtime on the same decoded image.

``transformer_url`` adds the image test to a tensor endpoint's (the local stack serves both).
"""

from __future__ import annotations

# onnxruntime is imported where a reference output is computed: a smoke test against a
# served model alone never loads it.
import base64
import io
import json
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from depth_common.data.transforms import prepare_image
from depth_common.serving.client import DepthClient
from depth_common.serving.codec import decode_depth_png, load_rgb, resize_depth_bilinear


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke test saw. ``latency_ms`` is the inference round trip (milliseconds)."""

    ok: bool
    detail: str  # a one-line reason (what failed, or what was checked)
    latency_ms: float | None = None
    output_shape: tuple[int, ...] | None = None
    max_abs_diff: float | None = None  # metres, vs ONNX Runtime; None when not compared
    image_latency_ms: float | None = None  # the image endpoint's round trip, when tested


def onnx_reference(onnx_path: str | Path, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output (CPU) for ``batch`` on the model file ``onnx_path``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def smoke_rgb(size: tuple[int, int] = (96, 160), seed: int = 0) -> np.ndarray:
    """A seeded uint8 (H, W, 3) image of ``size`` (gradients plus noise): not the model's
    input size, so every resize on the way is exercised."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def smoke_image(size: tuple[int, int] = (96, 160), seed: int = 0) -> bytes:
    """:func:`smoke_rgb` as a PNG file's bytes."""

    buf = io.BytesIO()
    Image.fromarray(smoke_rgb(size, seed)).save(buf, format="PNG")
    return buf.getvalue()


def image_reference(onnx_path: str | Path, data: bytes) -> np.ndarray:
    """What the image endpoint must answer for ``data``: the same decode, preprocessing, ONNX
    Runtime and resize, in-process."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    rgb = load_rgb(data)
    x = prepare_image(rgb, (int(inp.shape[-2]), int(inp.shape[-1])))[None]
    return resize_depth_bilinear(session.run(None, {inp.name: x})[0][0, 0], rgb.shape[:2])


def _wait_ready(client: object, url: str, model_name: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while not client.ready():  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            return f"{url}: model {model_name!r} not ready after {timeout_s} s"
        time.sleep(0.2)
    return None


def _is_image_endpoint(meta: dict) -> bool:
    inputs = meta.get("inputs") or []
    return len(inputs) == 1 and inputs[0].get("datatype") == "BYTES"


def _v1_png_check(url: str, model_name: str, data: bytes, want: np.ndarray, timeout_s: float):
    """The v1 endpoint's depth PNG decodes to ``want`` within its 1/256 m quantisation."""

    body = json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(data).decode()}}]})
    request = urllib.request.Request(
        f"http://{url}/v1/models/{model_name}:predict",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        (pred,) = json.load(resp)["predictions"]
    depth = decode_depth_png(base64.b64decode(pred["depth_png_b64"]))
    return depth.shape == want.shape and float(np.abs(depth - want).max()) <= 1.0 / 256 + 1e-3


def smoke_test_image(
    url: str,
    model_name: str = "depth",
    *,
    onnx_path: str | Path | None = None,
    atol: float = 1e-3,
    ready_timeout_s: float = 30.0,
    request_timeout_s: float = 60.0,
    seed: int = 0,
) -> SmokeResult:
    """Smoke-test the image transformer at ``url``: one seeded PNG through v2 (FP32 ``depth``
    at the image's size, finite, within ``atol`` metres of ONNX Runtime with ``onnx_path``)
    and v1 (the depth PNG decodes to the same map). Never raises: the reason is in the result.
    """

    data = smoke_image(seed=seed)
    try:
        with DepthClient(url, "http", model_name, timeout_s=request_timeout_s, mode="image") as c:
            url = c.url
            not_ready = _wait_ready(c, url, model_name, ready_timeout_s)
            if not_ready:
                return SmokeResult(False, not_ready)
            start = time.perf_counter()
            (depth,) = c.predict([data])
            latency_ms = (time.perf_counter() - start) * 1e3
        shape = tuple(int(d) for d in depth.shape)
        if not np.isfinite(depth).all():
            return SmokeResult(
                False, "image endpoint: depth has NaN or inf", None, shape, None, latency_ms
            )
        if onnx_path is None:
            return SmokeResult(
                True, f"image endpoint: depth {shape} finite", None, shape, None, latency_ms
            )
        want = image_reference(onnx_path, data)
        diff = float(np.max(np.abs(depth.astype(np.float64) - want)))
        if not diff <= atol:
            return SmokeResult(
                False,
                f"image endpoint: max |served - ONNX Runtime| = {diff:.3g} m above atol {atol:g} m",
                None, shape, diff, latency_ms,
            )  # fmt: skip
        if not _v1_png_check(url, model_name, data, want, request_timeout_s):
            return SmokeResult(False, "v1 image endpoint: depth PNG differs from ONNX Runtime")
    except Exception as exc:  # any transport or server failure is a failed smoke test
        return SmokeResult(False, f"{url}: {type(exc).__name__}: {exc}")
    detail = f"image endpoint (v1, v2): depth {shape} within {atol:g} m of ONNX Runtime"
    # latency_ms is the image round trip too: behind a transformer it is the endpoint's latency.
    return SmokeResult(True, detail, latency_ms, shape, diff, latency_ms)


def _tensor_smoke(
    client: object, url: str, onnx_path, atol: float, image: np.ndarray
) -> SmokeResult:
    info = client.info  # type: ignore[attr-defined]
    batch = prepare_image(image, (info.height, info.width))[None].astype(np.float32)
    start = time.perf_counter()
    out = client.infer_tensor(batch)  # type: ignore[attr-defined]
    latency_ms = (time.perf_counter() - start) * 1e3
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


def smoke_test_v2(
    url: str,
    model_name: str = "depth",
    *,
    onnx_path: str | Path | None = None,
    atol: float = 1e-3,
    ready_timeout_s: float = 30.0,
    request_timeout_s: float = 60.0,
    seed: int = 0,
    transformer_url: str | None = None,
    model_version: str = "",
    image: np.ndarray | None = None,
) -> SmokeResult:
    """Smoke-test the v2 endpoint at ``url`` (``host:port`` or ``http://host[:port]``).

    A tensor endpoint passes when the server and model report ready within
    ``ready_timeout_s`` seconds, the metadata names a ``[batch, 3, H, W]`` input, one inference
    on ``image`` (uint8 (h, w, 3); default :func:`smoke_rgb` of ``seed``) prepared to
    ``[1, 3, H, W]`` returns a finite ``[1, 1, H, W]`` depth map and, with
    ``onnx_path``, that map is within ``atol`` metres of ONNX Runtime's. An image endpoint (the
    transformer) gets :func:`smoke_test_image`; ``transformer_url`` runs it after the tensor
    test. ``model_version`` ("" = the one served) picks one version of a model served in
    several (the local canary). Never raises for a bad endpoint: the reason is in the result (a
    deploy rolls back).
    """

    kwargs = {"onnx_path": onnx_path, "atol": atol, "ready_timeout_s": ready_timeout_s,
              "request_timeout_s": request_timeout_s, "seed": seed}  # fmt: skip
    try:
        with DepthClient(
            url, "http", model_name, model_version, timeout_s=request_timeout_s
        ) as client:
            not_ready = _wait_ready(client, url, model_name, ready_timeout_s)
            if not_ready:
                return SmokeResult(False, not_ready)
            if _is_image_endpoint(client.metadata()):
                return smoke_test_image(url, model_name, **kwargs)
            rgb = image if image is not None else smoke_rgb(seed=seed)
            tensor = _tensor_smoke(client, url, onnx_path, atol, rgb)
    # Any failure here is a failed smoke test, not a crash: tritonclient raises plain
    # exceptions for transport errors (refused, reset, timeouts) besides DepthServingError.
    except Exception as exc:
        return SmokeResult(False, f"{url}: {type(exc).__name__}: {exc}")
    if not tensor.ok or transformer_url is None:
        return tensor
    image = smoke_test_image(transformer_url, model_name, **kwargs)
    detail = f"{tensor.detail}; {image.detail}"
    return replace(tensor, ok=image.ok, detail=detail, image_latency_ms=image.image_latency_ms)
