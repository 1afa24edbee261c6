"""The pipeline's reference profile: the raw training split, logged to MLflow and tagged on the
run and the registered version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from depth_common.config import load_params
from depth_common.errors import DataError
from depth_common.monitoring.profile import load_profile, save_profile
from depth_common.monitoring.reference import (
    PROFILE_TAG,
    log_reference_profile,
    profile_training_split,
)

ROOT = Path(__file__).resolve().parents[2]


def test_profile_of_the_raw_train_split_in_both_layouts(synthetic_raw, tmp_path) -> None:
    profile = profile_training_split(synthetic_raw)
    assert profile.images == 8  # 2 cities x 4 frames of train, not val or test
    xy = tmp_path / "xy"
    shutil.copytree(synthetic_raw / "leftImg8bit" / "train", xy / "depth_X" / "train")
    assert profile_training_split(xy).images == 8
    with pytest.raises(DataError, match="no leftImg8bit/val2/ or depth_X/val2/"):
        profile_training_split(synthetic_raw, split="val2")


def test_profile_is_logged_and_tagged_on_run_and_version(synthetic_raw, tmp_path) -> None:
    from mlflow import MlflowClient

    from depth_common.registry import tracking

    params = load_params(
        ROOT / "params.yaml", (f"mlflow.tracking_uri='sqlite:///{tmp_path}/mlflow.db'",)
    )
    experiment = tracking.configure(params.mlflow)
    client = MlflowClient()
    run_id = client.create_run(experiment).info.run_id
    name = params.mlflow.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id).version
    path = save_profile(profile_training_split(synthetic_raw), tmp_path / "profile.json")

    uri = log_reference_profile(path, run_id, params, version=int(version))
    assert uri.endswith("/reference_profile/profile.json")
    assert client.get_run(run_id).data.tags[PROFILE_TAG] == uri
    assert client.get_model_version(name, version).tags[PROFILE_TAG] == uri
    local = client.download_artifacts(run_id, "reference_profile/profile.json", str(tmp_path))
    assert load_profile(local).images == 8
