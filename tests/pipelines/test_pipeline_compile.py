"""compile.py --check and the compiled YAML: condition, typed artifacts, images, no secrets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import compile as compile_mod
from components.image import COMPONENT_CUDA_IMAGE, COMPONENT_IMAGE
from depth_common.config import load_params
from pipelines.depth_pipeline import PARAM_KEYS, PARAMS_FILE, make_pipeline

ROOT = Path(__file__).resolve().parents[2]
TYPED = {"system.Dataset", "system.Model", "system.Metrics", "system.HTML", "system.Markdown"}


def _docs(path: Path) -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    platform = docs[1] if len(docs) > 1 else {}
    return spec, platform


def _compile(tmp_path: Path, overrides=()) -> tuple[Path, dict, dict]:
    params = load_params(PARAMS_FILE, overrides)
    path = compile_mod.compile_to(make_pipeline(params), tmp_path / "p.yaml")
    return (path, *_docs(path))


def _walk(node, key):
    """Every value stored under ``key`` anywhere in ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _all_tasks(spec: dict) -> list[tuple[str, dict]]:
    """``(name, task)`` of every task of every DAG (root and sub-DAGs)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return [item for dag in dags for item in dag["tasks"].items()]


def _tasks(spec: dict) -> dict[str, dict]:
    """Tasks by name (a name used in several DAGs: any one of them)."""
    return dict(_all_tasks(spec))


def test_committed_yaml_is_up_to_date():
    proc = subprocess.run(
        [sys.executable, "compile.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_check_names_a_stale_or_missing_file(tmp_path):
    (tmp_path / "depth_pipeline.yaml").write_text("# edited by hand\n")
    problems = compile_mod.check(tmp_path)
    assert len(problems) == 1
    assert str(tmp_path / "depth_pipeline.yaml") in problems[0] and "stale" in problems[0]
    (tmp_path / "depth_pipeline.yaml").unlink()
    assert "missing" in compile_mod.check(tmp_path)[0]


def _base_names(tasks) -> set[str]:
    """Task names without KFP's "-2" suffix (record_no_promotion is used in two branches)."""
    return {re.sub(r"-\d+$", "", n) for n in tasks}


def test_promotion_condition_and_else_branch(tmp_path):
    _, spec, _ = _compile(tmp_path)
    conditions = [
        t["triggerPolicy"]["condition"] for _, t in _all_tasks(spec) if "triggerPolicy" in t
    ]
    promote = "inputs.parameter_values['pipelinechannel--decide-promote'] == true"
    assert promote in conditions
    assert f"!({promote})" in conditions  # dsl.Else
    synthetic = "inputs.parameter_values['pipelinechannel--data_uri'] == 'synthetic'"
    assert synthetic in conditions and f"!({synthetic})" in conditions
    # register / export run inside the promote branch, record_no_promotion in the other.
    comps = spec["components"]
    branch = {
        t["triggerPolicy"]["condition"]: comps[t["componentRef"]["name"]]["dag"]["tasks"]
        for _, t in _all_tasks(spec)
        if "triggerPolicy" in t and "decide-promote" in t["triggerPolicy"]["condition"]
    }
    assert "register" in branch[promote]
    # ... export and deploy only once register, re-deciding under the registry lock, agrees.
    registered = "inputs.parameter_values['pipelinechannel--register-promoted'] == true"
    nested = {
        t["triggerPolicy"]["condition"]: comps[t["componentRef"]["name"]]["dag"]["tasks"]
        for _, t in _all_tasks(spec)
        if "triggerPolicy" in t and "register-promoted" in t["triggerPolicy"]["condition"]
    }
    assert {"export-onnx", "triton-repository", "deploy"} <= set(nested[registered])
    assert _base_names(nested[f"!({registered})"]) == {"record-no-promotion"}
    hub = [
        t["triggerPolicy"]["condition"]
        for _, t in _all_tasks(spec)
        if "triggerPolicy" in t and "push-hf" in str(comps[t["componentRef"]["name"]])
    ]
    assert "inputs.parameter_values['pipelinechannel--hf_repo_id'] != ''" in hub
    assert _base_names(branch[f"!({promote})"]) == {"record-no-promotion"}


