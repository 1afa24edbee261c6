"""Lineage: which code, data, params, runs and files a registered model version came from.

Kubeflow Pipelines has dropped ML Metadata, so lineage lives in MLflow, shaped like the KEP
that makes MLflow Kubeflow's tracker: one parent run per pipeline run (named after the KFP run,
i.e. the pipeline job name) and one nested child run per task that tracks something (tag
``mlflow.parentRunId``, name ``<kfp run>/<task>``).

Where each fact is recorded, once:

- the training run (a child of the pipeline run): tags ``git_commit``, ``git_dirty``,
  ``image``, ``image_digest``, ``params_sha256``, ``kfp_run``, ``pipeline_run_id``,
  ``data_digest``, ``data_uri``, ``checkpoint_sha256``; the processed dataset as an MLflow
  dataset input (contexts training and validation; evaluate's run logs it as testing);
- the registered version: the same tags, copied at registration (:func:`lineage_tags`), plus
  ``train_run_id``, and from the deploy step ``onnx_sha256``, ``triton_repository`` and the
  ``serving_*`` tags (:func:`record_artifacts`, :func:`record_serving`);
- the ONNX file's metadata, the Triton config's parameters, the model card and the
  InferenceService's annotations carry the same keys (see :data:`CARRIED_KEYS`).

The git commit comes from the image (``DEPTH_GIT_COMMIT`` / ``DEPTH_GIT_DIRTY``, set at build
time: an image holds no ``.git``) or, outside an image, from ``git`` in the source checkout.

The query side (:func:`describe_version` and the lookups by alias, version, run or dataset
digest) is pure functions over an ``MlflowClient``: ``python -m depth_common lineage`` prints it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depth_common.config import Params
from depth_common.config.container_images import component_image
from depth_common.errors import LineageNotFound
from depth_common.registry.aliases import aliases, is_missing
from depth_common.registry.running_image import running_image_digest

GIT_COMMIT = "git_commit"
GIT_DIRTY = "git_dirty"
IMAGE = "image"
IMAGE_DIGEST = "image_digest"
PARAMS_SHA256 = "params_sha256"
KFP_RUN = "kfp_run"
PIPELINE_RUN_ID = "pipeline_run_id"
TRAIN_RUN_ID = "train_run_id"
DATA_DIGEST = "data_digest"
DATA_URI = "data_uri"
CHECKPOINT_SHA256 = "checkpoint_sha256"
ONNX_SHA256 = "onnx_sha256"
TRITON_REPOSITORY = "triton_repository"
SERVING_TARGET = "serving_target"
SERVING_ENDPOINT = "serving_endpoint"
#: MLflow's own tag naming a nested run's parent.
PARENT_RUN_TAG = "mlflow.parentRunId"
#: Tag telling a pipeline's parent run (value "pipeline") from its task runs (the task name).
TASK_TAG = "kfp_task"
PIPELINE_TASK = "pipeline"
#: The test metrics the readable table shows (the JSON has every test_* metric).
HEADLINE_METRICS = ("test_rmse", "test_abs_rel", "test_delta_1")
#: Input tag MLflow gives a dataset's role in a run (training / validation / testing).
DATASET_CONTEXT_TAG = "mlflow.data.context"

#: What a training run knows about where it came from (copied onto the registered version).
RUN_KEYS = (
    GIT_COMMIT,
    GIT_DIRTY,
    IMAGE,
    IMAGE_DIGEST,
    PARAMS_SHA256,
    KFP_RUN,
    PIPELINE_RUN_ID,
    DATA_DIGEST,
    DATA_URI,
    CHECKPOINT_SHA256,
)
#: The keys the ONNX metadata, Triton config, model card and InferenceService carry.
CARRIED_KEYS = (*RUN_KEYS, TRAIN_RUN_ID)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_KFP_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,250}$")


# -- what a run records -------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_provenance() -> dict[str, str]:
    """``git_commit``, ``git_dirty`` ("true"/"false"), ``image`` and ``image_digest`` of this code.

    Inside an image the build baked them into ``DEPTH_GIT_COMMIT`` / ``DEPTH_GIT_DIRTY`` /
    ``DEPTH_IMAGE`` (``images/build.sh``); outside one, ``git`` answers from the checkout (a
    worktree's ``.git`` is a file, hence ``exists``) and the image is the component image that
    ``images/images.env`` names (what the compiled pipeline runs). The digest is what the
    task's pod runs (:mod:`depth_common.registry.running_image`). Unknown values are "".
    """

    commit = os.environ.get("DEPTH_GIT_COMMIT", "")
    dirty = os.environ.get("DEPTH_GIT_DIRTY", "")
    if not commit and (_REPO_ROOT / ".git").exists():
        commit = (_git("rev-parse", "HEAD") or "").strip()
        status = _git("status", "--porcelain")
        dirty = "" if status is None else str(bool(status.strip())).lower()
    image = os.environ.get("DEPTH_IMAGE", "")
    if not image:
        try:
            image = component_image()
        except (OSError, ValueError):
            image = ""
    return {
        GIT_COMMIT: commit,
        GIT_DIRTY: dirty,
        IMAGE: image,
        IMAGE_DIGEST: running_image_digest(),
    }


def params_sha256(params: Params) -> str:
    """SHA-256 of the resolved params as the pipeline hands them on (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()


def task_run_name(kfp_run: str, task: str) -> str:
    """``<kfp run>/<task>``: a task run's name says which pipeline run and which task."""
    return f"{kfp_run}/{task}"


def pipeline_run(client: Any, experiment_id: str, kfp_run: str) -> str:
    """The parent MLflow run of pipeline run ``kfp_run`` (created by its first tracking task).

    Found by tag, so every task of the same pipeline run (one pod each) nests under the same
    parent; tasks that track run one after another, so two never create it together.
    """
    if not _KFP_RUN_RE.match(kfp_run):
        raise ValueError(f"kfp_run: {kfp_run!r} is not a pipeline job name")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{KFP_RUN} = '{kfp_run}' and tags.{TASK_TAG} = '{PIPELINE_TASK}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {KFP_RUN: kfp_run, TASK_TAG: PIPELINE_TASK, **code_provenance()}
    return client.create_run(experiment_id, run_name=kfp_run, tags=tags).info.run_id


def task_run_tags(client: Any, experiment_id: str, kfp_run: str, task: str) -> dict[str, str]:
    """Tags that nest a task's run under its pipeline run (empty without a KFP run name)."""
    if not kfp_run:
        return {}
    parent = pipeline_run(client, experiment_id, kfp_run)
    return {PARENT_RUN_TAG: parent, PIPELINE_RUN_ID: parent, KFP_RUN: kfp_run, TASK_TAG: task}


# -- what a version records ---------------------------------------------------------------------


def lineage_tags(client: Any, run_id: str) -> dict[str, str]:
    """The lineage tags a version registered from training run ``run_id`` carries."""
    tags = client.get_run(run_id).data.tags
    out = {k: tags[k] for k in RUN_KEYS if tags.get(k)}
    out[TRAIN_RUN_ID] = run_id
    return out


def record_artifacts(
    client: Any, name: str, version: int, onnx_sha256: str, triton_repository: str
) -> None:
    """Tag ``version`` with the digest of the ONNX file it serves and the repository holding it."""
    client.set_model_version_tag(name, str(version), ONNX_SHA256, onnx_sha256)
    client.set_model_version_tag(name, str(version), TRITON_REPOSITORY, triton_repository)


def record_serving(client: Any, name: str, version: int, target: str, endpoint: str) -> None:
    """Tag ``version`` with where its rollout served it (``local`` / ``kserve`` and the URL)."""
    client.set_model_version_tag(name, str(version), SERVING_TARGET, target)
    client.set_model_version_tag(name, str(version), SERVING_ENDPOINT, endpoint)


def carried(metadata: Mapping[str, str]) -> dict[str, str]:
    """The lineage entries of a metadata mapping (ONNX ``metadata_props``, Triton parameters)."""
    return {k: str(metadata[k]) for k in CARRIED_KEYS if metadata.get(k)}


# -- the query side -----------------------------------------------------------------------------


def _dataset(run: Any, context: str = "training") -> dict[str, Any]:
    """``{"uri", "digest", "counts"}`` of the dataset input ``run`` logged in ``context``
    (all None / empty when it logged none)."""
    for item in run.inputs.dataset_inputs if run.inputs else []:
        if not any(t.key == DATASET_CONTEXT_TAG and t.value == context for t in item.tags):
            continue
        ds = item.dataset
        try:
            uri = json.loads(ds.source).get("uri", ds.source)
        except (TypeError, ValueError, AttributeError):
            uri = ds.source
        try:
            counts = json.loads(ds.profile or "{}").get("counts", {})
        except (TypeError, ValueError, AttributeError):
            counts = {}
        return {"uri": uri, "digest": ds.digest, "counts": counts}
    return {"uri": None, "digest": None, "counts": {}}


def _served(mv: Any, tags: Mapping[str, str]) -> dict[str, Any]:
    # champion serves all traffic, challenger a canary share; any other version serves nothing.
    live = bool({"champion", "challenger"} & set(mv.aliases or ()))
    return {
        "target": tags.get(SERVING_TARGET) or None,
        "endpoint": tags.get(SERVING_ENDPOINT) or None,
        "served": live and bool(tags.get(SERVING_TARGET)),
    }


def describe_run(client: Any, run_id: str, fallback: Mapping[str, str] | None = None) -> dict:
    """The lineage a training run records: runs, code, data, params digest, test metrics and
    its checkpoint's digest (``fallback``: tags to read a fact from when the run lacks it)."""
    run = client.get_run(run_id)
    tags, metrics = dict(run.data.tags), dict(run.data.metrics)
    fallback = fallback or {}

    def fact(key: str) -> str | None:
        return tags.get(key) or fallback.get(key) or None

    dirty = fact(GIT_DIRTY)
    return {
        "runs": {
            "pipeline_run_id": tags.get(PARENT_RUN_TAG) or fact(PIPELINE_RUN_ID),
            "train_run_id": run_id,
            "kfp_run": fact(KFP_RUN),
        },
        "code": {
            "git_commit": fact(GIT_COMMIT),
            "git_dirty": None if dirty is None else dirty == "true",
            "image": fact(IMAGE),
            "image_digest": fact(IMAGE_DIGEST),
        },
        "data": _dataset(run),
        "params_sha256": fact(PARAMS_SHA256),
        "checkpoint_sha256": fact(CHECKPOINT_SHA256),
        "metrics": {k: v for k, v in sorted(metrics.items()) if k.startswith("test_")},
    }


def describe_version(client: Any, name: str, version: int) -> dict[str, Any]:
    """The lineage of registered ``name`` version ``version`` (the CLI's JSON object).

    Run facts come from the training run (``mv.run_id``), artifact and serving facts from the
    version's tags; ``data.digest`` is the digest MLflow holds as the run's training input.
    """
    mv = _model_version(client, name, version)
    tags = dict(mv.tags or {})
    if not mv.run_id:
        raise LineageNotFound(f"--version {version}: {name!r} v{version} has no source run")
    run = describe_run(client, mv.run_id, tags)
    return {
        "model": {"name": name, "version": int(mv.version), "aliases": sorted(mv.aliases or ())},
        "runs": run["runs"],
        "code": run["code"],
        "data": run["data"],
        "params_sha256": run["params_sha256"],
        "artifacts": {
            "checkpoint_sha256": run["checkpoint_sha256"],
            "onnx_sha256": tags.get(ONNX_SHA256) or None,
            "triton_repository": tags.get(TRITON_REPOSITORY) or None,
        },
        "metrics": run["metrics"],
        "serving": _served(mv, tags),
    }


def _model_version(client: Any, name: str, version: int) -> Any:

    try:
        return client.get_model_version(name, str(version))
    except Exception as exc:
        if is_missing(exc):
            raise LineageNotFound(f"--version {version}: {name!r} has no such version") from None
        raise


def alias_version(client: Any, name: str, alias: str) -> int:
    """The version holding ``alias`` (:class:`LineageNotFound` when none does)."""

    current = aliases(client, name)
    if alias not in current:
        known = ", ".join(sorted(current)) or "none"
        raise LineageNotFound(f"--alias {alias}: {name!r} has no such alias (aliases: {known})")
    return current[alias]


def versions_of_run(client: Any, name: str, run_id: str) -> list[int]:
    """Versions registered from ``run_id``, or from the training run under pipeline run
    ``run_id`` (a parent run id works too)."""
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise LineageNotFound(f"--run {run_id}: not an MLflow run id (32 hex characters)")
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        found = [
            mv
            for mv in client.search_model_versions(f"name='{name}'")
            if (mv.tags or {}).get(PIPELINE_RUN_ID) == run_id
        ]
    if not found:
        raise LineageNotFound(f"--run {run_id}: no version of {name!r} comes from that run")
    return sorted(int(mv.version) for mv in found)


def versions_of_dataset(client: Any, name: str, digest: str) -> list[int]:
    """Every version of ``name`` whose training run trained on the dataset ``digest``."""
    found = [
        int(mv.version)
        for mv in client.search_model_versions(f"name='{name}'")
        if mv.run_id and _dataset(client.get_run(mv.run_id))["digest"] == digest
    ]
    if not found:
        raise LineageNotFound(f"--dataset {digest}: no version of {name!r} was trained on it")
    return sorted(found)


def format_lineage(entry: Mapping[str, Any]) -> str:
    """A short readable table of one :func:`describe_version` object."""
    m, runs, code, data = entry["model"], entry["runs"], entry["code"], entry["data"]
    art, serving = entry["artifacts"], entry["serving"]
    dirty = " (dirty)" if code["git_dirty"] else ""
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items()) or "-"
    shown = {k: v for k, v in entry["metrics"].items() if k in HEADLINE_METRICS}
    metrics = "  ".join(f"{k} {v:.4g}" for k, v in shown.items()) or "-"
    served = (
        f"{serving['target']} {serving['endpoint'] or ''}".strip() if serving["served"] else "no"
    )
    rows = [
        ("model", f"{m['name']} v{m['version']} ({', '.join(m['aliases']) or 'no alias'})"),
        ("kfp run", runs["kfp_run"] or "-"),
        ("pipeline run", runs["pipeline_run_id"] or "-"),
        ("train run", runs["train_run_id"] or "-"),
        ("code", f"{code['git_commit'] or '-'}{dirty}"),
        ("image", f"{code['image'] or '-'} {code['image_digest'] or ''}".strip()),
        ("data", f"{data['digest'] or '-'} ({counts}) {data['uri'] or ''}".strip()),
        ("params sha256", entry["params_sha256"] or "-"),
        ("checkpoint", art["checkpoint_sha256"] or "-"),
        ("onnx", art["onnx_sha256"] or "-"),
        ("triton repo", art["triton_repository"] or "-"),
        ("metrics", metrics),
        ("served", served),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
