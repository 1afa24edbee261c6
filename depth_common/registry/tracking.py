"""MLflow run logging: one experiment per ``mlflow.experiment``, one run per training job.

Everything goes through an :class:`mlflow.MlflowClient` with explicit run ids (no implicit
"active run" state), so training, evaluation and promotion can run in different processes —
or different pods — and still write to the same run. Promotion logic lives in
``depth_common.registry.promotion`` on top of these functions.
"""

from __future__ import annotations

import contextlib

# torch and timm are imported where a model is logged: monitoring.reference imports this
# module to write a run and never loads a model.
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from depth_common.config import MlflowConfig, Params
from depth_common.registry import lineage
from depth_common.registry.store import ensure_sqlite_store, sqlite_path

log = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000  # MLflow's limit for one param value
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def _client():

    return MlflowClient()


def configure(mlflow_cfg: MlflowConfig) -> str:
    """Point MLflow at ``mlflow_cfg.tracking_uri`` and create/get the experiment → its id.

    A ``sqlite:///`` store is created or upgraded first, whole (:mod:`.tracking_store`), and a
    new experiment's artifacts go to ``mlartifacts/`` next to the database (MLflow's default
    would be ``./mlruns`` under whatever the current directory happens to be). Two runs
    creating the experiment at once both get its id.
    """

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


@dataclass(frozen=True)
class TaskContext:
    """Where a task's run sits: ``kfp_run`` (the pipeline job name; "" outside a pipeline)
    nests it under that pipeline run's parent run, and ``dataset_uri`` names the processed
    dataset it reads (the KFP artifact URI, or a local path)."""

    kfp_run: str = ""
    dataset_uri: str = ""


def start_training_run(params: Params, context: TaskContext | None = None) -> str:
    """Create a run in the configured experiment with every param (``Params.flat()``) → run id.

    Tags: ``encoder``, ``img_size`` (``HxW``), ``stage=train``, and the code and params
    lineage (:mod:`depth_common.registry.lineage`); inside a pipeline (``context.kfp_run``) the
    run is the ``train`` child of the pipeline run, named ``<kfp run>/train``.
    """

    context = context or TaskContext()
    experiment_id = configure(params.mlflow)
    client = _client()
    h, w = params.data.img_size
    tags = {"encoder": params.model.encoder, "img_size": f"{h}x{w}", "stage": "train"}
    tags.update(lineage.code_provenance())
    tags[lineage.PARAMS_SHA256] = lineage.params_sha256(params)
    tags.update(lineage.task_run_tags(client, experiment_id, context.kfp_run, "train"))
    name = params.mlflow.run_name
    if context.kfp_run:
        name = lineage.task_run_name(context.kfp_run, "train")
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    items = [Param(k, _param_value(v)) for k, v in params.flat().items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run.info.run_id, params=items[i : i + _BATCH])
    return run.info.run_id


def start_task_run(params: Params, context: TaskContext, task: str) -> str | None:
    """The ``<kfp run>/<task>`` child run of a pipeline task (None outside a pipeline)."""
    if not context.kfp_run:
        return None
    experiment_id = configure(params.mlflow)
    client = _client()
    tags = lineage.task_run_tags(client, experiment_id, context.kfp_run, task)
    tags.update(lineage.code_provenance())
    tags[lineage.PARAMS_SHA256] = lineage.params_sha256(params)
    run_name = lineage.task_run_name(context.kfp_run, task)
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


