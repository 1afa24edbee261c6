"""TEST DOUBLE: the Kubernetes API as the scale-out train jobs meet it, served on 127.0.0.1.

Not an API server and not used outside tests. It answers the REST calls that the kubeflow SDK's
``TrainerClient`` (Kubernetes backend) and the PyTorchJob launcher make, and plays the part of
the API server, the operators and the kubelet:

- a created TrainJob / PyTorchJob is checked against the vendored CRD schema (422 Invalid
  naming the field, as the API server answers), a name in use is 409, ``status`` is ignored
  (a subresource);
- only what ``manifests/rbac-training`` grants the pipeline's service account is allowed,
  plus what a Kubeflow Trainer installation grants every authenticated user (reading
  ClusterTrainingRuntimes and the ``kubeflow-trainer-public`` ConfigMap); 403 otherwise;
- the ``torch-distributed`` ClusterTrainingRuntime is the vendored upstream one; there are no
  namespaced TrainingRuntimes (404);
- each GET of a job moves it to the next of ``statuses`` (the last one repeats); its pods (one
  per node, with the labels JobSet or the Training Operator put on them) are Pending for the
  first ``pending_reads`` GETs of the job, then Running, then Succeeded/Failed with the job;
- a started pod's log is ``log_lines``; before it starts the kubelet's 400.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml
from doubles.kubernetes_api import crd_schema
from doubles.loopback import JsonHandler, LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "manifests" / "training-crds"
RUNTIME = CRDS / "runtime_torch_distributed.yaml"
ROLE = ROOT / "manifests" / "rbac-training" / "role.yaml"
TS = "2026-01-01T00:00:00Z"
LOG_LINES = ("epoch 1/2 train_loss 1.0", "epoch 2/2 train_loss 0.5")

# kind -> (group, version, plural, CRD file)
JOB_KINDS = {
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "trainer.kubeflow.org_trainjobs"),
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", "kubeflow.org_pytorchjobs"),
}
# Granted to system:authenticated by a Kubeflow Trainer installation (group, resource, name).
INSTALLATION_GRANTS = {
    ("trainer.kubeflow.org", "clustertrainingruntimes", "get"),
    ("", "configmaps", "get"),  # kubeflow-system/kubeflow-trainer-public only
}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def condition(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    """A job status whose ``kind`` condition is True (as the operators write them)."""
    return {
        "conditions": [
            {
                "type": kind,
                "status": "True",
                "reason": reason or kind,
                "message": message,
                "lastTransitionTime": TS,
            }
        ]
    }


def role_grants(path: Path = ROLE) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the Role of ``manifests/rbac-training`` grants."""
    role = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def matches_selector(labels: dict[str, str], selector: str) -> bool:
    """Kubernetes label selector semantics for ``k=v``, ``k==v``, ``k!=v``, ``k in (a, b)``."""
    for term in re.split(r",(?![^()]*\))", selector):
        term = term.strip()
        if m := re.fullmatch(r"(\S+)\s+in\s+\((.*)\)", term):
            if labels.get(m[1]) not in {v.strip() for v in m[2].split(",")}:
                return False
        elif m := re.fullmatch(r"([^=!\s]+)\s*!=\s*(\S*)", term):
            if labels.get(m[1]) == m[2]:
                return False
        elif m := re.fullmatch(r"([^=!\s]+)\s*==?\s*(\S*)", term):
            if labels.get(m[1]) != m[2]:
                return False
        elif term:
            raise ValueError(f"the test double does not parse the selector term {term!r}")
    return True


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]


@dataclass
class _Job:
    obj: dict[str, Any]
    reads: int = 0


