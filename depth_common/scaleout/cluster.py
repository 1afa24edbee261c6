"""Cluster I/O for the train jobs: submit, wait with a deadline, stream the master's log, fail
with the job's reason.

A :class:`Launcher` per operator does the four calls; :func:`run_job` / :func:`wait_for`
(the deadline, the log thread, the error messages) are written once for both:

- :class:`TrainJobs`: the kubeflow SDK's ``TrainerClient`` (Kubernetes backend) submits
  (``train``), waits (``wait_for_job_status``), follows node-0's log
  (``get_job_logs(follow=True)``) and deletes. The job's status conditions are read once at
  the end, for the reason a failed job gives (the SDK reports only ``Failed``).
- :class:`PyTorchJobs`: the Training Operator's PyTorchJob, which the SDK does not speak,
  through the Kubernetes custom-objects API; the master's log through ``kubernetes.watch``.
"""

from __future__ import annotations

# kubernetes and kubeflow are imported where a cluster is called: planning a job and
# rendering its manifest need no cluster client.
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from depth_common.errors import ConfigError, JobFailed, NotEnded
from depth_common.scaleout.crd import validate_job
from depth_common.scaleout.job import ScaleOutJob
from depth_common.scaleout.manifests import (
    PYTORCHJOB_API,
    PYTORCHJOB_CONTAINER,
    build_pytorchjob,
    trainer_client_inputs,
)

TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
LAUNCHERS = ("trainjob", "pytorchjob")
_STARTED = ("Running", "Succeeded", "Failed")  # pod phases with a container log
_LOG_JOIN_S = 30.0  # how long the end of a job waits for the rest of its log


@dataclass(frozen=True)
class JobState:
    phase: str  # pending | running | succeeded | failed
    reason: str = ""
    message: str = ""


def job_state(obj: Mapping[str, Any]) -> JobState:
    """Read a TrainJob's or PyTorchJob's ``status.conditions`` into one phase.

    TrainJob ends in ``Complete`` or ``Failed``; PyTorchJob in ``Succeeded`` or ``Failed``
    (``Running``/``Created``/``Restarting`` before). The failing condition's reason and message
    are kept for the error the train step raises.
    """
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = {c.get("type"): c for c in conditions if str(c.get("status")) == "True"}
    for kind, phase in (
        ("Failed", "failed"),
        ("Complete", "succeeded"),
        ("Succeeded", "succeeded"),
    ):
        if kind in true:
            c = true[kind]
            return JobState(phase, c.get("reason", ""), c.get("message", ""))
    if "Running" in true:
        return JobState("running")
    return JobState("pending")


class Launcher(Protocol):
    """One operator's four calls, in ``namespace``."""

    kind: str  # training.launcher
    namespace: str

    def submit(self, job: ScaleOutJob) -> str:
        """Create the job; return its name."""

    def wait(self, name: str, timeout_s: float, poll_s: float) -> JobState:
        """Return the state once the job has ended; :class:`NotEnded` after ``timeout_s``."""

    def logs(self, name: str) -> Iterator[str]:
        """Follow the master's log until its container exits; nothing if it has not started."""

    def delete(self, name: str) -> None:
        """Delete the job (its pods go with it)."""


def kube_api_client() -> Any:
    """A ``kubernetes.client.ApiClient``: the in-cluster service account inside a pod,
    kube-config elsewhere."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class TrainJobs:
    """Kubeflow Trainer TrainJobs through the kubeflow SDK's ``TrainerClient``."""

    kind = "trainjob"

    def __init__(self, namespace: str, api_client: Any) -> None:
        from kubeflow.trainer import KubernetesBackendConfig, TrainerClient
        from kubernetes import client

        self.namespace = namespace
        self.trainer = TrainerClient(
            KubernetesBackendConfig(
                namespace=namespace, client_configuration=api_client.configuration
            )
        )
        self.custom = client.CustomObjectsApi(api_client)

    def submit(self, job: ScaleOutJob) -> str:
        return self.trainer.train(**trainer_client_inputs(job))

    def wait(self, name: str, timeout_s: float, poll_s: float) -> JobState:
        # The SDK counts polls, not seconds (each poll also lists pods): wait again for what is
        # left until the wall-clock deadline has passed.
        deadline = time.monotonic() + timeout_s
        poll_s = min(poll_s, timeout_s / 2)  # the SDK wants a poll shorter than its timeout
        seen = ["created"]

        def note_status(trainjob: Any) -> None:
            seen.append(str(trainjob.status).lower())

        while (left := deadline - time.monotonic()) > poll_s:
            try:
                self.trainer.wait_for_job_status(
                    name,
                    status={"Complete", "Failed"},
                    timeout=left,
                    polling_interval=poll_s,
                    callbacks=[note_status],
                )
            except TimeoutError:
                continue
            group, version, plural = TRAINJOB_API
            obj = self.custom.get_namespaced_custom_object(
                group, version, self.namespace, plural, name
            )
            return job_state(obj)
        raise NotEnded(seen[-1])

    def logs(self, name: str) -> Iterator[str]:
        return self.trainer.get_job_logs(name, follow=True)

    def delete(self, name: str) -> None:
        self.trainer.delete_job(name)


