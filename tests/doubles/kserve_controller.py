"""TEST DOUBLE: the KServe controller's part of ``k8s_double`` -- what ``status`` says, and when.

Serverless mode, recorded from KServe's status types and its Knative reconciler
(``ksvc_reconciler.go``): every change of the predictor's configuration (``spec.predictor``
less ``canaryTrafficPercent``, plus the annotations, which KServe copies onto the revision
template) creates a revision ``<name>-predictor-0000N``. Traffic follows
``canaryTrafficPercent``: unset, 100 % to the latest *ready* revision (Knative's
``latestRevision: true``); set, that share to the latest ready revision and the rest to the
last revision that had 100 % (tag ``prev``) -- or, when that one is the latest ready and the
share is below 100 (a rollback after a promotion), to the one rolled out before it. With
``serving.kserve.io/enable-tag-routing: "true"`` the latest target is tagged ``latest``.
Tagged targets get their own URL: here, the v2 server given for the revision's storageUri.

What happens to a storageUri is scripted with ``outcomes``: ``ready``, ``never-ready`` (stays
InProgress) or ``load-failed`` (RevisionFailed + BlockedByFailedLoad).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

TS = "2026-01-01T00:00:00Z"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"


def _cond(kind: str, status: str, reason: str = "", message: str = "", info: bool = False) -> dict:
    c: dict[str, Any] = {"lastTransitionTime": TS, "status": status, "type": kind}
    if info:
        c["severity"] = "Info"
    if reason:
        c["reason"], c["message"] = reason, message
    return c


def _ready_conditions() -> list[dict[str, Any]]:
    return [
        _cond("IngressReady", "True"),
        _cond("LatestDeploymentReady", "True", info=True),
        _cond("PredictorConfigurationReady", "True", info=True),
        _cond("PredictorReady", "True"),
        _cond("PredictorRouteReady", "True", info=True),
        _cond("Ready", "True"),
        _cond("RoutesReady", "True", info=True),
    ]


def _ready_model_status() -> dict[str, Any]:
    return {
        "copies": {"failedCopies": 0, "totalCopies": 1},
        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
        "transitionStatus": "UpToDate",
    }


def ready_status(name: str, ns: str, generation: int, url: str) -> dict[str, Any]:
    """A serverless InferenceService whose latest revision serves 100% of traffic."""
    rev = f"{name}-predictor-{generation:05d}"
    return {
        "address": {"url": url},
        "components": {
            "predictor": {
                "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                "latestCreatedRevision": rev,
                "latestReadyRevision": rev,
                "latestRolledoutRevision": rev,
                "traffic": [{"latestRevision": True, "percent": 100, "revisionName": rev}],
                "url": f"http://{name}-predictor.{ns}.example.com",
            }
        },
        "conditions": _ready_conditions(),
        "modelStatus": _ready_model_status(),
        "observedGeneration": generation,
        "url": f"http://{name}.{ns}.example.com",
    }


def progressing_status(name: str, generation: int) -> dict[str, Any]:
    """The new revision is being created (pods pulling the image / loading the model)."""
    msg = f'Configuration "{name}-predictor" is waiting for a Revision to become ready.'
    return {
        "conditions": [
            _cond("IngressReady", "True"),
            _cond("LatestDeploymentReady", "Unknown", "RevisionMissing", msg, info=True),
            _cond("PredictorConfigurationReady", "Unknown", "RevisionMissing", msg, info=True),
            _cond("PredictorReady", "Unknown", "RevisionMissing", msg),
            _cond("Ready", "Unknown", "RevisionMissing", msg),
        ],
        "modelStatus": {
            "copies": {"failedCopies": 0, "totalCopies": 0},
            "states": {"activeModelState": "Pending", "targetModelState": "Loading"},
            "transitionStatus": "InProgress",
        },
        "observedGeneration": generation,
    }


def load_failed_status(name: str, generation: int, rev: str | None = None) -> dict[str, Any]:
    """Triton could not load the repository: the revision failed, the model is blocked."""
    rev = rev or f"{name}-predictor-{generation:05d}"
    msg = f'Revision "{rev}" failed with message: Container failed with: failed to load model.'
    return {
        "conditions": [
            _cond("IngressReady", "True"),
            _cond("PredictorConfigurationReady", "False", "RevisionFailed", msg, info=True),
            _cond("PredictorReady", "False", "RevisionFailed", msg),
            _cond("Ready", "False", "RevisionFailed", msg),
        ],
        "modelStatus": {
            "copies": {"failedCopies": 1, "totalCopies": 0},
            "lastFailureInfo": {
                "reason": "ModelLoadFailed",
                "message": "poll failed for model directory 'depth': failed to load model",
                "modelRevisionName": rev,
            },
            "states": {"activeModelState": "FailedToLoad", "targetModelState": "FailedToLoad"},
            "transitionStatus": "BlockedByFailedLoad",
        },
        "observedGeneration": generation,
    }


@dataclass
class Revision:
    name: str
    storage_uri: str
    generation: int  # the object generation that created it


@dataclass
class LiveObject:
    """One stored InferenceService and the controller's memory of it."""

    obj: dict[str, Any]
    revisions: list[Revision] = field(default_factory=list)
    rolled_out: str | None = None  # the last revision that had 100 % of the traffic
    previous_rolled_out: str | None = None
    polls: int = 0  # GETs since the last spec change
    old_status: dict[str, Any] = field(default_factory=dict)


