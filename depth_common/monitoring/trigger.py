"""Retraining when drift holds: after ``M`` consecutive drifted windows, start one run.

Two ways to start it, one protocol (:class:`Launcher`):

- :class:`LocalLauncher`: ``python -m pipelines.run_local …`` in a subprocess of its own session
  (its output in a log file); its status is the process's;
- :class:`KfpLauncher`: ``kfp.Client(host).create_run_from_pipeline_package`` with the compiled
  pipeline YAML; the bearer token comes from the environment (``KFP_TOKEN``, a Secret in the
  pod; in-cluster ``kfp.Client`` also reads its service-account token by itself), never from
  arguments or logs.

:class:`Retrainer` counts drifted windows, starts a run on a background thread (the HTTP handler
that completed the window does not wait for KFP), and keeps a cooldown from the last attempt,
successful or not: a launcher that fails is reported in the run list and tried again only after
the cooldown and another ``M`` drifted windows, never in a loop.
"""

from __future__ import annotations

# kfp is imported where a pipeline run is submitted (KfpLauncher): the monitor service
# with its LocalLauncher needs no kfp.
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from depth_common.errors import ConfigError

log = logging.getLogger(__name__)

TRIGGERS = ("none", "local", "kfp")
MAX_RUNS_KEPT = 50  # the run list /drift shows stays bounded however long the monitor lives


@dataclass
class RetrainRun:
    """One retraining attempt, as ``/drift`` lists it."""

    trigger: str
    started_at: float  # seconds since the epoch
    reason: str
    status: str = "starting"  # starting | running | succeeded | failed
    run_id: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Launcher(Protocol):
    kind: str

    def launch(self, reason: str) -> str:
        """Start a run; return its id (raise on failure: the message is reported)."""

    def status(self, run_id: str) -> str | None:
        """``running`` / ``succeeded`` / ``failed`` where it can tell, else None."""


class LocalLauncher:
    """``command`` (default: the demo pipeline with ``pipelines.run_local``) as a subprocess."""

    kind = "local"

    def __init__(self, command: Sequence[str] | None = None, log_dir: str | Path = "runs/monitor"):
        self.command = list(command or [sys.executable, "-m", "pipelines.run_local", "--demo"])
        self.log_dir = Path(log_dir)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, reason: str) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = self.log_dir / f"retrain-{stamp}-{len(self._processes)}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(  # noqa: S603 - our own fixed command, no shell
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        run_id = f"local-{process.pid}"
        self._processes[run_id] = process
        log.warning("retraining started (%s): pid %d, log %s", reason, process.pid, log_path)
        return run_id

    def status(self, run_id: str) -> str | None:
        process = self._processes.get(run_id)
        if process is None:
            return None
        rc = process.poll()
        return "running" if rc is None else ("succeeded" if rc == 0 else "failed")

    def stop_all(self, timeout_s: float = 30.0) -> None:
        """Stop the runs still going (the monitor's shutdown): SIGTERM to each run's process
        group (its own session: the pipeline's task processes too), SIGKILL after
        ``timeout_s``."""
        for process in self._processes.values():
            if process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)


