"""Scale-out training on a cluster: a Kubeflow Trainer ``TrainJob`` or a Training Operator
``PyTorchJob`` running ``torchrun -m depth_common train`` in the project's component image.

One description (:class:`ScaleOutJob`, built from params by :func:`job_from_params`) feeds both
object builders (:func:`build_trainjob`, :func:`build_pytorchjob`), so GPUs, node placement,
secrets and storage are the same whichever operator the cluster runs. The TrainJob is submitted
through the ``kubeflow`` SDK's :class:`~kubeflow.trainer.TrainerClient` (its Kubernetes backend);
:func:`trainer_client_inputs` is what that client receives and :func:`build_trainjob` is the
object it creates (a test pins the two together). The PyTorchJob (``kubeflow.org/v1``) is a plain
custom object. :func:`validate_job` checks either against the operator's CRD schema, vendored
under ``manifests/training-crds/``.

Data and checkpoints move through a ReadWriteMany PVC (``training.shared_pvc``) mounted at
:data:`SHARED_MOUNT` in every train pod: the pipeline's train step writes the params file there,
points ``--data``/``--out`` into it, and copies the best checkpoint back into its ``Output[Model]``
when the job has succeeded. Credentials come only from Kubernetes Secrets (``valueFrom``), never
from params or logs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from depth_common.atomic import copy_atomic, write_text
from depth_common.config import ConfigError, Params
from depth_common.images import component_image

SHARED_MOUNT = "/mnt/shared"
"""Where ``training.shared_pvc`` is mounted in the train pods (data, params, checkpoints)."""

TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
PYTORCHJOB_API = ("kubeflow.org", "v1", "pytorchjobs")
SDK_MANAGER = "trainer.kubeflow.org/kubeflow-sdk"  # the SDK stamps its runtime patches with this
TRAINJOB_CONTAINER = "node"  # container name in the torch-distributed runtime's pods
PYTORCHJOB_CONTAINER = "pytorch"  # the Training Operator requires this container name

# Secret keys mapped 1:1 onto the env vars MLflow and boto3 read. ``optional`` so a Secret that
# carries only some of them (e.g. a token but no username) still starts the pod.
MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")

CRD_DIR = Path(__file__).resolve().parents[1] / "manifests" / "training-crds"
CRD_FILES = {
    "trainjob": "trainer.kubeflow.org_trainjobs.yaml",
    "pytorchjob": "kubeflow.org_pytorchjobs.yaml",
}

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class JobFailed(RuntimeError):
    """The TrainJob/PyTorchJob ended in a failed state; the message carries its reason."""


class JobValidationError(ValueError):
    """A job object does not match its operator's CRD schema (message: the field path)."""


@dataclass(frozen=True)
class ScaleOutJob:
    """Everything a train job needs, independent of which operator runs it."""

    name: str
    namespace: str
    image: str
    command: tuple[str, ...]
    num_nodes: int
    procs_per_node: int
    gpus_per_node: int = 0
    runtime: str = "torch-distributed"
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[tuple[str, str, str], ...] = ()  # (env var, Secret name, key)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Mapping[str, str], ...] = ()
    shared_pvc: str = ""
    service_account: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    timeout_s: int = 86400


# -- from params ---------------------------------------------------------------------------------


def parse_toleration(text: str, key: str = "training.tolerations") -> dict[str, str]:
    """kubectl taint syntax → a Kubernetes toleration.

    ``"key=value:Effect"`` → ``Equal``; ``"key:Effect"`` or ``"key"`` → ``Exists`` (any value;
    no effect = every effect).
    """
    spec, colon, effect = text.partition(":")
    if colon and effect not in _EFFECTS:
        raise ConfigError(f"{key}: got {text!r}, expected effect one of {', '.join(_EFFECTS)}")
    name, eq, value = spec.partition("=")
    if not name or (eq and not value):
        raise ConfigError(
            f"{key}: got {text!r}, expected 'key=value:Effect', 'key:Effect' or 'key'"
        )
    tol = {"key": name, "operator": "Equal" if eq else "Exists"}
    if eq:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