def configuration_key(obj: dict[str, Any]) -> str:
    """What makes a new predictor revision: the predictor spec (less the traffic split) and
    the annotations."""
    predictor = {k: v for k, v in obj["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    return json.dumps([predictor, obj["metadata"].get("annotations") or {}], sort_keys=True)


def add_revision_if_changed(live: LiveObject, before: dict[str, Any] | None) -> None:
    if before is not None and configuration_key(before) == configuration_key(live.obj):
        return
    n = len(live.revisions) + 1
    uri = live.obj["spec"]["predictor"]["model"].get("storageUri", "")
    gen = live.obj["metadata"]["generation"]
    live.revisions.append(Revision(f"{live.obj['metadata']['name']}-predictor-{n:05d}", uri, gen))


class Controller:
    """Computes ``status`` for a :class:`LiveObject` at each GET (see the module docstring)."""

    def __init__(
        self,
        *,
        url: str,
        outcomes: dict[str, str],
        endpoints: dict[str, str],
        stale_polls: int,
        progress_polls: int,
    ) -> None:
        self.url, self.outcomes, self.endpoints = url, outcomes, endpoints
        self.stale_polls, self.progress_polls = stale_polls, progress_polls

    def _state(self, live: LiveObject, rev: Revision) -> str:
        gen = live.obj["metadata"]["generation"]
        if rev.generation == gen and live.polls < self.stale_polls + self.progress_polls:
            return "progressing"
        outcome = self.outcomes.get(rev.storage_uri, "ready")
        if outcome not in ("ready", "never-ready", "load-failed"):
            raise ValueError(f"unknown outcome {outcome!r}")
        return "progressing" if outcome == "never-ready" else outcome

    def _target(self, live: LiveObject, rev: str, percent: int, latest: bool, tag: str | None):
        entry: dict[str, Any] = {"latestRevision": latest, "percent": percent, "revisionName": rev}
        if tag:
            uri = next(r.storage_uri for r in live.revisions if r.name == rev)
            entry["tag"], entry["url"] = (
                tag,
                self.endpoints.get(uri, f"http://{tag}-{rev}.example.com"),
            )
        return entry

    def _traffic(self, live: LiveObject, latest_ready: str) -> list[dict[str, Any]]:
        meta, predictor = live.obj["metadata"], live.obj["spec"]["predictor"]
        tag = "latest" if (meta.get("annotations") or {}).get(TAG_ROUTING) == "true" else None
        canary = predictor.get("canaryTrafficPercent")
        prev = live.rolled_out
        if canary is not None and canary < 100 and prev == latest_ready:
            prev = live.previous_rolled_out  # KServe: a rollback after a promotion
        if canary is None or not prev:
            return [self._target(live, latest_ready, 100, True, tag)]
        traffic = [self._target(live, latest_ready, canary, True, tag)]
        if canary < 100:
            traffic.append(self._target(live, prev, 100 - canary, False, "prev"))
        return traffic

    def view(self, live: LiveObject) -> dict[str, Any]:
        obj = copy.deepcopy(live.obj)
        meta = obj["metadata"]
        name, ns, gen = meta["name"], meta["namespace"], meta["generation"]
        if live.polls < self.stale_polls and live.old_status:
            obj["status"] = copy.deepcopy(live.old_status)
            return obj
        latest = live.revisions[-1]
        state = self._state(live, latest)
        ready = [r.name for r in live.revisions if self._state(live, r) == "ready"]
        if not ready:  # nothing ever served: the first revision is still coming up, or failed
            obj["status"] = (
                load_failed_status(name, gen, latest.name)
                if state == "load-failed"
                else progressing_status(name, gen)
            )
            return obj
        traffic = self._traffic(live, ready[-1])
        if state == "ready" and traffic[0]["percent"] == 100 and live.rolled_out != latest.name:
            live.previous_rolled_out, live.rolled_out = live.rolled_out, latest.name
        if state == "ready":
            status = ready_status(name, ns, gen, self.url)
        elif state == "load-failed":
            status = load_failed_status(name, gen, latest.name)
        else:
            status = progressing_status(name, gen)
        status.setdefault("address", {"url": self.url})
        status["components"] = {
            "predictor": {
                "address": {"url": f"http://{name}-predictor.{ns}.svc.cluster.local"},
                "latestCreatedRevision": latest.name,
                "latestReadyRevision": ready[-1],
                "latestRolledoutRevision": live.rolled_out or "",
                "previousRolledoutRevision": live.previous_rolled_out or "",
                "traffic": traffic,
                "url": f"http://{name}-predictor.{ns}.example.com",
            }
        }
        obj["status"] = status
        return obj
