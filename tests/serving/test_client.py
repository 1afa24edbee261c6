"""DepthClient (tritonclient, binary tensors) against the real local Triton, HTTP and gRPC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import MAX_BATCH, H, W, ort_reference
from PIL import Image

from depth_common.data.transforms import prepare_image
from depth_common.errors import DepthConnectionError, DepthServingError, ImageDecodeError
from depth_common.serving.client import DepthClient, resize_depth_bilinear
from depth_common.serving.server import LocalTritonServer

pytestmark = pytest.mark.slow

PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def server(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    with LocalTritonServer(tiny, log_path=tmp_path_factory.mktemp("log") / "triton.log") as srv:
        yield srv


def _client(server: LocalTritonServer, protocol: str, **kwargs) -> DepthClient:
    url = server.http_url if protocol == "http" else server.grpc_url
    return DepthClient(url, protocol=protocol, **kwargs)


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, H, W)).astype(np.float32)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ready_metadata_and_model_info(server: LocalTritonServer, protocol: str) -> None:
    with _client(server, protocol) as client:
        assert client.ready()
        meta = client.metadata()
        assert meta["name"] == "depth" and meta["platform"] == "python"
        info = client.info
        assert (info.height, info.width, info.max_batch_size) == (H, W, MAX_BATCH)
        assert (info.input_name, info.output_name, info.datatype) == ("image", "depth", "FP32")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("n", [1, 4])
def test_infer_tensor_equals_onnxruntime(
    server: LocalTritonServer, onnx_path: Path, protocol: str, n: int
) -> None:
    x = _batch(n, seed=n)
    with _client(server, protocol) as client:
        got = client.infer_tensor(x)
    want = ort_reference(onnx_path, x)
    assert got.shape == (n, 1, H, W) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


def _torch_bilinear(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Independent reference for upsampling: torch bilinear, pixel centres (align_corners=False)."""
    t = torch.from_numpy(depth)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_images_of_any_size(
    server: LocalTritonServer, onnx_path: Path, protocol: str
) -> None:
    rng = np.random.default_rng(7)
    # 10 images > max_batch_size 8: two requests. Sizes larger than the model's (upsampling).
    sizes = [(48 + 3 * i, 80 + 5 * i) for i in range(10)]
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    images: list = [Image.fromarray(a) if i % 2 else a for i, a in enumerate(arrays)]
    with _client(server, protocol) as client:
        depths = client.predict(images)
    want = ort_reference(onnx_path, np.stack([prepare_image(a, (H, W)) for a in arrays]))
    assert len(depths) == len(images)
    for depth, (h, w), ref in zip(depths, sizes, want, strict=True):
        assert depth.shape == (h, w) and depth.dtype == np.float32
        np.testing.assert_allclose(depth, _torch_bilinear(ref[0], (h, w)), atol=1e-4)
    # A single image (not in a list) works too, and equals the batched answer.
    with _client(server, protocol) as client:
        (one,) = client.predict(images[3])
    np.testing.assert_allclose(one, depths[3], atol=1e-5)


def test_resize_depth_bilinear_keeps_a_same_size_map() -> None:
    d = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert resize_depth_bilinear(d, (3, 4)) is d
    up = resize_depth_bilinear(d, (6, 8))
    np.testing.assert_allclose(up, _torch_bilinear(d, (6, 8)), atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((1, 3, H + 1, W), np.float32), "shape"),
        (np.zeros((3, H, W), np.float32), "shape"),
        (np.zeros((1, 3, H, W), np.float64), "FP64"),
        (np.zeros((MAX_BATCH + 1, 3, H, W), np.float32), "batch"),
    ],
    ids=["bad-HW", "no-batch-dim", "float64", "batch-over-max"],
)
def test_server_errors_surface_with_the_servers_message(
    server: LocalTritonServer, protocol: str, batch: np.ndarray, message: str
) -> None:
    with _client(server, protocol) as client:
        with pytest.raises(DepthServingError, match=message) as info:
            client.infer_tensor(batch)
        assert "model 'depth'" in str(info.value)
        if protocol == "grpc":
            assert info.value.status == "StatusCode.INVALID_ARGUMENT"
        else:
            assert info.value.status == "400"
        assert client.ready()  # the server shrugs it off


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model(server: LocalTritonServer, protocol: str) -> None:
    with _client(server, protocol, model_name="nope") as client:
        assert not client.ready()
        with pytest.raises(DepthServingError, match="nope"):
            client.metadata()
    with _client(server, protocol) as client:
        assert client.ready()


