"""KServe deploy: object construction against the CRD schema, and create/patch, wait, smoke test
and rollback through the real Kubernetes Python client talking to ``k8s_double`` (a recorded
InferenceService API on 127.0.0.1), with a real local Triton as the v2 endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from doubles.kubernetes_api import KServeApiDouble, isvc_validator

from depth_common.config import DeployConfig
from depth_common.deploy.kserve import deploy_kserve, describe_status
from depth_common.deploy.manifests import MODEL_VERSION_LABEL, build_inferenceservice
from depth_common.deploy.report import write_deploy_report
from depth_common.errors import DeployError, DeployTimeout
from depth_common.export.onnx import export_model

NS, NAME = "team-a", "depth"
OLD, NEW = "s3://models/depth/v1/triton_repository", "s3://models/depth/v2/triton_repository"
CFG = DeployConfig(name=NAME, timeout_s=5)
FAST = {"poll_s": 0.01}


def test_built_objects_validate_against_the_crd() -> None:
    validator = isvc_validator()
    for overlay in ("cpu", "gpu"):
        isvc = build_inferenceservice(
            overlay, name="d2", namespace=NS, storage_uri=NEW, model_version=7
        )
        validator.validate(isvc)
        model = isvc["spec"]["predictor"]["model"]
        assert (isvc["metadata"]["name"], isvc["metadata"]["namespace"]) == ("d2", NS)
        assert isvc["metadata"]["labels"][MODEL_VERSION_LABEL] == "7"
        assert model["storageUri"] == NEW
        assert model["protocolVersion"] == "v2"
        assert model["runtime"] == "kserve-tritonserver"
    assert model["modelFormat"]["name"] == "tensorrt"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_bad_storage_uri_and_unknown_overlay_are_refused() -> None:
    with pytest.raises(ValueError, match="storage_uri.*s3://"):
        build_inferenceservice("cpu", storage_uri="models/triton_repository")
    with pytest.raises(Exception, match="no such overlay 'tpu'.*cpu, gpu"):
        build_inferenceservice("tpu")
    with pytest.raises(ValueError, match="deploy.storage_uri"):
        deploy_kserve("", 1, CFG, namespace=NS, api=object())


def _methods(double: KServeApiDouble) -> list[str]:
    return [r.method for r in double.requests]


def test_never_ready_times_out_and_rolls_back_to_the_previous_uri() -> None:
    with KServeApiDouble(outcomes={NEW: "never-ready"}) as k8s:
        k8s.seed(build_inferenceservice("cpu", name=NAME, namespace=NS, storage_uri=OLD,
                                        model_version=1))  # fmt: skip
        cfg = DeployConfig(name=NAME, timeout_s=1)
        with pytest.raises(DeployError) as info:
            deploy_kserve(
                NEW, 2, cfg, namespace=NS, api=k8s.api(), previous_model_version=1, **FAST
            )
        msg = str(info.value)
        assert isinstance(info.value.__cause__, DeployTimeout)
        assert "not Ready after 1 s" in msg and "RevisionMissing" in msg
        assert f"rolled back to {OLD} (Ready)" in msg
        deploy_patch, rollback = (r.body for r in k8s.patches())
        assert deploy_patch["spec"]["predictor"]["model"]["storageUri"] == NEW
        assert rollback == {
            "metadata": {"labels": {MODEL_VERSION_LABEL: "1"}},
            "spec": {"predictor": {"model": {"storageUri": OLD}}},
        }
        live = k8s.get(NS, NAME)
        assert live["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert live["metadata"]["generation"] == 3
        assert info.value.result is not None and info.value.result.rolled_back_to == OLD
        assert set(_methods(k8s)) <= {"GET", "PATCH"}  # existed: no create, never delete


def test_failed_model_load_fails_fast_with_the_reason() -> None:
    # The API server also answers 503 twice after each patch: polling must ride over that.
    with KServeApiDouble(outcomes={NEW: "load-failed"}, unavailable_after_patch=2) as k8s:
        k8s.seed(build_inferenceservice("cpu", name=NAME, namespace=NS, storage_uri=OLD))
        # No previous_storage_uri passed: the live object's storageUri is the rollback target.
        with pytest.raises(DeployError) as info:
            deploy_kserve(NEW, 2, DeployConfig(name=NAME, timeout_s=60), namespace=NS,
                          api=k8s.api(), **FAST)  # fmt: skip
        msg = str(info.value)
        assert not isinstance(info.value.__cause__, DeployTimeout)
        assert "ModelLoadFailed" in msg and "RevisionFailed" in msg
        assert f"rolled back to {OLD}" in msg
        assert k8s.get(NS, NAME)["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert len(k8s.patches()) == 2  # deploy + rollback, each followed by two 503s


def test_first_deploy_that_fails_has_nothing_to_roll_back_to() -> None:
    with KServeApiDouble(outcomes={NEW: "load-failed"}) as k8s:
        with pytest.raises(DeployError, match="no previous storageUri to roll back to"):
            deploy_kserve(NEW, 1, CFG, namespace=NS, api=k8s.api(), **FAST)
        assert _methods(k8s)[:2] == ["GET", "GET"] and "POST" in _methods(k8s)
        assert not k8s.patches()


def test_an_invalid_object_is_refused_like_the_api_server_would() -> None:
    from kubernetes.client.exceptions import ApiException

    from depth_common.deploy.kserve import apply_inferenceservice

    isvc = build_inferenceservice("cpu", name=NAME, namespace=NS, storage_uri=NEW)
    isvc["spec"]["predictor"]["minReplicas"] = "one"  # the CRD says integer
    with KServeApiDouble() as k8s, pytest.raises(ApiException) as info:
        apply_inferenceservice(k8s.api(), isvc)
    assert info.value.status == 422 and "minReplicas" in info.value.body


def test_describe_status_names_what_is_not_ready() -> None:
    from doubles.kubernetes_api import load_failed_status

    text = describe_status({"status": load_failed_status(NAME, 2)})
    assert "Ready=False (RevisionFailed" in text and "model ModelLoadFailed" in text
    assert describe_status({}) == "no status conditions yet"


# -- with a real v2 endpoint: the local Triton serving a tiny model -----------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(server, onnx file it serves, a different onnx file) for the smoke tests."""
    from helpers import TinyDepthNet, build_tiny_repository

    from depth_common.serving.server import LocalTritonServer

    root = tmp_path_factory.mktemp("kserve_tiny")
    repo = build_tiny_repository(root)
    torch.manual_seed(1)  # same interface, other weights: "the wrong model is being served"
    other = export_model(TinyDepthNet(), root / "other.onnx", img_size=(32, 64)).path
    with LocalTritonServer(repo, ready_timeout_s=60) as server:
        yield server, root / "model.onnx", Path(other)


