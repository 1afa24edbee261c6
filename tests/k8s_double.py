"""TEST DOUBLE: a tiny stand-in for the Kubernetes API server's InferenceService endpoints.

Not a Kubernetes API server and not used outside tests. It serves, on 127.0.0.1, the REST paths
the Kubernetes Python client calls for ``serving.kserve.io/v1beta1`` InferenceServices (get,
create, merge-patch), and plays the KServe controller's part by moving ``status`` through the
shapes a real serverless-mode InferenceService reports (recorded from KServe's status types:
IngressReady / PredictorReady / Ready conditions, ``modelStatus`` with ``transitionStatus``,
``observedGeneration``, ``address.url``). Like the real server it:

- validates every created/patched object against the vendored CRD ``openAPIV3Schema``
  (422 Invalid, with a Kubernetes ``Status`` body),
- allows only the verbs of ``manifests/rbac/role.yaml`` (403 Forbidden otherwise),
- ignores ``status`` on create/patch (a subresource) and bumps ``metadata.generation`` only
  when ``spec`` changes,
- keeps reporting the *old* status for a while after a spec change (the controller has not
  reconciled yet), so a client that does not check ``observedGeneration`` is caught.

What happens to a storage URI is scripted with ``outcomes``: ``ready``, ``never-ready``
(stays InProgress: the client must time out) or ``load-failed`` (RevisionFailed +
BlockedByFailedLoad, as when Triton cannot load the repository).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from loopback import JsonHandler, LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "manifests" / "schemas" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
ROLE = ROOT / "manifests" / "rbac" / "role.yaml"
_ITEM = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices/([^/]+)$"
)
_COLLECTION = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices$"
)
TS = "2026-01-01T00:00:00Z"


@functools.cache
def crd_schema(path: Path = CRD, version: str = "v1beta1") -> dict[str, Any]:
    """A vendored CRD's openAPIV3Schema for ``version`` (parsed once: the file is 2 MB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return found["schema"]["openAPIV3Schema"]


def isvc_schema() -> dict[str, Any]:
    """The InferenceService CRD's openAPIV3Schema (v1beta1)."""
    return crd_schema(CRD, "v1beta1")


@functools.cache
def isvc_validator() -> jsonschema.protocols.Validator:
    """A validator built once: ``jsonschema.validate`` re-checks the 2 MB schema every call."""
    schema = isvc_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def allowed_verbs() -> set[str]:
    """Verbs the pipeline's Role grants on inferenceservices (from the manifests)."""
    docs = [d for d in yaml.safe_load_all(ROLE.read_text()) if d and d["kind"] == "Role"]
    return {v for rule in docs[0]["rules"] for v in rule["verbs"]}


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _cond(kind: str, status: str, reason: str = "", message: str = "", info: bool = False) -> dict:
    c: dict[str, Any] = {"lastTransitionTime": TS, "status": status, "type": kind}
    if info:
        c["severity"] = "Info"
    if reason:
        c["reason"], c["message"] = reason, message
    return c


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
        "conditions": [
            _cond("IngressReady", "True"),
            _cond("LatestDeploymentReady", "True", info=True),
            _cond("PredictorConfigurationReady", "True", info=True),
            _cond("PredictorReady", "True"),
            _cond("PredictorRouteReady", "True", info=True),
            _cond("Ready", "True"),
            _cond("RoutesReady", "True", info=True),
        ],
        "modelStatus": {
            "copies": {"failedCopies": 0, "totalCopies": 1},
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            "transitionStatus": "UpToDate",
        },
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


def load_failed_status(name: str, generation: int) -> dict[str, Any]:
    """Triton could not load the repository: the revision failed, the model is blocked."""
    rev = f"{name}-predictor-{generation:05d}"
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
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: Any


@dataclass
class _Live:
    obj: dict[str, Any]
    polls: int = 0  # GETs since the last spec change
    old_status: dict[str, Any] = field(default_factory=dict)