class TrainingApiDouble(LoopbackServer):
    """TEST DOUBLE of the API server for TrainJobs and PyTorchJobs (see the module docstring)."""

    def __init__(
        self,
        statuses: list[dict[str, Any]],
        *,
        log_lines: tuple[str, ...] = LOG_LINES,
        pending_reads: int = 1,
    ) -> None:
        self.statuses = list(statuses)
        self.log_lines = log_lines
        self.pending_reads = pending_reads
        self.requests: list[Recorded] = []
        self.created: list[dict[str, Any]] = []  # each object as it was POSTed
        self.jobs: dict[tuple[str, str], _Job] = {}  # (plural, name)
        self.grants = role_grants()
        self.runtime = yaml.safe_load(RUNTIME.read_text())
        self._lock = threading.Lock()
        super().__init__(type("Handler", (_Handler,), {"double": self}))

    def api_client(self) -> Any:
        """A real ``kubernetes.client.ApiClient`` pointed at this double."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.base_url
        return client.ApiClient(cfg)

    # -- the operators' part ----------------------------------------------------------------
    def view(self, job: _Job) -> dict[str, Any]:
        obj = copy.deepcopy(job.obj)
        obj["status"] = copy.deepcopy(self.statuses[min(job.reads, len(self.statuses) - 1)])
        return obj

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return [pod for job in self.jobs.values() for pod in self._pods_of(job, namespace)]

    def _pods_of(self, job: _Job, namespace: str) -> list[dict[str, Any]]:
        meta = job.obj["metadata"]
        if meta["namespace"] != namespace:
            return []
        phase = _pod_phase(self.view(job), job.reads, self.pending_reads)
        name = meta["name"]
        if job.obj["kind"] == "TrainJob":
            nodes = job.obj["spec"].get("trainer", {}).get("numNodes", 1)
            return [
                _pod(
                    f"{name}-node-0-{i}-x7k2p",
                    {
                        "jobset.sigs.k8s.io/jobset-name": name,
                        "jobset.sigs.k8s.io/replicatedjob-name": "node",
                        "batch.kubernetes.io/job-completion-index": str(i),
                    },
                    "node",
                    phase,
                )
                for i in range(nodes)
            ]
        specs = job.obj["spec"]["pytorchReplicaSpecs"]
        return [
            _pod(
                f"{name}-{rtype.lower()}-{i}",
                {
                    "training.kubeflow.org/job-name": name,
                    "training.kubeflow.org/replica-type": rtype.lower(),
                    "training.kubeflow.org/replica-index": str(i),
                },
                "pytorch",
                phase,
            )
            for rtype, spec in specs.items()
            for i in range(spec["replicas"])
        ]


def _pod_phase(job: dict[str, Any], reads: int, pending_reads: int) -> str:
    true = {c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"}
    if true & {"Complete", "Succeeded"}:
        return "Succeeded"
    if "Failed" in true:
        return "Failed"
    return "Pending" if reads < pending_reads else "Running"


def _pod(name: str, labels: dict[str, str], container: str, phase: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "creationTimestamp": TS},
        "spec": {"containers": [{"name": container, "image": "depth-component"}]},
        "status": {"phase": phase},
    }


class _Handler(JsonHandler):
    """The double's HTTP side; ``double`` is set on a subclass per server."""

    double: TrainingApiDouble

    def _fail(self, code: int, reason: str, message: str) -> None:
        """A Kubernetes ``Status`` error body, as the API server sends it."""
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
        self._send(code, {**status, "reason": reason, "message": message, "metadata": {}})

    def _text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        with self.double._lock:
            self.double.requests.append(Recorded(method, url.path, query))
            m = _PATH.match(url.path)
            if m is None:
                return self._fail(404, "NotFound", f"no route {url.path}")
            resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
            verb = {"POST": "create", "DELETE": "delete"}.get(method)
            verb = verb or ("get" if m["name"] else "list")
            group = m["group"] or ""
            if not self._allowed(group, resource, verb, m["ns"], m["name"]):
                message = f'{resource} is forbidden: cannot "{verb}" (RBAC)'
                return self._fail(403, "Forbidden", message)
            return self._route(method, m, query, body)

    def _allowed(self, group: str, resource: str, verb: str, ns: str | None, name: str | None):
        if (group, resource, verb) in INSTALLATION_GRANTS:
            return resource != "configmaps" or (ns, name) == (
                "kubeflow-system",
                "kubeflow-trainer-public",
            )
        return ns is not None and (group, resource, verb) in self.double.grants

    def _route(self, method: str, m: re.Match, query: dict, body: Any) -> None:
        resource, name, ns = m["resource"], m["name"], m["ns"]
        if resource == "configmaps":
            data = {"kubeflow_trainer_version": "v2.3.0"}
            return self._send(200, {"kind": "ConfigMap", "apiVersion": "v1", "data": data})
        if resource == "clustertrainingruntimes":
            if name == self.double.runtime["metadata"]["name"]:
                return self._send(200, self.double.runtime)
            return self._fail(404, "NotFound", f'"{name}" not found')
        if resource == "pods":
            return self._pods(ns, name, m["sub"], query)
        plurals = {v[2]: k for k, v in JOB_KINDS.items()}
        if resource in plurals and method == "POST":
            return self._create(plurals[resource], ns, body)
        job = self.double.jobs.get((resource, name))
        if resource not in plurals or job is None:
            return self._fail(404, "NotFound", f'{resource} "{name}" not found')
        if method == "DELETE":
            del self.double.jobs[(resource, name)]
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        view = self.double.view(job)
        job.reads += 1
        return self._send(200, view)

    def _create(self, kind: str, ns: str, obj: dict[str, Any]) -> None:
        group, version, plural, crd = JOB_KINDS[kind]
        schema = crd_schema(CRDS / f"{crd}.yaml", version)
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: e.json_path
        )
        if errors:
            where = "; ".join(f"{e.json_path[2:]}: {e.message}" for e in errors)
            return self._fail(422, "Invalid", f"{kind} is invalid: {where}")
        name = obj["metadata"]["name"]
        if (plural, name) in self.double.jobs:
            return self._fail(409, "AlreadyExists", f'"{name}" already exists')
        self.double.created.append(copy.deepcopy(obj))
        obj = copy.deepcopy(obj)
        obj.pop("status", None)  # a subresource: ignored on create
        obj["metadata"].update(
            namespace=ns, uid=f"uid-{name}", generation=1, resourceVersion="1",
            creationTimestamp=TS,
        )  # fmt: skip
        self.double.jobs[(plural, name)] = _Job(obj)
        return self._send(201, obj)

    def _pods(self, ns: str, name: str | None, sub: str | None, query: dict) -> None:
        pods = self.double.pods(ns)
        if name is None:
            selector = query.get("labelSelector", [""])[0]
            items = [p for p in pods if matches_selector(p["metadata"]["labels"], selector)]
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
        pod = next((p for p in pods if p["metadata"]["name"] == name), None)
        if pod is None or sub != "log":
            return self._fail(404, "NotFound", f'pods "{name}" not found')
        container = query.get("container", [""])[0]
        if container != pod["spec"]["containers"][0]["name"]:
            message = f"container {container} is not valid for pod {name}"
            return self._fail(400, "BadRequest", message)
        if pod["status"]["phase"] == "Pending":
            message = f'container "{container}" in pod "{name}" is waiting to start'
            return self._fail(400, "BadRequest", message)
        return self._text(200, "".join(f"{line}\n" for line in self.double.log_lines))

    def _dispatch(self) -> None:
        self._handle(self.command)  # the request's method

    do_GET = do_POST = do_DELETE = _dispatch  # noqa: N815
