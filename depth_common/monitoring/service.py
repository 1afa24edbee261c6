"""The drift monitor: an HTTP service that receives the payload logger's CloudEvents, keeps the
last ``window`` served images' features, tests them against the reference profile and starts a
retraining run when drift holds.

    python -m depth_common monitor --reference profile.json --port 8090 --window 64 \\
        --trigger none|local|kfp --cooldown-s 3600

- ``POST /``: a KServe payload-logger CloudEvent (binary mode, :mod:`.events`); 202 with the
  images counted, 400 naming what was wrong, 413 over ``max_body_bytes``;
- ``GET /drift``: JSON (``ready``, ``drift``, ``images``, ``score``, ``threshold``,
  ``detector``, the per-feature p-values, the retraining runs);
- ``GET /metrics``: Prometheus text (``depth_drift_detected``, ``depth_drift_score``,
  ``depth_monitor_events_total`` …), from a registry of its own;
- ``GET /healthz``: 200.

Memory is bounded: the window is a ring of ``window`` feature rows, a body is read only up to
``max_body_bytes``, images are decoded one at a time within ``max_pixels`` and at most
``max_images`` per event, the output statistics and run list are rings too, and at most
``max_connections`` requests are handled at once (the rest wait in the listen backlog).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from depth_common.errors import ConfigError, DataError, EventError
from depth_common.monitoring.drift import MIN_WINDOW, DriftResult, KSDriftDetector
from depth_common.monitoring.events import REQUEST, RESPONSE, Event, parse_event
from depth_common.monitoring.profile import image_features
from depth_common.monitoring.trigger import Retrainer
from depth_common.serving.codec import DEFAULT_MAX_PIXELS, load_rgb

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64
DEFAULT_PORT = 8090
MAX_OUTPUT_STATS = 1024  # response medians kept (a ring)


@dataclass(frozen=True)
class Limits:
    """What one client may make the monitor hold or do."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = 64  # per event
    max_connections: int = 16


