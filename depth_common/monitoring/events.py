"""KServe payload-logger CloudEvents (binary mode) → the images a request carried, or the
statistics of a response.

The logger sends each request and each response of an InferenceService as an HTTP POST whose
body is the payload as the model received or returned it, with the CloudEvent attributes as
``ce-*`` headers (``ce-type: org.kubeflow.serving.inference.request`` / ``…response``). The
bodies this parses are the transformer's protocols (:mod:`depth_common.serving.requests`):
v1 JSON (``instances[].image_bytes.b64``), v2 JSON (BYTES input ``image_bytes``, base64), v2 with the
binary tensor extension (the ``Inference-Header-Content-Length`` header passed on) and a raw
image body (``Content-Type: image/*``). Every refusal is an :class:`EventError` naming the
header or the JSON path at fault; nothing here decodes pixels (the service does, with limits).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from depth_common.errors import EventError
from depth_common.serving.payload_logger import REQUEST, RESPONSE

REQUIRED = ("ce-specversion", "ce-id", "ce-source", "ce-type")
INPUT = "image_bytes"
HEADER_LENGTH = "inference-header-content-length"  # v2's binary tensor extension


@dataclass(frozen=True)
class Event:
    """One payload-logger event: the request's encoded images, or a response's depth medians."""

    type: str
    id: str
    service: str  # ce-inferenceservicename, "" when absent
    images: list[bytes] = field(default_factory=list)
    median_depths_m: list[float] = field(default_factory=list)
    outputs: int = 0  # predictions (v1) or output tensors (v2) of a response


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{where}: not valid base64 ({len(value)} characters)") from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EventError(f"body: not JSON ({exc})") from None


def v1_images(doc: dict[str, Any]) -> list[bytes]:
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise EventError("instances: expected a non-empty list")
    images = []
    for i, inst in enumerate(instances):
        value = inst.get(INPUT) if isinstance(inst, dict) else None
        if not isinstance(value, dict) or "b64" not in value:
            raise EventError(f'instances[{i}]: expected {{"{INPUT}": {{"b64": "<base64 image>"}}}}')
        images.append(_b64(value["b64"], f"instances[{i}].{INPUT}.b64"))
    return images


def v2_images(doc: dict[str, Any]) -> list[bytes]:
    inputs = doc["inputs"]
    if not isinstance(inputs, list):
        raise EventError("inputs: expected a list")
    found = [i for i in inputs if isinstance(i, dict) and i.get("name") == INPUT]
    if len(found) != 1:
        raise EventError(f"inputs: expected one input named {INPUT!r}")
    spec = found[0]
    if spec.get("datatype") != "BYTES":
        raise EventError(f"inputs[{INPUT!r}].datatype: {spec.get('datatype')!r}, expected BYTES")
    data = spec.get("data")
    if not isinstance(data, list) or not data:
        raise EventError(f"inputs[{INPUT!r}].data: expected a non-empty list of base64 strings")
    flat = [x for row in data for x in (row if isinstance(row, list) else [row])]
    return [_b64(x, f"inputs[{INPUT!r}].data[{k}]") for k, x in enumerate(flat)]


def split_binary(body: bytes, header_length: str) -> tuple[dict[str, Any], bytes]:
    """(the JSON header, the binary data after it) of a v2 binary-extension body."""
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise EventError(f"{HEADER_LENGTH}: {header_length!r} is not a length inside the body")
    n = int(header_length)
    doc = _json(body[:n])
    if not isinstance(doc, dict):
        raise EventError(f"the first {n} bytes: expected a JSON object (the v2 header)")
    return doc, body[n:]


def bytes_elements(raw: bytes, where: str) -> list[bytes]:
    """The elements of a binary BYTES tensor (each a 4-byte little-endian length + bytes)."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise EventError(f"{where}: {len(raw) - offset} stray bytes after element {len(items)}")
        n = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + n > len(raw):
            raise EventError(
                f"{where}[{len(items)}]: {n} bytes announced, {len(raw) - offset} left"
            )
        items.append(raw[offset : offset + n])
        offset += n
    return items


def v2_binary_images(body: bytes, header_length: str) -> list[bytes]:
    doc, data = split_binary(body, header_length)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise EventError('v2 header: expected {"inputs": [...]}')
    offset = 0
    for spec in inputs:
        if not isinstance(spec, dict):
            raise EventError("v2 header: every input must be an object")
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is None:
            if spec.get("name") == INPUT:
                return v2_images({"inputs": [spec]})
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(data):
            raise EventError(
                f"input {spec.get('name')!r}: binary_data_size {size!r} runs past the body"
            )
        if spec.get("name") == INPUT:
            return bytes_elements(data[offset : offset + size], f"input {INPUT!r}")
        offset += size
    raise EventError(f"inputs: expected one input named {INPUT!r}")


def request_images(body: bytes, content_type: str, header_length: str = "") -> list[bytes]:
    """The encoded images of a request body (raw image, v1 JSON, v2 JSON or binary v2)."""
    if header_length:
        return v2_binary_images(body, header_length)
    if content_type.split(";")[0].strip().lower().startswith("image/"):
        if not body:
            raise EventError("body: empty image")
        return [body]
    doc = _json(body)
    if isinstance(doc, dict) and "instances" in doc:
        return v1_images(doc)
    if isinstance(doc, dict) and "inputs" in doc:
        return v2_images(doc)
    raise EventError('body: expected a v1 {"instances": [...]} or v2 {"inputs": [...]} request')


def response_stats(body: bytes, header_length: str = "") -> tuple[int, list[float]]:
    """(outputs, the median depths in metres) of a v1 or v2 (JSON or binary) response body."""
    doc = split_binary(body, header_length)[0] if header_length else _json(body)
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list):
        medians = [
            float(p["median_m"])
            for p in doc["predictions"]
            if isinstance(p, dict)
            and isinstance(p.get("median_m"), int | float)
            and math.isfinite(p["median_m"])
        ]
        return len(doc["predictions"]), medians
    if isinstance(doc, dict) and isinstance(doc.get("outputs"), list):
        return len(doc["outputs"]), []
    raise EventError('body: expected a v1 {"predictions": [...]} or v2 {"outputs": [...]} response')


def parse_event(headers: Mapping[str, str], body: bytes) -> Event:
    """A binary-mode CloudEvent from its HTTP headers (any case) and body."""
    h = {k.lower(): v for k, v in headers.items()}
    missing = [k for k in REQUIRED if not h.get(k)]
    if missing:
        raise EventError(f"missing CloudEvent header(s) {', '.join(missing)} (binary mode)")
    kind = h["ce-type"]
    common = {"type": kind, "id": h["ce-id"], "service": h.get("ce-inferenceservicename", "")}
    length = h.get(HEADER_LENGTH, "")
    if kind == REQUEST:
        return Event(**common, images=request_images(body, h.get("content-type", ""), length))
    if kind == RESPONSE:
        outputs, medians = response_stats(body, length)
        return Event(**common, median_depths_m=medians, outputs=outputs)
    raise EventError(f"ce-type {kind!r}: expected {REQUEST} or {RESPONSE}")
