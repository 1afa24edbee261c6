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

**Camera** (:mod:`depth_common.serving.camera`). Each image's focal length comes from, in
order: the request (v1 instance key ``focal_px``; v2 optional input ``focal_px``, FP32 ``[N]``,
pixels of the upright image), EXIF ``FocalLengthIn35mmFilm``, or the model's canonical camera
field of view at the image's width. Depth is the model's canonical depth times
``focal / default focal`` (exactly proportional to the focal; 1 at the default). v1 predictions
also carry ``focal_px`` and ``focal_source`` (``request`` | ``exif`` | ``default``); a v1
instance may add ``"outputs": ["ply", "confidence_png"]`` for ``ply_b64`` (a binary PLY of the
coloured points) and ``confidence_png_b64`` (8-bit, confidence x 255). v2 outputs sent only
when requested: ``focal_px`` FP32 ``[N]``, ``points`` FP32 ``[N, H, W, 3]`` (metres, camera
frame X right, Y down, Z forward) and ``confidence`` FP32 ``[N, H, W]`` in [0, 1]
(:mod:`depth_common.serving.confidence`: an image that asks for it goes to Triton with its
mirror as one batch-2 request). A bad focal is a 400 naming ``focal_px``.

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
import dataclasses
import logging
import re
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from depth_common.data.transforms import prepare_image
from depth_common.errors import FocalError, ImageDecodeError, RequestTooLarge
from depth_common.serving.camera import (
    FOCAL_KEY,
    CanonicalCamera,
    back_project,
    check_focal,
    encode_ply,
    exif_focal_35mm,
    resolve_focal,
    scale_depth,
)
from depth_common.serving.codec import (
    DEFAULT_MAX_PIXELS,
    depth_summary,
    encode_depth_png,
    image_size,
    load_rgb,
    resize_depth_bilinear,
)
from depth_common.serving.confidence import (
    confidence_from_mirror,
    encode_confidence_png,
    mirror_input,
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
#: v2 outputs sent only when asked for (clients that name no output keep getting ``OUTPUTS``).
EXTRA_OUTPUTS = (FOCAL_KEY, "points", "confidence")
#: v1 instance key ``"outputs"``: extras a v1 client may ask for, each a prediction key.
V1_EXTRAS = {"ply": "ply_b64", "confidence_png": "confidence_png_b64"}
#: Triton model config parameter holding the canonical focal (pixels at the input width).
CANONICAL_FOCAL_PARAMETER = "canonical_focal_px"
DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_REQUEST_PIXELS = 32_000_000  # deploy.max_request_pixels
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # deploy.max_response_bytes
#: Bytes of one float in a JSON answer (``-12.345678901234567,``), an upper bound.
JSON_FLOAT_BYTES = 20
#: v2 outputs with floats for every pixel (how many), whose size the image sizes give.
PIXEL_OUTPUTS = {"depth": 1, "points": 3, "confidence": 1}
#: v1 extras, at most bytes a pixel as sent in base64: a PLY vertex is 3 float32 + 3 uint8
#: (15 bytes); an 8-bit confidence PNG holds at most ~1 byte a pixel.
V1_EXTRA_BYTES = {"ply": 20, "confidence_png": 2}
_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True)
class PredictorGeometry:
    """What the transformer needs to know about the Triton model (read from its metadata)."""

    input_name: str
    output_name: str
    height: int
    width: int
    batched: bool  # the input has a leading batch dimension
    # The camera the model's depth is for; None: the export does not say (Cityscapes rig).
    canonical_focal_px: float | None = None

    @property
    def camera(self) -> CanonicalCamera:
        if self.canonical_focal_px is None:
            return CanonicalCamera.cityscapes(self.width)
        return CanonicalCamera(self.canonical_focal_px, self.width)


@dataclass
class ImageBatch:
    """Decoded images of one request, and how to answer it."""

    protocol: str  # "v1" or "v2"
    sizes: list[tuple[int, int]]
    tensors: list[np.ndarray]
    request: Any = None  # the v2 InferRequest
    outputs: dict[str, bool] = field(default_factory=dict)  # v2 output name → binary?
    focals: list[float] = field(default_factory=list)  # pixels of each upright image
    focal_sources: list[str] = field(default_factory=list)  # request | exif | default
    scales: list[float] = field(default_factory=list)  # canonical depth → metres
    extras: list[list[str]] = field(default_factory=list)  # v1: each instance's "outputs"
    rgbs: list[np.ndarray] = field(default_factory=list)  # kept only when colours are needed
    mirror: list[bool] = field(default_factory=list)  # also predict the mirror (confidence)
    confidences: list[np.ndarray | None] = field(default_factory=list)  # at the image's size


