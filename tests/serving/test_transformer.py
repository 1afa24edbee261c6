"""The image transformer in front of the real local Triton, called by real clients.

v1 and v2 (JSON and the binary tensor extension) through ``curl``, ``urllib``,
``tritonclient.http`` and :class:`DepthClient` image mode, on real photographs (scikit-image),
compared with an in-process reference: the same decoded image through ONNX Runtime and the
same resize. Bad inputs get a 400 naming what is wrong, and both servers stay ready.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import W
from PIL import Image

from depth_common.deploy.smoke import image_reference, smoke_test_v2
from depth_common.errors import DepthServingError
from depth_common.serving.camera import (
    CanonicalCamera,
    back_project,
    decode_ply,
    focal_from_35mm,
)
from depth_common.serving.client import DepthClient
from depth_common.serving.codec import decode_depth_png, load_rgb
from depth_common.serving.local_stack import LocalTransformer
from depth_common.serving.server import LocalTritonServer

pytestmark = pytest.mark.slow
skimage_data = pytest.importorskip("skimage.data")
PHOTOS = Path(skimage_data.__file__).parent
ROOT = Path(__file__).resolve().parents[2]


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """A real photograph as a phone stores it: pixels turned, EXIF orientation 6."""
    photo = Image.open(PHOTOS / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def _sixteen_bit_png() -> bytes:
    gray = np.asarray(Image.fromarray(skimage_data.astronaut()).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buf, format="PNG")
    return buf.getvalue()


PHOTO_CASES = {
    "jpeg-photo": lambda: (PHOTOS / "rocket.jpg").read_bytes(),
    "exif-rotated-jpeg": _exif_rotated_jpeg,
    "16-bit-png": _sixteen_bit_png,
    "png-photo": lambda: (PHOTOS / "chelsea.png").read_bytes(),
}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(f"http://{url}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _v2_json_outputs(url: str, body: dict) -> dict[str, np.ndarray]:
    """POST a v2 JSON request to the transformer (200 expected) → its outputs by name."""
    code, raw, _ = _post(
        f"{url}/v2/models/depth/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, raw
    return {
        o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
        for o in json.loads(raw)["outputs"]
    }


def _v1(url: str, *images: bytes) -> tuple[int, dict]:
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(i).decode()}} for i in images]}
    code, raw, _ = _post(
        f"{url}/v1/models/depth:predict",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    return code, json.loads(raw)


@pytest.mark.parametrize("case", sorted(PHOTO_CASES))
def test_v1_and_v2_equal_onnxruntime_on_real_photographs(stack, onnx_path: Path, case: str) -> None:
    _, transformer = stack
    data = PHOTO_CASES[case]()
    want = image_reference(onnx_path, data)
    h, w = load_rgb(data).shape[:2]
    assert want.shape == (h, w)
    if case == "exif-rotated-jpeg":
        assert (h, w) == (427, 640)  # upright: EXIF applied, not the stored 640 x 427

    with DepthClient(transformer.url, mode="image") as client:  # v2, binary, tritonclient.http
        (v2,) = client.predict(data)
    assert v2.shape == (h, w) and v2.dtype == np.float32
    np.testing.assert_allclose(v2, want, atol=1e-5)

    code, body = _v1(transformer.url, data)
    assert code == 200, body
    (pred,) = body["predictions"]
    assert (pred["height"], pred["width"]) == (h, w)
    depth = decode_depth_png(base64.b64decode(pred["depth_png_b64"]))
    assert np.abs(depth - want).max() <= 0.5 / 256 + 1e-6  # the PNG's 1/256 m steps
    assert pred["min_m"] == pytest.approx(float(want.min()), abs=1e-4)
    assert pred["median_m"] == pytest.approx(float(np.median(want)), abs=1e-4)
    assert pred["max_m"] == pytest.approx(float(want.max()), abs=1e-4)


def _with_focal_35mm(data: bytes, f35: int) -> bytes:
    """The photo re-saved with EXIF FocalLengthIn35mmFilm = ``f35`` (as a phone writes it)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = f35
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def test_focal_scales_depth_exactly_and_points_follow_it(stack, onnx_path: Path) -> None:
    _, transformer = stack
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    h, w = load_rgb(photo).shape[:2]
    camera = CanonicalCamera.cityscapes(W)  # the tiny model's export names no canonical focal
    f = 500.0
    body = {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                        "data": [base64.b64encode(photo).decode()] * 2},
                       {"name": "focal_px", "shape": [2], "datatype": "FP32", "data": [f, 2 * f]}],
            "outputs": [{"name": n} for n in ("depth", "focal_px", "points")]}  # fmt: skip
    out = _v2_json_outputs(transformer.url, body)
    np.testing.assert_array_equal(out["focal_px"], [f, 2 * f])
    np.testing.assert_array_equal(out["depth"][1], 2 * out["depth"][0])  # exactly
    want = image_reference(onnx_path, photo) * (f / camera.default_focal(w))
    np.testing.assert_allclose(out["depth"][0], want, rtol=1e-5, atol=1e-5)
    assert out["points"].shape == (2, h, w, 3)
    np.testing.assert_allclose(out["points"][1], back_project(out["depth"][1], 2 * f), rtol=1e-6)

    tagged = _with_focal_35mm(photo, 28)
    code, v1 = _v1(transformer.url, tagged)
    assert code == 200, v1
    (pred,) = v1["predictions"]
    assert pred["focal_source"] == "exif"
    assert pred["focal_px"] == pytest.approx(focal_from_35mm(28, w, h))
    inst = {"image_bytes": {"b64": base64.b64encode(photo).decode()}, "outputs": ["ply"]}
    code, raw, _ = _post(
        f"{transformer.url}/v1/models/depth:predict",
        json.dumps({"instances": [inst]}).encode(),
        {"Content-Type": "application/json"},
    )
    (pred,) = json.loads(raw)["predictions"]
    assert pred["focal_source"] == "default"
    xyz, rgb = decode_ply(base64.b64decode(pred["ply_b64"]))
    assert len(xyz) == h * w and rgb.dtype == np.uint8


