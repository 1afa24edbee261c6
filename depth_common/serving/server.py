"""A real local Triton Inference Server: the ``tritonserver`` bundled in ``nvidia-pytriton``.

:class:`LocalTritonServer` serves a Python-backend copy of a model repository
(:mod:`depth_common.serving.repository`: built from an allow-list, the repository is only
read) from a temporary directory ``depth-triton-*``. Hardening, each for a failure seen:

- 127.0.0.1 only; a port that is already taken is refused before start (a second server must
  not report the first one's readiness as its own);
- a scrubbed environment: the server and its Python stubs see ``PATH``, the library paths,
  locale, ``HOME``/``TMPDIR`` and thread settings, never a token or a cloud key;
- the shared-memory, statistics, repository, trace and logging APIs are off, over HTTP and
  gRPC, so a web page or another local client cannot register shared memory or load models.
  Triton has no switch to turn an API off, only a header a request must carry; the header
  required is one no HTTP or gRPC client can send (its name has a space), so no key is on the
  command line, which any local user reads in ``/proc/PID/cmdline``. Counts of inferences and
  executions are on the (unrestricted, 127.0.0.1) metrics endpoint;
- the server runs under :mod:`depth_common.serving.supervisor` in a process group of its own:
  a crashed ``tritonserver`` is restarted with bounded backoff (logged), and when the Python
  process that started it dies, even by SIGKILL, the supervisor stops the server and its stubs
  and removes the temporary directory and the server's ``/dev/shm`` regions.
"""

from __future__ import annotations

# pytriton is imported where a server starts: local_stack and deploy.local import this
# module for its settings and paths.
import atexit
import errno
import logging
import os
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from depth_common.errors import TritonServerError
from depth_common.serving.repository import build_local_repository
from depth_common.serving.supervisor import SupervisedProcess

log = logging.getLogger(__name__)

__all__ = [
    "LocalTritonServer",
    "TritonInstall",
    "TritonServerError",
    "build_local_repository",
    "ensure_port_free",
    "find_triton",
    "free_port",
    "scrubbed_env",
]

#: APIs no client can use; health, metadata, model-config and inference stay open (clients need
#: them).
RESTRICTED_APIS = ("shared-memory", "statistics", "model-repository", "trace", "logging")
#: The header they require: a name with a space is no valid HTTP field name or gRPC metadata key,
#: so no request carries it (nothing secret: the command line is world-readable).
UNSENDABLE_HEADER = ("depth-api", "off\n")
#: Environment variables a local server may see (everything else, tokens and keys included,
#: is dropped). Thread knobs pass so ORT/OpenMP settings of the caller still apply.
_ENV_ALLOWED = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_ENV_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class TritonInstall:
    """Paths of the ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel."""

    binary: Path
    libs: Path
    python_backend: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this Python's minor version


def find_triton() -> TritonInstall:
    """Locate the bundled server; raise :class:`TritonServerError` naming what is missing."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonServerError(
            "the local Triton server needs the nvidia-pytriton wheel (pip install nvidia-pytriton)"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        libs=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / minor / "triton_python_backend_stub",
    )
    for name, path in vars(install).items():
        if not path.exists():
            raise TritonServerError(f"nvidia-pytriton install: {name} not found at {path}")
    return install


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`TritonServerError` if something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise TritonServerError(
                f"{what} port {host}:{port} is already in use (another server?); stop it or "
                "pick another port (0 = a free one)"
            ) from None


def scrubbed_env(extra: dict[str, str] | None = None, *, python_path: bool = False) -> dict:
    """The allow-listed environment for a local server process (see the module docstring).

    ``PATH`` starts with this interpreter's ``bin`` (the Python stub must find this venv's
    onnxruntime and numpy); ``python_path`` passes ``PYTHONPATH`` (a worktree checkout must
    win over the installed package in the transformer). ``extra`` is added last.
    """
    env = {k: os.environ[k] for k in (*_ENV_ALLOWED, *_ENV_THREADS) if k in os.environ}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if python_path and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra or {})
    return env


def _triton_env(install: TritonInstall, ort_threads: int | None) -> dict[str, str]:
    # The stub links libpython3.11; this interpreter's own copy must win over the system one,
    # else the stub mixes two builds (wrong version, _thread.RLock errors).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = os.pathsep.join(p for p in (libdir, str(install.libs)) if p)
    extra = {"LD_LIBRARY_PATH": libs}
    if ort_threads is not None:
        extra["DEPTH_ORT_THREADS"] = str(ort_threads)
    return scrubbed_env(extra)


def _backend_directory(install: TritonInstall, out_dir: Path) -> Path:
    """``--backend-directory`` layout: ``python/`` with the backend library, utils and stub."""
    python = out_dir / "python"
    python.mkdir(parents=True)
    for src in (
        install.python_backend / "libtriton_python.so",
        install.python_backend / "triton_python_backend_utils.py",
        install.stub,
    ):
        shutil.copy2(src, python / src.name)
    return out_dir


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def wait_http_ok(url: str, process: SupervisedProcess, timeout_s: float, what: str) -> None:
    """Poll ``url`` until it answers 200 while ``process`` runs; raise with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.running():
            raise TritonServerError(
                f"{what} exited with code {process.exit_code()} before it was ready; "
                f"last lines of {process.log_path}:\n{tail(process.log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200 and process.running():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TritonServerError(
        f"{what} not ready after {timeout_s:.0f} s; "
        f"last lines of {process.log_path}:\n{tail(process.log_path)}"
    )


