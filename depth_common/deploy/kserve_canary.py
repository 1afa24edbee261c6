"""The KServe target: :class:`KServeTarget` (serve, canary, describe one InferenceService) and
its canary in serverless mode, ``spec.predictor.canaryTrafficPercent`` steps on one ISVC.

KServe keeps the last revision that had 100 % of the traffic and splits traffic between it and
the latest revision while ``canaryTrafficPercent`` is set; with
``serving.kserve.io/enable-tag-routing: "true"`` each side is reachable on its own URL (tags
``latest`` and ``prev`` in ``status.components.predictor.traffic``). Each change below is a
JSON merge patch followed by a wait for ``Ready`` at the new ``observedGeneration`` *and* the
traffic split asked for (the latest revision is the one just created, ready, with its share):

- begin: the challenger's spec (new ``storageUri``, its annotations) + ``canaryTrafficPercent``
  = the first step; then the challenger revision is smoke-tested on its own URL;
- shift: ``canaryTrafficPercent`` = the next step;
- promote: ``canaryTrafficPercent`` removed (``null``): 100 % on the challenger;
- roll back, in two patches so that traffic never leaves the champion's model: first the
  champion's ``storageUri`` and annotations with ``canaryTrafficPercent: 0`` (the former
  champion's revision keeps 100 % while the restored one starts), then the canary removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth_common.config import DeployConfig
from depth_common.deploy import kserve
from depth_common.deploy.kserve import (
    MLFLOW_RUN_ANNOTATION,
    MLFLOW_VERSION_ANNOTATION,
    get_inferenceservice,
    patch_inferenceservice,
    wait_ready,
)
from depth_common.deploy.manifests import (
    MODEL_VERSION_LABEL,
    build_inferenceservice,
    storage_uri_of,
)
from depth_common.deploy.probe import VersionEndpoint
from depth_common.deploy.report import DeployResult
from depth_common.deploy.smoke import SmokeResult, smoke_test_v2
from depth_common.deploy.target import Release, Served
from depth_common.errors import DeployError
from depth_common.registry.lease import lease_ttl_s, serving_lease
from depth_common.registry.registry import Registry

log = logging.getLogger(__name__)

PREV_TAG, LATEST_TAG = "prev", "latest"


@dataclass(frozen=True)
class ServedModel:
    """What an InferenceService says it serves (spec and annotations)."""

    storage_uri: str
    model_version: str
    run_id: str
    annotations: dict[str, str]


def served_model(isvc: dict[str, Any]) -> ServedModel | None:
    """The model the live object's spec serves (None when it has no storageUri)."""
    uri = storage_uri_of(isvc)
    if not uri:
        return None
    meta = isvc.get("metadata", {})
    ann = dict(meta.get("annotations") or {})
    version = ann.get(MLFLOW_VERSION_ANNOTATION) or (meta.get("labels") or {}).get(
        MODEL_VERSION_LABEL, "unknown"
    )
    return ServedModel(uri, str(version), ann.get(MLFLOW_RUN_ANNOTATION, ""), ann)


def predictor_status(isvc: dict[str, Any]) -> dict[str, Any]:
    return ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}


