"""The local serving stack: Triton, and the image transformer in front of it, on 127.0.0.1.

:class:`LocalTransformer` runs :mod:`depth_common.serving.transformer_server` as its own
process (kserve and ``tritonclient.grpc`` cannot share one), supervised like Triton (restarted
if it dies, stopped with its parent). :func:`serve_forever` is ``python -m depth_common serve``:
both servers until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from depth_common.config import DeployConfig
from depth_common.errors import TritonServerError
from depth_common.serving.codec import DEFAULT_MAX_PIXELS
from depth_common.serving.server import (
    LocalTritonServer,
    ManagedServer,
    ensure_port_free,
    free_port,
    scrubbed_env,
    tail,
    wait_http_ok,
)
from depth_common.serving.supervisor import SupervisedProcess

log = logging.getLogger(__name__)

DEFAULT_TRANSFORMER_PORT = 8080  # KServe's transformer container port


class LocalTransformer(ManagedServer):
    """The KServe transformer on ``127.0.0.1:port`` calling Triton's gRPC at ``predictor_url``.

    ``port`` 0 picks a free one; a port given explicitly must be free. ``log_path`` defaults to
    a file in the transformer's temporary directory (deleted at :meth:`stop`).
    """

    def __init__(
        self,
        predictor_url: str,
        port: int = 0,
        *,
        model_name: str = "depth",
        predictor_model: str = "depth",
        log_path: str | Path | None = None,
        ready_timeout_s: float = 60.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        limits: DeployConfig | None = None,
        logger_url: str | None = None,
    ) -> None:
        self.logger_url = logger_url  # the drift monitor's URL: payload logging on
        self.predictor_url = predictor_url
        self.limits = limits if limits is not None else DeployConfig()  # params' deploy limits
        self.port = self._requested = port
        self.model_name, self.predictor_model = model_name, predictor_model
        self._log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.max_pixels = max_pixels
        self._process: SupervisedProcess | None = None

    @property
    def url(self) -> str:
        """``127.0.0.1:PORT`` (no scheme, like :attr:`LocalTritonServer.http_url`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The supervisor's pid (the process group of the transformer)."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        if self._process is None:
            raise TritonServerError("the transformer has not been started: no log yet")
        return self._process.log_path

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "depth_common.serving.transformer_server",
            "--predictor_host",
            self.predictor_url,
            "--predictor_model",
            self.predictor_model,
            "--model_name",
            self.model_name,
            "--host",
            "127.0.0.1",
            "--http_port",
            str(self.port),
            "--max_pixels",
            str(self.max_pixels),
            *self.limits.transformer_args(),
            *(["--logger_url", self.logger_url] if self.logger_url else []),
        ]

    def start(self) -> LocalTransformer:
        if self._process is not None:
            raise TritonServerError("transformer already started")
        if self._requested:
            ensure_port_free(self._requested, "transformer HTTP")
        self.port = self._requested or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="depth-transformer-"))
        self._process = SupervisedProcess(
            "transformer",
            self._command(),
            env=scrubbed_env(python_path=True),
            log_path=self._log_path or workdir / "transformer.log",
            workdir=workdir,
        )
        atexit.register(self.stop)
        try:
            self._process.start()
            ready = f"http://{self.url}/v2/models/{self.model_name}/ready"
            wait_http_ok(ready, self._process, self.ready_timeout_s, "the transformer")
        except BaseException:
            self.stop()
            raise
        log.info("transformer ready: http %s → Triton gRPC %s", self.url, self.predictor_url)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop()
        atexit.unregister(self.stop)


def _banner(server: LocalTritonServer, transformer: LocalTransformer | None) -> str:
    model = server.models[0]
    lines = [
        f"Triton ready: http://{server.http_url} grpc {server.grpc_url} "
        f"metrics http://{server.metrics_url}/metrics models {server.models}",
        f"log: {server.log_path}",
        f"try: curl http://{server.http_url}/v2/models/{model}",
    ]
    if transformer is not None:
        lines += [
            f"transformer ready: http://{transformer.url} (images in, depth out; "
            f"log {transformer.log_path})",
            f"try: curl -s http://{transformer.url}/v1/models/{transformer.model_name}:predict "
            "-H 'Content-Type: image/jpeg' --data-binary @photo.jpg",
        ]
    return "\n".join([*lines, "Ctrl-C to stop"])


def serve_forever(
    repository: str | Path,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    log_path: str | Path | None = None,
    transformer_port: int | None = DEFAULT_TRANSFORMER_PORT,
    limits: DeployConfig | None = None,
    monitor_url: str | None = None,
) -> None:
    """Triton (and, unless ``transformer_port`` is None, the transformer) until Ctrl-C;
    ``limits``: the transformer's (``params.deploy``; default: their defaults)."""
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _on_signal)
    if transformer_port:  # refuse before Triton takes a minute to load models
        ensure_port_free(transformer_port, "transformer HTTP")
    server = LocalTritonServer(repository, http_port, grpc_port, metrics_port, log_path=log_path)
    transformer = None
    try:
        with server:
            if transformer_port is not None:
                transformer_log = Path(log_path).with_name("transformer.log") if log_path else None
                transformer = LocalTransformer(
                    server.grpc_url,
                    transformer_port,
                    log_path=transformer_log,
                    limits=limits,
                    logger_url=monitor_url,
                ).start()
            print(_banner(server, transformer), flush=True)
            while not stop and server.running() and (transformer is None or transformer.running()):
                time.sleep(0.5)
            if not stop:
                which = "tritonserver" if not server.running() else "the transformer"
                path = server.log_path if not server.running() else transformer.log_path
                raise TritonServerError(
                    f"{which} stopped after its restarts ran out; last lines of {path}:\n"
                    + tail(path)
                )
    except KeyboardInterrupt:
        pass
    finally:
        if transformer is not None:
            transformer.stop()
        signal.signal(signal.SIGTERM, previous)