def torchrun_command(
    num_nodes: int,
    procs_per_node: int,
    params_path: str,
    data_dir: str,
    out_dir: str,
    overrides: Iterable[str] = (),
) -> tuple[str, ...]:
    """The train pods' command. Node rank and master address come from the ``PET_*`` env vars
    both operators set (torchrun reads them); the sizes are explicit so the job runs the
    params' topology whatever the runtime's defaults."""
    cmd = [
        "torchrun",
        f"--nnodes={num_nodes}",
        f"--nproc-per-node={procs_per_node}",
        "-m",
        "depth_common",
        "train",
        "--params",
        params_path,
        "--data",
        data_dir,
        "--out",
        out_dir,
    ]
    for o in overrides:
        cmd += ["--set", o]
    return tuple(cmd)


def job_from_params(
    params: Params,
    *,
    name: str,
    params_path: str,
    data_dir: str,
    out_dir: str,
    namespace: str | None = None,
    image: str | None = None,
    overrides: Sequence[str] = (),
) -> ScaleOutJob:
    """The job description from params: topology and GPUs (``training.num_nodes``,
    ``procs_per_node``, ``train_gpu``), placement (``node_selector``, ``tolerations``), storage
    (``shared_pvc``), secrets (``mlflow_secret``, ``storage_secret``), namespace and service
    account (``deploy``). Paths are as the pods see them (under :data:`SHARED_MOUNT`)."""
    t = params.training
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"job name: got {name!r}, expected a DNS-1035 label (lowercase letters, digits, '-', "
            "at most 63 characters, starting with a letter)"
        )
    if t.train_gpu and t.procs_per_node > t.train_gpu:
        raise ConfigError(
            f"training.procs_per_node: got {t.procs_per_node}, expected at most training.train_gpu "
            f"= {t.train_gpu} (one process per GPU)"
        )
    selector = []
    for i, item in enumerate(t.node_selector):
        k, _, v = item.partition("=")
        selector.append((k, v))
        if not k:
            raise ConfigError(f"training.node_selector[{i}]: got {item!r}, expected 'key=value'")
    tolerations = tuple(
        parse_toleration(s, f"training.tolerations[{i}]") for i, s in enumerate(t.tolerations)
    )
    secret_env = [(k, t.mlflow_secret, k) for k in MLFLOW_SECRET_KEYS if t.mlflow_secret]
    secret_env += [(k, t.storage_secret, k) for k in STORAGE_SECRET_KEYS if t.storage_secret]
    env = [("PYTHONUNBUFFERED", "1")]
    if not t.train_gpu:
        # CPU pods: one intra-op thread pool per process, not one per core per process.
        env.append(("OMP_NUM_THREADS", "1"))
    return ScaleOutJob(
        name=name,
        namespace=namespace or params.deploy.namespace,
        image=image or component_image(cuda=t.train_gpu > 0),
        command=torchrun_command(
            t.num_nodes, t.procs_per_node, params_path, data_dir, out_dir, overrides
        ),
        num_nodes=t.num_nodes,
        procs_per_node=t.procs_per_node,
        gpus_per_node=t.train_gpu,
        runtime=t.runtime,
        env=tuple(env),
        secret_env=tuple(secret_env),
        node_selector=tuple(selector),
        tolerations=tolerations,
        shared_pvc=t.shared_pvc,
        service_account=params.deploy.service_account,
        labels={"app.kubernetes.io/part-of": "depth-mlops", "depth-mlops/step": "train"},
        timeout_s=t.job_timeout_s,
    )


def write_params_file(params: Params, path: str | Path) -> Path:
    """Write ``params`` as YAML for the train pods (atomically)."""
    return write_text(path, yaml.safe_dump(params.to_dict(), sort_keys=False))


# -- pieces shared by both objects ----------------------------------------------------------------

_POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}


def _plain_env(job: ScaleOutJob) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in job.env]


def _secret_env(job: ScaleOutJob) -> list[dict[str, Any]]:
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": sec, "key": key, "optional": True}}}
        for var, sec, key in job.secret_env
    ]


def _volumes(job: ScaleOutJob) -> list[dict[str, Any]]:
    # /dev/shm: DataLoader workers pass batches through shared memory; the container default
    # (64 MiB) is too small for image batches.
    vols: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if job.shared_pvc:
        vols.append({"name": "shared", "persistentVolumeClaim": {"claimName": job.shared_pvc}})
    return vols


