"""Payload logging from the local transformer: every served request and its response, as the
CloudEvents KServe's own payload logger sends (binary mode), posted to a monitor URL.

:class:`PayloadLogMiddleware` is ASGI middleware in front of the transformer's app: it copies
the body of each ``POST …:predict`` / ``…/infer`` request and of its response, and when the
response is a 200 hands both to a :class:`PayloadLogger`. The logger is fire and forget: a
bounded queue (a full queue drops the event and counts it) drained by one daemon thread that
posts over one kept-alive connection with a short timeout, so a slow or dead monitor never
blocks nor fails a request. (A drain task on the server's event loop with ``httpx`` measured no
cheaper: ``bench/bench_payload_logger.py``.) On a cluster KServe's ``logger`` field does the same
job (``manifests/base/inferenceservice.yaml``).
"""

from __future__ import annotations

import http.client
import logging
import queue
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_QUEUE = 256
_STOP = object()


@dataclass(frozen=True)
class LoggedPayload:
    kind: str  # REQUEST or RESPONSE
    event_id: str
    body: bytes
    content_type: str
    endpoint: str  # the path served
    header_length: str = ""  # Inference-Header-Content-Length of a binary v2 body, passed on


class PayloadLogger:
    """Posts :class:`LoggedPayload` events to ``url`` from a background thread."""

    def __init__(
        self,
        url: str,
        service: str = "depth",
        namespace: str = "local",
        source: str = "http://127.0.0.1/depth-transformer",
        queue_size: int = DEFAULT_QUEUE,
        timeout_s: float = 2.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--logger_url {url!r}: expected an http(s):// URL")
        self.url, self.service, self.namespace, self.source = url, service, namespace, source
        self.timeout_s = timeout_s
        self._target = urllib.parse.urlsplit(url)
        self._conn: http.client.HTTPConnection | None = None
        self.sent = self.dropped = self.failed = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._drain, name="payload-logger", daemon=True)
        self._thread.start()

    def submit(self, payload: LoggedPayload) -> bool:
        """Queue ``payload`` without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("payload logger: queue full, %d events dropped", self.dropped)
            return False
        return True

    def headers(self, p: LoggedPayload) -> dict[str, str]:
        return {
            "ce-specversion": "1.0",
            "ce-id": p.event_id,
            "ce-source": self.source,
            "ce-type": p.kind,
            "ce-time": datetime.now(UTC).isoformat(),
            "ce-inferenceservicename": self.service,
            "ce-namespace": self.namespace,
            "ce-endpoint": p.endpoint,
            "Content-Type": p.content_type or "application/json",
            **({HEADER_LENGTH: p.header_length} if p.header_length else {}),
        }

    def _connection(self) -> http.client.HTTPConnection:
        # One kept-alive connection for the worker: a TCP handshake per event would cost the
        # serving process more CPU than the post itself.
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._target.scheme == "https" else None
            kind = kind or http.client.HTTPConnection
            self._conn = kind(self._target.netloc, timeout=self.timeout_s)
        return self._conn

    def _post(self, p: LoggedPayload) -> None:
        path = self._target.path or "/"
        try:
            for attempt in (1, 2):  # a kept-alive connection the monitor closed: reconnect once
                try:
                    conn = self._connection()
                    conn.request("POST", path, body=p.body, headers=self.headers(p))
                    resp = conn.getresponse()
                    resp.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self._close_connection()
                    if attempt == 2:
                        raise
            if resp.status >= 300:
                raise OSError(f"HTTP {resp.status} {resp.reason}")
            self.sent += 1
        except (OSError, http.client.HTTPException) as exc:
            self._close_connection()
            self.failed += 1
            if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                log.warning("payload logger: %s: %s (%d failed)", self.url, exc, self.failed)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    self._close_connection()
                    return
                self._post(item)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the queue is empty (tests, shutdown); gives up after ``timeout_s``."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout_s)

    def close(self) -> None:
        try:
            self._queue.put(_STOP, timeout=self.timeout_s)
        except queue.Full:
            return
        self._thread.join(self.timeout_s * 2)


def _logged_path(method: str, path: str) -> bool:
    return method == "POST" and (path.endswith(":predict") or path.endswith("/infer"))


class PayloadLogMiddleware:
    """ASGI middleware: hands each served (200) predict/infer request and response to
    ``logger`` (a copy of the bodies; at most the server's request-size limit is held)."""

    def __init__(self, app: Any, logger: PayloadLogger) -> None:
        self.app, self.logger = app, logger

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _logged_path(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_chunks: list[bytes] = []
        response_chunks: list[bytes] = []
        response: dict[str, Any] = {}

        async def tee_receive() -> dict:
            message = await receive()
            if message.get("type") == "http.request":
                request_chunks.append(message.get("body", b""))
            return message

        async def tee_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = {
                    k.decode("latin-1").lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                }
            elif message["type"] == "http.response.body" and response.get("status") == 200:
                response_chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, tee_receive, tee_send)
        if response.get("status") != 200:
            return
        event_id = headers.get("x-request-id") or str(uuid.uuid4())
        path, length = scope["path"], HEADER_LENGTH.lower()
        request_body = b"".join(request_chunks)
        out_headers = response.get("headers", {})
        self.logger.submit(
            LoggedPayload(
                REQUEST, event_id, request_body, headers.get("content-type", ""), path,
                headers.get(length, ""),
            )
        )  # fmt: skip
        self.logger.submit(
            LoggedPayload(
                RESPONSE, event_id, b"".join(response_chunks), out_headers.get("content-type", ""),
                path, out_headers.get(length, ""),
            )
        )  # fmt: skip
