"""The transformer's payload logger: CloudEvents as KServe sends them, never in a request's way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from depth_common.serving.payload_logger import (
    REQUEST,
    RESPONSE,
    LoggedPayload,
    PayloadLogger,
    PayloadLogMiddleware,
)


class Sink(ThreadingHTTPServer):
    """Records what is posted to it; ``delay_s`` makes it a slow monitor."""

    daemon_threads = True

    def __init__(self, delay_s: float = 0.0) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        self.delay_s = delay_s
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(sink.delay_s)
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def url(server: Sink) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/"


async def app(scope: dict, receive, send) -> None:
    """A model server: reads the body in chunks, answers 200 JSON (400 for an empty body)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status = 200 if body else 400
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b'{"predictions": [', "more_body": True})
    await send({"type": "http.response.body", "body": b"]}"})


def call(middleware: PayloadLogMiddleware, method: str, path: str, chunks: list[bytes]) -> None:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        pass

    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"abc")]
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(middleware(scope, receive, send))


def test_served_requests_and_responses_become_cloudevents(sink) -> None:
    logger = PayloadLogger(url(sink), service="depth")
    middleware = PayloadLogMiddleware(app, logger)
    call(middleware, "POST", "/v1/models/depth:predict", [b'{"instances"', b": []}"])
    call(middleware, "POST", "/v2/models/depth/infer", [b""])  # a 400: not served, not logged
    call(middleware, "GET", "/v2/health/ready", [b""])
    logger.flush()
    assert [h["ce-type"] for h, _ in sink.events] == [REQUEST, RESPONSE]
    (req_headers, req_body), (_, resp_body) = sink.events
    assert req_body == b'{"instances": []}' and resp_body == b'{"predictions": []}'
    assert req_headers["ce-id"] == "abc" and req_headers["ce-specversion"] == "1.0"
    assert req_headers["ce-inferenceservicename"] == "depth"
    assert req_headers["ce-endpoint"] == "/v1/models/depth:predict"
    assert req_headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in req_headers  # a JSON body
    logger.close()


def test_binary_v2_header_length_is_passed_on(sink) -> None:
    logger = PayloadLogger(url(sink))
    logger.submit(LoggedPayload(REQUEST, "x", b'{"inputs": []}bin', "application/octet-stream",
                                "/v2/models/depth/infer", "14"))  # fmt: skip
    logger.flush()
    ((headers, _),) = sink.events
    assert headers["inference-header-content-length"] == "14"
    logger.close()


def test_a_dead_monitor_fails_no_request() -> None:
    logger = PayloadLogger("http://127.0.0.1:9/", timeout_s=0.5)  # discard port: refused
    middleware = PayloadLogMiddleware(app, logger)
    call(middleware, "POST", "/v1/models/depth:predict", [b"{}"])
    logger.flush()
    assert logger.failed == 2 and logger.sent == 0


def test_a_slow_monitor_never_blocks_submit() -> None:
    slow = Sink(delay_s=0.5)
    thread = threading.Thread(target=slow.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        logger = PayloadLogger(url(slow), queue_size=4)
        payload = LoggedPayload(REQUEST, "x", b"{}", "application/json", "/")
        t0 = time.perf_counter()
        accepted = [logger.submit(payload) for _ in range(50)]
        assert time.perf_counter() - t0 < 0.1  # 50 submits while the monitor takes 0.5 s each
        assert sum(accepted) <= 5 and logger.dropped >= 45
    finally:
        slow.shutdown()
        slow.server_close()
        thread.join(10)


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="--logger_url"):
        PayloadLogger("file:///etc/passwd")


def test_a_kept_alive_connection_the_monitor_dropped_is_reopened() -> None:
    class Closing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # announces keep-alive, then hangs up: an idle timeout

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Closing)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        logger = PayloadLogger(f"http://127.0.0.1:{server.server_address[1]}/")
        for k in range(3):
            logger.submit(LoggedPayload(REQUEST, str(k), b"{}", "application/json", "/"))
            logger.flush()
        assert (logger.sent, logger.failed) == (3, 0)
        logger.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