@pytest.mark.slow
def test_first_deploy_creates_waits_and_smoke_tests(served) -> None:
    server, onnx_path, _ = served
    with KServeApiDouble(url=f"http://{server.http_url}") as k8s:
        result = deploy_kserve(
            NEW, 3, CFG, namespace=NS, api=k8s.api(), onnx_path=onnx_path, **FAST
        )
        assert "POST" in _methods(k8s) and not k8s.patches()
        created = next(r.body for r in k8s.requests if r.method == "POST")
        assert created == build_inferenceservice(
            "cpu", name=NAME, namespace=NS, storage_uri=NEW, model_version=3,
            transformer_args=CFG.transformer_args(),
        )  # fmt: skip
        # Ready only after the progressing status: at least stale + progress + 1 status reads.
        assert _methods(k8s).count("GET") >= 1 + k8s.progress_polls + 1
    assert result.smoke.ok, result.smoke.detail
    assert result.smoke.output_shape == (1, 1, 32, 64)
    assert result.smoke.max_abs_diff is not None and result.smoke.max_abs_diff <= 1e-3
    assert result.endpoint == f"http://{server.http_url}"
    assert (result.model_version, result.source, result.resource) == ("3", NEW, f"{NS}/{NAME}")
    report = write_deploy_report(result)
    assert "# Deploy: passed" in report and f"`http://{server.http_url}`" in report
    assert "| model version | 3 |" in report and "smoke-test latency" in report


