"""Image in, depth out: a KServe transformer in front of the Triton predictor.

:class:`DepthTransformer` is a ``kserve.Model``; a request goes through three modules in turn:

1. :mod:`depth_common.serving.requests` reads what the client sent (v1 instances or a raw image
   body, v2 ``image_bytes``; focal, extras and requested outputs) and refuses a request over
   the limits from the images' headers, before any pixel is decoded.
2. Here, ``preprocess`` decodes each image with :func:`depth_common.serving.codec.load_rgb`
   (EXIF, 16-bit, float, alpha, palette, CMYK, grayscale; refuses bombs and images over the
   pixel limit) and makes the model input with :func:`depth_common.data.transforms.prepare_image`;
   ``predict`` sends one v2 gRPC request per image to Triton with kserve's own gRPC client
   (concurrently: Triton's dynamic batching groups them); ``postprocess`` resizes each depth map
   back to its image's size (bilinear) and scales it to metres.
3. :mod:`depth_common.serving.responses` shapes the v1 predictions or the v2 response. ``depth``
   needs the N images to share one size (else 400: ask for ``depth_png`` only, or send one image
   per request); ``depth_png`` holds each image at its own size.

**Camera** (:mod:`depth_common.serving.camera`). Each image's focal length comes from, in
order: the request (v1 instance key ``focal_px``; v2 optional input ``focal_px``, FP32 ``[N]``,
pixels of the upright image), EXIF ``FocalLengthIn35mmFilm``, or the model's canonical camera
field of view at the image's width (the Triton model config parameter ``canonical_focal_px``,
read with the predictor's geometry). Depth is the model's canonical depth times
``focal / default focal`` (exactly proportional to the focal; 1 at the default). Confidence
(:mod:`depth_common.serving.confidence`): an image that asks for it goes to Triton with its
mirror as one batch-2 request. A bad focal is a 400 naming ``focal_px``.

Every refusal is a :class:`kserve.errors.InvalidInput` (HTTP 400) naming the input and what was
expected — any exception while parsing the request or decoding an image is one; a request over
the limits is a :class:`RequestTooLarge` (HTTP 413); Triton unreachable or restarting is a 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from depth_common.data.transforms import prepare_image
from depth_common.errors import ImageDecodeError
from depth_common.serving.camera import (
    FOCAL_KEY,
    exif_focal_35mm,
    resolve_focal,
    scale_depth,
)
from depth_common.serving.codec import (
    DEFAULT_MAX_PIXELS,
    encode_depth_png,
    load_rgb,
    resize_depth_bilinear,
)
from depth_common.serving.confidence import confidence_from_mirror, mirror_input
from depth_common.serving.kserve_import import (
    GRPCInferenceServiceStub,
    InferenceError,
    InferInput,
    InferRequest,
    InferResponse,
    InvalidInput,
    RequestedOutput,
    ServerNotReady,
    kserve,
    pb,
)
from depth_common.serving.predictor import (
    ConfigResponse,
    PredictorGeometry,
    canonical_focal_from_config,
    geometry_from_metadata,
)
from depth_common.serving.requests import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_REQUEST_PIXELS,
    DEFAULT_MAX_RESPONSE_BYTES,
    INPUT,
    ImageBatch,
    check_limits,
    parse_request,
)
from depth_common.serving.responses import check_answer_size, v1_response, v2_response

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Triton's depth maps (model size) for a batch, on their way to postprocess."""

    batch: ImageBatch
    depths: list[np.ndarray]
    mirrored: list[np.ndarray | None] = field(default_factory=list)  # the mirror's, as predicted


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
            {"name": FOCAL_KEY, "datatype": "FP32", "shape": [-1]},
            {"name": "points", "datatype": "FP32", "shape": [-1, -1, -1, 3]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1, -1, -1]},
        ]

    # -- the predictor -----------------------------------------------------------------------
    async def _fetch_geometry(self, timeout_s: float = 2.0) -> PredictorGeometry:
        config = self.predictor_config
        if config is None or not config.predictor_host:
            raise ServerNotReady("no predictor host configured (--predictor_host)")
        async with grpc.aio.insecure_channel(config.predictor_host) as channel:
            stub = GRPCInferenceServiceStub(channel)
            request = pb.ModelMetadataRequest(name=self.predictor_model)
            meta = await stub.ModelMetadata(request, timeout=timeout_s)
            focal = await self._fetch_canonical_focal(channel, request, timeout_s)
        return dataclasses.replace(geometry_from_metadata(meta), canonical_focal_px=focal)

    async def _fetch_canonical_focal(
        self, channel: grpc.aio.Channel, request: pb.ModelMetadataRequest, timeout_s: float
    ) -> float | None:
        """The model's canonical focal from Triton's ModelConfig RPC; None where the predictor
        does not implement it (then the Cityscapes field of view applies)."""
        # ModelConfigRequest has ModelMetadataRequest's fields (name = 1, version = 2).
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelConfig",
            request_serializer=pb.ModelMetadataRequest.SerializeToString,
            response_deserializer=ConfigResponse.FromString,
        )
        try:
            response = await call(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            log.warning("predictor has no ModelConfig RPC: assuming the Cityscapes camera")
            return None
        return canonical_focal_from_config(response, self.predictor_model)

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
    def _prepare(
        self, data: bytes, where: str, size: tuple[int, int], focal: float | None
    ) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(upright RGB, model input, EXIF 35 mm focal: read only when the request has none)."""
        try:
            rgb = load_rgb(data, source=where, max_pixels=self.max_pixels)
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None
        f35 = exif_focal_35mm(data) if focal is None else None
        return rgb, prepare_image(rgb, size), f35

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ImageBatch:
        parsed = parse_request(payload)
        check_limits(parsed, self.max_images, self.max_request_pixels, self.max_response_bytes)
        protocol, images, outputs, label, focals, extras = parsed
        geometry = await self.predictor_geometry()
        loop = asyncio.get_running_loop()
        size = (geometry.height, geometry.width)
        prepared = await asyncio.gather(
            *(
                loop.run_in_executor(None, self._prepare, data, f"{label}[{k}]", size, f)
                for k, (data, f) in enumerate(zip(images, focals, strict=True))
            )
        )
        sizes = [rgb.shape[:2] for rgb, _, _ in prepared]
        stacked = [name for name in ("depth", "points", "confidence") if name in outputs]
        if stacked and len(set(sizes)) > 1:
            raise InvalidInput(
                f"output {stacked[0]!r} needs images of one size, got {sorted(set(sizes))} "
                "(H, W); request only the 'depth_png' output, or send one image per request"
            )
        request = payload if protocol == "v2" else None
        batch = ImageBatch(protocol, sizes, [t for _, t, _ in prepared], request, outputs)
        batch.extras = extras
        batch.mirror = ["confidence" in outputs or "confidence_png" in e for e in extras]
        if any(batch.mirror) and not geometry.batched:
            raise InvalidInput(
                "confidence needs the image and its mirror in one batch; the predictor model "
                f"{self.predictor_model!r} has no batch dimension"
            )
        if any("ply" in e for e in extras):
            batch.rgbs = [rgb for rgb, _, _ in prepared]
        camera = geometry.camera
        for (rgb, _, f35), f in zip(prepared, focals, strict=True):
            focal, source = resolve_focal(f, f35, rgb.shape[:2], camera)
            batch.focals.append(focal)
            batch.focal_sources.append(source)
            batch.scales.append(camera.depth_scale(focal, rgb.shape[1]))
        return batch

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
        out = await self._infer_raw(request, metadata)
        return out.reshape(out.shape[-2:])

    async def _infer_with_mirror(
        self, tensor: np.ndarray, geometry: PredictorGeometry, metadata: tuple
    ) -> tuple[np.ndarray, np.ndarray]:
        """(depth, depth of the mirror as predicted): one request of batch 2 (Triton runs both
        in one model call)."""
        x = np.stack([tensor, mirror_input(tensor)])
        request = InferRequest(
            model_name=self.predictor_model,
            infer_inputs=[InferInput(geometry.input_name, list(x.shape), "FP32", data=x)],
            request_id=str(uuid.uuid4()),
            request_outputs=[RequestedOutput(geometry.output_name)],
        )
        out = await self._infer_raw(request, metadata)
        pair = out.reshape(2, *out.shape[-2:])
        return pair[0], pair[1]

    async def _infer_raw(self, request: InferRequest, metadata: tuple) -> np.ndarray:
        try:
            response = await self._grpc_client.infer(infer_request=request, headers=metadata)
        except grpc.RpcError as exc:
            where = f"predictor {self.predictor_config.predictor_host}"
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerNotReady(f"{where}: {exc.code().name}: {exc.details()}") from None
            raise InferenceError(f"{where}: {exc.code().name}: {exc.details()}") from None
        return np.asarray(response.outputs[0].as_numpy(), dtype=np.float32)

    async def predict(
        self,
        payload: ImageBatch,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Prediction:
        geometry = await self.predictor_geometry()
        forward = tuple((k, v) for k, v in (headers or {}).items() if k == "x-request-id")
        if any(payload.mirror):
            return await self._predict_with_mirror(payload, geometry, forward)
        requests = [self._infer_request(t, geometry) for t in payload.tensors]
        depths = await asyncio.gather(*(self._infer_one(r, forward) for r in requests))
        return Prediction(payload, list(depths))

    async def _predict_with_mirror(
        self, payload: ImageBatch, geometry: PredictorGeometry, forward: tuple
    ) -> Prediction:
        """Each image that asks for confidence goes with its mirror; the others alone."""

        async def one(tensor: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray | None]:
            if mirror:
                return await self._infer_with_mirror(tensor, geometry, forward)
            return await self._infer_one(self._infer_request(tensor, geometry), forward), None

        pairs = await asyncio.gather(
            *(one(t, m) for t, m in zip(payload.tensors, payload.mirror, strict=True))
        )
        return Prediction(payload, [d for d, _ in pairs], [m for _, m in pairs])

    async def postprocess(
        self,
        result: Prediction,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        batch, loop = result.batch, asyncio.get_running_loop()
        depths = await asyncio.gather(
            *(
                loop.run_in_executor(None, _metric_depth, d, s, k)
                for d, s, k in zip(result.depths, batch.sizes, batch.scales, strict=True)
            )
        )
        batch.confidences = await asyncio.gather(
            *(
                loop.run_in_executor(None, _confidence, d, m, s)
                for d, m, s in zip(
                    result.depths, result.mirrored or [None] * len(result.depths), batch.sizes,
                    strict=True,
                )
            )
        )  # fmt: skip
        want_png = batch.protocol == "v1" or "depth_png" in batch.outputs
        pngs = (
            await asyncio.gather(*(loop.run_in_executor(None, encode_depth_png, d) for d in depths))
            if want_png
            else []
        )
        check_answer_size(batch, depths, pngs, self.max_response_bytes)
        if batch.protocol == "v1":
            return await v1_response(batch, depths, pngs)
        return v2_response(batch, depths, pngs, self.name)


def _metric_depth(depth: np.ndarray, size: tuple[int, int], scale: float) -> np.ndarray:
    """The model's canonical depth at its input size → metres at the image's size (H, W);
    scaled after the resize, so depth is exactly proportional to the focal."""
    return scale_depth(resize_depth_bilinear(depth, size), scale)


def _confidence(
    depth: np.ndarray, mirrored: np.ndarray | None, size: tuple[int, int]
) -> np.ndarray | None:
    """Confidence at the image's size (bilinear, like depth), or None without a mirror."""
    if mirrored is None:
        return None
    return resize_depth_bilinear(confidence_from_mirror(depth, mirrored), size)