@dataclass(frozen=True)
class Prediction:
    """Triton's depth maps (model size) for a batch, on their way to postprocess."""

    batch: ImageBatch
    depths: list[np.ndarray]
    mirrored: list[np.ndarray | None] = field(default_factory=list)  # the mirror's, as predicted


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


def _config_response_type() -> type:
    """A message type reading only ``config.parameters`` of Triton's ``ModelConfigResponse``.

    kserve's v2 protocol has no ModelConfig RPC and ``tritonclient.grpc`` cannot be imported
    beside kserve (module docstring of kserve_import), so the few fields needed are declared
    here with Triton's field numbers (response.config = 1, ModelConfig.parameters = 14,
    ModelParameter.string_value = 1) in a private pool; every other field is skipped.
    """
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="depth_config_subset.proto", package="subset")
    param = proto.message_type.add(name="ModelParameter")
    param.field.add(name="string_value", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    config = proto.message_type.add(name="ModelConfig")
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".subset.ModelParameter")  # fmt: skip
    config.field.add(name="parameters", number=14, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".subset.ModelConfig.ParametersEntry")  # fmt: skip
    response = proto.message_type.add(name="ModelConfigResponse")
    response.field.add(name="config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                       type_name=".subset.ModelConfig")  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("subset.ModelConfigResponse"))


ConfigResponse = _config_response_type()


def canonical_focal_from_config(response: Any, model: str) -> float | None:
    """The ``canonical_focal_px`` config parameter (pixels at the input width), None if unset."""
    param = response.config.parameters.get(CANONICAL_FOCAL_PARAMETER)
    if param is None or not param.string_value:
        return None
    try:
        return check_focal(float(param.string_value), CANONICAL_FOCAL_PARAMETER)
    except (ValueError, FocalError):
        raise ValueError(
            f"model {model!r}: config parameter {CANONICAL_FOCAL_PARAMETER} is "
            f"{param.string_value!r}, expected a number of pixels in (1, 100000]"
        ) from None


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
    if INPUT not in names or set(names) - {INPUT, FOCAL_KEY} or len(set(names)) != len(names):
        raise InvalidInput(
            f"expected one input {INPUT!r} (BYTES, shape [N]) and optionally {FOCAL_KEY!r} "
            f"(FP32, shape [N]), got inputs {names}"
        )
    inp = request.inputs[names.index(INPUT)]
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


class ParsedRequest(NamedTuple):
    """What a v1 or v2 request asks for, read before any image is decoded."""

    protocol: str  # "v1" or "v2"
    images: list[bytes]  # encoded
    outputs: dict[str, bool]  # v2 output name → binary?
    label: str  # names the images in messages
    focals: list[float | None]  # from the request, pixels
    extras: list[list[str]]  # v1: each instance's "outputs"


def parse_request(payload: Any) -> ParsedRequest:
    """A v1 or v2 request read (:class:`ParsedRequest`).

    Any failure reading the client's request is an :class:`InvalidInput` (400) naming it: the
    request is the client's, so nothing in it may end in a 500.
    """
    try:
        if isinstance(payload, InferRequest):
            images = v2_images(payload)
            return ParsedRequest(
                "v2", images, v2_outputs(payload), f"input {INPUT!r}",
                v2_focals(payload, len(images)), [[] for _ in images],
            )  # fmt: skip
        images = v1_images(payload)
        return ParsedRequest(
            "v1", images, {}, "instances",
            v1_focals(payload, len(images)), v1_extras(payload, len(images)),
        )  # fmt: skip
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the client sent: a 400, not a 500
        raise InvalidInput(f"malformed request ({type(exc).__name__}: {exc})") from None


def response_bytes(pixels: int, outputs: dict[str, bool]) -> int:
    """What the per-pixel FP32 outputs (``depth``, ``points``, ``confidence``) of ``pixels``
    pixels take in an answer: 4 bytes a float in binary, ~20 in JSON."""
    return sum(
        pixels * floats * (4 if outputs[name] else JSON_FLOAT_BYTES)
        for name, floats in PIXEL_OUTPUTS.items()
        if name in outputs
    )


def v2_outputs(request: InferRequest) -> dict[str, bool]:
    """Requested outputs (default both) → whether each goes binary."""
    default_binary = bool(request.use_binary_outputs)
    if not request.request_outputs:
        return dict.fromkeys(OUTPUTS, default_binary)
    chosen = {}
    for out in request.request_outputs:
        if out.name not in OUTPUTS + EXTRA_OUTPUTS:
            raise InvalidInput(
                f"unknown output {out.name!r}; this model has {list(OUTPUTS + EXTRA_OUTPUTS)}"
            )
        flag = out.binary_data
        chosen[out.name] = default_binary if flag is None else bool(flag)
    return chosen


def v2_focals(request: InferRequest, n: int) -> list[float | None]:
    """The optional v2 input ``focal_px`` (FP32 [N], pixels), one per image; Nones without it."""
    inp = next((i for i in request.inputs if i.name == FOCAL_KEY), None)
    if inp is None:
        return [None] * n
    if inp.datatype not in ("FP32", "FP64"):
        raise InvalidInput(f"input {FOCAL_KEY!r}: datatype {inp.datatype}, expected FP32")
    shape = [int(d) for d in inp.shape]
    if shape not in ([n], [n, 1]):
        raise InvalidInput(f"input {FOCAL_KEY!r}: shape {shape}, expected [{n}] (one per image)")
    try:
        values = np.asarray(inp.as_numpy(), dtype=np.float64).reshape(n)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"input {FOCAL_KEY!r}: cannot read {n} numbers ({exc})") from None
    try:
        return [check_focal(float(v), f"input {FOCAL_KEY!r}[{k}]") for k, v in enumerate(values)]
    except FocalError as exc:
        raise InvalidInput(str(exc)) from None