class MonitorMetrics:
    """The Prometheus series, in a registry of their own (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.detected = Gauge("depth_drift_detected", "1 when the last window drifted", registry=r)
        self.score = Gauge(
            "depth_drift_score", "smallest BH-adjusted KS p-value of the window", registry=r
        )
        self.threshold = Gauge("depth_drift_threshold", "drift when the score is below", registry=r)
        self.window = Gauge("depth_monitor_window_images", "images in the window", registry=r)
        self.events = Counter(
            "depth_monitor_events", "CloudEvents received", ["type", "outcome"], registry=r
        )
        self.images = Counter("depth_monitor_images", "request images profiled", registry=r)
        self.median = Gauge(
            "depth_output_median_depth_m", "mean of recent responses' median depth", registry=r
        )
        self.retrains = Counter(
            "depth_monitor_retrain_runs", "retraining runs started", ["trigger"], registry=r
        )
        self.score.set(math.nan)


class DriftMonitor:
    """The window, the detector, the retrainer and the metrics (thread-safe)."""

    def __init__(
        self,
        detector: KSDriftDetector,
        window: int = DEFAULT_WINDOW,
        retrainer: Retrainer | None = None,
        limits: Limits | None = None,
    ) -> None:
        if window < MIN_WINDOW:
            raise ConfigError(f"--window: expected >= {MIN_WINDOW} images, got {window}")
        self.detector, self.window = detector, window
        self.retrainer = retrainer or Retrainer(None)
        self.limits = limits or Limits()
        self.metrics = MonitorMetrics()
        self.metrics.threshold.set(detector.alpha)
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self._medians: deque[float] = deque(maxlen=MAX_OUTPUT_STATS)
        self._since_window = 0
        self._windows = 0
        self._responses = 0
        self._seen = 0  # request images profiled since start
        self._result: DriftResult | None = None
        self._lock = threading.Lock()

    def features(self, images: list[bytes]) -> list[np.ndarray]:
        """One feature row per encoded image (400 naming the image that does not decode)."""
        if len(images) > self.limits.max_images:
            raise EventError(f"{len(images)} images in one event, over {self.limits.max_images}")
        rows = []
        for k, data in enumerate(images):
            rgb = load_rgb(data, source=f"image {k}", max_pixels=self.limits.max_pixels)
            if min(rgb.shape[:2]) < 8:
                raise EventError(f"image {k}: {rgb.shape[1]}x{rgb.shape[0]} is under 8x8 pixels")
            rows.append(image_features(rgb))
        return rows

    def record(self, event: Event) -> int:
        """Count ``event``; return the images it added to the window."""
        if event.type != REQUEST:
            with self._lock:
                self._responses += 1
                self._medians.extend(event.median_depths_m)
                if self._medians:
                    self.metrics.median.set(float(np.mean(self._medians)))
            return 0
        rows = self.features(event.images)  # decoding outside the lock
        for row in rows:
            self._add(row)
        with self._lock:
            self._seen += len(rows)
        self.metrics.images.inc(len(rows))
        return len(rows)

    def _add(self, row: np.ndarray) -> None:
        completed = None
        with self._lock:
            self._rows.append(row)
            self._since_window += 1
            if len(self._rows) == self.window:
                self._result = self.detector.test(np.stack(self._rows))
                if self._since_window >= self.window:  # a fresh, non-overlapping window
                    self._since_window, self._windows = 0, self._windows + 1
                    completed = self._result
            self._publish()
        if completed is not None:
            run = self.retrainer.observe(completed.drift, completed.score)
            if run is not None:
                self.metrics.retrains.labels(run.trigger).inc()

    def _publish(self) -> None:
        m, r = self.metrics, self._result
        m.window.set(len(self._rows))
        m.detected.set(1 if r is not None and r.drift else 0)
        m.score.set(r.score if r is not None else math.nan)

    def status(self) -> dict[str, Any]:
        """What ``GET /drift`` answers."""
        with self._lock:
            r, images = self._result, len(self._rows)
            windows, responses, seen = self._windows, self._responses, self._seen
            median = float(np.mean(self._medians)) if self._medians else None
        return {
            "ready": r is not None,
            "drift": bool(r.drift) if r else False,
            "images": images,
            "window": self.window,
            "score": r.score if r else None,
            "threshold": self.detector.alpha,
            "detector": self.detector.name,
            "feature": r.feature if r else None,
            "p_values": r.p_values if r else {},
            "images_seen": seen,
            "windows_completed": windows,
            "drifted_windows_in_a_row": self.retrainer.drifted_windows,
            "trigger": self.retrainer.kind,
            "cooldown_s": self.retrainer.cooldown_s,
            "runs": self.retrainer.snapshot(),
            "outputs": {"responses": responses, "mean_median_depth_m": median},
        }

    def metrics_text(self) -> bytes:
        return generate_latest(self.metrics.registry)


class _Handler(BaseHTTPRequestHandler):
    server: MonitorServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle or mid-body before its slot is freed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        monitor = self.server.monitor
        if self.path == "/drift":
            self._json(200, monitor.status())
        elif self.path == "/metrics":
            self._send(200, monitor.metrics_text(), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": f"GET {self.path}: not an endpoint (/drift, /metrics)"})

    def do_POST(self) -> None:  # noqa: N802
        monitor = self.server.monitor
        if self.path != "/":
            self.close_connection = True
            return self._json(404, {"error": f"POST {self.path}: events go to POST /"})
        body = self._body(monitor.limits.max_body_bytes)
        if body is None:
            return
        try:
            event = parse_event(dict(self.headers.items()), body)
            images = monitor.record(event)
        except DataError as exc:  # EventError and ImageDecodeError: the client's fault
            kind = self.headers.get("ce-type", "")
            label = kind if kind in (REQUEST, RESPONSE) else "other"  # bounded label values
            monitor.metrics.events.labels(label, "refused").inc()
            return self._json(400, {"error": str(exc)})
        except Exception as exc:  # a bug of ours: answer 500, keep serving
            log.exception("event %s", self.headers.get("ce-id", "?"))
            return self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
        monitor.metrics.events.labels(event.type, "accepted").inc()
        self._json(202, {"accepted": event.id, "images": images})

    def _body(self, limit: int) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._json(411 if length is None else 400, {"error": "Content-Length: required"})
            return None
        if int(length) > limit:
            # A body up to a few times the limit is read and dropped first, so the client, still
            # sending, gets the 413 rather than a reset; a larger one is cut off unread.
            if int(length) <= DRAIN_FACTOR * limit:
                _drain(self.rfile, int(length))
            self.close_connection = True
            self._json(413, {"error": f"body of {length} bytes is over the limit of {limit}"})
            return None
        return self.rfile.read(int(length))


class MonitorServer(ThreadingHTTPServer):
    """The monitor's HTTP server; at most ``limits.max_connections`` requests at once."""

    daemon_threads = True

    def __init__(self, monitor: DriftMonitor, host: str = "127.0.0.1", port: int = 0) -> None:
        self.monitor = monitor
        self._slots = threading.BoundedSemaphore(monitor.limits.max_connections)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # the accept loop waits here: connections beyond it queue
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_monitor(
    monitor: DriftMonitor, host: str, port: int, ready: Callable[[str], None] = print
) -> None:
    """Serve until Ctrl-C / SIGTERM."""

    server = MonitorServer(monitor, host, port)

    def _stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, _stop)
    ready(f"drift monitor on {server.url} (POST / events, GET /drift, GET /metrics)")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        signal.signal(signal.SIGTERM, previous)


#: Over-limit bodies up to this many times the limit are drained before the 413 (see _body).
DRAIN_FACTOR = 4


def _drain(stream: Any, length: int, chunk: int = 1 << 16) -> None:
    """Read and drop ``length`` bytes of ``stream`` (less if the client stops sending)."""
    while length > 0:
        data = stream.read(min(chunk, length))
        if not data:
            return
        length -= len(data)