class KfpLauncher:
    """A KFP run of the compiled pipeline ``package`` (YAML) with ``arguments``."""

    kind = "kfp"

    def __init__(
        self,
        host: str,
        package: str | Path,
        arguments: dict[str, Any] | None = None,
        experiment: str = "depth-estimation",
        namespace: str | None = None,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        if not host:
            raise ConfigError("--kfp-host (or KFP_HOST): the KFP API is needed for --trigger kfp")
        if not Path(package).is_file():
            raise ConfigError(f"--pipeline-package {package}: no such file (run compile.py)")
        self.host, self.package = host, Path(package)
        self.arguments, self.experiment, self.namespace = arguments or {}, experiment, namespace
        self._client_factory = client_factory

    def _client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory(host=self.host, namespace=self.namespace)
        import kfp  # heavy: only the kfp trigger needs it

        token = os.environ.get("KFP_TOKEN") or None
        return kfp.Client(host=self.host, existing_token=token, namespace=self.namespace)

    def launch(self, reason: str) -> str:
        result = self._client().create_run_from_pipeline_package(
            str(self.package),
            arguments=self.arguments,
            run_name=f"retrain-drift-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=self.experiment,
            namespace=self.namespace,
        )
        return str(result.run_id)

    def status(self, run_id: str) -> str | None:
        return None  # the KFP UI has it; polling the API from here buys nothing


class Retrainer:
    """Counts drifted windows; starts a run after ``consecutive`` of them, then cools down."""

    def __init__(
        self,
        launcher: Launcher | None,
        consecutive: int = 3,
        cooldown_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if consecutive < 1:
            raise ConfigError(f"--consecutive: expected >= 1, got {consecutive}")
        if cooldown_s < 0:
            raise ConfigError(f"--cooldown-s: expected >= 0, got {cooldown_s}")
        self.launcher, self.consecutive, self.cooldown_s = launcher, consecutive, cooldown_s
        self.clock = clock
        self.drifted_windows = 0
        self.runs: deque[RetrainRun] = deque(maxlen=MAX_RUNS_KEPT)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def kind(self) -> str:
        return self.launcher.kind if self.launcher else "none"

    def cooling_down(self) -> bool:
        last = self.runs[-1].started_at if self.runs else None
        return last is not None and self.clock() - last < self.cooldown_s

    def observe(self, drift: bool, score: float) -> RetrainRun | None:
        """A completed window; the run started because of it, if any."""
        with self._lock:
            self.drifted_windows = self.drifted_windows + 1 if drift else 0
            if self.launcher is None or self.drifted_windows < self.consecutive:
                return None
            if self.cooling_down() or any(r.status == "starting" for r in self.runs):
                return None
            reason = f"{self.drifted_windows} consecutive drifted windows (score {score:.2e})"
            run = RetrainRun(self.kind, self.clock(), reason)
            self.runs.append(run)
            self.drifted_windows = 0
        thread = threading.Thread(target=self._launch, args=(run,), name="retrain", daemon=True)
        self._threads.append(thread)
        thread.start()
        return run

    def _launch(self, run: RetrainRun) -> None:
        assert self.launcher is not None
        try:
            run.run_id = self.launcher.launch(run.reason)
            run.status = "running"
        except Exception as exc:  # reported in /drift, not retried: see the module docstring
            run.status, run.detail = "failed", f"{type(exc).__name__}: {exc}"
            log.error("retraining trigger %s failed: %s", self.kind, run.detail)

    def wait_launched(self, timeout_s: float = 30.0) -> None:
        """Wait until every launch in flight returned (tests, shutdown)."""
        for thread in self._threads:
            thread.join(timeout_s)

    def snapshot(self) -> list[dict[str, Any]]:
        """The runs, their status refreshed from the launcher where it can tell."""
        with self._lock:
            runs = list(self.runs)
        for run in runs:
            if self.launcher and run.status == "running" and run.run_id:
                run.status = self.launcher.status(run.run_id) or run.status
        return [r.to_json() for r in runs]


def build_launcher(
    trigger: str,
    *,
    local_command: Sequence[str] | None = None,
    log_dir: str | Path = "runs/monitor",
    kfp_host: str | None = None,
    package: str | Path = "pipelines/depth_pipeline.yaml",
    arguments: dict[str, Any] | None = None,
    namespace: str | None = None,
) -> Launcher | None:
    """The launcher of ``--trigger`` (None for ``none``)."""
    if trigger == "none":
        return None
    if trigger == "local":
        return LocalLauncher(local_command, log_dir)
    if trigger == "kfp":
        return KfpLauncher(
            kfp_host or os.environ.get("KFP_HOST", ""), package, arguments, namespace=namespace
        )
    raise ConfigError(f"--trigger {trigger!r}: expected one of {', '.join(TRIGGERS)}")