@contextlib.contextmanager
def task_run(
    params: Params, context: TaskContext, task: str, tags: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The ``<kfp run>/<task>`` child run for the block ("" outside a pipeline): FINISHED when
    the block ends, FAILED when it raises."""
    run_id = start_task_run(params, context, task) or ""
    if run_id and tags:
        set_tags(run_id, tags)
    try:
        yield run_id
    except BaseException:
        if run_id:
            set_status(run_id, "FAILED")
        raise
    if run_id:
        set_status(run_id, "FINISHED")


def nest_run(params: Params, run_id: str, context: TaskContext, task: str) -> None:
    """Make an existing run the ``<kfp run>/<task>`` child of its pipeline run (a run created
    where the pipeline's context was not known: the scale-out job's pods)."""
    if not context.kfp_run:
        return
    experiment_id = configure(params.mlflow)
    client = _client()
    tags = lineage.task_run_tags(client, experiment_id, context.kfp_run, task)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, name=lineage.task_run_name(context.kfp_run, task))


def _processed_dataset(uri: str, digest: str, counts: Mapping[str, int], name: str) -> Any:
    """An ``mlflow.data`` dataset of a preprocessed directory: its source, digest and counts."""

    class ProcessedDataset(MetaDataset):  # defined here: mlflow is imported late
        @property
        def profile(self) -> dict[str, Any]:  # images per split: the dataset's size
            return {"counts": dict(counts)}

        def to_dict(self) -> dict[str, str]:  # MetaDataset leaves the profile out
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    # KFP names its MinIO store minio://; MLflow knows the S3 API it speaks.
    uri = uri.replace("minio://", "s3://", 1)
    try:
        with warnings.catch_warnings():  # MLflow registers two identical local sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
    except Exception:  # a scheme MLflow has no source for: keep the URI as text
        source = HTTPDatasetSource(uri)
    return ProcessedDataset(source, name=name, digest=digest)


def log_dataset(
    run_id: str, uri: str, digest: str, counts: Mapping[str, int], contexts: tuple[str, ...]
) -> None:
    """Log the processed dataset (``mlflow.data``) as an input of ``run_id`` in each context
    (``training``, ``validation``, ``testing``), with its source URI and counts per split.

    One dataset entry per context, named ``processed/<context>``, all with the dataset's
    digest: MLflow keeps a run's input once per dataset (name + digest), so the same entry
    logged twice would keep only its first context.
    """

    inputs = [
        DatasetInput(
            _processed_dataset(uri, digest, counts, f"processed/{c}")._to_mlflow_entity(),
            [InputTag(lineage.DATASET_CONTEXT_TAG, c)],
        )
        for c in contexts
    ]
    try:
        _client().log_inputs(run_id, datasets=inputs)
    except MlflowException as exc:
        # MLflow's SQL store looks the dataset up, then inserts it: two runs logging the same
        # dataset at once (two pipelines on one store) can both miss it, and the second insert
        # breaks the (experiment, name, digest) key. Nothing was written; once more finds it.
        if not _is_duplicate_key(exc):
            raise
        log.info("dataset %s was logged by another run at the same moment: linking it", digest)
        _client().log_inputs(run_id, datasets=inputs)
    set_tags(run_id, {lineage.DATA_DIGEST: digest, lineage.DATA_URI: uri})


def _is_duplicate_key(exc: MlflowException) -> bool:
    """A unique-key violation from the database under MLflow's SQL store (SQLite, PostgreSQL,
    MySQL spell it differently)."""
    text = str(exc)
    return any(
        m in text for m in ("UNIQUE constraint failed", "UniqueViolation", "Duplicate entry")
    )


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log finite metrics to ``run_id`` (NaN/inf are skipped with a warning: MLflow's SQL
    stores reject or mangle them, and a missing point is more honest than a fake one)."""

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
    """``RUNNING`` (e.g. on resume), ``FINISHED``, ``FAILED`` or ``KILLED``.

    A task run's end also ends its pipeline run (the parent): the last task to finish sets
    the parent's end time and status, so the parent spans the tracked part of the pipeline.
    """
    client = _client()
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
        return
    client.set_terminated(run_id, status=status)
    parent = client.get_run(run_id).data.tags.get(lineage.PARENT_RUN_TAG)
    if parent:
        client.set_terminated(parent, status=status)


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric, in step order (the report's training curves)."""
    hist = _client().get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)


def run_exists(run_id: str) -> bool:

    try:
        _client().get_run(run_id)
    except MlflowException:
        return False
    return True


#: The code of the logged MLflow model (MLflow "models from code": no pickle).
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
# Named here, read by the model code: importing mlflow_model would load torch with every run.
#: The name of the checkpoint among the model's artifacts.
CHECKPOINT_KEY = "checkpoint"
#: The input tensor's name in the model's signature.
INPUT_NAME = "image"


def log_model(run_id: str, checkpoint_path: str | Path, img_size: tuple[int, int]) -> None:
    """Log the run's MLflow model ``"model"``: :mod:`depth_common.registry.mlflow_model` as its
    code and the checkpoint at ``checkpoint_path`` (``weights_only``) as its weights; no pickle.

    An explicit tensor signature (B, 3, H, W) → (B, 1, H, W) float32 replaces an input
    example (which would make MLflow run the model), and the pip requirements are given
    rather than inferred (inference loads the model in a subprocess: slow).
    """
    import timm
    import torch

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
