"""Image in, depth out: a KServe transformer in front of the Triton predictor.

:class:`DepthTransformer` is a ``kserve.Model``. Its ``preprocess`` decodes each image with
:func:`depth_common.serving.codec.load_rgb` (EXIF, 16-bit, float, alpha, palette, CMYK,
grayscale; refuses bombs and images over the pixel limit) and makes the model input with
:func:`depth_common.data.transforms.prepare_image`; ``predict`` sends one v2 gRPC request per
image to Triton with kserve's own gRPC client (concurrently: Triton's dynamic batching groups
them); ``postprocess`` resizes each depth map back to its image's size (bilinear).

- **KServe v1** ``POST /v1/models/<name>:predict``: ``{"instances": [{"image_bytes": {"b64":
  "<PNG/JPEG>"}}, ...]}`` → ``{"predictions": [{"depth_png_b64", "height", "width", "min_m",
  "median_m", "max_m"}, ...]}``. A raw image body (``Content-Type: image/jpeg``) is one
  instance.
- **KServe v2** ``POST /v2/models/<name>/infer``: BYTES input ``image_bytes`` of shape ``[N]``
  (JSON: base64 strings; or raw bytes with the binary tensor extension) → FP32 ``depth``
  ``[N, H, W]`` in metres and BYTES ``depth_png`` ``[N]`` (JSON: base64 strings). ``depth``
  needs the N images to share one size (else 400: ask for ``depth_png`` only, or send one
  image per request); ``depth_png`` holds each image at its own size.

The depth PNG is 16-bit, metres x 256, 0 = invalid (:mod:`depth_common.serving.codec`). Every
refusal is a :class:`kserve.errors.InvalidInput` (HTTP 400) naming the input and what was
expected — any exception while parsing the request or decoding an image is one; Triton
unreachable or restarting is a 503.

Work per request is bounded before it is done: the images' headers give their sizes (no pixel
decoded), and a request over ``deploy.max_request_pixels`` decoded pixels (all images together)
or whose answer would be over ``deploy.max_response_bytes`` is a :class:`RequestTooLarge`
(HTTP 413) naming the limit. The FP32 ``depth`` output's size is known from the sizes
(4 bytes a pixel in binary, ~20 in JSON); the PNGs' size is checked once encoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from depth_common.data.transforms import prepare_image
from depth_common.errors import DepthError
from depth_common.serving.codec import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    depth_summary,
    encode_depth_png,
    image_size,
    load_rgb,
    resize_depth_bilinear,
)
from depth_common.serving.kserve_import import (
    GRPCInferenceServiceStub,
    InferenceError,
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    RequestedOutput,
    ServerNotReady,
    kserve,
    pb,
)

log = logging.getLogger(__name__)

INPUT = "image_bytes"
OUTPUTS = ("depth", "depth_png")
DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_REQUEST_PIXELS = 32_000_000  # deploy.max_request_pixels
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # deploy.max_response_bytes
#: Bytes of one float in a JSON answer (``-12.345678901234567,``), an upper bound.
JSON_FLOAT_BYTES = 20
_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]+")


class RequestTooLarge(DepthError):
    """The request would decode or answer more than a limit allows (HTTP 413, naming it)."""


@dataclass(frozen=True)
class PredictorGeometry:
    """What the transformer needs to know about the Triton model (read from its metadata)."""

    input_name: str
    output_name: str
    height: int
    width: int
    batched: bool  # the input has a leading batch dimension


@dataclass
class ImageBatch:
    """Decoded images of one request, and how to answer it."""

    protocol: str  # "v1" or "v2"
    sizes: list[tuple[int, int]]
    tensors: list[np.ndarray]
    request: Any = None  # the v2 InferRequest
    outputs: dict[str, bool] = field(default_factory=dict)  # v2 output name → binary?


@dataclass(frozen=True)
class Prediction:
    """Triton's depth maps (model size) for a batch, on their way to postprocess."""

    batch: ImageBatch
    depths: list[np.ndarray]


