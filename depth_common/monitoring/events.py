"""KServe payload-logger CloudEvents (binary mode) → the images a request carried, or the
statistics of a response.

The logger sends each request and each response of an InferenceService as an HTTP POST whose
body is the payload as the model received or returned it, with the CloudEvent attributes as
``ce-*`` headers (``ce-type: org.kubeflow.serving.inference.request`` / ``…response``). The
bodies this parses are the transformer's protocols (:mod:`depth_common.serving.transformer`):
v1 JSON (``instances[].image_bytes.b64``), v2 JSON (BYTES input ``image_bytes``, base64) and a
raw image body (``Content-Type: image/*``). Every refusal is an :class:`EventError` naming the
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

from depth_common.errors import DataError
from depth_common.serving.payload_logger import REQUEST, RESPONSE

REQUIRED = ("ce-specversion", "ce-id", "ce-source", "ce-type")
INPUT = "image_bytes"


class EventError(DataError):
    """A CloudEvent the monitor refuses (HTTP 400); the message says what was wrong."""


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


def request_images(body: bytes, content_type: str) -> list[bytes]:
    """The encoded images of a request body (raw image, v1 JSON or v2 JSON)."""
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


def response_stats(body: bytes) -> tuple[int, list[float]]:
    """(outputs, the median depths in metres) of a v1 or v2 response body."""
    doc = _json(body)
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
    if kind == REQUEST:
        return Event(**common, images=request_images(body, h.get("content-type", "")))
    if kind == RESPONSE:
        outputs, medians = response_stats(body)
        return Event(**common, median_depths_m=medians, outputs=outputs)
    raise EventError(f"ce-type {kind!r}: expected {REQUEST} or {RESPONSE}")
