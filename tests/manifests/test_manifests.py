"""The kustomize manifests, validated offline the way a cluster would check them.

- core objects (ServiceAccount, Role, RoleBinding, Secret templates): ``kubernetes-validate``
  (strict: unknown fields are errors) against Kubernetes 1.30;
- KServe objects (InferenceService, ClusterServingRuntime): jsonschema against the vendored
  CRDs' ``openAPIV3Schema`` (manifests/schemas/kserve, KServe commit aaac4e29);
- ``kubectl kustomize`` renders every kustomization, and each overlay's InferenceService equals
  what ``depth_common.deploy.manifests`` builds for the pipeline;
- security contexts, RBAC scope, secret templates without values, the Triton image tag.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from doubles.kubernetes_api import crd_schema, isvc_validator

from depth_common.config import load_params
from depth_common.config.container_images import read_images_env
from depth_common.deploy.manifests import build_inferenceservice

ROOT = Path(__file__).resolve().parents[2]
M = ROOT / "manifests"
K8S_VERSION = "1.30"
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "rbac", "rbac-training", "runtime", "base")
CSR_CRD = M / "schemas" / "kserve" / "serving.kserve.io_clusterservingruntimes.yaml"
PARAMS = load_params(ROOT / "params.yaml")


def _kustomize(path: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: `kubectl kustomize` renders the manifests")
    out = subprocess.run(
        ["kubectl", "kustomize", str(M / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {k: _kustomize(k) for k in KUSTOMIZATIONS}


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return copy.deepcopy(found[0])  # tests may mutate it; the rendering is shared


def _secret_templates() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((M / "secrets").glob("*.yaml"))]


# -- rendering and the one source of truth --------------------------------------------------


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_renders_what_the_deploy_step_builds(rendered, overlay: str) -> None:
    docs = copy.deepcopy(rendered[f"overlays/{overlay}"])
    assert [d["kind"] for d in docs] == ["InferenceService"]
    assert docs[0] == build_inferenceservice(overlay)
    # The manifests' defaults are params.yaml's: a manual apply and the pipeline agree.
    assert docs[0]["metadata"]["namespace"] == PARAMS.cluster.namespace
    assert docs[0]["metadata"]["name"] == PARAMS.deploy.name
    # A deploy changes only name, namespace, label and storage URI.
    built = build_inferenceservice(
        overlay, namespace=PARAMS.cluster.namespace, storage_uri="gs://b/r", model_version=4
    )
    assert built["spec"]["predictor"]["model"].pop("storageUri") == "gs://b/r"
    docs[0]["spec"]["predictor"]["model"].pop("storageUri")
    assert built["spec"] == docs[0]["spec"]


def test_rbac_namespace_and_pipeline_account_match_params(rendered) -> None:
    for doc in rendered["rbac"]:
        assert doc["metadata"]["namespace"] == PARAMS.cluster.namespace
    binding = _one(rendered["rbac"], "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": PARAMS.cluster.service_account,
         "namespace": PARAMS.cluster.namespace}
    ]  # fmt: skip


# -- schema validation --------------------------------------------------------------------------


def test_kserve_objects_validate_against_the_crds(rendered) -> None:
    for overlay in ("overlays/cpu", "overlays/gpu"):
        isvc_validator().validate(_one(rendered[overlay], "InferenceService"))
    runtime = _one(rendered["runtime"], "ClusterServingRuntime")
    schema = crd_schema(CSR_CRD, "v1alpha1")
    jsonschema.validators.validator_for(schema)(schema).validate(runtime)


def test_the_crd_validation_is_not_vacuous(rendered) -> None:
    isvc = _one(rendered["overlays/cpu"], "InferenceService")
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu-temperature"  # not in the CRD's enum
    with pytest.raises(jsonschema.ValidationError, match="gpu-temperature"):
        isvc_validator().validate(isvc)
    del isvc["spec"]["predictor"]["model"]["modelFormat"]["name"]  # required
    with pytest.raises(jsonschema.ValidationError):
        isvc_validator().validate(isvc)


def test_core_objects_validate_against_kubernetes(rendered) -> None:
    core = list(rendered["rbac"]) + list(rendered["rbac-training"]) + _secret_templates()
    assert {d["kind"] for d in core} == {"ServiceAccount", "Role", "RoleBinding", "Secret"}
    for doc in core:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION
    bad = dict(_one(rendered["rbac"], "Role"), rulez=[])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# -- what a reviewer checks ---------------------------------------------------------------------


def _assert_locked_down(ctx: dict[str, Any], where: str) -> None:
    assert ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
    assert ctx.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert ctx.get("privileged", False) is False, f"{where}: privileged"
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop"
    assert not ctx.get("capabilities", {}).get("add"), f"{where}: capabilities.add"
    assert ctx.get("runAsUser", 1) != 0, f"{where}: runAsUser 0"


def test_security_contexts(rendered) -> None:
    for overlay in ("overlays/cpu", "overlays/gpu"):
        predictor = _one(rendered[overlay], "InferenceService")["spec"]["predictor"]
        assert predictor["securityContext"]["runAsNonRoot"] is True
        assert predictor["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        _assert_locked_down(predictor["model"]["securityContext"], f"{overlay} model")
    runtime = _one(rendered["runtime"], "ClusterServingRuntime")
    for container in runtime["spec"]["containers"]:
        _assert_locked_down(container["securityContext"], f"runtime {container['name']}")


def test_rbac_grants_inferenceservices_and_reading_a_pod_and_nothing_more(rendered) -> None:
    role = _one(rendered["rbac"], "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},  # lineage's image digest
    ]
    assert not [d for d in rendered["rbac"] if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = _one(rendered["rbac"], "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    server = _one(rendered["rbac"], "ServiceAccount", "depth-model-server")
    assert server["automountServiceAccountToken"] is False  # the model server needs no API


def test_secret_templates_hold_no_values_and_are_never_applied_by_kustomize(rendered) -> None:
    templates = {d["metadata"]["name"]: d for d in _secret_templates()}
    assert set(templates) == {"depth-storage-credentials", "hf-token"}
    for name, secret in templates.items():
        assert "data" not in secret, name
        assert all(v == "" for v in secret["stringData"].values()), name
    assert set(templates["hf-token"]["stringData"]) == {"HF_TOKEN"}
    storage = templates["depth-storage-credentials"]
    assert set(storage["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "serving.kserve.io/s3-endpoint" in storage["metadata"]["annotations"]
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] == "Secret"]
    # The model server's account is what KServe's storage initializer reads the secret from.
    server = _one(rendered["rbac"], "ServiceAccount", "depth-model-server")
    assert {"name": "depth-storage-credentials"} in server["secrets"]
    isvc = _one(rendered["overlays/cpu"], "InferenceService")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "depth-model-server"


def test_runtime_is_pinned_to_the_triton_image_of_images_env(rendered) -> None:
    env = read_images_env(ROOT / "images" / "images.env")
    runtime = _one(rendered["runtime"], "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == f"{env['TRITON_IMAGE']}:{env['TRITON_TAG']}"
    assert ":latest" not in container["image"]


def test_inferenceservice_matches_the_runtime_it_names(rendered) -> None:
    runtime = _one(rendered["runtime"], "ClusterServingRuntime")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    grpc_port = next(int(a.split("=")[1]) for a in container["args"] if "--grpc-port=" in a)
    for overlay in ("overlays/cpu", "overlays/gpu"):
        model = _one(rendered[overlay], "InferenceService")["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        assert model["protocolVersion"] == "v2"
        # The transformer reaches Triton over gRPC: the predictor serves the runtime's gRPC
        # port (h2c) and is probed there with the standard gRPC health service.
        assert model["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
        assert model["readinessProbe"]["grpc"] == {"port": grpc_port}
    gpu = _one(rendered["overlays/gpu"], "InferenceService")["spec"]["predictor"]["model"]
    assert gpu["modelFormat"]["name"] == "tensorrt"
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpu = _one(rendered["overlays/cpu"], "InferenceService")["spec"]["predictor"]
    assert "nvidia.com/gpu" not in str(cpu)
    assert 1 <= cpu["minReplicas"] <= cpu["maxReplicas"]
    assert cpu["scaleMetric"] == "concurrency" and cpu["scaleTarget"] >= 1


def test_vendored_schemas_keep_licence_and_provenance() -> None:
    folder = M / "schemas" / "kserve"
    assert "Apache License" in (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "aaac4e294dae2c7b1aa1886447793f3aa1c30912" in readme
    for crd in folder.glob("*.yaml"):
        assert crd.name in readme


def test_training_rbac_grants_what_cluster_jobs_do_and_nothing_more(rendered) -> None:
    """The scale-out Role matches the API calls of depth_common.scaleout.cluster."""
    docs = rendered["rbac-training"]
    role = _one(docs, "Role")
    assert role["metadata"]["namespace"] == PARAMS.cluster.namespace
    grants = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert grants == {
        ("trainer.kubeflow.org", "trainjobs"): ["create", "delete", "get"],
        ("trainer.kubeflow.org", "trainingruntimes"): ["get"],
        ("kubeflow.org", "pytorchjobs"): ["create", "delete", "get"],
        ("", "pods"): ["list"],
        ("", "pods/log"): ["get"],
    }
    binding = _one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": PARAMS.cluster.service_account,
            "namespace": PARAMS.cluster.namespace,
        }
    ]


# -- the transformer -----------------------------------------------------------------------------


def _transformer(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(docs, "InferenceService")["spec"]["transformer"]["containers"]
    return container


def _args(container: dict[str, Any]) -> dict[str, str]:
    args = container["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_transformer_image_is_the_one_of_images_env(rendered) -> None:
    env = read_images_env(ROOT / "images" / "images.env")
    want = f"{env['REGISTRY']}/{env['TRANSFORMER_IMAGE']}:{env['TRANSFORMER_TAG']}"
    for overlay in ("overlays/cpu", "overlays/gpu"):
        assert _transformer(rendered[overlay])["image"] == want, overlay


def _parse_transformer_args(args: list[str]) -> dict[str, Any]:
    """The transformer's own parser on ``args`` (as the pod will), in a subprocess: kserve
    cannot be imported where tritonclient.grpc is (the other tests)."""
    import json
    import sys

    code = (
        "import json, sys\n"
        "from depth_common.serving.transformer_server import build_parser\n"
        "print(json.dumps(vars(build_parser().parse_args(sys.argv[1:]))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_transformer_calls_the_overlays_model_over_grpc(rendered) -> None:
    for overlay, model in (("overlays/cpu", "depth"), ("overlays/gpu", "depth_trt")):
        container = _transformer(rendered[overlay])
        args = _args(container)
        parsed = _parse_transformer_args([*container["args"], "--predictor_host", "p.ns"])
        assert (parsed["model_name"], parsed["predictor_model"]) == (model, model)
        assert parsed["predictor_protocol"] == "grpc-v2" and parsed["host"] == "0.0.0.0"
        assert args["--http_port"] == "8080"
        assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": f"/v2/models/{model}/ready", "port": 8080}
        _assert_locked_down(container["securityContext"], f"{overlay} transformer")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "nvidia.com/gpu" not in str(container["resources"])
        spec = _one(rendered[overlay], "InferenceService")["spec"]["transformer"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False


def test_gpu_transformer_differs_from_the_base_only_in_the_model_name(rendered) -> None:
    cpu, gpu = _transformer(rendered["overlays/cpu"]), _transformer(rendered["overlays/gpu"])
    as_cpu = yaml.safe_load(yaml.safe_dump(gpu).replace("depth_trt", "depth"))
    assert as_cpu == cpu


def test_transformer_dockerfile_installs_the_extra_and_runs_unprivileged() -> None:
    import tomllib

    dockerfile = (ROOT / "images" / "transformer" / "Dockerfile").read_text()
    lines = [ln for ln in dockerfile.splitlines() if ln and not ln.startswith("#")]
    # The base comes from images/build.sh (pinned default), the extra from its hash-locked lock.
    assert lines[0].startswith("ARG BASE_IMAGE=python:3.11") and ":latest" not in lines[0]
    assert lines[1] == "FROM ${BASE_IMAGE}"
    assert "COPY images/component/pip-install.sh images/transformer/requirements.lock" in dockerfile
    assert "--require-hashes --no-deps -r images/requirements.lock" in dockerfile
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user == ["USER 10001:10001"]
    assert 'ENTRYPOINT ["python", "-m", "depth_common.serving.transformer_server"]' in lines
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["transformer"]
    names = {e.split(">")[0].split("=")[0].split("<")[0].strip().lower() for e in extra}
    assert "kserve" in names and not names & {"torch", "torchvision", "tritonclient", "onnxruntime"}
