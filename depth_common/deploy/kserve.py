"""Deploy the Triton model repository as a KServe InferenceService; roll back when it fails.

``deploy_kserve``: build the InferenceService from ``manifests/`` (:mod:`.manifests`), create it
or merge-patch it with the Kubernetes client (``CustomObjectsApi``; the pipeline's service
account may get/list/watch/create/patch InferenceServices and nothing more), wait until its
``Ready`` condition is ``True`` for the new generation, smoke-test the v2 endpoint, and on any
failure patch ``storageUri`` back to the previous one and raise :class:`DeployError`.
"""

from __future__ import annotations

# kubernetes is imported where a cluster is called: building and checking an
# InferenceService manifest needs no cluster client.
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from depth_common.config import DeployConfig
from depth_common.deploy.manifests import (
    MODEL_VERSION_LABEL,
    build_inferenceservice,
    storage_uri_of,
)
from depth_common.deploy.report import DeployResult
from depth_common.deploy.smoke import SmokeResult, smoke_test_v2
from depth_common.errors import DeployError, DeployTimeout
from depth_common.export.onnx import file_sha256, read_metadata
from depth_common.registry.lineage import ONNX_SHA256, carried

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
#: Which registered model serves, for `kubectl get isvc -o yaml` readers and for rollbacks.
MLFLOW_MODEL_ANNOTATION = "depth-mlops.io/mlflow-model-name"
MLFLOW_VERSION_ANNOTATION = "depth-mlops.io/mlflow-model-version"
MLFLOW_RUN_ANNOTATION = "depth-mlops.io/mlflow-run-id"
#: Prefix of the lineage annotations (code, data, params, checkpoint and ONNX digests, runs).
LINEAGE_ANNOTATION_PREFIX = "depth-mlops.io/"
#: KServe then tags the revisions it splits traffic between ("latest", "prev") and gives each
#: its own URL in status.components.predictor.traffic: the canary analysis calls them there.
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
REQUEST_TIMEOUT_S = 30.0  # each API call; the Ready wait has its own deadline
# modelStatus.transitionStatus values after which waiting longer cannot help.
_FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}


def model_annotations(
    registered_model: str,
    model_version: str | int,
    run_id: str | None,
    onnx_path: str | Path | None = None,
) -> dict[str, str]:
    """The annotations naming the registered model version an InferenceService serves, and
    with ``onnx_path`` its lineage (``depth-mlops.io/git-commit``, ``.../data-digest``, ...,
    ``.../onnx-sha256``) from the ONNX file's metadata."""
    out = {
        MLFLOW_MODEL_ANNOTATION: registered_model,
        MLFLOW_VERSION_ANNOTATION: str(model_version),
        MLFLOW_RUN_ANNOTATION: run_id or "",
        TAG_ROUTING_ANNOTATION: "true",
    }
    if onnx_path is not None:
        facts = {**carried(read_metadata(onnx_path)), ONNX_SHA256: file_sha256(onnx_path)}
        for key, value in facts.items():
            out[f"{LINEAGE_ANNOTATION_PREFIX}{key.replace('_', '-')}"] = value
    return out