class PyTorchJobs:
    """Training Operator v1 PyTorchJobs as custom objects (the SDK has no client for them)."""

    kind = "pytorchjob"

    def __init__(self, namespace: str, api_client: Any) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _api(self, name: str | None = None) -> tuple[str, ...]:
        group, version, plural = PYTORCHJOB_API
        return (group, version, self.namespace, plural) + ((name,) if name else ())

    def submit(self, job: ScaleOutJob) -> str:
        obj = build_pytorchjob(job)
        validate_job(obj)
        self.custom.create_namespaced_custom_object(*self._api(), obj)
        return job.name

    def wait(self, name: str, timeout_s: float, poll_s: float) -> JobState:
        deadline = time.monotonic() + timeout_s
        while True:
            state = job_state(self.custom.get_namespaced_custom_object(*self._api(name)))
            if state.phase in ("succeeded", "failed"):
                return state
            if time.monotonic() >= deadline:
                raise NotEnded(state.phase)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def logs(self, name: str) -> Iterator[str]:
        from kubernetes import watch

        selector = (
            f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master"
        )
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        started = [p for p in pods if p.status and p.status.phase in _STARTED]
        if not started:
            return iter(())
        return watch.Watch().stream(
            self.core.read_namespaced_pod_log,
            started[0].metadata.name,
            self.namespace,
            container=PYTORCHJOB_CONTAINER,
            follow=True,
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(*self._api(name))


def launcher_for(kind: str, namespace: str, api_client: Any = None) -> Launcher:
    """``kind`` (``training.launcher``): ``trainjob`` | ``pytorchjob`` → its launcher.
    ``api_client`` defaults to :func:`kube_api_client`."""
    classes = {"trainjob": TrainJobs, "pytorchjob": PyTorchJobs}
    if kind not in classes:
        raise ConfigError(f"training.launcher: got {kind!r}, expected one of {', '.join(classes)}")
    return classes[kind](namespace, api_client or kube_api_client())


def _follow_master_log(
    launcher: Launcher, name: str, log: Callable[[str], None], ended: threading.Event, poll_s: float
) -> None:
    """Stream the master's log into ``log``; until it starts, look again every ``poll_s``
    (and once more after the job has ended, for a job quicker than the first look)."""
    while True:
        last_look = ended.is_set()
        lines = 0
        try:
            for line in launcher.logs(name):
                log(line)
                lines += 1
        except Exception as exc:  # noqa: BLE001 - logs are a convenience; the status decides
            if not last_look:  # after the end, a job deleted on timeout has no log to read
                log(f"[log stream of {name} ended: {exc}]")
            return
        if lines or last_look:
            return
        ended.wait(poll_s)


def wait_for(
    launcher: Launcher,
    name: str,
    timeout_s: float,
    *,
    poll_s: float = 5.0,
    log: Callable[[str], None] = print,
    delete_on_timeout: bool = True,
) -> JobState:
    """Wait until the job succeeds (returned), fails (:class:`JobFailed` with its reason) or
    ``timeout_s`` passes (:class:`TimeoutError`; the job is deleted so it stops holding
    GPUs). The master's log is streamed into ``log`` from a background thread meanwhile."""
    where = f"{launcher.kind} {launcher.namespace}/{name}"
    ended = threading.Event()
    streamer = threading.Thread(
        target=_follow_master_log, args=(launcher, name, log, ended, poll_s), daemon=True
    )
    streamer.start()
    try:
        state = launcher.wait(name, timeout_s, poll_s)
    except NotEnded as exc:
        if delete_on_timeout:
            launcher.delete(name)
        raise TimeoutError(
            f"{where}: not finished after {timeout_s:.0f} s (training.job_timeout_s); "
            f"last phase {exc.phase}" + ("; the job was deleted" if delete_on_timeout else "")
        ) from None
    finally:
        ended.set()
        streamer.join(timeout=_LOG_JOIN_S)
    if state.phase == "failed":
        detail = f": {state.message}" if state.message else ""
        raise JobFailed(f"{where} failed: {state.reason or 'Failed'}{detail}")
    return state


def run_job(
    launcher: Launcher, job: ScaleOutJob, *, log: Callable[[str], None] = print, **wait_kw: Any
) -> JobState:
    """Submit ``job`` and :func:`wait_for` it: the train step's whole cluster path."""
    name = launcher.submit(job)
    log(
        f"submitted {launcher.kind} {launcher.namespace}/{name} ({job.num_nodes} node(s) x "
        f"{job.procs_per_node} process(es), {job.gpus_per_node} GPU(s) per node)"
    )
    return wait_for(launcher, name, job.timeout_s, log=log, **wait_kw)