class ManagedServer:
    """``with server:`` starts it and always stops it (subclasses define start/stop)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalTritonServer(ManagedServer):
    """The bundled ``tritonserver`` on 127.0.0.1 serving a Python-backend copy of a repository.

    Ports of 0 are replaced by free ones at :meth:`start`; a port given explicitly must be free.
    ``log_path`` defaults to ``triton.log`` in the server's temporary directory (deleted at
    :meth:`stop`). ``ort_threads`` sets ONNX Runtime intra-op threads per model instance
    (``None``: the repository's parameter, else ORT's default). On :meth:`stop` Triton gets
    ``exit_timeout_s`` for in-flight requests, then SIGKILL follows after ``stop_timeout_s``.
    ``max_restarts`` bounds restarts after crashes (within a minute).

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        repository: str | Path,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: str | Path | None = None,
        ready_timeout_s: float = 60.0,
        ort_threads: int | None = None,
        exit_timeout_s: int = 5,
        stop_timeout_s: float = 20.0,
        max_restarts: int = 5,
    ) -> None:
        self.repository = Path(repository)
        self._requested = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._requested
        self._log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.ort_threads = ort_threads
        self.exit_timeout_s = exit_timeout_s
        self.stop_timeout_s = max(stop_timeout_s, exit_timeout_s + 5.0)
        self.max_restarts = max_restarts
        self.models: list[str] = []
        self._process: SupervisedProcess | None = None
        self._workdir: Path | None = None

    # -- addresses and state -----------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """``127.0.0.1:PORT`` (tritonclient's form, no scheme)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        if self._log_path is not None:
            return self._log_path
        if self._workdir is None:
            raise TritonServerError("the server has not been started: no log yet")
        return self._workdir / "triton.log"

    @property
    def pid(self) -> int | None:
        """The supervisor's pid: the process group of the server and its Python stubs."""
        return self._process.pid if self._process else None

    @property
    def triton_pid(self) -> int | None:
        """The current ``tritonserver`` process (it changes when it is restarted)."""
        return self._process.child_pid() if self._process else None

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted a crashed ``tritonserver``."""
        return self._process.restarts() if self._process else 0

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalTritonServer:
        """Prepare the local repository, start the supervised server, wait until it is ready."""
        if self._process is not None:
            raise TritonServerError("server already started")
        install = find_triton()
        for port, what in zip(self._requested, ("HTTP", "gRPC", "metrics"), strict=True):
            if port:
                ensure_port_free(port, f"Triton {what}")
        atexit.register(self.stop)  # no orphan server if the caller forgets stop()
        try:
            # A port picked by free_port() can be taken before tritonserver binds it: retry.
            for attempt in range(3):
                self._launch(install)
                try:
                    wait_http_ok(
                        f"http://{self.http_url}/v2/health/ready",
                        self._process,
                        self.ready_timeout_s,
                        "tritonserver",
                    )
                    break
                except TritonServerError as exc:
                    in_use = "already in use" in tail(self.log_path, 200).lower()
                    self._terminate()
                    if not in_use or attempt == 2 or all(self._requested):
                        raise exc from None
                    log.warning("local Triton: a port was taken, retrying with new ports")
        except BaseException:
            self.stop()
            raise
        log.info(
            "local Triton ready: http %s grpc %s models %s (log %s)",
            self.http_url,
            self.grpc_url,
            self.models,
            self.log_path,
        )
        return self

    def _command(self, install: TritonInstall, workdir: Path) -> list[str]:
        restricted = f"{','.join(RESTRICTED_APIS)}:{UNSENDABLE_HEADER[0]}={UNSENDABLE_HEADER[1]}"
        return [
            str(install.binary),
            f"--model-repository={workdir / 'repository'}",
            f"--backend-directory={workdir / 'backends'}",
            # The Python backend's shared-memory regions carry the workdir's unique name, so
            # the supervisor can remove exactly this server's regions after a crash.
            f"--backend-config=python,shm-region-prefix-name={workdir.name}-",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Triton waits this long for in-flight requests and idle keep-alive connections.
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]

    def _launch(self, install: TritonInstall) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="depth-triton-"))
        self._workdir = workdir
        self.models = build_local_repository(self.repository, workdir / "repository")
        _backend_directory(install, workdir / "backends")
        http, grpc, metrics = self._requested
        self.http_port = http or free_port()
        self.grpc_port = grpc or free_port()
        self.metrics_port = metrics or free_port()
        self._process = SupervisedProcess(
            "tritonserver",
            self._command(install, workdir),
            env=_triton_env(install, self.ort_threads),
            log_path=self.log_path,
            workdir=workdir,
            shm_prefix=f"{workdir.name}-",
            max_restarts=self.max_restarts,
            stop_timeout_s=self.stop_timeout_s,
        )
        self._process.start()

    def _terminate(self) -> None:
        """Stop the supervisor (server, stubs, workdir, shm regions all go with it)."""
        process, self._process = self._process, None
        if process is not None:
            process.stop()

    def stop(self) -> None:
        """Stop the server (idempotent) and delete the temporary local repository."""
        self._terminate()
        atexit.unregister(self.stop)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