def v1_focals(payload: dict[str, Any] | bytes, n: int) -> list[float | None]:
    """Each v1 instance's optional ``focal_px`` (pixels); Nones for a raw image body."""
    if not isinstance(payload, dict):
        return [None] * n
    focals: list[float | None] = []
    for i, inst in enumerate(payload["instances"]):
        value = inst.get(FOCAL_KEY)
        try:
            focals.append(
                None if value is None else check_focal(value, f"instances[{i}].{FOCAL_KEY}")
            )
        except FocalError as exc:
            raise InvalidInput(str(exc)) from None
    return focals


def v1_extras(payload: dict[str, Any] | bytes, n: int) -> list[list[str]]:
    """Each v1 instance's optional ``"outputs"``: a list of names from :data:`V1_EXTRAS`."""
    if not isinstance(payload, dict):
        return [[] for _ in range(n)]
    extras = []
    for i, inst in enumerate(payload["instances"]):
        names = inst.get("outputs", [])
        if not isinstance(names, list) or any(x not in V1_EXTRAS for x in names):
            raise InvalidInput(
                f"instances[{i}].outputs: expected a list of {sorted(V1_EXTRAS)}, got {names!r}"
            )
        extras.append(list(names))
    return extras


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

    def check_limits(self, request: ParsedRequest) -> None:
        """Refuse a request over the image count (400), the decoded pixels or the answer's size
        (413), from the images' headers alone: nothing is decoded yet."""
        images, outputs, label = request.images, request.outputs, request.label
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
        answer = response_bytes(pixels, outputs) + sum(
            w * h * V1_EXTRA_BYTES[name]
            for (w, h), names in zip(sizes, request.extras, strict=True)
            for name in names
        )
        if answer > self.max_response_bytes:
            named = [o for o in PIXEL_OUTPUTS if o in outputs] + sorted(
                {n for names in request.extras for n in names}
            )
            raise RequestTooLarge(
                f"output(s) {named} of {pixels:,} pixels would be {answer:,} bytes: over "
                f"the limit of {self.max_response_bytes:,} bytes per answer "
                "(deploy.max_response_bytes); ask for 'depth_png', binary outputs or fewer pixels"
            )

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> ImageBatch:
        parsed = parse_request(payload)
        self.check_limits(parsed)
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
        self._check_answer(batch, depths, pngs)
        if batch.protocol == "v1":
            predictions = [_v1_prediction(d, p) for d, p in zip(depths, pngs, strict=True)]
            for k, pred in enumerate(predictions):
                pred.update(await _v1_camera_keys(batch, depths, k))
            return {"predictions": predictions}
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
            elif name in EXTRA_OUTPUTS:
                data = _camera_output(name, batch, depths)
                outputs.append(InferOutput(name, list(data.shape), "FP32", data=data))
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


def _camera_output(name: str, batch: ImageBatch, depths: list[np.ndarray]) -> np.ndarray:
    """v2 ``focal_px`` [N], ``points`` [N, H, W, 3] or ``confidence`` [N, H, W] (FP32)."""
    if name == FOCAL_KEY:
        return np.asarray(batch.focals, dtype=np.float32)
    if name == "confidence":
        return np.stack(batch.confidences).astype(np.float32)
    return np.stack([back_project(d, f) for d, f in zip(depths, batch.focals, strict=True)])


async def _v1_camera_keys(batch: ImageBatch, depths: list[np.ndarray], k: int) -> dict[str, Any]:
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


def _v1_prediction(depth: np.ndarray, png: bytes) -> dict[str, Any]:
    return {
        "depth_png_b64": base64.b64encode(png).decode("ascii"),
        "height": int(depth.shape[0]),
        "width": int(depth.shape[1]),
        **depth_summary(depth),
    }
