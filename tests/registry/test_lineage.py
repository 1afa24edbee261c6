"""Lineage against a real MLflow SQLite store: runs nested like the KEP, the dataset input,
the version's tags, the query functions and the ``lineage`` command's JSON and errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
from pathlib import Path

import pytest

from depth_common.cli.parser import main
from depth_common.config import Params
from depth_common.errors import LineageNotFound
from depth_common.registry import lineage, tracking
from depth_common.registry.aliases import CHAMPION_ALIAS, registry_client
from depth_common.registry.lineage import (
    alias_version,
    code_provenance,
    describe_version,
    lineage_tags,
    params_sha256,
    record_artifacts,
    record_serving,
    versions_of_dataset,
    versions_of_run,
)
from depth_common.registry.tracking import TaskContext

REPO = Path(__file__).resolve().parents[2]
DIGEST = "0123456789abcdef0123456789abcdef"
COUNTS = {"train": 48, "val": 48, "test": 48}
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from depth_common.registry.store import ensure_sqlite_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    return uri


@pytest.fixture
def params(store: str) -> Params:
    n = next(_names)
    return Params().with_overrides(
        [f"mlflow.tracking_uri={store}", f"mlflow.model_name=Lineage{n}", f"mlflow.experiment=e{n}"]
    )


def _pipeline_version(params: Params, kfp_run: str, digest: str = DIGEST) -> tuple[int, str]:
    """What one pipeline run leaves: a nested train run with its dataset, a registered version
    tagged like promotion tags it, its artifacts and serving recorded → (version, run id)."""
    run_id = tracking.start_training_run(params, TaskContext(kfp_run, "/data/processed"))
    tracking.log_dataset(run_id, "/data/processed", digest, COUNTS, ("training", "validation"))
    tracking.log_metrics(run_id, {"test_rmse": 8.3, "test_abs_rel": 0.23, "test_delta_1": 0.66})
    tracking.set_tags(run_id, {lineage.CHECKPOINT_SHA256: "c" * 64})
    tracking.set_status(run_id, "FINISHED")
    client = registry_client(params.mlflow.tracking_uri)
    name = params.mlflow.model_name
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    for key, value in lineage_tags(client, run_id).items():
        client.set_model_version_tag(name, mv.version, key, value)
    record_artifacts(client, name, int(mv.version), "d" * 64, "/serve/repo")
    record_serving(client, name, int(mv.version), "local", "http://127.0.0.1:8000")
    return int(mv.version), run_id


def test_task_runs_nest_under_one_parent_named_after_the_kfp_run(params: Params) -> None:
    train = tracking.start_training_run(params, TaskContext("depth-pipeline-abc", "/d"))
    evaluate = tracking.start_task_run(params, TaskContext("depth-pipeline-abc"), "evaluate")
    other = tracking.start_training_run(params, TaskContext("depth-pipeline-xyz", "/d"))
    client = registry_client(params.mlflow.tracking_uri)
    runs = {r: client.get_run(r) for r in (train, evaluate, other)}
    parent = runs[train].data.tags[lineage.PARENT_RUN_TAG]
    assert runs[evaluate].data.tags[lineage.PARENT_RUN_TAG] == parent
    assert runs[other].data.tags[lineage.PARENT_RUN_TAG] != parent
    assert client.get_run(parent).info.run_name == "depth-pipeline-abc"
    assert runs[train].info.run_name == "depth-pipeline-abc/train"
    assert runs[evaluate].info.run_name == "depth-pipeline-abc/evaluate"
    tracking.set_status(evaluate, "FINISHED")  # the last task's end ends the pipeline run
    assert client.get_run(parent).info.status == "FINISHED"
    assert tracking.start_task_run(params, TaskContext(), "evaluate") is None


def test_training_run_records_code_and_params(params: Params) -> None:
    run_id = tracking.start_training_run(params)  # outside a pipeline: not nested
    tags = registry_client(params.mlflow.tracking_uri).get_run(run_id).data.tags
    assert lineage.PARENT_RUN_TAG not in tags
    expected = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()
    assert tags[lineage.PARAMS_SHA256] == expected == params_sha256(params)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert tags[lineage.GIT_COMMIT] == head.stdout.strip()
    assert tags[lineage.GIT_DIRTY] in ("true", "false")


def test_code_provenance_prefers_what_the_image_baked_in(monkeypatch) -> None:
    monkeypatch.setenv("DEPTH_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("DEPTH_GIT_DIRTY", "false")
    monkeypatch.setenv("DEPTH_IMAGE", "registry/depth-component:1")
    got = code_provenance()
    assert got[lineage.GIT_COMMIT] == "f" * 40 and got[lineage.GIT_DIRTY] == "false"
    assert got[lineage.IMAGE] == "registry/depth-component:1" and got[lineage.IMAGE_DIGEST] == ""


def test_describe_version_has_the_issue_shape(params: Params) -> None:
    version, run_id = _pipeline_version(params, "depth-pipeline-run1")
    client = registry_client(params.mlflow.tracking_uri)
    client.set_registered_model_alias(params.mlflow.model_name, CHAMPION_ALIAS, str(version))
    got = describe_version(client, params.mlflow.model_name, version)
    parent = client.get_run(run_id).data.tags[lineage.PARENT_RUN_TAG]
    assert got["model"] == {
        "name": params.mlflow.model_name,
        "version": version,
        "aliases": ["champion"],
    }
    assert got["runs"] == {
        "pipeline_run_id": parent,
        "train_run_id": run_id,
        "kfp_run": "depth-pipeline-run1",
    }
    assert len(got["code"]["git_commit"]) == 40 and isinstance(got["code"]["git_dirty"], bool)
    assert got["data"] == {"uri": "/data/processed", "digest": DIGEST, "counts": COUNTS}
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = sorted(t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context")
    assert contexts == ["training", "validation"]
    assert {i.dataset.digest for i in inputs} == {DIGEST}
    assert got["params_sha256"] == params_sha256(params)
    assert got["artifacts"] == {
        "checkpoint_sha256": "c" * 64,
        "onnx_sha256": "d" * 64,
        "triton_repository": "/serve/repo",
    }
    assert got["metrics"]["test_rmse"] == pytest.approx(8.3)
    assert got["serving"] == {
        "target": "local",
        "endpoint": "http://127.0.0.1:8000",
        "served": True,
    }
    # The version's own tags hold the same facts (what a registry UI shows).
    tags = client.get_model_version(params.mlflow.model_name, str(version)).tags
    assert tags[lineage.DATA_DIGEST] == DIGEST and tags[lineage.TRAIN_RUN_ID] == run_id
    assert not any(str(v).startswith("/tmp") for v in tags.values())  # no scratch paths


def test_lookups_by_alias_run_and_dataset(params: Params) -> None:
    v1, run1 = _pipeline_version(params, "depth-pipeline-a")
    v2, _ = _pipeline_version(params, "depth-pipeline-b", digest="f" * 32)
    v3, _ = _pipeline_version(params, "depth-pipeline-c")
    client = registry_client(params.mlflow.tracking_uri)
    name = params.mlflow.model_name
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(v2))
    assert alias_version(client, name, "champion") == v2
    assert versions_of_run(client, name, run1) == [v1]
    parent = client.get_run(run1).data.tags[lineage.PARENT_RUN_TAG]
    assert versions_of_run(client, name, parent) == [v1]
    assert versions_of_dataset(client, name, DIGEST) == [v1, v3]
    with pytest.raises(LineageNotFound, match="--alias previous"):
        alias_version(client, name, "previous")
    with pytest.raises(LineageNotFound, match="--dataset 0000"):
        versions_of_dataset(client, name, "0000")


def _cli(params: Params, *args: str) -> list[str]:
    return [
        "lineage",
        "--params",
        str(REPO / "params.yaml"),
        "--set",
        f"mlflow.tracking_uri={params.mlflow.tracking_uri}",
        "--set",
        f"mlflow.model_name={params.mlflow.model_name}",
        *args,
    ]


def test_cli_prints_json_a_table_and_one_line_errors(params: Params, capsys) -> None:
    version, run_id = _pipeline_version(params, "depth-pipeline-cli")
    client = registry_client(params.mlflow.tracking_uri)
    client.set_registered_model_alias(params.mlflow.model_name, CHAMPION_ALIAS, str(version))
    assert main(_cli(params, "--alias", "champion", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"]["train_run_id"] == run_id and out["data"]["digest"] == DIGEST
    assert main(_cli(params, "--dataset", DIGEST, "--json")) == 0
    assert [v["model"]["version"] for v in json.loads(capsys.readouterr().out)["versions"]] == [
        version
    ]
    assert main(_cli(params, "--version", str(version))) == 0
    assert "depth-pipeline-cli" in capsys.readouterr().out
    for bad in (["--alias", "nope"], ["--version", "99"], ["--dataset", "beef"]):
        assert main(_cli(params, *bad, "--json")) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_a_run_made_elsewhere_is_nested_afterwards(params: Params) -> None:
    """The scale-out job's rank 0 knows no pipeline: the train step nests its run afterwards."""
    run_id = tracking.start_training_run(params)
    first = tracking.start_task_run(params, TaskContext("depth-pipeline-late"), "evaluate")
    tracking.nest_run(params, run_id, TaskContext("depth-pipeline-late"), "train")
    client = registry_client(params.mlflow.tracking_uri)
    run, sibling = client.get_run(run_id), client.get_run(first)
    assert run.info.run_name == "depth-pipeline-late/train"
    assert run.data.tags[lineage.PARENT_RUN_TAG] == sibling.data.tags[lineage.PARENT_RUN_TAG]
    assert run.data.tags[lineage.KFP_RUN] == "depth-pipeline-late"


