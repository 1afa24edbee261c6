"""Lineage and reproducibility of the whole pipeline on kfp.local (issue 19's "done when").

Two runs with the same params, seed, data and pinned threads give the same test metrics to
1e-6, and their lineage shows equal data and params digests and different runs. The first
run's champion is checked against independent recomputations: the commit is ``git rev-parse
HEAD``, the ONNX digest the served file's, the data digest the MLflow dataset input's and the
manifest's, the training run a child of the pipeline run named after the KFP run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_SYNTHETIC, tiny_pipeline_overrides

from depth_common.cli.parser import main
from depth_common.export.onnx import read_metadata
from depth_common.registry.aliases import registry_client
from depth_common.registry.lineage import describe_run, describe_version
from pipelines.depth_pipeline import PARAMS_FILE
from pipelines.run_local import LocalRun, run_local

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _overrides(tmp_path: Path) -> list[str]:
    return tiny_pipeline_overrides(
        tmp_path,
        "training.epochs=2",
        "training.init_from=''",  # no warm start from the first run's champion
        "training.threads=1",  # pinned: the last bits of a sum depend on the thread count
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uri(run: LocalRun, task: str, name: str) -> Path:
    return Path(run.tasks[task]["artifacts"][name]["artifacts"][0]["uri"])


def test_two_runs_reproduce_and_the_champion_traces_back(tmp_path: Path, capsys) -> None:
    runs = [
        run_local(
            PARAMS_FILE,
            _overrides(tmp_path),
            data_uri="synthetic",
            synthetic=TINY_SYNTHETIC,
            root=tmp_path / f"runs{i}",
        )  # fmt: skip
        for i in range(2)
    ]
    first, second = runs
    assert first.ok and second.ok, (first.stages, second.stages)
    for key, value in first.test_metrics.items():
        assert second.test_metrics[key] == pytest.approx(value, abs=1e-6, rel=0), key

    client = registry_client(first.params.mlflow.tracking_uri)
    a, b = (describe_run(client, r.run_id) for r in runs)
    assert a["data"]["digest"] == b["data"]["digest"] and a["data"]["digest"]
    assert a["params_sha256"] == b["params_sha256"] and len(a["params_sha256"]) == 64
    assert a["runs"]["train_run_id"] != b["runs"]["train_run_id"]
    assert a["runs"]["pipeline_run_id"] != b["runs"]["pipeline_run_id"]

    # The champion (the first run: the second only ties) against independent checks.
    champion = describe_version(client, "ViT+Decoder", 1)
    assert champion["model"]["aliases"] == ["champion"]
    assert champion["runs"]["train_run_id"] == first.run_id
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert champion["code"]["git_commit"] == head.stdout.strip()
    served = tmp_path / "serving" / "depth" / "1" / "model.onnx"
    assert champion["artifacts"]["onnx_sha256"] == _sha256(served)
    repo = Path(champion["artifacts"]["triton_repository"])
    assert _sha256(repo / "depth" / "1" / "model.onnx") == _sha256(served)
    manifest = json.loads((_uri(first, "preprocess", "processed") / "manifest.json").read_text())
    assert champion["data"]["digest"] == manifest["digest"]
    assert champion["data"]["counts"] == {"train": 8, "val": 8, "test": 8}
    assert champion["artifacts"]["checkpoint_sha256"] == _sha256(_uri(first, "train", "model"))
    train_run = client.get_run(first.run_id)
    parent = client.get_run(train_run.data.tags["mlflow.parentRunId"])
    assert champion["runs"]["pipeline_run_id"] == parent.info.run_id
    assert parent.info.run_name == champion["runs"]["kfp_run"]
    assert train_run.info.run_name == f"{champion['runs']['kfp_run']}/train"
    children = client.search_runs(
        [train_run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {r.info.run_name.rsplit("/", 1)[1] for r in children} == {"train", "evaluate", "deploy"}
    deployed = next(r for r in children if r.info.run_name.endswith("/deploy"))
    assert deployed.data.tags["train_run_id"] == first.run_id
    assert deployed.data.tags["deploy.outcome"] == "replaced" and deployed.info.status == "FINISHED"
    evaluated = next(r for r in children if r.info.run_name.endswith("/evaluate"))
    tested = [
        (i.dataset.digest, [t.value for t in i.tags]) for i in evaluated.inputs.dataset_inputs
    ]
    assert tested == [(manifest["digest"], ["testing"])]
    assert champion["serving"]["served"] and champion["serving"]["target"] == "local"
    onnx_meta = read_metadata(served)
    assert onnx_meta["git_commit"] == champion["code"]["git_commit"]
    assert onnx_meta["data_digest"] == manifest["digest"]
    assert onnx_meta["params_sha256"] == champion["params_sha256"]
    config = (repo / "depth" / "config.pbtxt").read_text()
    assert champion["code"]["git_commit"] in config and manifest["digest"] in config

    uri = first.params.mlflow.tracking_uri
    argv = ["lineage", "--params", str(PARAMS_FILE), "--set", f"mlflow.tracking_uri={uri}"]
    capsys.readouterr()  # drop what the pipeline runs printed
    assert main([*argv, "--alias", "champion", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(champion))
    assert main([*argv, "--dataset", manifest["digest"], "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["versions"]
    assert [v["model"]["version"] for v in listed] == [1]
