"""The one description of a scale-out train job, from params, whichever operator runs it.

:class:`ScaleOutJob` carries image, command, topology, GPUs, node placement, secrets, storage
and deadline; :mod:`depth_common.scaleout.manifests` derives the TrainJob and the PyTorchJob
from it, so both get the same settings. Paths are as the train pods see them: the shared volume
(``training.shared_pvc``) is mounted at :data:`SHARED_MOUNT` in every train pod.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from depth_common.config import Params
from depth_common.config.container_images import component_image
from depth_common.errors import ConfigError

SHARED_MOUNT = "/mnt/shared"
"""Where ``training.shared_pvc`` is mounted in the train pods (data, params, checkpoints)."""

# Secret keys mapped 1:1 onto the env vars MLflow and boto3 read. ``optional`` so a Secret that
# carries only some of them (e.g. a token but no username) still starts the pod.
MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    ``procs_per_node``, ``train_gpu``), storage (``training.shared_pvc``), and from
    ``cluster:`` the namespace, service account, placement (``node_selector``,
    ``tolerations``) and secrets (``mlflow_secret``, ``storage_secret``). Paths are as the pods
    see them (under :data:`SHARED_MOUNT`)."""
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
    c = params.cluster  # placement and secrets, validated with the params
    secret_env = [(k, c.mlflow_secret, k) for k in MLFLOW_SECRET_KEYS if c.mlflow_secret]
    secret_env += [(k, c.storage_secret, k) for k in STORAGE_SECRET_KEYS if c.storage_secret]
    env = [("PYTHONUNBUFFERED", "1")]
    if not t.train_gpu:
        # CPU pods: one intra-op thread pool per process, not one per core per process.
        env.append(("OMP_NUM_THREADS", "1"))
    return ScaleOutJob(
        name=name,
        namespace=namespace or c.namespace,
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
        node_selector=c.node_selector_pairs(),
        tolerations=c.toleration_specs(),
        shared_pvc=t.shared_pvc,
        service_account=c.service_account,
        labels={"app.kubernetes.io/part-of": "depth-mlops", "depth-mlops/step": "train"},
        timeout_s=t.job_timeout_s,
    )
