"""The transformer's request handling without Triton: limits refused (413) before any pixel is
decoded, every malformed body a 400 (a seeded fuzz of the parsers), BYTES tensors decoded by
kserve's ``InferInput.as_numpy()``, RFC 2045 base64. (tests/serving/test_transformer.py runs
the same code against a real Triton.)

kserve cannot share a process with tritonclient (both register the same protobuf messages):
this file is run by ``test_transformer_requests.py`` in a pytest process of its own, and is not
collected with the rest of the suite (its name does not start with ``test_``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from depth_common.errors import RequestTooLarge
from depth_common.serving import transformer as transformer_module
from depth_common.serving.kserve_import import InvalidInput
from depth_common.serving.requests import ImageBatch, parse_request
from depth_common.serving.responses import check_answer_size
from depth_common.serving.transformer import DepthTransformer
from depth_common.serving.transformer_server import parse_binary_request

BYTES_INPUT = {"name": "image_bytes", "datatype": "BYTES"}


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 80, 120)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its pixels are never there)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _binary(images: list[bytes], outputs: list[dict] | None = None) -> tuple[bytes, int]:
    tensor = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    spec = {**BYTES_INPUT, "shape": [len(images)], "parameters": {"binary_data_size": len(tensor)}}
    header = json.dumps({"inputs": [spec], **({"outputs": outputs} if outputs else {})}).encode()
    return header + tensor, len(header)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal must come before any pixel is decoded."""

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded for a request that is refused")

    monkeypatch.setattr(transformer_module, "load_rgb", refuse)


def _preprocess(model: DepthTransformer, payload) -> ImageBatch:
    # No predictor is configured: reaching it would be a ServerNotReady, not the refusal.
    return asyncio.run(model.preprocess(payload))


def test_a_small_png_asking_for_a_huge_json_depth_is_a_413_before_decoding(no_decoding) -> None:
    """The red team's case: 16 KB PNG, 2000x2000, v2 'depth' → 70 MiB of JSON."""
    body, n = _binary([_png(2000, 2000)], outputs=[{"name": "depth"}])
    assert len(body) < 20_000
    request = parse_binary_request(body, n, "depth")
    with pytest.raises(RequestTooLarge, match=r"80,000,000 bytes.*deploy\.max_response_bytes"):
        _preprocess(DepthTransformer(), request)


def test_points_and_a_v1_ply_count_in_the_answer_before_decoding(no_decoding) -> None:
    """``points`` is 3 floats a pixel; a v1 PLY ~20 bytes a pixel in base64."""
    body, n = _binary(
        [_png(1500, 1500)], outputs=[{"name": "points", "parameters": {"binary_data": True}}]
    )
    with pytest.raises(
        RequestTooLarge, match=r"\['points'\] of 2,250,000 pixels would be 27,000,000"
    ):
        _preprocess(
            DepthTransformer(max_response_bytes=20_000_000), parse_binary_request(body, n, "depth")
        )
    b64 = base64.b64encode(_png(2000, 2000)).decode()
    v1 = {"instances": [{"image_bytes": {"b64": b64}, "outputs": ["ply"]}]}
    with pytest.raises(RequestTooLarge, match=r"\['ply'\] of 4,000,000 pixels would be 80,000,000"):
        _preprocess(DepthTransformer(), v1)


def test_pixels_of_all_images_together_are_capped_before_decoding(no_decoding) -> None:
    images = [_png_header_only(7000, 7000)] * 16  # 16 x 49 MP: each under the per-image cap
    body, n = _binary(images, outputs=[{"name": "depth_png"}])
    with pytest.raises(RequestTooLarge, match=r"784,000,000 pixels.*deploy\.max_request_pixels"):
        _preprocess(DepthTransformer(), parse_binary_request(body, n, "depth"))
    b64 = base64.b64encode(_png_header_only(6000, 6000)).decode()
    with pytest.raises(RequestTooLarge, match=r"36,000,000 pixels in all: over the limit of 32,0"):
        _preprocess(DepthTransformer(), {"instances": [{"image_bytes": {"b64": b64}}]})


def test_an_answer_over_the_limit_as_sent_is_refused() -> None:
    batch = ImageBatch("v1", [(20, 20)], [], outputs={})
    check_answer_size(batch, [np.ones((20, 20), np.float32)], [b"x" * 600], 1000)  # 800 base64
    with pytest.raises(RequestTooLarge, match=r"1,001 bytes.*limit of 1,000 bytes"):
        check_answer_size(batch, [np.ones((20, 20), np.float32)], [b"x" * 751], 1000)


def test_binary_bytes_tensors_are_decoded_by_kserve() -> None:
    images = [b"\x89PNG-one", b"", b"\xff\xd8jpeg"]
    body, n = _binary(images)
    parsed = parse_request(parse_binary_request(body, n, "depth"))
    protocol, got, outputs = parsed.protocol, parsed.images, parsed.outputs
    assert (protocol, got, outputs) == ("v2", images, {"depth": False, "depth_png": False})
    bad = json.dumps(
        {"inputs": [{**BYTES_INPUT, "shape": [1], "parameters": {"binary_data_size": 8}}]}
    )
    body = bad.encode() + (999).to_bytes(4, "little") + b"abcd"
    with pytest.raises(
        InvalidInput, match=r"input 'image_bytes': not a BYTES tensor of shape \[1\]"
    ):
        parse_request(parse_binary_request(body, len(bad), "depth"))


def test_v1_base64_with_line_breaks_is_accepted_and_other_characters_are_not() -> None:
    image = _png(40, 30)
    wrapped = base64.encodebytes(image).decode()  # what `base64` writes without -w0
    assert "\n" in wrapped.strip()
    assert parse_request({"instances": [{"image_bytes": {"b64": wrapped}}]})[1] == [image]
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.image_bytes\.b64: not valid base64"):
        parse_request({"instances": [{"image_bytes": {"b64": wrapped[:20] + "*" + wrapped[20:]}}]})
    with pytest.raises(InvalidInput, match="not valid base64"):
        parse_request({"instances": [{"image_bytes": {"b64": "aGVsbG8=\u00e9"}}]})


def test_a_header_nested_5000_levels_deep_is_a_400() -> None:
    header = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(InvalidInput, match="nested too deeply"):
        parse_binary_request(header, len(header), "depth")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(["name", "shape", "datatype", "parameters", "data", "binary_data_size"])
_input = st.dictionaries(_keys, _json | st.sampled_from(["image_bytes", "BYTES", [1], [2, 1]]))
_header = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=3)},
    optional={"outputs": _json, "parameters": _json, "id": _json},
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(header=_header, tail=st.binary(max_size=64), cut=st.integers(-8, 8))
def test_fuzzed_binary_requests_are_parsed_or_refused_with_a_400(
    header: dict, tail: bytes, cut: int
) -> None:
    """Bounded and seeded (the same 300 cases every run): only InvalidInput ever escapes."""
    text = json.dumps(header, allow_nan=True).encode()
    body = text + tail
    try:
        parsed = parse_request(parse_binary_request(body, len(text) + cut, "depth"))
    except InvalidInput:
        return
    assert parsed.protocol == "v2" and all(isinstance(i, bytes) for i in parsed.images)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(payload=_json | st.fixed_dictionaries({"instances": _json}))
def test_fuzzed_v1_payloads_are_parsed_or_refused_with_a_400(payload) -> None:
    try:
        parsed = parse_request(payload)
    except InvalidInput:
        return
    assert parsed.protocol == "v1" and all(isinstance(i, bytes) for i in parsed.images)
