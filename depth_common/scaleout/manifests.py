"""The operators' objects, derived from one :class:`~depth_common.scaleout.job.ScaleOutJob`.

- **TrainJob** (Kubeflow Trainer, ``trainer.kubeflow.org/v1alpha1``): the kubeflow SDK's
  ``TrainerClient.train`` builds and creates it; :func:`trainer_client_inputs` is what it gets
  (the runtime, a ``CustomTrainerContainer`` and options: name, labels, the torchrun command,
  the deadline and a runtime patch for pod placement, volumes, secrets and security).
- **PyTorchJob** (Training Operator v1, ``kubeflow.org/v1``, while clusters still run it): a
  plain custom object, :func:`build_pytorchjob`.

Pure functions: nothing here talks to a cluster.
"""

from __future__ import annotations

# kubeflow's trainer SDK is imported where its typed options are built: rendering the
# plain manifest dict needs no SDK.
from typing import Any

from depth_common.scaleout.job import SHARED_MOUNT, ScaleOutJob

PYTORCHJOB_API = ("kubeflow.org", "v1", "pytorchjobs")
TRAINJOB_CONTAINER = "node"  # container name in the torch-distributed runtime's pods
PYTORCHJOB_CONTAINER = "pytorch"  # the Training Operator requires this container name

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


def trainer_client_inputs(job: ScaleOutJob) -> dict[str, Any]:
    """Keyword arguments for ``TrainerClient.train`` (runtime, trainer, options).

    The runtime patch is applied to the runtime's ``node`` replicated job, whose container is
    also named ``node``; the deadline (``activeDeadlineSeconds``) is the one the PyTorchJob gets.
    """
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import ActiveDeadlineSeconds, Labels, Name, TrainerCommand

    resources = {"gpu": job.gpus_per_node} if job.gpus_per_node else None
    trainer = CustomTrainerContainer(
        image=job.image,
        num_nodes=job.num_nodes,
        resources_per_node=resources,
        env=dict(job.env) or None,
    )
    options = [
        Name(job.name),
        Labels(dict(job.labels)),
        TrainerCommand(list(job.command)),
        ActiveDeadlineSeconds(job.timeout_s),
        _node_runtime_patch(job),
    ]
    return {"runtime": job.runtime, "trainer": trainer, "options": options}


def _node_runtime_patch(job: ScaleOutJob) -> Any:
    """The SDK ``RuntimePatch`` of the runtime's ``node`` pods: placement, volumes, the secret
    env and security (what ``CustomTrainerContainer`` has no field for)."""
    from kubeflow.trainer.options import (
        ContainerPatch,
        JobSetSpecPatch,
        JobSetTemplatePatch,
        JobSpecPatch,
        JobTemplatePatch,
        PodSpecPatch,
        PodTemplatePatch,
        ReplicatedJobPatch,
        RuntimePatch,
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
    return RuntimePatch(
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