def kubernetes_api() -> Any:
    """``CustomObjectsApi`` from the in-cluster service account, else from ``~/.kube/config``.

    Not ``kserve.KServeClient`` (0.21), although it gets, patches and waits: importing
    ``kserve`` registers its own copy of the v2 protobuf messages, after which ``tritonclient``'s
    gRPC client fails to import in the same process ("duplicate symbol
    inference.ServerLiveRequest") -- and a deploy runs both. Its methods would not do either:
    they wrap every ``ApiException`` in a ``RuntimeError`` (losing the status that tells a
    missing object, 404, and an API server restart, 5xx, from a failure), take typed models
    whose serialisation drops ``None`` (a merge patch could not remove
    ``canaryTrafficPercent``), and wait without failing fast on a failed load or checking a
    canary's traffic split (:func:`wait_ready` does both, at the new ``observedGeneration``).
    """
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def get_inferenceservice(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The live object, or None when it does not exist (HTTP 404)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT_S
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def apply_inferenceservice(api: Any, isvc: dict[str, Any]) -> dict[str, Any]:
    """Create ``isvc``, or merge-patch its labels and spec if it exists; return the live object.

    A merge patch (not a replace) keeps fields KServe's webhooks default on the server.
    """
    meta = isvc["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if get_inferenceservice(api, ns, name) is None:
        log.info("creating InferenceService %s/%s", ns, name)
        return api.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, isvc, _request_timeout=REQUEST_TIMEOUT_S
        )
    log.info("patching InferenceService %s/%s", ns, name)
    patch = {
        "metadata": {"labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})},
        "spec": isvc["spec"],
    }
    return api.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT_S
    )


def patch_inferenceservice(
    api: Any, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """One JSON merge patch (``None`` deletes a key); returns the live object."""
    return api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT_S
    )


def _patch_storage_uri(
    api: Any,
    namespace: str,
    name: str,
    storage_uri: str,
    model_version: str,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {MODEL_VERSION_LABEL: model_version}}
    if annotations:
        meta["annotations"] = annotations
    patch = {"metadata": meta, "spec": {"predictor": {"model": {"storageUri": storage_uri}}}}
    return patch_inferenceservice(api, namespace, name, patch)


def ready_condition(isvc: dict[str, Any]) -> dict[str, Any] | None:
    """The ``Ready`` entry of ``status.conditions`` (None before the controller wrote one)."""
    for cond in isvc.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return cond
    return None


def describe_status(isvc: dict[str, Any]) -> str:
    """The conditions that are not True and any model-load failure, on one line."""
    status = isvc.get("status", {}) or {}
    parts = [
        f"{c.get('type')}={c.get('status')}"
        + (f" ({c.get('reason', '')}: {c.get('message', '')})" if c.get("reason") else "")
        for c in status.get("conditions", []) or []
        if c.get("status") != "True"
    ]
    model = status.get("modelStatus") or {}
    failure = model.get("lastFailureInfo") or {}
    if failure:
        parts.append(f"model {failure.get('reason', '')}: {failure.get('message', '')}")
    elif model.get("transitionStatus") not in (None, "", "UpToDate"):
        parts.append(f"model transition {model['transitionStatus']}")
    return "; ".join(parts) or "no status conditions yet"


def wait_ready(
    api: Any,
    namespace: str,
    name: str,
    *,
    generation: int | None,
    timeout_s: float,
    poll_s: float = 2.0,
    expect: Callable[[dict[str, Any]], str | None] | None = None,
) -> dict[str, Any]:
    """Poll until ``Ready`` is ``True`` for ``generation``; return the object.

    A status whose ``observedGeneration`` is older than ``generation`` describes the previous
    spec (e.g. the old model still Ready), so it is not taken as success. A model that failed
    to load (``transitionStatus`` BlockedByFailedLoad / InvalidSpec) fails at once. ``expect``
    (e.g. the traffic split a canary step asked for) must also return None: otherwise its
    message says what is still missing. Raises :class:`DeployTimeout` with the last status
    after ``timeout_s`` seconds.
    """
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            isvc = get_inferenceservice(api, namespace, name)
        except ApiException as exc:
            # An API server restart or overload (5xx) is not the deploy failing: keep polling
            # until the deadline. 4xx (forbidden, gone) will not fix itself: raise.
            if exc.status is None or exc.status < 500 or time.monotonic() >= deadline:
                raise
            log.warning("reading InferenceService %s/%s: HTTP %s, retrying", namespace, name,
                        exc.status)  # fmt: skip
            time.sleep(poll_s)
            continue
        if isvc is None:
            raise DeployError(f"InferenceService {namespace}/{name} disappeared while waiting")
        status = isvc.get("status", {}) or {}
        current = generation is None or (status.get("observedGeneration") or 0) >= generation
        cond = ready_condition(isvc)
        missing = expect(isvc) if expect is not None and current else None
        if current and cond is not None and cond.get("status") == "True" and missing is None:
            return isvc
        transition = (status.get("modelStatus") or {}).get("transitionStatus")
        if current and transition in _FAILED_TRANSITIONS:
            raise DeployError(
                f"InferenceService {namespace}/{name} failed: {describe_status(isvc)}"
            )
        if time.monotonic() >= deadline:
            raise DeployTimeout(
                f"InferenceService {namespace}/{name} not Ready after {timeout_s:g} s: "
                f"{describe_status(isvc)}" + (f"; {missing}" if missing else "")
            )
        time.sleep(poll_s)


def endpoint_of(isvc: dict[str, Any]) -> str:
    """The v2 base URL to test: the cluster-local address (a pipeline pod is in-cluster),
    else the external ``status.url``."""
    status = isvc.get("status", {}) or {}
    url = (status.get("address") or {}).get("url") or status.get("url")
    if not url:
        raise DeployError("InferenceService is Ready but has no status.address.url or status.url")
    return url


#: (storageUri, model version, MLflow annotations) a failed deploy patches back.
_RollbackTarget = tuple[str | None, str | int | None, dict[str, str] | None]


def _rollback_target(
    live: dict[str, Any] | None, storage_uri: str, given: _RollbackTarget
) -> _RollbackTarget:
    """What a failed deploy returns to: (storageUri, model version, MLflow annotations).

    Each part not ``given`` comes from the ``live`` InferenceService (its storageUri,
    model-version label and MLflow annotations); no storageUri when it is ``storage_uri``.
    """
    previous_storage_uri, previous_model_version, previous_annotations = given
    if previous_storage_uri is None and live is not None:
        previous_storage_uri = storage_uri_of(live)
        labels = live.get("metadata", {}).get("labels") or {}
        previous_model_version = previous_model_version or labels.get(MODEL_VERSION_LABEL)
    if previous_annotations is None and live is not None:
        # The MLflow and lineage annotations (one prefix): the served version's own.
        live_ann = live.get("metadata", {}).get("annotations") or {}
        previous_annotations = {
            k: v for k, v in live_ann.items() if k.startswith(LINEAGE_ANNOTATION_PREFIX)
        }
    if previous_storage_uri == storage_uri:
        previous_storage_uri = None  # redeploying the same model: nothing else to return to
    return previous_storage_uri, previous_model_version, previous_annotations


def deploy_kserve(
    storage_uri: str,
    model_version: str | int,
    cfg: DeployConfig,
    *,
    namespace: str,
    model_name: str = "depth",
    overlay: str = "cpu",
    previous_storage_uri: str | None = None,
    previous_model_version: str | int | None = None,
    onnx_path: str | Path | None = None,
    atol: float = 1e-3,
    endpoint: str | None = None,
    api: Any = None,
    poll_s: float = 2.0,
    smoke_test: Callable[..., SmokeResult] = smoke_test_v2,
    annotations: dict[str, str] | None = None,
    previous_annotations: dict[str, str] | None = None,
    image: np.ndarray | None = None,
) -> DeployResult:
    """Serve ``storage_uri`` (a Triton repository on object storage) as ``cfg.name``.

    ``namespace`` is ``cluster.namespace``; ``cfg`` supplies ``timeout_s`` (the Ready wait,
    seconds; the rollback gets the same). ``model_name`` is the Triton model the smoke test calls (``depth``, or
    ``depth_trt`` with the ``gpu`` overlay); ``onnx_path`` and ``atol`` (metres) compare its
    output with ONNX Runtime's (use a looser ``atol`` for an FP16 TensorRT plan).
    ``previous_storage_uri`` is the model version aliased ``previous``; when None, the
    live InferenceService's storageUri (if any, and different) is the rollback target.
    ``endpoint`` overrides the URL the smoke test calls. ``annotations`` (see
    :func:`model_annotations`) name the registered model version; ``previous_annotations``
    those restored on rollback (default: the live object's); ``image`` (uint8 (h, w, 3)) is
    the smoke test's input (default: its own). Raises :class:`DeployError`
    (after rolling back) when the service does not become Ready or the smoke test fails.
    """
    storage_uri = storage_uri or cfg.storage_uri
    if not storage_uri:
        raise ValueError(
            "storage_uri: empty; expected the Triton repository's URI on the cluster's object "
            "store (the artifact's remote URI, or deploy.storage_uri in params.yaml)"
        )
    api = api if api is not None else kubernetes_api()
    version = str(model_version)
    isvc = build_inferenceservice(
        overlay, name=cfg.name, namespace=namespace, storage_uri=storage_uri,
        model_version=version, transformer_args=cfg.transformer_args(),
    )  # fmt: skip
    if annotations:
        isvc["metadata"].setdefault("annotations", {}).update(annotations)
    ns, name = namespace, cfg.name
    resource = f"{ns}/{name}"

    previous = _rollback_target(
        get_inferenceservice(api, ns, name),
        storage_uri,
        (previous_storage_uri, previous_model_version, previous_annotations),
    )
    applied = apply_inferenceservice(api, isvc)
    generation = applied.get("metadata", {}).get("generation")
    url = endpoint or ""
    smoke = SmokeResult(False, "not run")
    try:
        ready = wait_ready(
            api, ns, name, generation=generation, timeout_s=cfg.timeout_s, poll_s=poll_s
        )
        url = endpoint or endpoint_of(ready)
        smoke = smoke_test(url, model_name, onnx_path=onnx_path, atol=atol, image=image)
        if not smoke.ok:
            raise DeployError(f"smoke test failed on {url}: {smoke.detail}")
    except DeployError as exc:
        failed = DeployResult("kserve", url, model_name, version, storage_uri, smoke, resource)
        raise _roll_back(api, exc, failed, previous, cfg.timeout_s, poll_s) from exc
    log.info("InferenceService %s serves %s (model version %s)", resource, storage_uri, version)
    return DeployResult("kserve", url, model_name, version, storage_uri, smoke, resource)


def _roll_back(
    api: Any,
    cause: DeployError,
    failed: DeployResult,
    previous: _RollbackTarget,
    timeout_s: float,
    poll_s: float,
) -> DeployError:
    """Patch the previous storageUri back and wait for it; the error to raise says how it went."""
    previous_storage_uri, previous_model_version, previous_annotations = previous
    ns, name = (failed.resource or "/").split("/", 1)
    what = f"deploy of model version {failed.model_version} ({failed.source}) failed: {cause}"
    if not previous_storage_uri:
        return DeployError(f"{what}; no previous storageUri to roll back to", failed)
    log.warning("rolling back InferenceService %s to %s", failed.resource, previous_storage_uri)
    rolled = DeployResult(
        failed.target,
        failed.endpoint,
        failed.model_name,
        failed.model_version,
        failed.source,
        failed.smoke,
        failed.resource,
        rolled_back_to=previous_storage_uri,
    )
    try:
        patched = _patch_storage_uri(
            api,
            ns,
            name,
            previous_storage_uri,
            str(previous_model_version or "unknown"),
            previous_annotations,
        )
        wait_ready(
            api,
            ns,
            name,
            generation=patched.get("metadata", {}).get("generation"),
            timeout_s=timeout_s,
            poll_s=poll_s,
        )
    except Exception as exc:  # the rollback's own failure must not hide the deploy's
        return DeployError(
            f"{what}; rollback to {previous_storage_uri} did not become Ready: {exc}", rolled
        )
    return DeployError(f"{what}; rolled back to {previous_storage_uri} (Ready)", rolled)
