"""The drift monitor over HTTP (127.0.0.1): events in, /drift and /metrics out, bad bodies 400."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from depth_common.data.scene import render_scene
from depth_common.data.synthetic import cityscapes_camera
from depth_common.monitoring.drift import KSDriftDetector
from depth_common.monitoring.events import REQUEST, RESPONSE
from depth_common.monitoring.profile import profile_from_images
from depth_common.monitoring.service import DriftMonitor, Limits, MonitorServer
from depth_common.monitoring.trigger import Retrainer

SIZE = (64, 128)
WINDOW = 8


def street(seed: int) -> np.ndarray:
    rng = np.random.default_rng([7, seed])
    return render_scene(rng, SIZE, cityscapes_camera(SIZE), hood=True)[0]


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def v1(images: list[bytes]) -> bytes:
    return json.dumps(
        {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]}
    ).encode()


def v2(images: list[bytes]) -> bytes:
    data = [base64.b64encode(b).decode() for b in images]
    inp = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(data)], "data": data}
    return json.dumps({"inputs": [inp]}).encode()


def v2_binary(images: list[bytes]) -> tuple[bytes, str]:
    """A v2 request in the binary tensor extension (as DepthClient image mode sends it)."""
    data = b"".join(len(b).to_bytes(4, "little") + b for b in images)
    spec = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)],
            "parameters": {"binary_data_size": len(data)}}  # fmt: skip
    header = json.dumps({"inputs": [spec]}).encode()
    return header + data, str(len(header))


def ce_headers(kind: str = REQUEST, content_type: str = "application/json") -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": "req-1",
        "ce-source": "http://localhost:9081/",
        "ce-type": kind,
        "ce-inferenceservicename": "depth",
        "Content-Type": content_type,
    }


@pytest.fixture(scope="module")
def detector() -> KSDriftDetector:
    return KSDriftDetector(profile_from_images([street(s) for s in range(60)]))


class FakeLauncher:
    kind = "local"

    def __init__(self, fail: bool = False) -> None:
        self.launched: list[str] = []
        self.fail = fail

    def launch(self, reason: str) -> str:
        self.launched.append(reason)
        if self.fail:
            raise RuntimeError("KFP API unreachable")
        return f"run-{len(self.launched)}"

    def status(self, run_id: str) -> str | None:
        return "running"


def start(monitor: DriftMonitor) -> Iterator[MonitorServer]:
    server = MonitorServer(monitor, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def server(detector, launcher) -> Iterator[MonitorServer]:
    retrainer = Retrainer(launcher, consecutive=2, cooldown_s=3600)
    monitor = DriftMonitor(detector, WINDOW, retrainer, Limits(max_body_bytes=2_000_000))
    yield from start(monitor)


def call(server: MonitorServer, method: str, path: str, body: bytes = b"", headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def drift(server: MonitorServer) -> dict:
    status, body = call(server, "GET", "/drift")
    assert status == 200
    return json.loads(body)


def metric(server: MonitorServer, name: str) -> float:
    text = call(server, "GET", "/metrics")[1].decode()
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert lines, f"{name} not in /metrics"
    return float(lines[0].split()[1])


def test_quiet_then_drift_then_one_retraining_run(server, launcher) -> None:
    assert drift(server)["ready"] is False
    for k in range(0, WINDOW, 4):  # in distribution, v1 then v2
        images = [png(street(100 + k + j)) for j in range(4)]
        status, _ = call(server, "POST", "/", (v1 if k else v2)(images), ce_headers())
        assert status == 202
    quiet = drift(server)
    assert quiet["ready"] and quiet["images"] == WINDOW and quiet["drift"] is False
    assert metric(server, "depth_drift_detected") == 0
    for k in range(3 * WINDOW):  # darkened, raw image bodies: the window keeps the last K
        dark = png((street(200 + k) * 0.35).astype(np.uint8))
        assert call(server, "POST", "/", dark, ce_headers(content_type="image/png"))[0] == 202
    moved = drift(server)
    assert moved["drift"] is True and moved["images"] == WINDOW
    assert moved["score"] < moved["threshold"] and moved["detector"].startswith("ks-bh")
    assert metric(server, "depth_drift_detected") == 1
    assert metric(server, "depth_drift_score") == pytest.approx(moved["score"], rel=1e-6)
    assert metric(server, "depth_monitor_images_total") == 4 * WINDOW == moved["images_seen"]
    # 3 drifted windows, 2 in a row start a run, the cooldown holds the third
    server.monitor.retrainer.wait_launched()
    assert len(launcher.launched) == 1
    runs = drift(server)["runs"]
    assert [r["run_id"] for r in runs] == ["run-1"] and runs[0]["status"] == "running"


def test_binary_v2_requests_are_read(server) -> None:
    body, length = v2_binary([png(street(1)), png(street(2))])
    headers = {**ce_headers(content_type="application/octet-stream"),
               "Inference-Header-Content-Length": length}  # fmt: skip
    status, text = call(server, "POST", "/", body, headers)
    assert status == 202 and json.loads(text)["images"] == 2
    headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    status, text = call(server, "POST", "/", body, headers)
    assert status == 400 and "inference-header-content-length" in json.loads(text)["error"]
    truncated = body[:-10]
    headers["Inference-Header-Content-Length"] = length
    status, text = call(server, "POST", "/", truncated, headers)
    assert status == 400 and "runs past the body" in json.loads(text)["error"]
    assert drift(server)["images_seen"] == 2


def test_responses_are_output_statistics_not_inputs(server) -> None:
    body = json.dumps({"predictions": [{"median_m": 12.5}, {"median_m": 7.5}]}).encode()
    assert call(server, "POST", "/", body, ce_headers(RESPONSE))[0] == 202
    state = drift(server)
    assert state["images"] == 0 and state["outputs"]["responses"] == 1
    assert state["outputs"]["mean_median_depth_m"] == pytest.approx(10.0)
    assert metric(server, "depth_output_median_depth_m") == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{}", {**ce_headers(), "ce-type": "com.example.other"}, 400, "ce-type"),
        (b"{not json", ce_headers(), 400, "not JSON"),
        (
            b'{"instances": [{"image_bytes": {"b64": "%%%"}}]}',
            ce_headers(),
            400,
            "instances[0].image_bytes.b64: not valid base64",
        ),
        (v1([b"not an image at all"]), ce_headers(), 400, "image 0"),
        (b'{"inputs": [{"name": "x"}]}', ce_headers(), 400, "'image_bytes'"),
        (b"\x89PNG", ce_headers(content_type="image/png"), 400, "image 0"),
        (b"{}", {"Content-Type": "application/json"}, 400, "ce-specversion"),
        (b"{}", ce_headers(RESPONSE), 400, "predictions"),
        (b"x" * 2_000_001, ce_headers(), 413, "over the limit"),
    ],
)
def test_bad_events_are_refused_by_name(server, body, headers, status, message) -> None:
    got, text = call(server, "POST", "/", body, headers)
    assert got == status
    assert message in json.loads(text)["error"]
    assert drift(server)["images"] == 0


def test_unknown_paths_are_404(server) -> None:
    assert call(server, "GET", "/nope")[0] == 404
    assert call(server, "POST", "/other", b"{}", ce_headers())[0] == 404


def test_too_many_images_in_one_event(detector) -> None:
    monitor = DriftMonitor(detector, WINDOW, limits=Limits(max_images=2))
    for server in start(monitor):
        status, text = call(server, "POST", "/", v1([png(street(1))] * 3), ce_headers())
        assert status == 400 and "over 2" in json.loads(text)["error"]


def test_a_failing_trigger_is_reported_not_retried(detector) -> None:
    launcher = FakeLauncher(fail=True)
    clock = [1000.0]
    retrainer = Retrainer(launcher, consecutive=1, cooldown_s=60, clock=lambda: clock[0])
    monitor = DriftMonitor(detector, WINDOW, retrainer)
    dark = [png((street(300 + k) * 0.35).astype(np.uint8)) for k in range(WINDOW)]
    for server in start(monitor):
        for _ in range(3):  # three drifted windows inside the cooldown: one attempt
            assert call(server, "POST", "/", v1(dark), ce_headers())[0] == 202
        retrainer.wait_launched()
        runs = drift(server)["runs"]
        assert len(launcher.launched) == 1 and runs[0]["status"] == "failed"
        assert "KFP API unreachable" in runs[0]["detail"]
        clock[0] += 61  # after the cooldown, the next drifted window tries again
        assert call(server, "POST", "/", v1(dark), ce_headers())[0] == 202
        retrainer.wait_launched()
        assert len(launcher.launched) == 2
