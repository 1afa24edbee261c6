"""MLflow run logging: one experiment per ``mlflow.experiment``, one run per training job.

Everything goes through an :class:`mlflow.MlflowClient` with explicit run ids (no implicit
"active run" state), so training, evaluation and promotion can run in different processes —
or different pods — and still write to the same run. Promotion logic lives in
``depth_common.registry.promotion`` on top of these functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depth_common.config import MlflowConfig, Params
from depth_common.registry.store import ensure_sqlite_store, sqlite_path

log = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000  # MLflow's limit for one param value
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def configure(mlflow_cfg: MlflowConfig) -> str:
    """Point MLflow at ``mlflow_cfg.tracking_uri`` and create/get the experiment → its id.

    A ``sqlite:///`` store is created or upgraded first, whole (:mod:`.tracking_store`), and a
    new experiment's artifacts go to ``mlartifacts/`` next to the database (MLflow's default
    would be ``./mlruns`` under whatever the current directory happens to be). Two runs
    creating the experiment at once both get its id.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow_cfg.tracking_uri
    db = sqlite_path(uri)
    ensure_sqlite_store(uri)  # never let MLflow create a local schema in place, half-way
    mlflow.set_tracking_uri(uri)
    client = _client()
    exp = client.get_experiment_by_name(mlflow_cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if db is not None:
        artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(mlflow_cfg.experiment, artifact_location=artifact_location)
    except MlflowException:
        # Another run created it between the lookup and here (two pipelines starting together).
        exp = client.get_experiment_by_name(mlflow_cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _param_value(v: Any) -> str:
    text = str(v)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def start_training_run(params: Params, run_name: str | None = None) -> str:
    """Create a run in the configured experiment with every param (``Params.flat()``) → run id.

    Tags: ``encoder``, ``img_size`` (``HxW``) and ``stage=train``.
    """
    from mlflow.entities import Param

    experiment_id = configure(params.mlflow)
    client = _client()
    h, w = params.data.img_size
    run = client.create_run(
        experiment_id,
        run_name=run_name or params.mlflow.run_name,
        tags={"encoder": params.model.encoder, "img_size": f"{h}x{w}", "stage": "train"},
    )
    items = [Param(k, _param_value(v)) for k, v in params.flat().items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH])
    return run.info.run_id


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite metrics to ``run_id`` (NaN/inf are skipped with a warning: MLflow's SQL
    stores reject or mangle them, and a missing point is more honest than a fake one)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        value = float(value)
        if not math.isfinite(value):
            log.warning("MLflow: not logging %s=%s (not finite) to run %s", key, value, run_id)
            continue
        batch.append(Metric(key, value, ts, step or 0))
    if batch:
        _client().log_batch(run_id, metrics=batch)


def log_test_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Log evaluation metrics (already ``test_``-prefixed) to the training run ``run_id``."""
    log_metrics(run_id, metrics)


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    _client().log_artifact(run_id, str(path), artifact_path)


def set_status(run_id: str, status: str) -> None:
    """``RUNNING`` (e.g. on resume), ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client = _client()
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def run_metrics(run_id: str) -> dict[str, float]:
    """Latest value of every metric of ``run_id``."""
    return dict(_client().get_run(run_id).data.metrics)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, in step order."""
    hist = _client().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)


def run_exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_run(run_id)
    except MlflowException:
        return False
    return True


#: The code of the logged MLflow model (MLflow "models from code": no pickle).
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


def log_model(run_id: str, checkpoint_path: str | Path, img_size: tuple[int, int]) -> None:
    """Log the run's MLflow model ``"model"``: :mod:`depth_common.registry.mlflow_model` as its
    code and the checkpoint at ``checkpoint_path`` (``weights_only``) as its weights; no pickle.

    An explicit tensor signature (B, 3, H, W) → (B, 1, H, W) float32 replaces an input
    example (which would make MLflow run the model), and the pip requirements are given
    rather than inferred (inference loads the model in a subprocess: slow).
    """
    import mlflow
    import numpy as np
    import timm
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from depth_common.registry.mlflow_model import CHECKPOINT_KEY, INPUT_NAME

    h, w = img_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, h, w), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, h, w), "depth")]),
    )
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]
    # log_model writes to the active run: re-enter ours by id just for this call.
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_KEY: str(checkpoint_path)},
            signature=signature,
            pip_requirements=requirements,
        )
