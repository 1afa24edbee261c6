"""Two local pipeline runs started together in one directory (one MLflow store, one served
repository, both created by neither beforehand): both succeed, and the better model ends up
champion and served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEMO

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _argv(seed: int) -> list[str]:
    sets = [
        *DEMO,
        "data.img_size=[32,64]",
        "data.batch_size=2",
        "training.epochs=2",
        f"training.seed={seed}",
        "deploy.probe_images=4",
        "deploy.max_latency_ratio=20",  # toy-model latency on a shared machine is noise
    ]
    synthetic = json.dumps({"cities": 1, "per_split": 4, "size": [64, 128]})
    args = [a for s in sets for a in ("--set", s)]
    return [sys.executable, "-m", "pipelines.run_local", "--params", str(ROOT / "params.yaml"),
            *args, "--synthetic", synthetic, "--root", "runs"]  # fmt: skip


def test_two_concurrent_runs_in_one_directory_both_succeed(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            _argv(seed),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=1500)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
        assert "status: SUCCEEDED" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.stage = 'train'"
    )
    assert len(runs) == 2
    best = min(runs, key=lambda r: r.data.metrics["test_rmse"])
    champion = client.get_model_version_by_alias("ViT+Decoder", "champion")
    assert champion.run_id == best.info.run_id
    served = tmp_path / "saved_models" / "triton_repository" / "depth"
    assert sorted(p.name for p in served.iterdir() if p.is_dir()) == [str(champion.version)]
    assert not list(tmp_path.glob("mlflow.db.init-*"))