def test_confidence_is_the_mirror_agreement_of_onnxruntime(stack, onnx_path: Path) -> None:
    import onnxruntime as ort

    from depth_common.data.transforms import prepare_image
    from depth_common.serving.codec import resize_depth_bilinear
    from depth_common.serving.confidence import confidence_from_mirror

    _, transformer = stack
    photo = (PHOTOS / "coffee.png").read_bytes()
    rgb = load_rgb(photo)
    x = prepare_image(rgb, (32, W))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    a, b = session.run(None, {"image": np.stack([x, x[..., ::-1]])})[0][:, 0]
    want = resize_depth_bilinear(confidence_from_mirror(a, b), rgb.shape[:2])
    body = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(photo).decode()]}],
            "outputs": [{"name": "confidence"}, {"name": "depth"}]}  # fmt: skip
    out = _v2_json_outputs(transformer.url, body)
    np.testing.assert_allclose(out["confidence"][0], want, atol=1e-5)
    assert out["confidence"].min() >= 0 and out["confidence"].max() <= 1
    np.testing.assert_allclose(out["depth"][0], image_reference(onnx_path, photo), atol=1e-5)


def test_the_canonical_focal_reaches_the_transformer_through_tritons_config(
    tmp_path: Path,
) -> None:
    import torch
    from helpers import TinyDepthNet

    from depth_common.export.onnx import export_model
    from depth_common.export.triton import build_triton_repository

    torch.manual_seed(0)
    meta = {"canonical_focal_px": "50.0"}  # pixels at the 64 px model input
    onnx_file = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(32, W), metadata=meta)
    repo = build_triton_repository(onnx_file.path, tmp_path / "repo")
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    h, w = load_rgb(photo).shape[:2]
    want = image_reference(onnx_file.path, photo)
    with (
        LocalTritonServer(repo, log_path=tmp_path / "triton.log") as triton,
        LocalTransformer(triton.grpc_url, log_path=tmp_path / "transformer.log") as transformer,
    ):
        code, body = _v1(transformer.url, photo)
        assert code == 200, body
        (pred,) = body["predictions"]
        assert pred["focal_source"] == "default"
        assert pred["focal_px"] == pytest.approx(50.0 * w / W)  # the canonical FoV at w
        assert pred["median_m"] == pytest.approx(float(np.median(want)), rel=1e-4)
        inst = {"image_bytes": {"b64": base64.b64encode(photo).decode()}, "focal_px": 100.0 * w / W}
        code, raw, _ = _post(
            f"{transformer.url}/v1/models/depth:predict",
            json.dumps({"instances": [inst]}).encode(),
            {"Content-Type": "application/json"},
        )
        (pred,) = json.loads(raw)["predictions"]
        assert pred["median_m"] == pytest.approx(2 * float(np.median(want)), rel=1e-4)