def test_a_dataset_logged_by_a_concurrent_run_is_linked_not_lost(
    params: Params, monkeypatch
) -> None:
    """Two pipelines on one store log the same dataset at once: MLflow's look-up-then-insert
    lets both miss it and the second insert fails its unique key (seen in CI); the run that
    lost the race links the existing dataset instead of failing."""
    from mlflow.exceptions import MlflowException

    first = tracking.start_training_run(params, TaskContext("depth-pipeline-x", "/data/processed"))
    tracking.log_dataset(first, "/data/processed", DIGEST, COUNTS, ("training",))
    second = tracking.start_training_run(params, TaskContext("depth-pipeline-y", "/data/processed"))
    real_client = tracking._client()
    calls = []

    class RacingClient:
        def log_inputs(self, run_id, datasets):
            calls.append(run_id)
            if len(calls) == 1:  # what MLflow raised when the other run's insert came first
                raise MlflowException(
                    "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                    "datasets.name, datasets.digest"
                )
            return real_client.log_inputs(run_id, datasets=datasets)

        def __getattr__(self, name):
            return getattr(real_client, name)

    monkeypatch.setattr(tracking, "_client", RacingClient)
    tracking.log_dataset(second, "/data/processed", DIGEST, COUNTS, ("training",))
    assert calls == [second, second]
    inputs = real_client.get_run(second).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("processed/training", DIGEST)]

    class BrokenClient(RacingClient):
        def log_inputs(self, run_id, datasets):
            raise MlflowException("database is locked")

    monkeypatch.setattr(tracking, "_client", BrokenClient)
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.log_dataset(second, "/data/processed", DIGEST, COUNTS, ("testing",))