def geometry_from_metadata(meta: pb.ModelMetadataResponse) -> PredictorGeometry:
    """Input/output names and H x W from a v2 ``ModelMetadataResponse``."""
    if not meta.inputs or not meta.outputs:
        raise ValueError(f"model {meta.name!r}: metadata lists no inputs or outputs")
    inp, out = meta.inputs[0], meta.outputs[0]
    shape = [int(d) for d in inp.shape]
    if len(shape) not in (3, 4) or shape[-3] != 3 or min(shape[-2:]) <= 0:
        raise ValueError(
            f"model {meta.name!r}: input {inp.name!r} has shape {shape}, expected [batch, 3, H, W]"
        )
    if inp.datatype != "FP32":
        raise ValueError(f"model {meta.name!r}: input {inp.name!r} is {inp.datatype}, not FP32")
    return PredictorGeometry(inp.name, out.name, shape[-2], shape[-1], len(shape) == 4)


def _b64(text: Any, where: str) -> bytes:
    if isinstance(text, bytes | bytearray):
        return bytes(text)
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        # RFC 2045 (what `base64` writes without -w0) breaks lines every 76 characters: drop
        # whitespace, then decode strictly, so any other character is still refused.
        return base64.b64decode(_BASE64_WHITESPACE.sub(b"", text.encode("ascii")), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: not valid base64 ({len(text)} characters)") from None


def v1_images(payload: dict[str, Any] | bytes) -> list[bytes]:
    """The encoded images of a v1 request (or a raw image body)."""
    if isinstance(payload, bytes | bytearray):
        return [bytes(payload)]
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(
            'expected {"instances": [{"image_bytes": {"b64": "<base64 PNG/JPEG>"}}, ...]}'
        )
    images = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        value = inst.get(INPUT) if isinstance(inst, dict) else None
        if isinstance(value, dict) and "b64" in value:
            images.append(_b64(value["b64"], f"{where}.{INPUT}.b64"))
        else:
            raise InvalidInput(f'{where}: expected {{"{INPUT}": {{"b64": "<base64 image>"}}}}')
    return images


def v2_images(request: InferRequest) -> list[bytes]:
    """The encoded images of a v2 request: input ``image_bytes``, BYTES, shape [N]."""
    names = [i.name for i in request.inputs]
    if names != [INPUT]:
        raise InvalidInput(f"expected one input {INPUT!r} (BYTES, shape [N]), got inputs {names}")
    inp = request.inputs[0]
    if inp.datatype != "BYTES":
        raise InvalidInput(
            f"input {INPUT!r}: datatype {inp.datatype}, expected BYTES (encoded images)"
        )
    shape = [int(d) for d in inp.shape]
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"input {INPUT!r}: shape {shape}, expected [N] (one image each)")
    try:  # kserve splits a binary BYTES tensor (4-byte lengths) or takes the JSON data
        values = inp.as_numpy().reshape(-1)
    except (struct.error, ValueError, TypeError) as exc:
        raise InvalidInput(
            f"input {INPUT!r}: not a BYTES tensor of shape {shape} (one image each): {exc}"
        ) from None
    return [_b64(x, f"input {INPUT!r}[{k}]") for k, x in enumerate(values)]


def parse_request(payload: Any) -> tuple[str, list[bytes], dict[str, bool], str]:
    """(protocol, encoded images, requested outputs, label for messages) of a v1 or v2 request.

    Any failure reading the client's request is an :class:`InvalidInput` (400) naming it: the
    request is the client's, so nothing in it may end in a 500.
    """
    try:
        if isinstance(payload, InferRequest):
            return "v2", v2_images(payload), v2_outputs(payload), f"input {INPUT!r}"
        return "v1", v1_images(payload), {}, "instances"
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the client sent: a 400, not a 500
        raise InvalidInput(f"malformed request ({type(exc).__name__}: {exc})") from None


def response_bytes(pixels: int, outputs: dict[str, bool]) -> int:
    """What the FP32 ``depth`` output of ``pixels`` pixels takes in an answer (0 without it)."""
    if "depth" not in outputs:
        return 0
    return pixels * (4 if outputs["depth"] else JSON_FLOAT_BYTES)


def v2_outputs(request: InferRequest) -> dict[str, bool]:
    """Requested outputs (default both) → whether each goes binary."""
    default_binary = bool(request.use_binary_outputs)
    if not request.request_outputs:
        return dict.fromkeys(OUTPUTS, default_binary)
    chosen = {}
    for out in request.request_outputs:
        if out.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {out.name!r}; this model has {list(OUTPUTS)}")
        flag = out.binary_data
        chosen[out.name] = default_binary if flag is None else bool(flag)
    return chosen


