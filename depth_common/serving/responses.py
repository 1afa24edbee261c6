"""What the transformer answers: v1 predictions and v2 responses shaped from the depth maps
in metres (:mod:`depth_common.serving.transformer` makes them), with the camera outputs.

- **KServe v1**: ``{"predictions": [{"depth_png_b64", "height", "width", "min_m", "median_m",
  "max_m", "focal_px", "focal_source"}, ...]}``, plus ``ply_b64`` (a binary PLY of the coloured
  points) and ``confidence_png_b64`` (8-bit, confidence x 255) for an instance that asked.
- **KServe v2**: FP32 ``depth`` ``[N, H, W]`` in metres and BYTES ``depth_png`` ``[N]`` (JSON:
  base64 strings); when requested, ``focal_px`` FP32 ``[N]``, ``points`` FP32 ``[N, H, W, 3]``
  (metres, camera frame X right, Y down, Z forward) and ``confidence`` FP32 ``[N, H, W]`` in
  [0, 1].

The depth PNG is 16-bit, metres x 256, 0 = invalid (:mod:`depth_common.serving.codec`). The
answer as sent is checked against ``deploy.max_response_bytes`` once the PNGs are encoded.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import numpy as np

from depth_common.errors import RequestTooLarge
from depth_common.serving.camera import FOCAL_KEY, back_project, encode_ply
from depth_common.serving.codec import depth_summary
from depth_common.serving.confidence import encode_confidence_png
from depth_common.serving.kserve_import import InferOutput, InferResponse, RequestedOutput
from depth_common.serving.requests import EXTRA_OUTPUTS, V1_EXTRAS, ImageBatch, response_bytes


def check_answer_size(
    batch: ImageBatch, depths: list[np.ndarray], pngs: list[bytes], max_response_bytes: int
) -> None:
    """The answer as sent (PNGs in base64 unless binary) within ``max_response_bytes``."""
    in_base64 = batch.protocol == "v1" or not batch.outputs.get("depth_png", False)
    png_bytes = sum(len(p) for p in pngs) * (4 if in_base64 else 3) // 3
    total = png_bytes + response_bytes(sum(d.size for d in depths), batch.outputs)
    if total > max_response_bytes:
        raise RequestTooLarge(
            f"the answer would be {total:,} bytes: over the limit of "
            f"{max_response_bytes:,} bytes per answer (deploy.max_response_bytes); "
            "send fewer or smaller images"
        )


async def v1_response(
    batch: ImageBatch, depths: list[np.ndarray], pngs: list[bytes]
) -> dict[str, Any]:
    """``{"predictions": [...]}``: one per image, with its camera keys and extras."""
    predictions = [v1_prediction(d, p) for d, p in zip(depths, pngs, strict=True)]
    for k, pred in enumerate(predictions):
        pred.update(await v1_camera_keys(batch, depths, k))
    return {"predictions": predictions}


def v1_prediction(depth: np.ndarray, png: bytes) -> dict[str, Any]:
    return {
        "depth_png_b64": base64.b64encode(png).decode("ascii"),
        "height": int(depth.shape[0]),
        "width": int(depth.shape[1]),
        **depth_summary(depth),
    }


async def v1_camera_keys(batch: ImageBatch, depths: list[np.ndarray], k: int) -> dict[str, Any]:
    """v1 ``focal_px``, ``focal_source`` and the extras instance ``k`` asked for."""
    keys: dict[str, Any] = {FOCAL_KEY: batch.focals[k], "focal_source": batch.focal_sources[k]}
    if "ply" in batch.extras[k]:
        loop = asyncio.get_running_loop()
        points = back_project(depths[k], batch.focals[k])
        ply = await loop.run_in_executor(None, encode_ply, points, batch.rgbs[k])
        keys[V1_EXTRAS["ply"]] = base64.b64encode(ply).decode("ascii")
    if "confidence_png" in batch.extras[k]:
        png = encode_confidence_png(batch.confidences[k])
        keys[V1_EXTRAS["confidence_png"]] = base64.b64encode(png).decode("ascii")
    return keys


def v2_response(
    batch: ImageBatch, depths: list[np.ndarray], pngs: list[bytes], model_name: str
) -> InferResponse:
    """The requested v2 outputs, each binary or not as asked, in the order asked."""
    outputs, requested = [], []
    for name, binary in batch.outputs.items():
        if name == "depth":
            data = np.stack(depths).astype(np.float32, copy=False)
            outputs.append(InferOutput("depth", list(data.shape), "FP32", data=data))
        elif name in EXTRA_OUTPUTS:
            data = camera_output(name, batch, depths)
            outputs.append(InferOutput(name, list(data.shape), "FP32", data=data))
        else:
            items = pngs if binary else [base64.b64encode(p).decode("ascii") for p in pngs]
            data = np.array(items + [None], dtype=object)[:-1]  # 1-D even for equal items
            outputs.append(InferOutput("depth_png", [len(items)], "BYTES", data=data))
        requested.append(RequestedOutput(name, {"binary_data": binary}))
    request = batch.request
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=outputs,
        requested_outputs=requested,
    )


def camera_output(name: str, batch: ImageBatch, depths: list[np.ndarray]) -> np.ndarray:
    """v2 ``focal_px`` [N], ``points`` [N, H, W, 3] or ``confidence`` [N, H, W] (FP32)."""
    if name == FOCAL_KEY:
        return np.asarray(batch.focals, dtype=np.float32)
    if name == "confidence":
        return np.stack(batch.confidences).astype(np.float32)
    # Written in place into the batch: the answer's largest array is not copied once more.
    points = np.empty((len(depths), *depths[0].shape, 3), dtype=np.float32)
    for k, (depth, focal) in enumerate(zip(depths, batch.focals, strict=True)):
        back_project(depth, focal, out=points[k])
    return points
