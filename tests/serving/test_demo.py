"""The Gradio demo: its API, and the page driven in headless Chromium (DevTools protocol).

Chromium is Debian's ``chromium`` package, installed before the tests by ``make test-deps``
(``tests/system-deps.sh``); without it the browser test is skipped with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import H, W, build_tiny_repository, ort_reference
from PIL import Image

from depth_common.data.transforms import prepare_image
from depth_common.serving.client import resize_depth_bilinear
from depth_common.serving.codec import load_rgb
from depth_common.serving.demo import (
    DISPLAY_MAX_SIDE,
    build_demo,
    demo_server,
    display_size,
    make_predict_fn,
    render_side_by_side,
    write_examples,
)
from depth_common.serving.demo_sources import EndpointPredictor, OnnxPredictor
from depth_common.serving.server import free_port

pytestmark = pytest.mark.slow


def _chromium() -> str:
    """Path of Debian's chromium (installed by ``make test-deps``); otherwise skip, saying so."""
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed: run `make test-deps` as root (Debian's chromium)")
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-model")
    build_tiny_repository(root)
    return root / "model.onnx"


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_examples(tmp_path_factory.mktemp("examples"), count=2, size=(96, 160))


@pytest.fixture(scope="module")
def app(model: Path, examples: list[Path]) -> Iterator[tuple[Any, str]]:
    """The demo as ``launch_demo`` serves it (:func:`demo_server`), in a thread."""
    import threading

    demo = build_demo(onnx_path=model, examples=examples)
    port = free_port()
    server = demo_server(demo, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the demo did not start"
        time.sleep(0.05)
    try:
        yield demo, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _expected_picture(model: Path, rgb: np.ndarray) -> np.ndarray:
    depth = ort_reference(model, prepare_image(rgb, (H, W))[None])[0, 0]
    return render_side_by_side(rgb, resize_depth_bilinear(depth, rgb.shape[:2]))


def test_onnx_session_is_lazy_and_output_is_at_the_image_size(model: Path) -> None:
    predictor = OnnxPredictor(model)
    assert not predictor.loaded  # nothing loaded until the first request
    rgb = np.random.default_rng(0).integers(0, 256, (60, 200, 3), dtype=np.uint8)
    picture, summary = make_predict_fn(predictor)(rgb)
    assert predictor.loaded
    assert picture.shape[1] == 2 * 200 and picture.shape[0] > 60  # side by side, bar below
    np.testing.assert_array_equal(picture[:60, :200], rgb)  # left: the input as uploaded
    np.testing.assert_array_equal(picture, _expected_picture(model, rgb))
    assert "200x60 px" in summary and "median" in summary and " m" in summary


def test_tiny_images_are_enlarged_so_the_colour_bar_stays_readable() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    depth = np.linspace(1, 30, 240, dtype=np.float32).reshape(12, 20)
    assert display_size(12, 20) == (12 * 8, 20 * 8)  # a whole factor: square pixels
    picture = render_side_by_side(rgb, depth)
    np.testing.assert_array_equal(picture[:96, :160], np.repeat(np.repeat(rgb, 8, 0), 8, 1))
    bar = picture[100:]
    assert bar.shape[1] >= 160 + 120  # the bar and its labels fit beside the image panel
    # the labels are drawn (dark pixels) under the depth panel, not cut off at the edge
    assert (bar[:, 160:].min(axis=2) < 80).any()
    assert (bar[:, -1] == 255).all()


def test_very_large_results_are_downscaled_for_display() -> None:
    h, w = 1500, 4000
    rgb = np.zeros((h, w, 3), np.uint8)
    depth = np.ones((h, w), np.float32)
    depth[:, w // 2 :] = 50.0
    dh, dw = display_size(h, w)
    assert dw == DISPLAY_MAX_SIDE and dh == round(h * DISPLAY_MAX_SIDE / w)
    picture = render_side_by_side(rgb, depth)
    assert picture.shape[1] == 2 * DISPLAY_MAX_SIDE and picture.shape[0] < dh + 60
    # the colour scale still comes from the full-size depth: 99th percentile = 50 m
    assert (
        picture[10, DISPLAY_MAX_SIDE + dw - 10].tolist()
        != picture[10, DISPLAY_MAX_SIDE + 10].tolist()
    )


def test_a_16_bit_upload_reaches_the_model_as_the_loader_decodes_it(
    app: tuple[Any, str], model: Path, tmp_path: Path
) -> None:
    from gradio_client import Client, handle_file

    gray = np.random.default_rng(4).integers(0, 256, (96, 170), dtype=np.uint8)
    path = tmp_path / "scan16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    _, url = app
    picture_path, summary = Client(url, verbose=False).predict(
        handle_file(str(path)), api_name="/predict"
    )
    picture = np.asarray(Image.open(picture_path).convert("RGB"))
    rgb = load_rgb(path)
    np.testing.assert_array_equal(rgb[..., 0], gray)  # not the white a convert("RGB") gives
    np.testing.assert_array_equal(picture, _expected_picture(model, rgb))
    assert "170x96 px" in summary


def test_demo_needs_exactly_one_source(model: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        build_demo()
    with pytest.raises(ValueError, match="exactly one"):
        build_demo(endpoint="127.0.0.1:8000", onnx_path=model)
    with pytest.raises(ValueError, match="exactly one"):
        build_demo(transformer="127.0.0.1:8080", onnx_path=model)
    with pytest.raises(FileNotFoundError, match="no-such.onnx"):
        build_demo(onnx_path="no-such.onnx")


def test_api_runs_an_example(app: tuple[Any, str], model: Path, examples: list[Path]) -> None:
    from gradio_client import Client, handle_file

    _, url = app
    client = Client(url, verbose=False)
    picture_path, summary = client.predict(handle_file(str(examples[0])), api_name="/predict")
    picture = np.asarray(Image.open(picture_path).convert("RGB"))
    rgb = np.asarray(Image.open(examples[0]).convert("RGB"))
    assert picture.shape[1] == 2 * rgb.shape[1] and picture.shape[0] > rgb.shape[0]
    np.testing.assert_array_equal(picture, _expected_picture(model, rgb))
    assert "160x96 px" in summary


def test_confidence_and_points_for_the_second_row(model: Path, examples: list[Path]) -> None:
    from depth_common.serving.camera import decode_ply
    from depth_common.serving.confidence import confidence_from_mirror
    from depth_common.serving.demo import VIEW_MAX_POINTS, make_extras_fn

    rgb = load_rgb(examples[0])
    picture, ply = make_extras_fn(OnnxPredictor(model))(str(examples[0]))
    x = prepare_image(rgb, (H, W))
    a, b = ort_reference(model, np.stack([x, x[..., ::-1]]))[:, 0]
    want = resize_depth_bilinear(confidence_from_mirror(a, b), rgb.shape[:2])
    grey = np.clip(np.rint(want * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(picture[..., 0], grey)  # 160 x 96: shown at its own size
    xyz, colours = decode_ply(Path(ply).read_bytes())
    assert 0 < len(xyz) <= VIEW_MAX_POINTS and (xyz[:, 2] > 0).all()
    assert len(xyz) == rgb.shape[0] * rgb.shape[1]  # a small image: every pixel
    np.testing.assert_array_equal(colours, rgb.reshape(-1, 3))
    assert (xyz[: rgb.shape[1], 1] > 0).all()  # the top row is up (Y up in the viewer)


class _DevTools:
    """The smallest Chrome DevTools Protocol client: one page, request/response by id."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=30))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"page never satisfied: {expression}")

    def close(self) -> None:
        self._ws.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    chromium = _chromium()
    port = free_port()
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,1000",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _page_ws(port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("headless chromium did not open its DevTools endpoint")


def test_page_loads_and_an_example_runs_in_chromium(
    app: tuple[Any, str], browser: tuple[int, subprocess.Popen], tmp_path: Path
) -> None:
    _, url = app
    port, _ = browser
    page = _DevTools(_page_ws(port))
    try:
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        page.wait_for("document.querySelector('#run') !== null")
        assert "Monocular metric depth" in page.js("document.body.innerText")
        assert page.js("document.title") == "Monocular depth"
        # Click the first example: run_on_click runs the model on it.
        page.wait_for("document.querySelectorAll('.gallery-item').length >= 2")
        page.js("document.querySelector('.gallery-item').click()")
        summary = page.wait_for(
            "(() => { const t = document.querySelector('#depth-summary textarea');"
            " return t && t.value.includes('median') ? t.value : null; })()"
        )
        assert "160x96 px" in summary
        src = page.wait_for(
            "(() => { const i = document.querySelector('#depth-image img');"
            " return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null; })()"
        )
        assert src == 2 * 160  # the side-by-side picture, at the example's own width
        # the second row: the confidence picture and the 3-D view's canvas
        assert (
            page.wait_for(
                "(() => { const i = document.querySelector('#confidence-image img');"
                " return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null; })()"
            )
            == 160
        )
        page.wait_for("document.querySelector('#points-3d canvas') !== null", timeout_s=60)
        time.sleep(2)  # the viewer draws the points after loading the PLY
        box = page.js(
            "(() => { const r = document.querySelector('#points-3d canvas')"
            ".getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()"
        )
        shot = page.call("Page.captureScreenshot", format="png")
    finally:
        page.close()
    path = tmp_path / "demo.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    screenshot = Image.open(io.BytesIO(path.read_bytes()))
    assert screenshot.size[0] >= 800 and screenshot.size[1] >= 600
    # Not a blank page: the screenshot has the inferno panel's colours in it.
    assert len(np.unique(np.asarray(screenshot.convert("RGB")).reshape(-1, 3), axis=0)) > 100
    # The 3-D view drew the points: its canvas (white background) has thousands of dark pixels.
    view = np.asarray(screenshot.convert("L").crop(tuple(int(v) for v in box)))
    assert view.size > 0 and (view < 200).sum() > 2000, (view < 200).sum()


def test_endpoint_and_transformer_modes_give_the_same_picture_as_onnxruntime(
    model: Path, tmp_path: Path
) -> None:
    from depth_common.serving.local_stack import LocalTransformer
    from depth_common.serving.server import LocalTritonServer

    rgb = np.random.default_rng(3).integers(0, 256, (70, 170, 3), dtype=np.uint8)
    upload = tmp_path / "upload.png"
    Image.fromarray(rgb).save(upload)
    with (
        LocalTritonServer(model.parent / "repo") as server,
        LocalTransformer(server.grpc_url) as transformer,
    ):
        tensor = EndpointPredictor(server.grpc_url, protocol="grpc")
        picture, summary = make_predict_fn(tensor)(Image.fromarray(rgb))
        tensor.close()
        # image mode: the uploaded file goes to the transformer as it is
        demo = build_demo(transformer=transformer.url, examples=[upload])
        image_picture, image_summary = make_predict_fn(demo.predictor)(str(upload))
        demo.predictor.close()
    np.testing.assert_array_equal(picture, _expected_picture(model, rgb))
    assert "170x70 px" in summary
    np.testing.assert_array_equal(image_picture, picture)
    assert image_summary == summary


def test_the_served_demo_closes_slow_clients_and_caps_connections(model: Path) -> None:
    """launch_demo's server: the page loads; a request not sent within deploy.read_timeout_s
    gets a 408 and is closed; over deploy.max_connections, a 503 (127.0.0.1, 4 sockets)."""
    import socket
    import threading

    from depth_common.config import DeployConfig

    port = free_port()
    limits = DeployConfig(read_timeout_s=0.5, max_connections=3)
    server = demo_server(build_demo(onnx_path=model), "127.0.0.1", port, limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def get() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64)

    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.05)
        assert get().startswith(b"HTTP/1.1 200")
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Never-Ends")
        time.sleep(0.1)
        assert get().startswith(b"HTTP/1.1 503")
        for sock in slow:
            with sock:
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 408")
        assert get().startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(15)