class KServeApiDouble(LoopbackServer):
    """TEST DOUBLE of the API server for InferenceServices (see the module docstring).

    ``outcomes`` maps a storageUri to ``ready`` / ``never-ready`` / ``load-failed`` (default
    ``ready``); ``unavailable_after_patch`` GETs after each PATCH get a 503; ``url`` is the
    ``status.address.url`` a Ready service reports (point it at a
    real v2 server for the smoke test). After a spec change the old status is served for
    ``stale_polls`` GETs, then the progressing status for ``progress_polls`` GETs, then the
    outcome.
    """

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:9",
        outcomes: dict[str, str] | None = None,
        stale_polls: int = 1,
        progress_polls: int = 2,
        unavailable_after_patch: int = 0,
    ) -> None:
        self.url = url
        self.outcomes = dict(outcomes or {})
        self.stale_polls = stale_polls
        self.progress_polls = progress_polls
        # GETs answered 503 after each PATCH (an API server restarting mid-rollout).
        self.unavailable_after_patch = unavailable_after_patch
        self._unavailable = 0
        self.requests: list[Recorded] = []
        self.objects: dict[tuple[str, str], _Live] = {}
        self.validator = isvc_validator()
        self.verbs = allowed_verbs()
        self._lock = threading.Lock()
        super().__init__(self._handler())

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.base_url

    def api(self) -> Any:
        """A real ``kubernetes.client.CustomObjectsApi`` pointed at this double."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.host
        return client.CustomObjectsApi(client.ApiClient(cfg))

    # -- seeding and inspection ----------------------------------------------------------------
    def seed(self, obj: dict[str, Any]) -> None:
        """Put an existing, Ready InferenceService in place (the model served before)."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.update(generation=1, resourceVersion="1", uid="uid-1", creationTimestamp=TS)
        obj["status"] = ready_status(meta["name"], meta["namespace"], 1, self.url)
        self.objects[(meta["namespace"], meta["name"])] = _Live(obj, polls=10**6)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._view(self.objects[(namespace, name)])

    def patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    # -- the controller's part -------------------------------------------------------------------
    def _view(self, live: _Live) -> dict[str, Any]:
        obj = copy.deepcopy(live.obj)
        meta = obj["metadata"]
        gen = meta["generation"]
        if live.polls < self.stale_polls and live.old_status:
            obj["status"] = copy.deepcopy(live.old_status)
        elif live.polls < self.stale_polls + self.progress_polls:
            obj["status"] = progressing_status(meta["name"], gen)
        else:
            uri = obj["spec"]["predictor"]["model"].get("storageUri", "")
            outcome = self.outcomes.get(uri, "ready")
            if outcome == "ready":
                obj["status"] = ready_status(meta["name"], meta["namespace"], gen, self.url)
            elif outcome == "load-failed":
                obj["status"] = load_failed_status(meta["name"], gen)
            elif outcome == "never-ready":
                obj["status"] = progressing_status(meta["name"], gen)
            else:
                raise ValueError(f"unknown outcome {outcome!r}")
        return obj

    # -- HTTP ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(JsonHandler):
            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _handle(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                body = self._body() if method in ("POST", "PATCH", "PUT") else None
                with double._lock:
                    double.requests.append(
                        Recorded(method, path, self.headers.get("Content-Type"), body)
                    )
                    verb = {
                        "GET": "get",
                        "POST": "create",
                        "PATCH": "patch",
                        "PUT": "update",
                        "DELETE": "delete",
                    }[method]
                    if verb not in double.verbs:
                        return self._status(
                            403,
                            "Forbidden",
                            f'inferenceservices is forbidden: cannot "{verb}" (RBAC)',
                        )
                    item, coll = _ITEM.match(path), _COLLECTION.match(path)
                    if method == "POST" and coll:
                        return self._create(coll.group(1), body)
                    if item and method in ("GET", "PATCH"):
                        key = (item.group(1), item.group(2))
                        live = double.objects.get(key)
                        if live is None:
                            return self._status(
                                404,
                                "NotFound",
                                f'inferenceservices.serving.kserve.io "{key[1]}" not found',
                            )
                        if method == "GET" and double._unavailable > 0:
                            double._unavailable -= 1
                            return self._status(
                                503, "ServiceUnavailable", "etcdserver: leader changed"
                            )
                        if method == "GET":
                            view = double._view(live)
                            live.polls += 1
                            return self._send(200, view)
                        return self._patch(live, body)
                    return self._status(404, "NotFound", f"the test double does not serve {path}")

            def _invalid(self, obj: dict[str, Any]) -> str | None:
                try:
                    double.validator.validate(obj)
                except jsonschema.ValidationError as exc:
                    where = ".".join(str(p) for p in exc.absolute_path)
                    return f"InferenceService is invalid: {where}: {exc.message}"
                return None

            def _create(self, ns: str, obj: dict[str, Any]) -> None:
                meta = obj.get("metadata", {})
                key = (meta.get("namespace", ns), meta.get("name"))
                if key in double.objects:
                    return self._status(409, "AlreadyExists", f'"{key[1]}" already exists')
                if meta.get("namespace", ns) != ns:
                    return self._status(400, "BadRequest", "namespace does not match the path")
                error = self._invalid(obj)
                if error:
                    return self._status(422, "Invalid", error)
                obj = copy.deepcopy(obj)
                obj.pop("status", None)  # a subresource: ignored on create
                obj["metadata"].update(
                    namespace=ns, generation=1, resourceVersion="1", uid="uid-1",
                    creationTimestamp=TS,
                )  # fmt: skip
                double.objects[key] = _Live(obj)
                return self._send(201, double._view(double.objects[key]))

            def _patch(self, live: _Live, patch: Any) -> None:
                if self.headers.get("Content-Type") != "application/merge-patch+json":
                    return self._status(
                        415, "UnsupportedMediaType", "this double accepts merge patches only"
                    )
                patch = {k: v for k, v in (patch or {}).items() if k != "status"}
                new = _merge(live.obj, patch)
                error = self._invalid(new)
                if error:
                    return self._status(422, "Invalid", error)
                meta = new["metadata"]
                meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
                if new.get("spec") != live.obj.get("spec"):
                    live.old_status = double._view(live).get("status", {})
                    meta["generation"] += 1
                    live.polls = 0
                live.obj = new
                double._unavailable = double.unavailable_after_patch
                return self._send(200, double._view(live))

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        return Handler