def _mounts(job: ScaleOutJob) -> list[dict[str, Any]]:
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if job.shared_pvc:
        mounts.append({"name": "shared", "mountPath": SHARED_MOUNT})
    return mounts


def _gpu_resources(job: ScaleOutJob) -> dict[str, Any] | None:
    if not job.gpus_per_node:
        return None
    gpus = {"nvidia.com/gpu": job.gpus_per_node}
    return {"requests": dict(gpus), "limits": dict(gpus)}


def _pod_placement(job: ScaleOutJob) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if job.service_account:
        spec["serviceAccountName"] = job.service_account
    if job.node_selector:
        spec["nodeSelector"] = dict(job.node_selector)
    if job.tolerations:
        spec["tolerations"] = [dict(t) for t in job.tolerations]
    return spec


# -- TrainJob (Kubeflow Trainer, through the kubeflow SDK) ----------------------------------------


def trainer_client_inputs(job: ScaleOutJob) -> dict[str, Any]:
    """Keyword arguments for ``TrainerClient.train`` (runtime, trainer, options)."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        Labels,
        Name,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
        TrainerCommand,
        TrainingRuntimeSpecPatch,
    )

    placement = _pod_placement(job)
    pod = PodSpecPatch(
        service_account_name=placement.get("serviceAccountName"),
        node_selector=placement.get("nodeSelector"),
        tolerations=placement.get("tolerations"),
        volumes=_volumes(job),
        security_context=dict(_POD_SECURITY),
        containers=[
            ContainerPatch(
                name=TRAINJOB_CONTAINER,
                env=_secret_env(job) or None,
                volume_mounts=_mounts(job),
                security_context=dict(_CONTAINER_SECURITY),
            )
        ],
    )
    patch = RuntimePatch(
        training_runtime_spec=TrainingRuntimeSpecPatch(
            template=JobSetTemplatePatch(
                spec=JobSetSpecPatch(
                    replicated_jobs=[
                        ReplicatedJobPatch(
                            name="node",
                            template=JobTemplatePatch(
                                spec=JobSpecPatch(template=PodTemplatePatch(spec=pod))
                            ),
                        )
                    ]
                )
            )
        )
    )
    resources = {"gpu": job.gpus_per_node} if job.gpus_per_node else None
    trainer = CustomTrainerContainer(
        image=job.image,
        num_nodes=job.num_nodes,
        resources_per_node=resources,
        env=dict(job.env) or None,
    )
    options = [Name(job.name), Labels(dict(job.labels)), TrainerCommand(list(job.command)), patch]
    return {"runtime": job.runtime, "trainer": trainer, "options": options}


def build_trainjob(job: ScaleOutJob, runtime_kind: str = "ClusterTrainingRuntime") -> dict:
    """The ``trainer.kubeflow.org/v1alpha1`` TrainJob that ``TrainerClient.train`` creates from
    :func:`trainer_client_inputs` (``runtime_kind``: how the cluster defines ``job.runtime``)."""
    trainer: dict[str, Any] = {"image": job.image, "command": list(job.command)}
    trainer["numNodes"] = job.num_nodes
    if (res := _gpu_resources(job)) is not None:
        trainer["resourcesPerNode"] = res
    if job.env:
        trainer["env"] = _plain_env(job)
    container: dict[str, Any] = {"name": TRAINJOB_CONTAINER}
    if job.secret_env:
        container["env"] = _secret_env(job)
    container["volumeMounts"] = _mounts(job)
    container["securityContext"] = dict(_CONTAINER_SECURITY)
    pod = {
        **_pod_placement(job),
        "volumes": _volumes(job),
        "containers": [container],
        "securityContext": dict(_POD_SECURITY),
    }
    rjob = {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
    return {
        "apiVersion": f"{TRAINJOB_API[0]}/{TRAINJOB_API[1]}",
        "kind": "TrainJob",
        "metadata": {"name": job.name, "labels": dict(job.labels)},
        "spec": {
            "runtimeRef": {"name": job.runtime, "kind": runtime_kind},
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": SDK_MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [rjob]}}},
                }
            ],
        },
    }


# -- PyTorchJob (Training Operator v1) ------------------------------------------------------------


def build_pytorchjob(job: ScaleOutJob) -> dict:
    """The ``kubeflow.org/v1`` PyTorchJob: one Master and ``num_nodes - 1`` Workers, each a pod
    running ``torchrun`` with ``procs_per_node`` processes; no retries (a failed rank fails the
    job, with its reason), the job's deadline is ``timeout_s``."""
    container: dict[str, Any] = {
        "name": PYTORCHJOB_CONTAINER,
        "image": job.image,
        "command": list(job.command),
        "env": _plain_env(job) + _secret_env(job),
        "volumeMounts": _mounts(job),
        "securityContext": dict(_CONTAINER_SECURITY),
    }
    if (res := _gpu_resources(job)) is not None:
        container["resources"] = res
    pod = {
        "metadata": {"labels": dict(job.labels)},
        "spec": {
            **_pod_placement(job),
            "securityContext": dict(_POD_SECURITY),
            "volumes": _volumes(job),
            "containers": [container],
        },
    }
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": pod}}
    if job.num_nodes > 1:
        replicas["Worker"] = {
            "replicas": job.num_nodes - 1,
            "restartPolicy": "Never",
            "template": pod,
        }
    return {
        "apiVersion": f"{PYTORCHJOB_API[0]}/{PYTORCHJOB_API[1]}",
        "kind": "PyTorchJob",
        "metadata": {"name": job.name, "namespace": job.namespace, "labels": dict(job.labels)},
        "spec": {
            "nprocPerNode": str(job.procs_per_node),
            "runPolicy": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": job.timeout_s,
                "cleanPodPolicy": "None",  # keep the pods (and their logs) for post-mortems
            },
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_job(job: ScaleOutJob, launcher: str) -> dict:
    """``launcher`` (``training.launcher``): ``trainjob`` | ``pytorchjob`` → the object."""
    if launcher == "trainjob":
        return build_trainjob(job)
    if launcher == "pytorchjob":
        return build_pytorchjob(job)
    raise ConfigError(f"training.launcher: got {launcher!r}, expected one of trainjob, pytorchjob")


# -- offline validation against the CRDs ----------------------------------------------------------


@cache
def crd_schema(launcher: str, crd_dir: str = str(CRD_DIR)) -> dict:
    """The ``openAPIV3Schema`` of the served version of the operator's CRD (vendored YAML)."""
    path = Path(crd_dir) / CRD_FILES[launcher]
    # the C loader: these CRDs are ~0.5 MB of YAML (seconds with the pure-Python one)
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for version in crd["spec"]["versions"]:
        if version.get("served") and version.get("storage"):
            return version["schema"]["openAPIV3Schema"]
    raise JobValidationError(f"{path}: no served storage version")


def validate_job(obj: Mapping[str, Any], crd_dir: str | Path = CRD_DIR) -> None:
    """Raise :class:`JobValidationError` (field path + reason) unless ``obj`` matches its CRD."""
    import jsonschema

    kinds = {"TrainJob": "trainjob", "PyTorchJob": "pytorchjob"}
    if obj.get("kind") not in kinds:
        raise JobValidationError(f"kind: got {obj.get('kind')!r}, expected TrainJob or PyTorchJob")
    schema = crd_schema(kinds[obj["kind"]], str(crd_dir))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise JobValidationError(f"{obj['kind']} {obj['metadata']['name']}: " + "; ".join(lines))


# -- submit, wait, stream logs --------------------------------------------------------------------


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


_STARTED = ("Running", "Succeeded", "Failed")  # pod phases with a container log


class ClusterJobs:
    """Submit a job, wait for it with a timeout while streaming the master's logs, fail with
    the job's reason. ``api_client``: a ``kubernetes.client.ApiClient`` (default: kube-config,
    or the in-cluster service account when running inside a pod)."""

    def __init__(self, namespace: str, api_client: Any = None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self.api_client = api_client
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _trainer_client(self) -> Any:
        from kubeflow.trainer import KubernetesBackendConfig, TrainerClient

        return TrainerClient(
            KubernetesBackendConfig(
                namespace=self.namespace, client_configuration=self.api_client.configuration
            )
        )

    def submit(self, job: ScaleOutJob, launcher: str) -> str:
        """Create the job (TrainJob through ``TrainerClient.train``); returns its name."""
        if launcher == "trainjob":
            return self._trainer_client().train(**trainer_client_inputs(job))
        obj = build_job(job, launcher)
        group, version, plural = PYTORCHJOB_API
        self.custom.create_namespaced_custom_object(group, version, self.namespace, plural, obj)
        return job.name

    def get(self, name: str, launcher: str) -> dict:
        group, version, plural = TRAINJOB_API if launcher == "trainjob" else PYTORCHJOB_API
        return self.custom.get_namespaced_custom_object(
            group, version, self.namespace, plural, name
        )

    def delete(self, name: str, launcher: str) -> None:
        group, version, plural = TRAINJOB_API if launcher == "trainjob" else PYTORCHJOB_API
        self.custom.delete_namespaced_custom_object(group, version, self.namespace, plural, name)

    def master_pod(self, name: str, launcher: str) -> tuple[str, str] | None:
        """(pod, container) of rank 0 once its container has started (it has a log)."""
        if launcher == "trainjob":  # JobSet pod labels (the SDK selects steps the same way)
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "batch.kubernetes.io/job-completion-index": "0",
            }
            container = TRAINJOB_CONTAINER
        else:  # Training Operator v1 pod labels
            labels = {
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": "master",
            }
            container = PYTORCHJOB_CONTAINER
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        started = [p for p in pods if p.status and p.status.phase in _STARTED]
        return (started[0].metadata.name, container) if started else None

    def stream_logs(self, pod: str, container: str, sink: Callable[[str], None]) -> None:
        """Follow the pod's log, one line at a time into ``sink``, until the container exits."""
        resp = self.core.read_namespaced_pod_log(
            pod, self.namespace, container=container, follow=True, _preload_content=False
        )
        try:
            buf = b""
            for chunk in resp.stream(4096):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    sink(line.decode("utf-8", "replace"))
            if buf:
                sink(buf.decode("utf-8", "replace"))
        finally:
            resp.release_conn()

    def wait(
        self,
        name: str,
        launcher: str,
        timeout_s: float,
        *,
        poll_s: float = 5.0,
        log: Callable[[str], None] = print,
        delete_on_timeout: bool = True,
    ) -> JobState:
        """Poll until the job succeeds (returned), fails (:class:`JobFailed` with its reason)
        or ``timeout_s`` passes (:class:`TimeoutError`; the job is deleted so it stops holding
        GPUs). The master's log is streamed into ``log`` from a background thread."""
        deadline = time.monotonic() + timeout_s
        streamer: threading.Thread | None = None
        while True:
            state = job_state(self.get(name, launcher))
            # TrainJobs have no Running condition: look for the master pod from the start.
            if streamer is None:
                pod = self.master_pod(name, launcher)
                if pod is not None:
                    streamer = threading.Thread(
                        target=self._stream_quietly, args=(*pod, log), daemon=True
                    )
                    streamer.start()
            if state.phase in ("succeeded", "failed"):
                if streamer is not None:
                    streamer.join(timeout=min(30.0, max(0.0, deadline - time.monotonic())))
                if state.phase == "failed":
                    raise JobFailed(
                        f"{launcher} {self.namespace}/{name} failed: {state.reason or 'Failed'}"
                        + (f": {state.message}" if state.message else "")
                    )
                return state
            if time.monotonic() >= deadline:
                if delete_on_timeout:
                    self.delete(name, launcher)
                raise TimeoutError(
                    f"{launcher} {self.namespace}/{name}: not finished after {timeout_s:.0f} s "
                    f"(training.job_timeout_s); last phase {state.phase}"
                    + ("; the job was deleted" if delete_on_timeout else "")
                )
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def _stream_quietly(self, pod: str, container: str, log: Callable[[str], None]) -> None:
        try:
            self.stream_logs(pod, container, log)
        except Exception as exc:  # noqa: BLE001 - logs are a convenience; the status decides
            log(f"[log stream of {pod} ended: {exc}]")

    def run(
        self, job: ScaleOutJob, launcher: str, *, log: Callable[[str], None] = print, **wait_kw
    ) -> JobState:
        """Validate, submit, wait: the train step's whole cluster path."""
        validate_job(build_job(job, launcher))
        name = self.submit(job, launcher)
        log(
            f"submitted {launcher} {self.namespace}/{name} ({job.num_nodes} node(s) x "
            f"{job.procs_per_node} process(es), {job.gpus_per_node} GPU(s) per node)"
        )
        return self.wait(name, launcher, job.timeout_s, log=log, **wait_kw)


# -- the train step's cluster path ---------------------------------------------------------------


def job_name_for(seed: str, prefix: str = "depth-train") -> str:
    """A valid, unique-per-``seed`` job name (DNS-1035, <= 63 characters), e.g. from the
    train step's pod name (``HOSTNAME``): ``depth-train-<slug>-<8 hex of sha1(seed)>``."""
    import hashlib

    digest = hashlib.sha1(seed.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", seed.lower()).strip("-")
    room = 63 - len(prefix) - len(digest) - 2
    slug = slug[:room].strip("-")
    return f"{prefix}-{slug}-{digest}" if slug else f"{prefix}-{digest}"


def needs_cluster(params: Params) -> bool:
    """Whether the train step submits a job: more than one process in all."""
    return params.training.num_nodes * params.training.procs_per_node > 1


def run_scaled_training(
    params: Params,
    processed_dir: str | Path,
    model_dir: str | Path,
    *,
    run_name: str,
    namespace: str | None = None,
    shared_root: str | Path = SHARED_MOUNT,
    jobs: ClusterJobs | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Train on the cluster and bring the best checkpoint back into ``model_dir``.

    Returns the same :class:`~depth_common.train.TrainResult` as the single-process
    ``train()`` (checkpoint ``model_dir/best.pt``; val metrics, MLflow run id and epochs read
    from the checkpoints rank 0 wrote), so the train step handles both paths alike.

    The calling pod (the pipeline's train step) must have ``training.shared_pvc`` mounted at
    ``shared_root``, as the train pods do. Layout on the volume, per run::

        <shared_root>/<run_name>/params.yaml   the effective params (written here)
        <shared_root>/<run_name>/data/         a copy of ``processed_dir``
        <shared_root>/<run_name>/out/          best.pt, last.pt (written by rank 0)

    ``run_name`` names the job too: unique per attempt (e.g. the KFP task's pod name).
    """
    t = params.training
    if not t.shared_pvc:
        raise ConfigError(
            "training.shared_pvc: got '', expected a ReadWriteMany PVC name: "
            f"{t.num_nodes} node(s) x {t.procs_per_node} process(es) train in separate pods, "
            "which read the data and write checkpoints there"
        )
    root = Path(shared_root)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: not mounted in this pod; mount training.shared_pvc={t.shared_pvc!r} there"
        )
    run_dir = root / run_name
    data_dir, out_dir = run_dir / "data", run_dir / "out"
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "manifest.json").is_file():
        copy_atomic(Path(processed_dir), data_dir)
    write_params_file(params, run_dir / "params.yaml")
    job = job_from_params(
        params,
        name=run_name,
        namespace=namespace,
        params_path=f"{SHARED_MOUNT}/{run_name}/params.yaml",
        data_dir=f"{SHARED_MOUNT}/{run_name}/data",
        out_dir=f"{SHARED_MOUNT}/{run_name}/out",
    )
    jobs = jobs or ClusterJobs(job.namespace)
    jobs.run(job, t.launcher, log=log)
    best = out_dir / "best.pt"
    if not best.is_file():
        raise JobFailed(f"{t.launcher} {job.namespace}/{run_name} succeeded but wrote no {best}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    copy_atomic(best, model_dir / "best.pt")
    return _result_from_checkpoints(model_dir / "best.pt", out_dir / "last.pt")


def _result_from_checkpoints(best: Path, last: Path) -> Any:
    from depth_common.checkpoint import load_checkpoint
    from depth_common.train import TrainResult

    ckpt = load_checkpoint(best)
    history = load_checkpoint(last).get("history", []) if last.is_file() else []
    epochs = sum(1 for h in history if "train_loss" in h) if history else int(ckpt["epoch"])
    return TrainResult(
        checkpoint_path=best,
        best_val={k: float(v) for k, v in ckpt["metrics"].items()},
        mlflow_run_id=ckpt.get("mlflow_run_id"),
        epochs_run=epochs,
        history=[dict(h) for h in history],
    )
