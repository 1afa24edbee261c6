"""The monitor's manifests and the InferenceService's payload logger, checked offline: core
objects against Kubernetes' schemas, the logger against the vendored KServe CRD, the monitor's
arguments against the real command-line parser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml
from doubles.kubernetes_api import isvc_validator

from depth_common.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30"


def render(path: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: `kubectl kustomize` renders the manifests")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def monitor() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in render("monitor")}


def test_core_objects_validate_against_kubernetes(monitor) -> None:
    core = ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding")
    assert set(monitor) == {*core, "ServiceMonitor", "PrometheusRule"}
    for kind in core:
        assert kubernetes_validate.validate(monitor[kind], K8S_VERSION, strict=True)


def test_monitor_runs_locked_down(monitor) -> None:
    pod = monitor["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["runAsUser"] != 0 and ctx["readOnlyRootFilesystem"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    rules = monitor["Role"]["rules"]
    assert {g for r in rules for g in r["apiGroups"]} == {"pipelines.kubeflow.org"}
    assert not {"delete", "*"} & {v for r in rules for v in r["verbs"]}


def test_monitor_arguments_parse_and_ports_line_up(monitor) -> None:
    pod = monitor["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][-3:] == ["-m", "depth_common", "monitor"]
    args = build_parser().parse_args(["monitor", *container["args"]])
    assert args.host == "0.0.0.0" and args.trigger == "kfp" and args.window == 64
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(args.reference).parent) in mounts
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    service = monitor["Service"]
    assert service["spec"]["selector"] == monitor["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    scrape = monitor["ServiceMonitor"]["spec"]
    assert scrape["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert scrape["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert scrape["endpoints"][0]["path"] == "/metrics"


def test_alert_is_on_depth_drift_detected(monitor) -> None:
    rules = [r for g in monitor["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    drift = [r for r in rules if "depth_drift_detected" in r.get("expr", "")]
    assert drift and drift[0]["alert"] == "DepthInputDrift" and drift[0]["for"]


def test_inferenceservice_logs_to_the_monitor_service(monitor) -> None:
    (isvc,) = [d for d in render("overlays/cpu") if d["kind"] == "InferenceService"]
    logger = isvc["spec"]["transformer"]["logger"]
    assert logger["mode"] == "all"
    url = urlparse(logger["url"])
    service = monitor["Service"]
    assert url.hostname == service["metadata"]["name"]
    assert (url.port or 80) == service["spec"]["ports"][0]["port"]
    isvc_validator().validate(isvc)
    isvc["spec"]["transformer"]["logger"]["mode"] = "sometimes"  # not in the CRD's enum
    with pytest.raises(jsonschema.ValidationError, match="sometimes"):
        isvc_validator().validate(isvc)
