"""The InferenceService the pipeline deploys, built from ``manifests/`` (the one source of truth).

``build_inferenceservice`` loads ``manifests/base/inferenceservice.yaml``, applies the overlay's
patches (``manifests/overlays/<overlay>/kustomization.yaml``) as RFC 7386 JSON merge patches
(the ``json-merge-patch`` package) -- which is how kustomize patches a custom resource it has no
schema for -- and sets only what a deploy changes: name, namespace, model-version label, storage
URI, service account. With every argument left at ``None`` the result equals
``kubectl kustomize manifests/overlays/<overlay>`` (tested). kustomize itself is a Go program
the component image does not carry, and no Python port renders these overlays, so the overlay
reader below understands exactly what the overlays use (namespace, merge patches) and refuses
anything else.

The manifests are read with :mod:`importlib.resources` from the ``manifests`` package (the
repository's folder, installed with the library as package data), or from
``$DEPTH_MANIFESTS_DIR`` when set.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import json_merge_patch
import yaml

from depth_common.errors import DataError

MANIFESTS_ENV = "DEPTH_MANIFESTS_DIR"  # overrides where the manifests are read from
MANIFESTS_PACKAGE = "manifests"  # the repository's folder, installed as package data
MODEL_VERSION_LABEL = "depth-mlops.io/model-version"
ISVC_API_VERSION = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
# kustomization.yaml keys this reader understands; any other key in an overlay is an error
# rather than a silent difference from what kustomize renders.
_OVERLAY_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches"}


def manifests_dir() -> Traversable:
    """``$DEPTH_MANIFESTS_DIR``, else the ``manifests`` package's folder (importlib.resources)."""
    env = os.environ.get(MANIFESTS_ENV)
    try:
        path = Path(env) if env else importlib.resources.files(MANIFESTS_PACKAGE)
    except ModuleNotFoundError:
        raise DataError(
            f"no {MANIFESTS_PACKAGE!r} package installed: install the project (pip install .), "
            f"or set {MANIFESTS_ENV} to the manifests/ folder"
        ) from None
    if not (path / "base" / "inferenceservice.yaml").is_file():
        raise DataError(
            f"{path}: no base/inferenceservice.yaml; expected the project's manifests/ folder "
            f"(set {MANIFESTS_ENV} to it)"
        )
    return path


def _load_yaml(path: Traversable) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc})") from exc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of copies: maps merge recursively, ``null`` deletes, anything
    else replaces (``json_merge_patch.merge`` changes its first argument in place)."""
    return json_merge_patch.merge(copy.deepcopy(target), copy.deepcopy(patch))


def _overlay(root: Traversable, overlay: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The overlay's namespace and its InferenceService patches (in order)."""
    overlay_dir = root / "overlays" / overlay
    path = overlay_dir / "kustomization.yaml"
    if not path.is_file():
        known = sorted(p.name for p in (root / "overlays").iterdir() if p.is_dir())
        raise DataError(f"{path}: no such overlay {overlay!r}; known overlays: {', '.join(known)}")
    kust = _load_yaml(path) or {}
    unknown = set(kust) - _OVERLAY_KEYS
    if unknown:
        raise DataError(
            f"{path}: keys {sorted(unknown)} are not understood by depth_common.deploy.manifests "
            f"(expected only {sorted(_OVERLAY_KEYS)}); keep overlays to namespace + merge patches"
        )
    if kust.get("resources") != ["../../base"]:
        raise DataError(f"{path}: resources: expected ['../../base'], got {kust.get('resources')}")
    patches = []
    for i, entry in enumerate(kust.get("patches") or []):
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise DataError(f"{path}: patches[{i}]: expected {{path: <file>}}, got {entry!r}")
        patch_path = overlay_dir / entry["path"]
        patch = _load_yaml(patch_path)
        if not isinstance(patch, dict) or patch.get("kind") != ISVC_KIND:
            raise DataError(f"{patch_path}: expected a merge patch of kind {ISVC_KIND}")
        patches.append(patch)
    return kust.get("namespace"), patches


def build_inferenceservice(
    overlay: str = "cpu",
    *,
    name: str | None = None,
    namespace: str | None = None,
    storage_uri: str | None = None,
    model_version: str | int | None = None,
    service_account: str | None = None,
    root: str | Path | Traversable | None = None,
    transformer_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The InferenceService object (a plain dict) for ``overlay`` (``cpu`` or ``gpu``).

    ``None`` keeps the manifests' value: the base's name and placeholder storage URI, the
    overlay's namespace, the base's service account. ``storage_uri`` is the Triton model
    repository on the cluster's object store (``s3://``, ``gs://``, ``pvc://``...).
    ``transformer_args`` are appended to the transformer container's (the limits of
    ``params.deploy``: :meth:`~depth_common.config.DeployConfig.transformer_args`).
    """
    if root is None:
        root = manifests_dir()
    elif isinstance(root, str):
        root = Path(root)
    base_path = root / "base" / "inferenceservice.yaml"
    isvc = _load_yaml(base_path)
    if not isinstance(isvc, dict) or isvc.get("kind") != ISVC_KIND:
        raise DataError(f"{base_path}: expected one {ISVC_KIND} object")
    overlay_ns, patches = _overlay(root, overlay)
    for patch in patches:
        isvc = merge_patch(isvc, patch)

    meta = isvc.setdefault("metadata", {})
    if name is not None:
        meta["name"] = name
    ns = namespace if namespace is not None else overlay_ns
    if ns is not None:
        meta["namespace"] = ns
    if model_version is not None:
        meta.setdefault("labels", {})[MODEL_VERSION_LABEL] = str(model_version)
    predictor = isvc["spec"]["predictor"]
    if storage_uri is not None:
        if "://" not in storage_uri:
            raise ValueError(
                f"storage_uri: got {storage_uri!r}, expected a URI such as "
                "s3://bucket/path/triton_repository (deploy.storage_uri)"
            )
        predictor["model"]["storageUri"] = storage_uri
    if service_account is not None:
        predictor["serviceAccountName"] = service_account
    for container in isvc["spec"].get("transformer", {}).get("containers", []):
        container["args"] = [*container.get("args", []), *transformer_args]
    return isvc


def storage_uri_of(isvc: dict[str, Any]) -> str | None:
    """``spec.predictor.model.storageUri`` of an InferenceService dict (None if absent)."""
    return isvc.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri")