def traffic_split(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"latest": entry, "prev": entry}`` of ``status.components.predictor.traffic``."""
    out = {}
    for entry in predictor_status(isvc).get("traffic") or []:
        key = LATEST_TAG if entry.get("latestRevision") else entry.get("tag") or "pinned"
        out[key] = entry
    return out


def expect_split(percent: int):  # -> Callable[[dict], str | None]
    """Check for :func:`wait_ready`: the newest revision is ready and has ``percent`` %."""

    def missing(isvc: dict[str, Any]) -> str | None:
        pred = predictor_status(isvc)
        created, ready = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
        split = traffic_split(isvc)
        latest, prev = split.get(LATEST_TAG) or {}, split.get(PREV_TAG) or {}
        if not created or created != ready:
            return f"revision {created or '?'} not ready yet (latest ready: {ready or 'none'})"
        if latest.get("revisionName") != created or latest.get("percent") != percent:
            return (
                f"traffic: latest revision {latest.get('revisionName')} has "
                f"{latest.get('percent')} %, waiting for {created} at {percent} %"
            )
        if percent < 100 and prev.get("percent") != 100 - percent:
            return f"traffic: previous revision has {prev.get('percent')} %, not {100 - percent} %"
        return None

    return missing


class KServeCanary:
    """:class:`~depth_common.deploy.canary.RolloutTarget` on one InferenceService."""

    def __init__(
        self,
        api: Any,
        cfg: DeployConfig,
        challenger_isvc: dict[str, Any],
        champion: ServedModel,
        *,
        namespace: str,
        model_name: str,
        challenger_label: str,
        onnx_path: str | Path | None = None,
        atol: float = 1e-3,
        poll_s: float = 2.0,
        smoke_test: Callable[..., SmokeResult] = smoke_test_v2,
        image: np.ndarray | None = None,
    ) -> None:
        self.api, self.cfg = api, cfg
        self.smoke_test, self.image = smoke_test, image
        self.restores: str | None = champion.storage_uri
        self.ns, self.name = namespace, cfg.name
        self.challenger_isvc, self.champion = challenger_isvc, champion
        self.model_name, self.challenger_label = model_name, challenger_label
        self.onnx_path, self.atol, self.poll_s = onnx_path, atol, poll_s
        self.live: dict[str, Any] = {}
        self.smoke: SmokeResult | None = None

    def _apply(self, patch: dict[str, Any], percent: int) -> None:
        patched = patch_inferenceservice(self.api, self.ns, self.name, patch)
        self.live = wait_ready(
            self.api,
            self.ns,
            self.name,
            generation=patched.get("metadata", {}).get("generation"),
            timeout_s=self.cfg.timeout_s,
            poll_s=self.poll_s,
            expect=expect_split(percent),
        )

    def begin(self, percent: int) -> None:
        meta = self.challenger_isvc["metadata"]
        spec = {**self.challenger_isvc["spec"]}
        spec["predictor"] = {**spec["predictor"], "canaryTrafficPercent": percent}
        patch = {
            "metadata": {"labels": meta.get("labels", {}), "annotations": meta["annotations"]},
            "spec": spec,
        }
        self._apply(patch, percent)
        _, challenger = self.endpoints()
        self.smoke = self.smoke_test(
            challenger.url, self.model_name, onnx_path=self.onnx_path, atol=self.atol,
            image=self.image,
        )  # fmt: skip
        if not self.smoke.ok:
            raise DeployError(
                f"smoke test of the challenger at {challenger.url}: {self.smoke.detail}"
            )

    def shift(self, percent: int) -> None:
        self._apply({"spec": {"predictor": {"canaryTrafficPercent": percent}}}, percent)

    def endpoints(self) -> tuple[VersionEndpoint, VersionEndpoint]:
        split = traffic_split(self.live)
        urls = {tag: (split.get(tag) or {}).get("url") for tag in (PREV_TAG, LATEST_TAG)}
        if not all(urls.values()):
            raise DeployError(
                f"InferenceService {self.ns}/{self.name}: no tagged URL for "
                f"{[t for t, u in urls.items() if not u]} in status.components.predictor.traffic"
                " (KServe sets them with the serving.kserve.io/enable-tag-routing annotation)"
            )
        return (
            VersionEndpoint(
                "champion", f"v{self.champion.model_version}", urls[PREV_TAG], self.model_name
            ),  # fmt: skip
            VersionEndpoint("challenger", self.challenger_label, urls[LATEST_TAG], self.model_name),
        )

    def promote(self) -> None:
        self._apply({"spec": {"predictor": {"canaryTrafficPercent": None}}}, 100)

    def endpoint(self) -> str:
        return kserve.endpoint_of(self.live) if self.live else ""

    def close(self) -> None:
        """Nothing to release: the InferenceService is the cluster's."""

    def roll_back(self) -> None:
        live = get_inferenceservice(self.api, self.ns, self.name) or {}
        labels = {MODEL_VERSION_LABEL: self.champion.model_version}
        restore = {
            "metadata": {"labels": labels, "annotations": self.champion.annotations},
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": 0,
                    "model": {"storageUri": self.champion.storage_uri},
                }
            },
        }
        if storage_uri_of(live) != self.champion.storage_uri:
            log.warning("rolling back %s/%s to %s", self.ns, self.name, self.champion.storage_uri)
            self._apply(restore, 0)
        self._apply({"spec": {"predictor": {"canaryTrafficPercent": None}}}, 100)


