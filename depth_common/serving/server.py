"""A real local Triton Inference Server: the ``tritonserver`` bundled in ``nvidia-pytriton``.

That build has the Python backend only, so :class:`LocalTritonServer` serves a *local copy* of
the cluster repository (in a temporary directory it owns): each model's ``config.pbtxt`` keeps
its name, inputs, outputs, ``max_batch_size``, ``dynamic_batching``, instance count and warmup,
but says ``backend: "python"`` instead of ``platform: "onnxruntime_onnx"``, and each version
directory gets a ``model.py`` (:mod:`depth_common.serving.python_backend`) that runs the same
``model.onnx`` (a symlink, not a copy) with ONNX Runtime. The cluster repository is never
written to. GPU-only models (``tensorrt_plan``, ``KIND_GPU`` instance groups) are left out of
the local copy with a logged note.

The server binds 127.0.0.1 only, logs to a file and is stopped with SIGTERM (then SIGKILL
after a grace period); its whole process group (the Python-backend stubs) goes with it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

log = logging.getLogger(__name__)

# The platforms/backends this launcher can run through the Python backend + ONNX Runtime.
_ONNX_PLATFORMS = {"onnxruntime_onnx"}
_ONNX_BACKENDS = {"onnxruntime"}


class TritonServerError(RuntimeError):
    """The local Triton server could not be prepared, started or stopped cleanly."""


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


def _runs_on_cpu(config: model_config_pb2.ModelConfig) -> str | None:
    """``None`` if the python-backend copy can serve ``config``, else why not."""
    if config.platform not in _ONNX_PLATFORMS and config.backend not in _ONNX_BACKENDS:
        return f"platform {config.platform or config.backend!r} is not ONNX (GPU-only here)"
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    if any(g.kind == gpu for g in config.instance_group):
        return "its instance_group asks for KIND_GPU"
    return None


def localize_model_config(
    config: model_config_pb2.ModelConfig, intra_op_threads: int = 0
) -> model_config_pb2.ModelConfig:
    """The same config, run by the Python backend + ONNX Runtime instead of Triton's ORT.

    Everything else (name, inputs, outputs, max_batch_size, dynamic_batching, instance count,
    warmup, version policy, parameters) is kept. ``onnx_file`` is recorded as a parameter for
    ``model.py``. ``intra_op_threads`` > 0 sets ``intra_op_thread_count`` (the parameter name
    Triton's ONNX Runtime backend reads); 0 keeps the repository's own setting, or where it has
    none, sets the thread policy's count for this process's CPUs over the instances.
    """
    local = model_config_pb2.ModelConfig()
    local.CopyFrom(config)
    local.ClearField("platform")
    local.backend = "python"
    onnx_file = config.default_model_filename or "model.onnx"
    local.ClearField("default_model_filename")  # the python backend's file is model.py
    local.parameters["onnx_file"].string_value = onnx_file
    if intra_op_threads <= 0 and "intra_op_thread_count" not in config.parameters:
        # The CPUs this server may use, shared by the model's instances (thread policy).
        from depth_common.threads import decide_threads

        instances = sum(g.count or 1 for g in config.instance_group) or 1
        intra_op_threads = decide_threads(share=instances).intra_op
    if intra_op_threads > 0:
        local.parameters["intra_op_thread_count"].string_value = str(intra_op_threads)
    # ORT's TensorRT/CUDA accelerators do not exist here; the config must not ask for them.
    local.optimization.ClearField("execution_accelerators")
    for group in local.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
    return local


def build_local_repository(
    repository: str | Path, out_dir: str | Path, intra_op_threads: int = 0
) -> list[str]:
    """Write the Python-backend copy of ``repository`` into ``out_dir``; return model names.

    ``repository`` is only read. Each version's ONNX file is symlinked (never copied: a
    vit_base model is hundreds of MB) and gets ``model.py`` beside it.
    """
    repository = Path(repository).resolve()
    out_dir = Path(out_dir)
    if not repository.is_dir():
        raise TritonServerError(
            f"{repository}: model repository is not a directory (build one with "
            "`python -m depth_common triton-repo`, or run the pipeline: `make run`)"
        )
    # Imported here: depth_common.export imports torch, which `serve --help` should not wait for.
    from depth_common.export.triton import parse_model_config

    template = Path(__file__).with_name("python_backend.py")
    served: list[str] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            log.info("local Triton: skipping %s (no config.pbtxt)", model_dir.name)
            continue
        config = parse_model_config(config_path)
        why_not = _runs_on_cpu(config)
        if why_not:
            log.warning("local Triton: leaving out model %r: %s", model_dir.name, why_not)
            continue
        onnx_file = config.default_model_filename or "model.onnx"
        versions = sorted(
            p
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / onnx_file).is_file()
        )
        if not versions:
            raise TritonServerError(
                f"{model_dir}: no version directory holds {onnx_file} (expected {model_dir}/1/{onnx_file})"
            )
        local_dir = out_dir / model_dir.name
        for version in versions:
            (local_dir / version.name).mkdir(parents=True)
            os.symlink((version / onnx_file).resolve(), local_dir / version.name / onnx_file)
            shutil.copyfile(template, local_dir / version.name / "model.py")
        local = localize_model_config(config, intra_op_threads)
        (local_dir / "config.pbtxt").write_text(text_format.MessageToString(local))
        served.append(config.name or model_dir.name)
    if not served:
        raise TritonServerError(
            f"{repository}: no model the local (CPU, Python-backend) Triton can serve"
        )
    return served


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


def _server_env(install: TritonInstall, ort_threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # The stub must find this interpreter's site-packages (onnxruntime, numpy): venv bin first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # The stub links libpython3.11; this interpreter's own copy must win over the system one,
    # else the stub mixes two builds (wrong version, _thread.RLock errors).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    if ort_threads is not None:
        env["DEPTH_ORT_THREADS"] = str(ort_threads)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    Covers what ``stop()``/atexit cannot: the Python process killed with SIGKILL (a test
    timeout, the OOM killer) would otherwise leave tritonserver holding its ports. The signal
    follows the *thread* that started the server, so start it from a long-lived thread.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class LocalTritonServer:
    """The bundled ``tritonserver`` on 127.0.0.1 serving a Python-backend copy of a repository.

    Ports of 0 are replaced by free ones at :meth:`start`. ``log_path`` defaults to
    ``triton.log`` in the server's own temporary directory (deleted at :meth:`stop`; pass a
    path to keep the log). ``ort_threads`` sets ONNX Runtime intra-op threads per model
    instance (``None``: the repository's parameter, else ORT's default). On :meth:`stop`
    Triton gets ``exit_timeout_s`` to finish in-flight requests (and waits that long for
    clients that keep a connection open), then SIGKILL follows after ``stop_timeout_s``.

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
    ) -> None:
        self.repository = Path(repository)
        self._requested = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._requested
        self._log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.ort_threads = ort_threads
        self.exit_timeout_s = exit_timeout_s
        self.stop_timeout_s = max(stop_timeout_s, exit_timeout_s + 5.0)
        self.models: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    # -- addresses ---------------------------------------------------------------------------
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
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalTritonServer:
        """Prepare the local repository, start the server, wait until it is ready."""
        if self._proc is not None:
            raise TritonServerError("server already started")
        install = find_triton()
        self._workdir = Path(tempfile.mkdtemp(prefix="depth-triton-"))
        atexit.register(self.stop)  # no orphan server if the caller forgets stop()
        try:
            self.models = build_local_repository(self.repository, self._workdir / "repository")
            backends = _backend_directory(install, self._workdir / "backends")
            # A port picked by free_port() can be taken before tritonserver binds it: retry.
            for attempt in range(3):
                self._launch(install, backends)
                try:
                    self._wait_ready()
                    break
                except TritonServerError as exc:
                    in_use = "already in use" in _tail(self.log_path, 200).lower()
                    self._terminate()
                    # Only ports picked here can be re-picked; a port the caller chose stays taken.
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

    def _launch(self, install: TritonInstall, backends: Path) -> None:
        http, grpc, metrics = self._requested
        self.http_port = http or free_port()
        self.grpc_port = grpc or free_port()
        self.metrics_port = metrics or free_port()
        cmd = [
            str(install.binary),
            f"--model-repository={self._workdir / 'repository'}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Triton waits this long for in-flight requests and idle keep-alive connections.
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            # Own process group: stop() can reach the Python-backend stubs too.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=_server_env(install, self.ort_threads),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TritonServerError(
            f"tritonserver not ready after {self.ready_timeout_s:.0f} s; "
            f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def _terminate(self) -> None:
        """SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL the whole process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver ignored SIGTERM for %.0f s: killing", self.stop_timeout_s)
        # Whatever is left in the group (a stuck stub, or the server itself) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """Stop the server (idempotent) and delete the temporary local repository."""
        self._terminate()
        atexit.unregister(self.stop)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(
    repository: str | Path,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    log_path: str | Path | None = None,
) -> None:
    """Run the server in the foreground until Ctrl-C / SIGTERM (``python -m depth_common serve``)."""
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _on_signal)
    server = LocalTritonServer(repository, http_port, grpc_port, metrics_port, log_path=log_path)
    try:
        with server:
            print(
                f"Triton ready: http://{server.http_url} grpc {server.grpc_url} "
                f"metrics http://{server.metrics_url}/metrics models {server.models}\n"
                f"log: {server.log_path}\n"
                f"try: curl http://{server.http_url}/v2/models/{server.models[0]}\n"
                "Ctrl-C to stop",
                flush=True,
            )
            while not stop and server.running():
                time.sleep(0.5)
            if not server.running() and not stop:
                raise TritonServerError(
                    f"tritonserver exited unexpectedly; last lines of {server.log_path}:\n"
                    + _tail(server.log_path)
                )
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
