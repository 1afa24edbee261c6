"""The digest of the image a pipeline task runs in, read from the task's own pod.

An image cannot carry its own digest (the digest is of its content), and the tag a pipeline
names can be pushed again. On a cluster the kubelet records what it pulled in the pod's status
(``containerStatuses[].imageID``, ``registry/name@sha256:...``). The compiled pipeline hands
each tracking task its pod's name and namespace through the downward API (``DEPTH_POD_NAME``,
``DEPTH_POD_NAMESPACE``: ``pipelines/depth_pipeline.py``); :func:`running_image_digest` reads
the pod with the task's service account, which needs ``get`` on pods in its namespace (Kubeflow
gives a profile's ``default-editor`` that), and returns the digest of KFP's ``main`` container.

``DEPTH_IMAGE_DIGEST`` (``sha256:<64 hex>``), when set, is taken as it is. Outside a pod
(``make run``, kfp.local) the digest is "" (unknown). A pod that cannot be read leaves it "" too, with a warning naming
the pod and the reason: a lineage tag never fails a training run.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

DIGEST_ENV = "DEPTH_IMAGE_DIGEST"
POD_NAME_ENV = "DEPTH_POD_NAME"
POD_NAMESPACE_ENV = "DEPTH_POD_NAMESPACE"
#: The container KFP v2 runs a component's code in.
KFP_CONTAINER = "main"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_API_TIMEOUT_S = 10


def digest_from_image_id(image_id: str) -> str:
    """``sha256:<64 hex>`` of a container status's ``imageID`` (containerd's
    ``registry/name@sha256:...``, Docker's ``docker-pullable://...@sha256:...``, or a bare
    ``sha256:...``); "" when it holds none."""
    found = _DIGEST.findall(image_id or "")
    return found[-1] if found else ""


def pod_image_digest(api: Any, namespace: str, pod: str, container: str = KFP_CONTAINER) -> str:
    """The digest ``container`` of pod ``namespace/pod`` runs (``api``: a ``CoreV1Api``)."""
    status = api.read_namespaced_pod(pod, namespace, _request_timeout=_API_TIMEOUT_S).status
    for state in (status.container_statuses if status else None) or []:
        if state.name == container:
            return digest_from_image_id(state.image_id)
    return ""


def _in_cluster_core_v1() -> Any:
    # kubernetes is imported only inside a pod that asks: every tracking task calls this.
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CoreV1Api()


def running_image_digest(
    env: Mapping[str, str] = os.environ, core_v1: Callable[[], Any] = _in_cluster_core_v1
) -> str:
    """``DEPTH_IMAGE_DIGEST`` if set, else the digest the task's own pod runs, else ""."""
    given = env.get(DIGEST_ENV, "")
    if given:
        if _DIGEST.fullmatch(given):
            return given
        log.warning("%s=%r is not sha256:<64 hex digits>: ignored", DIGEST_ENV, given)
    pod, namespace = env.get(POD_NAME_ENV, ""), env.get(POD_NAMESPACE_ENV, "")
    if not pod or not namespace:
        return ""
    try:
        digest = pod_image_digest(core_v1(), namespace, pod)
    except Exception as exc:  # noqa: BLE001 - any failure (config, RBAC, network) is a warning
        log.warning(
            "image digest unknown: reading pod %s/%s failed (%s: %s); the task's service "
            "account needs get on pods",
            namespace,
            pod,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return ""
    if not digest:
        log.warning("image digest unknown: pod %s/%s has no %r container status with one",
                    namespace, pod, KFP_CONTAINER)  # fmt: skip
    return digest