def test_bad_images_are_refused_before_sending(server: LocalTritonServer) -> None:
    with _client(server, "http") as client:
        with pytest.raises(ImageDecodeError, match=r"shape \(4, 4, 2\)"):
            client.predict([np.zeros((4, 4, 2), np.uint8)])
        with pytest.raises(ImageDecodeError, match="not a readable image"):
            client.predict([b"not an image"])
    with pytest.raises(ValueError, match="protocol"):
        DepthClient("127.0.0.1:1", protocol="ftp")
    with pytest.raises(ValueError, match="mode 'image'"):
        DepthClient("127.0.0.1:1", protocol="grpc", mode="image")


def test_grayscale_16_bit_and_encoded_inputs_are_decoded_like_the_server_does(
    server: LocalTritonServer, onnx_path: Path
) -> None:
    import io

    gray = np.random.default_rng(5).integers(0, 256, (40, 72), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buf, format="PNG")  # 16-bit PNG
    rgb = np.repeat(gray[..., None], 3, axis=2)
    want = ort_reference(onnx_path, prepare_image(rgb, (H, W))[None])[0, 0]
    with _client(server, "grpc") as client:
        (from_png,) = client.predict(buf.getvalue())
        (from_gray,) = client.predict([gray])
    np.testing.assert_allclose(from_png, _torch_bilinear(want, (40, 72)), atol=1e-4)
    np.testing.assert_array_equal(from_png, from_gray)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_is_not_ready_and_calls_raise_the_clients_error(protocol: str) -> None:
    from depth_common.serving.server import free_port

    url = f"127.0.0.1:{free_port()}"
    with DepthClient(url, protocol, timeout_s=2) as client:
        assert not client.ready()
        with pytest.raises(DepthConnectionError, match=f"{protocol}://{url} unreachable"):
            client.metadata()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_call_is_bounded_by_the_timeout(protocol: str) -> None:
    """A server that accepts connections and never answers (the peer test's 30 s hang)."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        with DepthClient(url, protocol, timeout_s=1.5) as client:
            start = time.monotonic()
            assert not client.ready()
            with pytest.raises(DepthConnectionError, match="no answer within 1.5 s"):
                client.metadata()
            elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed  # two bounded calls (3 x 1.5 s at most), not a hang


def test_32_concurrent_clients_get_their_own_answers(
    server: LocalTritonServer, onnx_path: Path
) -> None:
    inputs = [_batch(1 + k % 3, seed=100 + k) for k in range(32)]
    wants = [ort_reference(onnx_path, x) for x in inputs]

    def work(k: int) -> float:
        # One client per thread (the HTTP client is gevent-based: not shared across threads).
        with _client(server, PROTOCOLS[k % 2]) as client:
            return float(np.abs(client.infer_tensor(inputs[k]) - wants[k]).max())

    before = _stats(server)
    with ThreadPoolExecutor(max_workers=32) as pool:
        errors = list(pool.map(work, range(32)))
    after = _stats(server)
    assert max(errors) < 1e-5, errors
    # Triton counted every image once, and ran them in at most as many model executions.
    images = sum(x.shape[0] for x in inputs)
    assert after["inference_count"] - before["inference_count"] == images
    assert 1 <= after["execution_count"] - before["execution_count"] <= images


def _stats(server: LocalTritonServer) -> dict[str, int]:
    """Inference and execution counts of model 'depth', from the metrics endpoint (the
    statistics API is off: see depth_common.serving.server)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts = {}
    for key, metric in (("inference_count", "nv_inference_count"),
                        ("execution_count", "nv_inference_exec_count")):  # fmt: skip
        values = re.findall(rf'^{metric}{{model="depth",[^}}]*}} (\d+)', text, re.MULTILINE)
        counts[key] = sum(int(v) for v in values)
    return counts
