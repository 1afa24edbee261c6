"""What a client sent the transformer: v1 and v2 requests read, and refused, before any pixel is
decoded (:mod:`depth_common.serving.transformer` runs the request through Triton).

- **KServe v1** ``POST /v1/models/<name>:predict``: ``{"instances": [{"image_bytes": {"b64":
  "<PNG/JPEG>"}}, ...]}``; a raw image body (``Content-Type: image/jpeg``) is one instance. An
  instance may add ``"focal_px"`` (pixels of the upright image) and ``"outputs": ["ply",
  "confidence_png"]`` (:data:`V1_EXTRAS`).
- **KServe v2** ``POST /v2/models/<name>/infer``: BYTES input ``image_bytes`` of shape ``[N]``
  (JSON: base64 strings; or raw bytes with the binary tensor extension), optional input
  ``focal_px`` FP32 ``[N]``; the requested outputs among :data:`OUTPUTS` (the default) and
  :data:`EXTRA_OUTPUTS`, each binary or not.

Base64 is RFC 2045 (line breaks allowed, any other stray character refused). Every refusal is
a :class:`kserve.errors.InvalidInput` (HTTP 400) naming the input and what was expected — any
exception while reading the request is one. Work per request is bounded before it is done: the
images' headers give their sizes, and a request over ``deploy.max_request_pixels`` decoded
pixels (all images together) or whose answer would be over ``deploy.max_response_bytes`` is a
:class:`RequestTooLarge` (HTTP 413) naming the limit. The per-pixel FP32 outputs' size is known
from the sizes (4 bytes a float in binary, ~20 in JSON); the PNGs' size is checked once encoded
(:func:`depth_common.serving.responses.check_answer_size`).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from depth_common.errors import FocalError, ImageDecodeError, RequestTooLarge
from depth_common.serving.camera import FOCAL_KEY, check_focal
from depth_common.serving.codec import image_size
from depth_common.serving.kserve_import import InferRequest, InvalidInput

INPUT = "image_bytes"
OUTPUTS = ("depth", "depth_png")
#: v2 outputs sent only when asked for (clients that name no output keep getting ``OUTPUTS``).
EXTRA_OUTPUTS = (FOCAL_KEY, "points", "confidence")
#: v1 instance key ``"outputs"``: extras a v1 client may ask for, each a prediction key.
V1_EXTRAS = {"ply": "ply_b64", "confidence_png": "confidence_png_b64"}
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


def check_limits(
    request: ParsedRequest, max_images: int, max_request_pixels: int, max_response_bytes: int
) -> None:
    """Refuse a request over the image count (400), the decoded pixels or the answer's size
    (413), from the images' headers alone: nothing is decoded yet."""
    images, outputs, label = request.images, request.outputs, request.label
    if len(images) > max_images:
        raise InvalidInput(f"{len(images)} images in one request, over the limit of {max_images}")
    sizes = []
    for k, data in enumerate(images):
        try:
            sizes.append(image_size(data, source=f"{label}[{k}]"))
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None
    pixels = sum(w * h for w, h in sizes)
    if pixels > max_request_pixels:
        raise RequestTooLarge(
            f"{len(sizes)} image(s) of {pixels:,} pixels in all: over the limit of "
            f"{max_request_pixels:,} decoded pixels per request (deploy.max_request_pixels)"
        )
    answer = response_bytes(pixels, outputs) + sum(
        w * h * V1_EXTRA_BYTES[name]
        for (w, h), names in zip(sizes, request.extras, strict=True)
        for name in names
    )
    if answer > max_response_bytes:
        named = [o for o in PIXEL_OUTPUTS if o in outputs] + sorted(
            {n for names in request.extras for n in names}
        )
        raise RequestTooLarge(
            f"output(s) {named} of {pixels:,} pixels would be {answer:,} bytes: over "
            f"the limit of {max_response_bytes:,} bytes per answer "
            "(deploy.max_response_bytes); ask for 'depth_png', binary outputs or fewer pixels"
        )


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
