"""The reference profile of a training run: computed from the raw training split (what a camera
sends, hood included, before preprocessing crops and resizes it), logged to the run's MLflow
artifacts and tagged on the run and on the registered model version, so the monitor of a
served version finds its reference (``reference_profile_uri``)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from depth_common.config import Params
from depth_common.data.discovery import split_dir
from depth_common.errors import DataError
from depth_common.monitoring.profile import DEFAULT_MAX_IMAGES, Profile, profile_directory
from depth_common.registry import tracking

PROFILE_TAG = "reference_profile_uri"
ARTIFACT_DIR = "reference_profile"
RGB_FOLDERS = ("leftImg8bit", "depth_X")  # the RGB folder of each layout (data.discovery)


def profile_training_split(
    raw_dir: str | Path, split: str = "train", max_images: int = DEFAULT_MAX_IMAGES
) -> Profile:
    """The profile of the RGB images of ``split`` in a raw dataset (either layout)."""
    root = Path(raw_dir)
    for rgb_folder in RGB_FOLDERS:
        folder = split_dir(root, rgb_folder, split)
        if folder is not None:
            return profile_directory(folder, max_images=max_images)
    wanted = " or ".join(f"{name}/{split}/" for name in RGB_FOLDERS)
    raise DataError(f"{root}: no {wanted} folder to profile")


def log_reference_profile(
    profile_path: str | Path, run_id: str, params: Params, version: int = 0
) -> str:
    """Log ``profile_path`` to run ``run_id``; tag the run (and model ``version`` if > 0) with
    its artifact URI; return the URI."""

    tracking.configure(params.mlflow)
    client = MlflowClient()
    client.log_artifact(run_id, str(profile_path), ARTIFACT_DIR)
    artifact_uri = client.get_run(run_id).info.artifact_uri.rstrip("/")
    uri = f"{artifact_uri}/{ARTIFACT_DIR}/{Path(profile_path).name}"
    client.set_tag(run_id, PROFILE_TAG, uri)
    if version > 0:
        client.set_model_version_tag(params.mlflow.model_name, str(version), PROFILE_TAG, uri)
    return uri