def test_v2_json_with_base64_and_both_outputs(stack, onnx_path: Path) -> None:
    _, transformer = stack
    photos = [skimage_data.astronaut()[:200, :300], skimage_data.coffee()[:200, :300]]
    images = [_png(p) for p in photos]
    body = {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                        "data": [base64.b64encode(i).decode() for i in images]}]}  # fmt: skip
    code, raw, _ = _post(
        f"{transformer.url}/v2/models/depth/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, raw
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    assert outputs["depth"]["shape"] == [2, 200, 300] and outputs["depth"]["datatype"] == "FP32"
    depth = np.asarray(outputs["depth"]["data"], np.float32).reshape(2, 200, 300)
    assert outputs["depth_png"]["shape"] == [2] and outputs["depth_png"]["datatype"] == "BYTES"
    for k, image in enumerate(images):
        want = image_reference(onnx_path, image)
        np.testing.assert_allclose(depth[k], want, atol=1e-5)
        png = decode_depth_png(base64.b64decode(outputs["depth_png"]["data"][k]))
        assert np.abs(png - want).max() <= 0.5 / 256 + 1e-6


def test_v2_binary_mixed_sizes_get_one_png_each(stack, onnx_path: Path) -> None:
    import tritonclient.http as th

    _, transformer = stack
    images = [(PHOTOS / "rocket.jpg").read_bytes(), (PHOTOS / "coffee.png").read_bytes()]
    client = th.InferenceServerClient(transformer.url)
    inp = th.InferInput("image_bytes", [2], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    result = client.infer("depth", [inp], outputs=[th.InferRequestedOutput("depth_png")])
    pngs = result.as_numpy("depth_png")
    for png, image in zip(pngs, images, strict=True):
        want = image_reference(onnx_path, image)
        assert np.abs(decode_depth_png(png) - want).max() <= 0.5 / 256 + 1e-6
    # The FP32 output needs one size: a clear 400, not a guess.
    with pytest.raises(Exception, match="needs images of one size") as info:
        client.infer("depth", [inp], outputs=[th.InferRequestedOutput("depth")])
    assert "400" in str(info.value.status())
    client.close()


def test_curl_posts_a_photo_to_both_endpoints(stack, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    _, transformer = stack
    photo = PHOTOS / "chelsea.png"
    raw = subprocess.run(
        ["curl", "-sf", f"http://{transformer.url}/v1/models/depth:predict",
         "-H", "Content-Type: image/png", "--data-binary", f"@{photo}"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (pred,) = json.loads(raw)["predictions"]
    assert (pred["height"], pred["width"]) == (300, 451)
    body = tmp_path / "v2.json"
    body.write_text(json.dumps({"inputs": [{"name": "image_bytes", "shape": [1],
        "datatype": "BYTES", "data": [base64.b64encode(photo.read_bytes()).decode()]}],
        "outputs": [{"name": "depth_png"}]}))  # fmt: skip
    raw = subprocess.run(
        ["curl", "-sf", f"http://{transformer.url}/v2/models/depth/infer",
         "-H", "Content-Type: application/json", "--data-binary", f"@{body}"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (out,) = json.loads(raw)["outputs"]
    assert out["name"] == "depth_png"
    assert decode_depth_png(base64.b64decode(out["data"][0])).shape == (300, 451)


def _binary_body(header: dict, payload: bytes) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def _binary_body_raw(head: bytes) -> tuple[bytes, dict]:
    return head, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def _bytes_tensor(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


BadCase = tuple[str, str, bytes, dict, str]  # id, path, body, headers, message expected
_JSON = {"Content-Type": "application/json"}
_V2_PATH, _V1_PATH = "/v2/models/depth/infer", "/v1/models/depth:predict"


def _v2_json(data: list, datatype: str = "BYTES", name: str = "image_bytes") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": [len(data)],
                                   "datatype": datatype, "data": data}]}).encode()  # fmt: skip


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _bad_image_cases() -> list[BadCase]:
    """Well-formed requests whose image is not one."""
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    v2p, js = _V2_PATH, _JSON
    return [
        ("not-an-image", v2p, _v2_json([_b64(b"hello world")]), js, "not a readable image"),
        ("truncated", v2p, _v2_json([_b64(photo[:4000])]), js, "truncated"),
        ("zero-bytes", v2p, _v2_json([""]), js, "empty (0 bytes)"),
    ]


def _bad_v2_cases() -> list[BadCase]:
    """v2 JSON requests with a wrong input, output or focal."""
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    v2, b64, v2p, js = _v2_json, _b64, _V2_PATH, _JSON
    return [
        ("wrong-datatype", v2p, v2([1.0], "FP32"), js, "datatype FP32, expected BYTES"),
        ("missing-input", v2p, v2([b64(photo)], name="image"), js, "expected one input"),
        ("no-inputs", v2p, b'{"outputs": []}', js, "malformed request"),
        ("not-base64", v2p, v2(["***"]), js, "not valid base64"),
        (
            "unknown-output",
            v2p,
            json.dumps(
                {"inputs": json.loads(v2([b64(photo)]))["inputs"], "outputs": [{"name": "normals"}]}
            ).encode(),
            js,
            "unknown output 'normals'",
        ),  # fmt: skip
        (
            "v2-focal-zero",
            v2p,
            json.dumps(
                {
                    "inputs": json.loads(v2([b64(photo)]))["inputs"]
                    + [{"name": "focal_px", "shape": [1], "datatype": "FP32", "data": [0.0]}]
                }
            ).encode(),
            js,
            "input 'focal_px'[0]: 0.0 is not a finite number of pixels",
        ),  # fmt: skip
    ]


def _bad_binary_cases() -> list[BadCase]:
    """v2 requests with the binary tensor extension: a bad JSON header or tensor."""
    v2p = _V2_PATH
    good_header = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                               "parameters": {"binary_data_size": 100}}]}  # fmt: skip
    return [
        (
            "deep-header",
            v2p,
            *_binary_body_raw(b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
            "nested too deeply",
        ),  # fmt: skip
        ("binary-short", v2p, *_binary_body(good_header, _bytes_tensor(b"x" * 10)), "runs past"),
        (
            "binary-bad-prefix",
            v2p,
            *_binary_body(
                {
                    "inputs": [
                        {
                            "name": "image_bytes",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 8},
                        }
                    ]
                },
                (999).to_bytes(4, "little") + b"abcd",
            ),
            "not a BYTES tensor of shape [1]",
        ),  # fmt: skip
    ]


def _bad_v1_cases() -> list[BadCase]:
    """v1 requests with bad JSON, instances, base64 or focal."""
    photo = (PHOTOS / "rocket.jpg").read_bytes()
    v1p, js = _V1_PATH, _JSON
    return [
        (
            "base64-not-ascii",
            v1p,
            json.dumps({"instances": [{"image_bytes": {"b64": "aGk=\u00e9"}}]}).encode(),
            js,
            "not valid base64",
        ),  # fmt: skip
        (
            "v1-focal-text",
            v1p,
            json.dumps(
                {"instances": [{"image_bytes": {"b64": _b64(photo)}, "focal_px": "wide"}]}
            ).encode(),
            js,
            "instances[0].focal_px: expected a number",
        ),  # fmt: skip
        ("v1-no-instances", v1p, b'{"images": []}', js, 'expected {\\"instances'),
        ("v1-not-b64", v1p, b'{"instances": [{"image_bytes": "abc"}]}', js, "b64"),
        ("v1-bad-json", v1p, b'{"instances": [', js, "Unrecognized request format"),
    ]


def _bad_cases() -> list[BadCase]:
    return _bad_image_cases() + _bad_v2_cases() + _bad_binary_cases() + _bad_v1_cases()


@pytest.mark.parametrize(
    ("path", "body", "headers", "message"),
    [c[1:] for c in _bad_cases()],
    ids=[c[0] for c in _bad_cases()],
)
def test_bad_inputs_get_a_400_and_both_servers_stay_ready(
    stack, path: str, body: bytes, headers: dict, message: str
) -> None:
    triton, transformer = stack
    code, raw, _ = _post(transformer.url + path, body, headers)
    assert code == 400, (code, raw[:300])
    assert message.replace("\\", "") in json.loads(raw)["error"], raw[:300]
    with DepthClient(transformer.url, mode="image") as client:
        assert client.ready()
    with DepthClient(triton.http_url) as client:
        assert client.ready()


def _one_colour_png(size: tuple[int, int], mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")  # one colour: a few KB compressed
    return buf.getvalue()


def test_requests_over_the_limits_get_a_413_before_any_work(stack) -> None:
    """A decompression bomb (81 MP) and the red team's 16 KB PNG asking for 70 MiB of JSON depth:
    413 naming the params key, and both servers stay ready."""
    triton, transformer = stack
    url = transformer.url + "/v2/models/depth/infer"
    bomb = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(_one_colour_png((9000, 9000))).decode()]}]})  # fmt: skip
    code, raw, _ = _post(url, bomb.encode(), {"Content-Type": "application/json"})
    assert code == 413, raw[:300]
    assert "81,000,000 pixels in all" in json.loads(raw)["error"]
    assert "deploy.max_request_pixels" in json.loads(raw)["error"]
    png = _one_colour_png((2000, 2000), "RGB")
    header = {"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(png) + 4}}],
              "outputs": [{"name": "depth"}]}  # fmt: skip
    code, raw, _ = _post(url, *_binary_body(header, _bytes_tensor(png)))
    assert code == 413 and "deploy.max_response_bytes" in json.loads(raw)["error"], raw[:300]
    with DepthClient(transformer.url, mode="image") as client:
        assert client.ready()
    with DepthClient(triton.http_url) as client:
        assert client.ready()