class KServeTarget:
    """:class:`~depth_common.deploy.target.ServingTarget` ``kserve``: InferenceService
    ``cfg.name`` in ``namespace``, built from the ``overlay`` of ``manifests/``.

    ``model_name`` is the Triton model the smoke test calls, ``registered_model`` the MLflow
    model whose versions the annotations name; ``atol`` (metres) bounds the smoke test's
    difference from ONNX Runtime; ``image`` is its input (default: its own seeded image).
    """

    kind = "kserve"

    def __init__(
        self,
        api: Any,
        cfg: DeployConfig,
        *,
        namespace: str,
        model_name: str,
        registered_model: str,
        atol: float,
        poll_s: float = 2.0,
        image: np.ndarray | None = None,
        overlay: str = "cpu",
    ) -> None:
        self.api = api if api is not None else kserve.kubernetes_api()
        self.cfg, self.ns, self.model_name = cfg, namespace, model_name
        self.registered_model, self.atol, self.poll_s = registered_model, atol, poll_s
        self.image, self.overlay = image, overlay
        self.resource = f"{namespace}/{cfg.name}"

    def lease(self, registry: Registry) -> AbstractContextManager[object]:
        ttl = lease_ttl_s(self.cfg.timeout_s, len(self.cfg.canary_steps))
        return serving_lease(registry, self.ns, self.cfg.name, ttl_s=ttl)

    def _live(self) -> ServedModel | None:
        live = get_inferenceservice(self.api, self.ns, self.cfg.name)
        return served_model(live) if live is not None else None

    def describe(self) -> Served | None:
        live = self._live()
        return None if live is None else Served(live.model_version, live.storage_uri)

    def _annotations(self, release: Release) -> dict[str, str]:
        return kserve.model_annotations(
            self.registered_model, release.version, release.run_id, release.onnx_path
        )

    def serve(self, release: Release) -> DeployResult:
        return kserve.deploy_kserve(
            release.source, release.version, self.cfg, namespace=self.ns,
            model_name=self.model_name, overlay=self.overlay, onnx_path=release.onnx_path,
            atol=self.atol, api=self.api, poll_s=self.poll_s,
            annotations=self._annotations(release), image=self.image,
        )  # fmt: skip

    def canary(self, release: Release, champion: Served) -> KServeCanary:
        live = self._live()
        if live is None or live.storage_uri != champion.source:
            raise DeployError(
                f"InferenceService {self.resource} no longer serves {champion.source} "
                f"(now: {live.storage_uri if live else 'nothing'})"
            )
        isvc = build_inferenceservice(
            self.overlay, name=self.cfg.name, namespace=self.ns, storage_uri=release.source,
            model_version=release.version, transformer_args=self.cfg.transformer_args(),
        )  # fmt: skip
        isvc["metadata"].setdefault("annotations", {}).update(self._annotations(release))
        return KServeCanary(
            self.api, self.cfg, isvc, live, namespace=self.ns, model_name=self.model_name,
            challenger_label=f"v{release.version}", onnx_path=release.onnx_path,
            atol=self.atol, poll_s=self.poll_s, image=self.image,
        )  # fmt: skip

    def status_lines(self) -> list[str]:
        live = get_inferenceservice(self.api, self.ns, self.cfg.name)
        if live is None:
            return [f"kserve: no InferenceService {self.resource}"]
        served = served_model(live)
        ready = kserve.ready_condition(live) or {}
        canary = live["spec"]["predictor"].get("canaryTrafficPercent")
        lines = [
            f"kserve: {self.resource} Ready={ready.get('status', '?')} serves "
            f"{served.storage_uri if served else '-'} (model version "
            f"{served.model_version if served else '-'}, run {served.run_id if served else '-'})",
            f"  canaryTrafficPercent: {canary if canary is not None else 'unset (no canary)'}",
        ]
        for tag, entry in sorted(traffic_split(live).items()):
            lines.append(
                f"  traffic {tag:<6} {entry.get('percent')} % → {entry.get('revisionName')}"
                + (f" ({entry['url']})" if entry.get("url") else "")
            )
        return lines
