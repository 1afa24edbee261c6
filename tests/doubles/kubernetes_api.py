"""TEST DOUBLE: a tiny stand-in for the Kubernetes API server's InferenceService endpoints.

Not a Kubernetes API server and not used outside tests. It serves, on 127.0.0.1, the REST paths
the Kubernetes Python client calls for ``serving.kserve.io/v1beta1`` InferenceServices (get,
create, merge-patch), and plays the KServe controller's part (:mod:`kserve_controller`:
revisions, canary traffic splits and tagged URLs, IngressReady / PredictorReady / Ready
conditions, ``modelStatus``, ``observedGeneration``). Like the real server it:

- applies merge patches with RFC 7386 semantics -- through the ``json-merge-patch`` package
  (which ``depth_common.deploy.manifests`` uses too, for the overlays),

- validates every created/patched object against the vendored CRD ``openAPIV3Schema``
  (422 Invalid, with a Kubernetes ``Status`` body),
- allows only the verbs of ``manifests/rbac/role.yaml`` (403 Forbidden otherwise),
- ignores ``status`` on create/patch (a subresource) and bumps ``metadata.generation`` only
  when ``spec`` changes,
- keeps reporting the *old* status for a while after a spec change (the controller has not
  reconciled yet), so a client that does not check ``observedGeneration`` is caught.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import json_merge_patch
import jsonschema
import yaml
from doubles.kserve_controller import (
    TS,
    Controller,
    LiveObject,
    add_revision_if_changed,
    load_failed_status,
    progressing_status,
    ready_status,
)
from doubles.loopback import JsonHandler, LoopbackServer

__all__ = [
    "KServeApiDouble",
    "isvc_validator",
    "load_failed_status",
    "progressing_status",
    "ready_status",
]

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "schemas" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
ROLE = ROOT / "manifests" / "rbac" / "role.yaml"
_ITEM = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices/([^/]+)$"
)
_COLLECTION = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices$"
)
#: HTTP method → the Kubernetes verb RBAC names it by.
_RBAC_VERBS = {
    "GET": "get",
    "POST": "create",
    "PATCH": "patch",
    "PUT": "update",
    "DELETE": "delete",
}


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


@dataclass
class Recorded:
    method: str
    path: str
    content_type: str | None
    body: Any


class KServeApiDouble(LoopbackServer):
    """TEST DOUBLE of the API server for InferenceServices (see the module docstring).

    ``outcomes`` maps a storageUri to ``ready`` / ``never-ready`` / ``load-failed`` (default
    ``ready``); ``endpoints`` maps a storageUri to the v2 server its revision's tagged URL
    points at (canary analysis); ``url`` is the ``status.address.url`` a Ready service reports
    (point it at a real v2 server for the smoke test). After a spec change the old status is
    served for ``stale_polls`` GETs, then the progressing status for ``progress_polls`` GETs,
    then the outcome. ``unavailable_after_patch`` GETs after each PATCH get a 503;
    ``fail_patches`` maps the n-th PATCH (1-based) to an HTTP status answered instead of
    applying it. ``snapshots`` keeps the stored object after every accepted PATCH.
    """

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:9",
        outcomes: dict[str, str] | None = None,
        endpoints: dict[str, str] | None = None,
        stale_polls: int = 1,
        progress_polls: int = 2,
        unavailable_after_patch: int = 0,
        fail_patches: dict[int, int] | None = None,
    ) -> None:
        self.url = url
        self.controller = Controller(
            url=url,
            outcomes=dict(outcomes or {}),
            endpoints=dict(endpoints or {}),
            stale_polls=stale_polls,
            progress_polls=progress_polls,
        )
        self.progress_polls = progress_polls
        # GETs answered 503 after each PATCH (an API server restarting mid-rollout).
        self.unavailable_after_patch = unavailable_after_patch
        self.fail_patches = dict(fail_patches or {})
        self._unavailable = 0
        self._patch_count = 0
        self.requests: list[Recorded] = []
        self.snapshots: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []  # every object a GET returned, status included
        self.objects: dict[tuple[str, str], LiveObject] = {}
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
        obj.pop("status", None)
        meta = obj["metadata"]
        meta.update(generation=1, resourceVersion="1", uid="uid-1", creationTimestamp=TS)
        live = LiveObject(obj, polls=10**6)
        add_revision_if_changed(live, None)
        live.rolled_out = live.revisions[-1].name
        self.objects[(meta["namespace"], meta["name"])] = live

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._view(self.objects[(namespace, name)])

    def patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    def _view(self, live: LiveObject) -> dict[str, Any]:
        return self.controller.view(live)

    # -- HTTP ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_IsvcHandler,), {"double": self})


class _IsvcHandler(JsonHandler):
    """The double's HTTP side: RBAC check, then one method per verb (get, create, patch)."""

    double: KServeApiDouble  # set on the per-server subclass (see KServeApiDouble._handler)

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
        double = self.double
        path = self.path.split("?", 1)[0]
        body = self._body() if method in ("POST", "PATCH", "PUT") else None
        with double._lock:
            double.requests.append(Recorded(method, path, self.headers.get("Content-Type"), body))
            verb = _RBAC_VERBS[method]
            if verb not in double.verbs:
                return self._status(
                    403, "Forbidden", f'inferenceservices is forbidden: cannot "{verb}" (RBAC)'
                )
            item, coll = _ITEM.match(path), _COLLECTION.match(path)
            if method == "POST" and coll:
                return self._create(coll.group(1), body)
            if item and method in ("GET", "PATCH"):
                return self._on_item(method, (item.group(1), item.group(2)), body)
            return self._status(404, "NotFound", f"the test double does not serve {path}")

    def _on_item(self, method: str, key: tuple[str, str], body: Any) -> None:
        """GET or PATCH of one stored InferenceService (404 when there is none)."""
        live = self.double.objects.get(key)
        if live is None:
            return self._status(
                404, "NotFound", f'inferenceservices.serving.kserve.io "{key[1]}" not found'
            )
        if method == "GET":
            return self._get(live)
        return self._patch(live, body)

    def _get(self, live: LiveObject) -> None:
        double = self.double
        if double._unavailable > 0:
            double._unavailable -= 1
            return self._status(503, "ServiceUnavailable", "etcdserver: leader changed")
        view = double._view(live)
        live.polls += 1
        double.views.append(view)
        return self._send(200, view)

    def _invalid(self, obj: dict[str, Any]) -> str | None:
        try:
            self.double.validator.validate(obj)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            return f"InferenceService is invalid: {where}: {exc.message}"
        return None

    def _create(self, ns: str, obj: dict[str, Any]) -> None:
        double = self.double
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
        live = LiveObject(obj)
        add_revision_if_changed(live, None)
        double.objects[key] = live
        return self._send(201, double._view(live))

    def _patch(self, live: LiveObject, patch: Any) -> None:
        double = self.double
        if self.headers.get("Content-Type") != "application/merge-patch+json":
            return self._status(
                415, "UnsupportedMediaType", "this double accepts merge patches only"
            )
        double._patch_count += 1
        failure = double.fail_patches.pop(double._patch_count, None)
        if failure is not None:
            return self._status(failure, "InternalError", "injected failure")
        patch = {k: v for k, v in (patch or {}).items() if k != "status"}
        # RFC 7386 by a third-party implementation, not the code under test.
        new = json_merge_patch.merge(copy.deepcopy(live.obj), copy.deepcopy(patch))
        error = self._invalid(new)
        if error:
            return self._status(422, "Invalid", error)
        meta = new["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        before = live.obj
        if new.get("spec") != before.get("spec"):
            live.old_status = double._view(live).get("status", {})
            meta["generation"] += 1
            live.polls = 0
        live.obj = new
        add_revision_if_changed(live, before)
        double.snapshots.append(copy.deepcopy(new))
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