def test_every_artifact_is_typed(tmp_path):
    _, spec, _ = _compile(tmp_path)
    titles = set(_walk(spec, "schemaTitle"))
    assert titles <= TYPED, titles - TYPED
    assert "system.Artifact" not in titles
    assert titles == TYPED  # each kind is used somewhere
    train = spec["components"]["comp-train"]["outputDefinitions"]
    assert train["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert train["artifacts"]["val"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert train["parameters"]["Output"]["parameterType"] == "STRING"
    evaluate = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    decide = spec["components"]["comp-decide"]["outputDefinitions"]
    assert decide["parameters"]["promote"]["parameterType"] == "BOOLEAN"
    assert decide["artifacts"]["decision"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_component_image_on_every_executor(tmp_path):
    _, spec, _ = _compile(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    containers = {k: v["container"] for k, v in executors.items() if "container" in v}
    assert len(containers) >= 10
    assert {c["image"] for c in containers.values()} == {COMPONENT_IMAGE}
    assert set(executors) - set(containers) == {"exec-importer"}
    assert COMPONENT_IMAGE.startswith("ghcr.io/") and ":" in COMPONENT_IMAGE


def test_parameter_defaults_come_from_params_yaml(tmp_path):
    _, spec, _ = _compile(tmp_path)
    params = load_params(PARAMS_FILE)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    flat = params.flat()
    for name, key in PARAM_KEYS.items():
        default = inputs[name]["defaultValue"]
        expected = flat[key]
        assert default == expected or default == pytest.approx(expected), name
    assert inputs["data_uri"]["defaultValue"] == params.data.raw_dir
    # params.yaml itself is baked into the configure task as its base.
    base = spec["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"]["base_params"]
    assert json.loads(base["runtimeValue"]["constant"]) == params.to_dict()


def test_caching_and_train_resources(tmp_path):
    _, spec, _ = _compile(tmp_path)
    caching = {}
    for name, task in _all_tasks(spec):
        caching.setdefault(name, set()).add(
            task.get("cachingOptions", {}).get("enableCache", False)
        )
    assert caching["preprocess"] == {True}
    for name in ("decide", "register", "record-no-promotion", "deploy", "push-hf"):
        assert caching[name] == {False}, name
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("4", "16G")
    assert "accelerator" not in res  # training.train_gpu: 0 in params.yaml


def test_train_gpu_requests_an_accelerator_and_the_cuda_image(tmp_path):
    _, spec, _ = _compile(tmp_path, ["training.train_gpu=2"])
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "2"
    assert train["image"] == COMPONENT_CUDA_IMAGE


def test_shared_pvc_is_mounted_on_the_train_task_only(tmp_path):
    """Scale-out training moves data and checkpoints through training.shared_pvc."""
    from depth_common.scaleout.launch import SHARED_MOUNT

    _, _, platform = _compile(tmp_path, ["training.shared_pvc=depth-shared"])
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {
        name: [(m["constant"], m["mountPath"]) for m in cfg.get("pvcMount", [])]
        for name, cfg in execs.items()
        if cfg.get("pvcMount")
    }
    # exec-train and exec-train-2: the sub-pipeline is compiled once per data-source branch.
    assert set(mounted) == {"exec-train", "exec-train-2"}
    assert all(m == [("depth-shared", SHARED_MOUNT)] for m in mounted.values())


def test_secrets_enter_as_secret_refs_never_values(tmp_path, monkeypatch):
    values = {
        "MLFLOW_TRACKING_PASSWORD": "pw-0xDEADBEEF",
        "MLFLOW_TRACKING_TOKEN": "tok-0xFEEDFACE",
        "AWS_SECRET_ACCESS_KEY": "aws-0xC0FFEE",
        "HF_TOKEN": "hf_0xBADC0DE",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    path, spec, platform = _compile(
        tmp_path, ["cluster.mlflow_secret=mlflow-creds", "cluster.storage_secret=s3-creds"]
    )
    text = path.read_text()
    for v in values.values():
        assert v not in text
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_exec = {
        name: {s["secretName"] for s in cfg.get("secretAsEnv", [])} for name, cfg in execs.items()
    }
    assert by_exec["exec-train"] == {"mlflow-creds", "s3-creds"}
    assert by_exec["exec-register"] == {"mlflow-creds", "s3-creds"}
    assert by_exec["exec-deploy"] == {"mlflow-creds", "s3-creds"}  # it moves the aliases
    envs = {
        k["envVar"] for cfg in execs.values() for s in cfg["secretAsEnv"] for k in s["keyToEnv"]
    }
    assert "MLFLOW_TRACKING_TOKEN" in envs and "AWS_SECRET_ACCESS_KEY" in envs
    # ... and nothing secret-like is a pipeline parameter.
    names = set(spec["root"]["inputDefinitions"]["parameters"])
    assert not {n for n in names if any(w in n for w in ("token", "password", "secret", "key"))}


def test_committed_yaml_mounts_only_configured_secrets():
    _, platform = _docs(ROOT / "pipelines" / "depth_pipeline.yaml")
    params = load_params(PARAMS_FILE)
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    hub = {n for n, cfg in execs.items() if "push-hf" in n}
    assert hub and all(
        [s["secretName"] for s in execs[n]["secretAsEnv"]] == ["hf-token"] for n in hub
    )
    if not (params.cluster.mlflow_secret or params.cluster.storage_secret):
        assert not [n for n, cfg in execs.items() if n not in hub and cfg.get("secretAsEnv")]


def test_submit_dry_run_checks_arguments_and_never_prints_the_token(capsys, monkeypatch):
    from pipelines import submit

    monkeypatch.setenv("KFP_TOKEN", "tok-0xFACADE")
    monkeypatch.delenv("KFP_HOST", raising=False)
    rc = submit.main(
        ["--dry-run", "--host", "http://kfp.example:8080", "--run-name", "r1"]
        + ["--arg", "epochs=3", "--arg", "img_size=[64, 128]", "--set", "training.patience=2"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "tok-0xFACADE" not in out
    plan = json.loads(out)
    assert plan["arguments"] == {
        "epochs": 3,
        "img_size": [64, 128],
        "params_overrides": ["training.patience=2"],
    }
    assert plan["token"] == "set" and plan["service_account"] == "depth-pipeline"
    assert plan["kfp_cli"].startswith("kfp --endpoint http://kfp.example:8080 --existing-token")
    assert "run create --experiment-name depth-estimation --run-name r1" in plan["kfp_cli"]
    assert "epochs=3" in plan["kfp_cli"] and "'img_size=[64, 128]'" in plan["kfp_cli"]

    assert submit.main(["--dry-run", "--arg", "epoch=3"]) == 2
    assert "no parameter 'epoch'" in capsys.readouterr().err
    assert submit.main(["--dry-run", "--set", "training.nope=1"]) == 2
    assert "training.nope" in capsys.readouterr().err
    assert submit.main(["--arg", "epochs=3"]) == 2  # no host, not a dry run: nothing sent
    assert "KFP_HOST" in capsys.readouterr().err


def test_tensorrt_adds_a_gpu_task_feeding_the_triton_repository(tmp_path):
    _, spec, _ = _compile(tmp_path, ["export.tensorrt=true"])
    trt = spec["deploymentSpec"]["executors"]["exec-export-tensorrt"]["container"]
    assert trt["image"] == COMPONENT_CUDA_IMAGE
    assert trt["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert trt["resources"]["accelerator"]["resourceCount"] == "1"
    tasks = _tasks(spec)
    plan_in = tasks["triton-repository"]["inputs"]["artifacts"]["plan"]["taskOutputArtifact"]
    assert plan_in == {"producerTask": "export-tensorrt", "outputArtifactKey": "plan"}
    onnx_in = tasks["export-tensorrt"]["inputs"]["artifacts"]["onnx_model"]["taskOutputArtifact"]
    assert onnx_in["producerTask"] == "export-onnx"


def test_no_tensorrt_task_when_disabled(tmp_path):
    _, spec, _ = _compile(tmp_path, ["export.tensorrt=false"])
    assert "exec-export-tensorrt" not in spec["deploymentSpec"]["executors"]
    assert "export-tensorrt" not in _tasks(spec)
    assert "plan" not in _tasks(spec)["triton-repository"]["inputs"].get("artifacts", {})


def test_tracking_tasks_get_their_pod_name_and_namespace_for_the_image_digest():
    _, platform = _docs(ROOT / "pipelines" / "depth_pipeline.yaml")
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    field_envs = {
        name: {e["name"]: e["fieldPath"] for e in cfg.get("fieldPathAsEnv", [])}
        for name, cfg in execs.items()
    }
    want = {"DEPTH_POD_NAME": "metadata.name", "DEPTH_POD_NAMESPACE": "metadata.namespace"}
    for task in ("train", "evaluate", "decide", "register", "export-onnx", "deploy"):
        assert field_envs[f"exec-{task}"] == want, task
    assert not [n for n in field_envs if "push-hf" in n and field_envs[n]]
