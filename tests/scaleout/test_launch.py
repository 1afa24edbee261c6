"""depth_common.scaleout.launch: the train step's cluster path (shared volume, job, checkpoint back)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import CLUSTER

from depth_common import atomic
from depth_common.config import Params, load_params
from depth_common.errors import ConfigError, JobFailed
from depth_common.model.checkpoint import save_checkpoint
from depth_common.scaleout.cluster import JobState
from depth_common.scaleout.job import ScaleOutJob, job_from_params
from depth_common.scaleout.launch import (
    job_name_for,
    needs_cluster,
    run_scaled_training,
    write_params_file,
)


def test_write_params_file_round_trips(tmp_path):
    params = load_params("params.yaml", CLUSTER)
    path = write_params_file(params, tmp_path / "run" / "params.yaml")
    assert load_params(path) == params
    assert [p.name for p in path.parent.iterdir()] == ["params.yaml"]  # no temp file left


class _Tiny(torch.nn.Linear):
    config = {"encoder": "tiny", "decoder_features": 8, "img_size": [32, 32], "hooks": [0]}


class _ClusterThatTrains:
    """A launcher standing in for the cluster: 'running' a job writes the checkpoints rank 0
    writes (best.pt with the best val metrics, last.pt with the history) under its --out."""

    kind = "trainjob"
    namespace = "kubeflow-user-example-com"

    def __init__(self, shared: Path, params: Params, write_best: bool = True) -> None:
        self.shared, self.params, self.write_best = shared, params, write_best
        self.submitted: list[ScaleOutJob] = []

    def submit(self, job: ScaleOutJob) -> str:
        self.submitted.append(job)
        out = self.shared / job.name / "out"
        out.mkdir(parents=True)
        history = [{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}]
        written = {
            "best.pt": {"metrics": {"val_rmse": 3.5}, "mlflow_run_id": "run-123"},
            "last.pt": {"metrics": {"val_rmse": 3.9}, "extra": {"history": history}},
        }
        if not self.write_best:
            del written["best.pt"]
        for filename, kw in written.items():
            save_checkpoint(out / filename, _Tiny(2, 1), self.params, epoch=2, **kw)
        return job.name

    def wait(self, name: str, timeout_s: float, poll_s: float) -> JobState:
        return JobState("succeeded", "JobSetCompleted")

    def logs(self, name: str) -> Iterator[str]:
        return iter(["epoch 2/2 train_loss 0.5"])

    def delete(self, name: str) -> None:
        raise AssertionError("a job that succeeded is not deleted")


@pytest.fixture
def processed(tmp_path):
    processed = tmp_path / "processed"
    (processed / "train").mkdir(parents=True)
    (processed / "manifest.json").write_text("{}")
    return processed


def test_run_scaled_training_moves_data_and_checkpoint(tmp_path, processed):
    shared = tmp_path / "shared"
    shared.mkdir()
    params = load_params("params.yaml", CLUSTER)
    fake = _ClusterThatTrains(shared, params)
    lines: list[str] = []
    result = run_scaled_training(
        params,
        processed,
        tmp_path / "model",
        run_name="depth-run-7",
        shared_root=shared,
        launcher=fake,
        log=lines.append,
    )
    assert result.checkpoint_path == tmp_path / "model" / "best.pt"
    assert result.checkpoint_path.read_bytes() == (shared / "depth-run-7/out/best.pt").read_bytes()
    assert result.best_val == {"val_rmse": 3.5} and result.mlflow_run_id == "run-123"
    assert result.epochs_run == 2
    assert (shared / "depth-run-7" / "data" / "manifest.json").is_file()
    assert load_params(shared / "depth-run-7" / "params.yaml") == params
    (job,) = fake.submitted
    assert "/mnt/shared/depth-run-7/data" in job.command
    assert lines[0].startswith("submitted trainjob") and "epoch 2/2 train_loss 0.5" in lines
    assert atomic.leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match="training.shared_pvc"):
        run_scaled_training(
            load_params("params.yaml", ["training.num_nodes=2"]),
            processed,
            tmp_path / "m2",
            run_name="x",
            shared_root=shared,
            launcher=fake,
        )
    with pytest.raises(ConfigError, match="not mounted in this pod"):
        run_scaled_training(
            params, processed, tmp_path / "m3", run_name="y", shared_root=tmp_path / "absent"
        )


def test_a_job_that_wrote_no_checkpoint_fails(tmp_path, processed):
    params = load_params("params.yaml", CLUSTER)
    fake = _ClusterThatTrains(tmp_path, params, write_best=False)
    with pytest.raises(JobFailed, match="succeeded but wrote no .*best.pt"):
        run_scaled_training(
            params, processed, tmp_path / "model", run_name="r", shared_root=tmp_path, launcher=fake
        )
    assert not (tmp_path / "model" / "best.pt").exists()


def test_needs_cluster_counts_all_processes():
    assert not needs_cluster(load_params("params.yaml"))
    assert needs_cluster(load_params("params.yaml", ["training.procs_per_node=2"]))
    assert needs_cluster(load_params("params.yaml", ["training.num_nodes=2"]))


@pytest.mark.parametrize(
    "seed",
    ["depth-pipeline-x7k2p-system-container-impl-2212498111", "A_B", "", "x" * 200, "--"],
)
def test_job_name_for_is_a_valid_unique_name(seed):
    name = job_name_for(seed)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63  # DNS-1035
    assert name != job_name_for(seed + "1")
    params = load_params("params.yaml", CLUSTER)
    job = job_from_params(params, name=name, params_path="p", data_dir="d", out_dir="o")
    assert job.name == name  # accepted as a DNS-1035 label (job_from_params checks)
