"""The train step's cluster path: train on a TrainJob/PyTorchJob, bring the model back.

When ``training.num_nodes x training.procs_per_node > 1`` (:func:`needs_cluster`) the pipeline's
train step calls :func:`run_scaled_training`: it puts the data and params on the shared volume
(``training.shared_pvc``, mounted at :data:`SHARED_MOUNT` here and in every train pod), runs the
job (:mod:`depth_common.scaleout`) and copies the best checkpoint into its ``Output[Model]``.
Credentials reach the pods only from Kubernetes Secrets (``valueFrom``), never from params.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from depth_common.atomic import claim_dir, copy_atomic, remove_leftovers, write_text
from depth_common.config import Params
from depth_common.errors import ConfigError, JobFailed
from depth_common.model.checkpoint import load_checkpoint
from depth_common.scaleout.cluster import Launcher, launcher_for, run_job
from depth_common.scaleout.job import SHARED_MOUNT, job_from_params
from depth_common.training.train import TrainResult


def write_params_file(params: Params, path: str | Path) -> Path:
    """Write ``params`` as YAML for the train pods (atomically)."""
    return write_text(path, yaml.safe_dump(params.to_dict(), sort_keys=False))


def job_name_for(seed: str, prefix: str = "depth-train") -> str:
    """A valid, unique-per-``seed`` job name (DNS-1035, <= 63 characters), e.g. from the
    train step's pod name (``HOSTNAME``): ``depth-train-<slug>-<8 hex of sha1(seed)>``."""
    digest = hashlib.sha1(seed.encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", seed.lower()).strip("-")
    room = 63 - len(prefix) - len(digest) - 2
    slug = slug[:room].strip("-")
    return f"{prefix}-{slug}-{digest}" if slug else f"{prefix}-{digest}"


def needs_cluster(params: Params) -> bool:
    """Whether the train step submits a job: more than one process in all."""
    return params.training.num_nodes * params.training.procs_per_node > 1


def run_scaled_training(
    params: Params,
    processed_dir: str | Path,
    model_dir: str | Path,
    *,
    run_name: str,
    namespace: str | None = None,
    shared_root: str | Path = SHARED_MOUNT,
    launcher: Launcher | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """Train on the cluster and bring the best checkpoint back into ``model_dir``.

    Returns the same :class:`~depth_common.training.train.TrainResult` as the single-process
    ``train()`` (checkpoint ``model_dir/best.pt``; val metrics, MLflow run id and epochs read
    from the checkpoints rank 0 wrote), so the train step handles both paths alike.

    The calling pod (the pipeline's train step) must have ``training.shared_pvc`` mounted at
    ``shared_root``, as the train pods do. Layout on the volume, per run::

        <shared_root>/<run_name>/params.yaml   the effective params (written here)
        <shared_root>/<run_name>/data/         a copy of ``processed_dir``
        <shared_root>/<run_name>/out/          best.pt, last.pt (written by rank 0)

    ``run_name`` names the job too: unique per attempt (e.g. the KFP task's pod name).
    ``launcher`` defaults to the one for ``training.launcher`` in the job's namespace.
    """
    t = params.training
    if not t.shared_pvc:
        raise ConfigError(
            "training.shared_pvc: got '', expected a ReadWriteMany PVC name: "
            f"{t.num_nodes} node(s) x {t.procs_per_node} process(es) train in separate pods, "
            "which read the data and write checkpoints there"
        )
    run_dir = _stage_run(params, processed_dir, Path(shared_root) / run_name)
    job = job_from_params(
        params,
        name=run_name,
        namespace=namespace,
        params_path=f"{SHARED_MOUNT}/{run_name}/params.yaml",
        data_dir=f"{SHARED_MOUNT}/{run_name}/data",
        out_dir=f"{SHARED_MOUNT}/{run_name}/out",
    )
    run_job(launcher or launcher_for(t.launcher, job.namespace), job, log=log)
    out_dir = run_dir / "out"
    best = out_dir / "best.pt"
    if not best.is_file():
        raise JobFailed(f"{t.launcher} {job.namespace}/{run_name} succeeded but wrote no {best}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    copy_atomic(best, model_dir / "best.pt")
    return _result_from_checkpoints(model_dir / "best.pt", out_dir / "last.pt")


def _stage_run(params: Params, processed_dir: str | Path, run_dir: Path) -> Path:
    """``run_dir`` on the shared volume with the data (copied once) and the params file."""
    if not run_dir.parent.is_dir():
        raise ConfigError(
            f"{run_dir.parent}: not mounted in this pod; mount "
            f"training.shared_pvc={params.training.shared_pvc!r} there"
        )
    claim_dir(run_dir)
    remove_leftovers(run_dir, recursive=False)  # of a copy an earlier attempt did not finish
    if not (run_dir / "data" / "manifest.json").is_file():
        copy_atomic(Path(processed_dir), run_dir / "data")
    write_params_file(params, run_dir / "params.yaml")
    return run_dir


def _result_from_checkpoints(best: Path, last: Path) -> Any:

    ckpt = load_checkpoint(best)
    history = load_checkpoint(last).get("history", []) if last.is_file() else []
    epochs = sum(1 for h in history if "train_loss" in h) if history else int(ckpt["epoch"])
    return TrainResult(
        checkpoint_path=best,
        best_val={k: float(v) for k, v in ckpt["metrics"].items()},
        mlflow_run_id=ckpt.get("mlflow_run_id"),
        epochs_run=epochs,
        history=[dict(h) for h in history],
    )