class DepthTransformer(kserve.Model):
    """The transformer model (see the module docstring). ``predictor_model`` is the Triton
    model it calls; the predictor itself comes from the server's ``PredictorConfig``."""

    def __init__(
        self,
        name: str = "depth",
        predictor_model: str = "depth",
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__(name)
        self.predictor_model = predictor_model
        self.max_pixels = max_pixels
        self.max_images = max_images
        self.max_request_pixels = max_request_pixels
        self.max_response_bytes = max_response_bytes
        self.geometry: PredictorGeometry | None = None
        self._geometry_lock = asyncio.Lock()

    def load(self) -> bool:
        self.ready = True  # registered; healthy() reports ready once Triton answered
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": "depth", "datatype": "FP32", "shape": [-1, -1, -1]},
            {"name": "depth_png", "datatype": "BYTES", "shape": [-1]},
        ]

    # -- the predictor -----------------------------------------------------------------------
    async def _fetch_geometry(self, timeout_s: float = 2.0) -> PredictorGeometry:
        config = self.predictor_config
        if config is None or not config.predictor_host:
            raise ServerNotReady("no predictor host configured (--predictor_host)")
        async with grpc.aio.insecure_channel(config.predictor_host) as channel:
            stub = GRPCInferenceServiceStub(channel)
            meta = await stub.ModelMetadata(
                pb.ModelMetadataRequest(name=self.predictor_model), timeout=timeout_s
            )
        return geometry_from_metadata(meta)

    async def predictor_geometry(self) -> PredictorGeometry:
        """The Triton model's geometry, read once; 503 while the predictor does not answer."""
        if self.geometry is None:
            async with self._geometry_lock:
                if self.geometry is None:
                    try:
                        self.geometry = await self._fetch_geometry()
                    except grpc.RpcError as exc:
                        raise ServerNotReady(
                            f"predictor model {self.predictor_model!r} at "
                            f"{self.predictor_config.predictor_host}: {exc.code().name}: "
                            f"{exc.details()}"
                        ) from None
                    log.info("predictor model %r: %s", self.predictor_model, self.geometry)
        return self.geometry

    async def healthy(self) -> bool:
        try:
            await self.predictor_geometry()
        except (ServerNotReady, ValueError) as exc:
            log.info("not ready: %s", exc)
            return False
        return True

    # -- preprocess / predict / postprocess ---------------------------------------------------
    def _prepare(self, data: bytes, where: str, size: tuple[int, int]) -> tuple:
        try:
            rgb = load_rgb(data, source=where, max_pixels=self.max_pixels)
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None
        return rgb.shape[:2], prepare_image(rgb, size)

    def check_limits(self, images: list[bytes], outputs: dict[str, bool], label: str) -> None:
        """Refuse a request over the image count (400), the decoded pixels or the answer's size
        (413), from the images' headers alone: nothing is decoded yet."""
        if len(images) > self.max_images:
            raise InvalidInput(
                f"{len(images)} images in one request, over the limit of {self.max_images}"
            )
        sizes = []
        for k, data in enumerate(images):
            try:
                sizes.append(image_size(data, source=f"{label}[{k}]"))
            except ImageDecodeError as exc:
                raise InvalidInput(str(exc)) from None
        pixels = sum(w * h for w, h in sizes)
        if pixels > self.max_request_pixels:
            raise RequestTooLarge(
                f"{len(sizes)} image(s) of {pixels:,} pixels in all: over the limit of "
                f"{self.max_request_pixels:,} decoded pixels per request (deploy.max_request_pixels)"
            )
        answer = response_bytes(pixels, outputs)
        if answer > self.max_response_bytes:
            form = "binary" if outputs["depth"] else "JSON"
            raise RequestTooLarge(
                f"output 'depth' ({form} FP32) of {pixels:,} pixels would be {answer:,} bytes: over "
                f"the limit of {self.max_response_bytes:,} bytes per answer "
                "(deploy.max_response_bytes); ask for 'depth_png', binary outputs or fewer pixels"
            )

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ImageBatch:
        protocol, images, outputs, label = parse_request(payload)
        self.check_limits(images, outputs, label)
        geometry = await self.predictor_geometry()
        loop = asyncio.get_running_loop()
        size = (geometry.height, geometry.width)
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(None, self._prepare, data, f"{label}[{k}]", size)
                for k, data in enumerate(images)
            )
        )
        sizes = [s for s, _ in prepared]
        if "depth" in outputs and len(set(sizes)) > 1:
            raise InvalidInput(
                f"output 'depth' needs images of one size, got {sorted(set(sizes))} (H, W); "
                "request only the 'depth_png' output, or send one image per request"
            )
        request = payload if protocol == "v2" else None
        return ImageBatch(protocol, sizes, [t for _, t in prepared], request, outputs)

    def _infer_request(self, tensor: np.ndarray, geometry: PredictorGeometry) -> InferRequest:
        x = tensor[None] if geometry.batched else tensor
        inp = InferInput(geometry.input_name, list(x.shape), "FP32", data=x)
        return InferRequest(
            model_name=self.predictor_model,
            infer_inputs=[inp],
            request_id=str(uuid.uuid4()),
            request_outputs=[RequestedOutput(geometry.output_name)],
        )

    async def _infer_one(self, request: InferRequest, metadata: tuple) -> np.ndarray:
        try:
            response = await self._grpc_client.infer(infer_request=request, headers=metadata)
        except grpc.RpcError as exc:
            where = f"predictor {self.predictor_config.predictor_host}"
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerNotReady(f"{where}: {exc.code().name}: {exc.details()}") from None
            raise InferenceError(f"{where}: {exc.code().name}: {exc.details()}") from None
        out = response.outputs[0].as_numpy()
        return np.asarray(out, dtype=np.float32).reshape(out.shape[-2:])

    async def predict(
        self,
        payload: ImageBatch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Prediction:
        geometry = await self.predictor_geometry()
        forward = tuple((k, v) for k, v in (headers or {}).items() if k == "x-request-id")
        requests = [self._infer_request(t, geometry) for t in payload.tensors]
        depths = await asyncio.gather(*(self._infer_one(r, forward) for r in requests))
        return Prediction(payload, list(depths))

    async def postprocess(
        self,
        result: Prediction,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        batch, loop = result.batch, asyncio.get_running_loop()
        depths = await asyncio.gather(
            *(
                loop.run_in_executor(None, resize_depth_bilinear, d, s)
                for d, s in zip(result.depths, batch.sizes, strict=True)
            )
        )
        want_png = batch.protocol == "v1" or "depth_png" in batch.outputs
        pngs = (
            await asyncio.gather(*(loop.run_in_executor(None, encode_depth_png, d) for d in depths))
            if want_png
            else []
        )
        self._check_answer(batch, depths, pngs)
        if batch.protocol == "v1":
            return {
                "predictions": [_v1_prediction(d, p) for d, p in zip(depths, pngs, strict=True)]
            }
        return self._v2_response(batch, depths, pngs)

    def _check_answer(self, batch: ImageBatch, depths: list[np.ndarray], pngs: list[bytes]) -> None:
        """The answer as sent (PNGs in base64 unless binary) within ``max_response_bytes``."""
        in_base64 = batch.protocol == "v1" or not batch.outputs.get("depth_png", False)
        png_bytes = sum(len(p) for p in pngs) * (4 if in_base64 else 3) // 3
        total = png_bytes + response_bytes(sum(d.size for d in depths), batch.outputs)
        if total > self.max_response_bytes:
            raise RequestTooLarge(
                f"the answer would be {total:,} bytes: over the limit of "
                f"{self.max_response_bytes:,} bytes per answer (deploy.max_response_bytes); "
                "send fewer or smaller images"
            )

    def _v2_response(
        self, batch: ImageBatch, depths: list[np.ndarray], pngs: list[bytes]
    ) -> InferResponse:
        outputs, requested = [], []
        for name, binary in batch.outputs.items():
            if name == "depth":
                data = np.stack(depths).astype(np.float32)
                outputs.append(InferOutput("depth", list(data.shape), "FP32", data=data))
            else:
                items = pngs if binary else [base64.b64encode(p).decode("ascii") for p in pngs]
                data = np.array(items + [None], dtype=object)[:-1]  # 1-D even for equal items
                outputs.append(InferOutput("depth_png", [len(items)], "BYTES", data=data))
            requested.append(RequestedOutput(name, {"binary_data": binary}))
        request = batch.request
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            requested_outputs=requested,
        )


def _v1_prediction(depth: np.ndarray, png: bytes) -> dict[str, Any]:
    return {
        "depth_png_b64": base64.b64encode(png).decode("ascii"),
        "height": int(depth.shape[0]),
        "width": int(depth.shape[1]),
        **depth_summary(depth),
    }