@pytest.mark.slow
def test_patching_waits_for_the_new_generation(served) -> None:
    server, onnx_path, _ = served
    with KServeApiDouble(url=f"http://{server.http_url}", stale_polls=2) as k8s:
        k8s.seed(build_inferenceservice("cpu", name=NAME, namespace=NS, storage_uri=OLD))
        result = deploy_kserve(
            NEW, 2, CFG, namespace=NS, api=k8s.api(), onnx_path=onnx_path, **FAST
        )
        (patch,) = k8s.patches()
        assert patch.content_type == "application/merge-patch+json"
        assert patch.body["spec"]["predictor"]["model"]["storageUri"] == NEW
        assert patch.body["metadata"]["labels"][MODEL_VERSION_LABEL] == "2"
        live = k8s.get(NS, NAME)
        assert live["metadata"]["generation"] == 2 and live["status"]["observedGeneration"] == 2
    assert result.smoke.ok and result.rolled_back_to is None


@pytest.mark.slow
def test_failing_smoke_test_rolls_back(served) -> None:
    server, _, other_onnx = served
    with KServeApiDouble(url=f"http://{server.http_url}") as k8s:
        k8s.seed(build_inferenceservice("cpu", name=NAME, namespace=NS, storage_uri=OLD))
        with pytest.raises(DeployError) as info:
            deploy_kserve(NEW, 2, CFG, namespace=NS, api=k8s.api(), onnx_path=other_onnx,
                          previous_storage_uri=OLD, previous_model_version=1, **FAST)  # fmt: skip
        msg = str(info.value)
        assert "smoke test failed" in msg and "ONNX Runtime" in msg
        assert f"rolled back to {OLD} (Ready)" in msg
        rollback = k8s.patches()[-1].body
        assert rollback["spec"]["predictor"]["model"]["storageUri"] == OLD
        assert rollback["metadata"]["labels"][MODEL_VERSION_LABEL] == "1"
    result = info.value.result
    assert result is not None and not result.smoke.ok and result.smoke.max_abs_diff > 1e-3
    report = write_deploy_report(result)
    assert "# Deploy: FAILED" in report and f"| rolled back to | `{OLD}` |" in report


def test_the_transformer_gets_the_limits_of_params() -> None:
    cfg = DeployConfig(
        name=NAME, timeout_s=5, max_request_pixels=1_000_000, max_response_bytes=2048,
        read_timeout_s=7.5, max_connections=9,
    )  # fmt: skip
    with KServeApiDouble(outcomes={NEW: "load-failed"}) as k8s:
        with pytest.raises(DeployError):
            deploy_kserve(NEW, 1, cfg, namespace=NS, api=k8s.api(), **FAST)
        (created,) = [r.body for r in k8s.requests if r.method == "POST"]
    args = created["spec"]["transformer"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--max_request_pixels"] == "1000000"
    assert flags["--max_response_bytes"] == "2048"
    assert flags["--read_timeout_s"] == "7.5"
    assert flags["--max_connections"] == "9"
    assert flags["--model_name"] == "depth"  # the manifest's own arguments are kept


def test_annotations_carry_the_lineage_of_the_onnx_file(tmp_path: Path) -> None:
    import hashlib

    from helpers import TinyDepthNet

    from depth_common.deploy.kserve import model_annotations

    meta = {"git_commit": "a" * 40, "data_digest": "b" * 32, "kfp_run": "depth-pipeline-x"}
    torch.manual_seed(0)
    onnx = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(32, 48), metadata=meta)
    got = model_annotations("ViT+Decoder", 3, "r" * 32, onnx.path)
    assert got["depth-mlops.io/git-commit"] == "a" * 40
    assert got["depth-mlops.io/data-digest"] == "b" * 32
    assert got["depth-mlops.io/kfp-run"] == "depth-pipeline-x"
    assert got["depth-mlops.io/onnx-sha256"] == hashlib.sha256(onnx.path.read_bytes()).hexdigest()
    assert got["depth-mlops.io/mlflow-model-version"] == "3"
    plain = model_annotations("m", 1, None)  # without the file: the registry names only
    assert "depth-mlops.io/git-commit" not in plain and len(plain) == 4