def test_only_the_transformers_endpoints_answer_and_bodies_are_bounded(stack) -> None:
    _, transformer = stack
    base = f"http://{transformer.url}"
    for method, path in [("POST", "/v2/repository/models/depth/unload"), ("GET", "/docs"),
                         ("POST", "/v1/models/depth:explain"), ("GET", "/v2/models/other")]:  # fmt: skip
        req = urllib.request.Request(
            base + path, method=method, data=b"{}" if method == "POST" else None
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 404, path
    # A body over the limit is refused from its Content-Length, before it is read.
    import socket

    host, port = transformer.url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/depth:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: image/png\r\nContent-Length: 67108865\r\n\r\n"
        )
        reply = b""
        while b"over the limit" not in reply and (chunk := sock.recv(4096)):
            reply += chunk  # headers and body may come in separate packets
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit of 67108864 bytes" in reply
    with DepthClient(transformer.url, mode="image") as client:
        assert client.ready()
        meta = client.metadata()
    assert meta["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]


def test_the_smoke_test_goes_through_the_transformer(stack, onnx_path: Path) -> None:
    triton, transformer = stack
    result = smoke_test_v2(triton.http_url, onnx_path=onnx_path, transformer_url=transformer.url)
    assert result.ok, result.detail
    assert "image endpoint (v1, v2)" in result.detail and result.image_latency_ms > 0
    # The InferenceService's URL is the transformer's: detected from its metadata.
    direct = smoke_test_v2(transformer.url, onnx_path=onnx_path)
    assert direct.ok and direct.max_abs_diff <= 1e-5, direct.detail
    # A wrong reference model is caught (not vacuous).
    other = ROOT / "tests" / "__no_such__.onnx"
    assert not smoke_test_v2(transformer.url, onnx_path=other).ok


def test_triton_down_is_a_503_then_served_again(tiny: Path, tmp_path: Path) -> None:
    import os
    import signal
    import time

    with (
        LocalTritonServer(tiny, log_path=tmp_path / "triton.log") as triton,
        LocalTransformer(triton.grpc_url) as transformer,
        DepthClient(transformer.url, mode="image", timeout_s=30) as client,
    ):
        photo = (PHOTOS / "coffee.png").read_bytes()
        client.predict(photo)
        os.kill(triton.triton_pid, signal.SIGKILL)
        with pytest.raises(DepthServingError, match="503|UNAVAILABLE"):
            for _ in range(50):  # until the request lands while Triton is down
                client.predict(photo)
                time.sleep(0.02)
        deadline = time.monotonic() + 90
        while True:
            try:
                (depth,) = client.predict(photo)
                break
            except DepthServingError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert depth.shape == (400, 600) and triton.restarts == 1


def test_the_transformer_imports_without_torch_or_tritonclient() -> None:
    """What the transformer image installs (no torch, tritonclient, ONNX Runtime) is enough."""
    code = (
        "import sys\n"
        "sys.modules.update(dict.fromkeys(('torch', 'tritonclient', 'onnxruntime', 'onnx')))\n"
        "import depth_common.serving.transformer_server\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
