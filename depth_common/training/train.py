"""Training loop: AdamW + warmup/cosine, AMP, grad clipping, validation every
``training.val_every`` epochs, best/last checkpoints, early stopping, resume, MLflow logging.

Layout of ``out_dir``: ``best.pt`` (lowest val RMSE so far: what evaluation and export use)
and ``last.pt`` (with optimizer/scheduler/scaler and early-stopping state: what
``resume=True`` continues from), written every ``training.checkpoint_every`` epochs, at the
end, and on SIGTERM (Kubernetes sends it before killing a pod: the loop stops at the next
optimiser step and saves where it is in the epoch). Both are written atomically.

Resume is exact: shuffling and augmentation are functions of (seed, epoch, index) (see
:class:`~depth_common.data.samplers.EpochSampler`), torch's generator is reseeded from
(seed, epoch, rank, micro-batch) before every forward, and a run stopped in mid-epoch skips
the samples it already trained on.

Runs as one process or data-parallel under ``torchrun`` (``depth_common.training.distributed``): side
effects (checkpoints, MLflow, progress bars) happen only on rank 0, validation metrics are
summed over ranks (padding-free shards, so they equal the single-process numbers), the
early-stopping decision is rank 0's, and one optimiser step always sees ``data.batch_size``
samples in total (``world_size x micro_batch_size x accumulation_steps``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from depth_common.atomic import claim_dir
from depth_common.config import Params
from depth_common.data.dataset import dataset_for, loader_for, read_manifest
from depth_common.data.digest import file_sha256, manifest_digest
from depth_common.data.preprocess import manifest_path
from depth_common.data.samplers import eval_sampler, train_sampler
from depth_common.errors import ConfigError, TrainingError, TrainingInterrupted
from depth_common.registry import tracking
from depth_common.registry.lineage import CHECKPOINT_SHA256
from depth_common.registry.tracking import TaskContext
from depth_common.threads import apply_torch_threads
from depth_common.training import distributed
from depth_common.training.control import StopRequest, tracked_run
from depth_common.training.loop import RunSettings, train_one_epoch, validate
from depth_common.training.losses import DepthLoss
from depth_common.training.state import TrainState, amp_mode, new_train_state
from depth_common.training.warm_start import apply_init

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"

__all__ = ["TrainResult", "TrainingError", "TrainingInterrupted", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What a training job produced (``best_val`` keys: ``val_rmse``, ``val_abs_rel``, ...)."""

    checkpoint_path: Path
    best_val: dict[str, float]
    mlflow_run_id: str | None
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- epochs
def _record(state: TrainState, settings: RunSettings, entry: dict[str, float]) -> None:
    state.history.append(entry)
    if settings.log_metrics and state.run_id is not None:
        metrics = {k: v for k, v in entry.items() if k != "epoch"}
        tracking.log_metrics(state.run_id, metrics, int(entry["epoch"]))


def _validate_epoch(
    state: TrainState, val_loader: Any, settings: RunSettings, out_dir: Path
) -> tuple[dict[str, float], bool]:
    """Validate, keep ``best.pt`` and the early-stopping count → (val metrics, improved)."""
    distributed.sync_buffers(state.model)  # DDP: rank 0's BatchNorm statistics: what it checkpoints
    metrics = validate(
        state.model,
        val_loader,
        settings.device,
        settings.params,
        settings.autocast,
        settings.is_main,
    )
    val = {f"val_{k}": v for k, v in metrics.items()}
    improved = math.isfinite(metrics["rmse"]) and metrics["rmse"] < state.best_rmse
    if improved:
        state.best_rmse, state.bad_epochs, state.best_val = metrics["rmse"], 0, val
        if settings.is_main:
            state.to_checkpoint(out_dir / BEST, settings.params, val, full=False)
    else:
        state.bad_epochs += 1
    # DDP: rank 0 decides, so all ranks stop after the same epoch.
    state.stopped = distributed.broadcast_object(
        state.bad_epochs >= settings.params.training.patience
    )
    return val, improved


def _end_epoch(
    state: TrainState,
    val_loader: Any,
    settings: RunSettings,
    out_dir: Path,
    epoch: int,
    train_loss: float,
) -> bool:
    """Validation (when due), history, checkpoints, the epoch's log line → last.pt written?"""
    t_cfg, t0 = settings.params.training, time.perf_counter()
    entry: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss}
    state.epoch = epoch + 1  # what best.pt / last.pt record: epochs completed
    val, improved = {}, False
    if (epoch + 1) % t_cfg.val_every == 0 or epoch + 1 == t_cfg.epochs:
        val, improved = _validate_epoch(state, val_loader, settings, out_dir)
    entry.update(val)
    entry["learning_rate"] = state.optimizer.param_groups[-1]["lr"]  # the decoder's
    _record(state, settings, entry)
    due = state.epoch % t_cfg.checkpoint_every == 0 or state.epoch == t_cfg.epochs
    if settings.is_main and (due or state.stopped):
        state.to_checkpoint(out_dir / LAST, settings.params, val, full=True)
    if settings.is_main:
        shown = "  ".join(f"{k} {val[k]:.4f}" for k in ("val_rmse", "val_abs_rel") if k in val)
        log.info(
            "epoch %d/%d  train_loss %.4f  %s  lr %.2e  val %.1fs%s%s",
            epoch + 1,
            t_cfg.epochs,
            train_loss,
            shown or "(no validation)",
            entry["learning_rate"],
            time.perf_counter() - t0,
            "  (best)" if improved else "",
            f"  early stop: {state.bad_epochs} validations without gain" if state.stopped else "",
        )
    return due or state.stopped


def _run_epochs(
    model: torch.nn.Module,
    state: TrainState,
    loaders: tuple[Any, Any],
    settings: RunSettings,
    out_dir: Path,
    stop: StopRequest,
) -> None:
    train_loader, val_loader = loaders
    for epoch in range(state.epoch, settings.params.training.epochs):
        if state.stopped:
            break
        train_loss = train_one_epoch(model, state, train_loader, settings, epoch, stop)
        saved = train_loss is not None and _end_epoch(
            state, val_loader, settings, out_dir, epoch, train_loss
        )
        if train_loss is None or stop.check():
            if settings.is_main and not saved:
                state.to_checkpoint(out_dir / LAST, settings.params, {}, full=True)
            where = f"{state.epoch} epochs"
            if state.progress:
                where += f" + {int(state.progress['micro_batches'])} micro-batches"
            raise TrainingInterrupted(f"SIGTERM after {where}; {out_dir / LAST} resumes from there")


# --------------------------------------------------------------------------- set-up
def _loaders(params: Params, processed_dir: Path, micro: int) -> tuple[Any, Any]:
    """Train and val loaders of this rank (DDP: disjoint shards), each dataset built once."""

    if micro != params.data.batch_size:
        params = params.updated("data", batch_size=micro)
    # Validation scores the canonical-camera targets too: the loss and the early stop compare
    # like with like.
    train_set = dataset_for(processed_dir, "train", params, train=True, canonical=True)
    val_set = dataset_for(processed_dir, "val", params, train=False, canonical=True)
    sampler = train_sampler(len(train_set), seed=params.training.seed)
    return (
        loader_for(train_set, params, train=True, sampler=sampler),
        loader_for(val_set, params, train=False, sampler=eval_sampler(len(val_set))),
    )


def _describe(
    state: TrainState, settings: RunSettings, ctx: distributed.DistContext, amp: str
) -> None:
    p, plan = settings.params, settings.plan
    log.info(
        "training %s (%.1fM params) at %s on %s; AMP: %s; %d steps/epoch; head starts at %.2f m",
        p.model.encoder,
        sum(t.numel() for t in state.model.parameters()) / 1e6,
        "x".join(map(str, p.data.img_size)),
        settings.device,
        amp,
        settings.steps_per_epoch,
        float(state.model.head.conv3.bias.item()),
    )
    if ctx.distributed:
        log.info(
            "DDP (%s): %d processes x micro-batch %d x %d accumulation step(s) = batch %d",
            ctx.backend,
            ctx.world_size,
            plan.micro_batch_size,
            plan.accumulation_steps,
            plan.batch_size,
        )


# --------------------------------------------------------------------------- entry point
def train(
    params: Params,
    processed_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    tracking: bool = True,
    context: TaskContext | None = None,
) -> TrainResult:
    """Train a DPT on ``processed_dir`` (preprocessed train/val splits); checkpoints in ``out_dir``.

    ``training.epochs = 0`` evaluates the initial model on val and saves it as ``best.pt``.
    ``resume=True`` continues from ``out_dir/last.pt`` (same MLflow run, optimizer,
    scheduler, scaler and early-stopping state, mid-epoch position); with no ``last.pt`` it
    starts from scratch, so a retried job is idempotent. ``tracking=False`` skips MLflow;
    ``context`` nests the run under its pipeline run and names the dataset's URI (default:
    no pipeline, ``processed_dir``), logged with its digest as the training/validation input.
    Raises :class:`TrainingError` when no validation gave a finite RMSE (no usable model),
    :class:`TrainingInterrupted` after saving ``last.pt`` on SIGTERM.

    Under ``torchrun`` every rank calls this; it joins (and afterwards leaves) the process
    group, and ``out_dir`` must be the same shared directory for all ranks.
    """
    dist = torch.distributed
    group_existed = dist.is_available() and dist.is_initialized()
    ctx = distributed.init_distributed(params.training.device, params.training.dist_timeout_s)
    try:
        threads = apply_torch_threads(
            params.training.threads, share=ctx.env.local_world_size, role="train"
        )
        # Results depend on the thread count in the last bits: the run records it (fix
        # training.threads or OMP_NUM_THREADS for bit-identical runs on other machines).
        tag = f"intra-op {threads.intra_op}, inter-op {threads.inter_op} ({threads.source})"
        context = context or TaskContext(dataset_uri=str(Path(processed_dir).resolve()))
        return _train(
            params, Path(processed_dir), Path(out_dir), ctx, resume, tracking, tag, context
        )
    finally:
        if ctx.distributed and not group_existed:
            distributed.cleanup_distributed()


def _train(
    params: Params,
    processed_dir: Path,
    out_dir: Path,
    ctx: distributed.DistContext,
    resume: bool,
    tracking: bool,
    threads: str,
    context: TaskContext,
) -> TrainResult:
    t_cfg, device = params.training, ctx.device
    if ctx.is_main:  # the checkpoints directory: refuse a foreign one before any work
        claim_dir(out_dir)
    distributed.seed_everything(t_cfg.seed)  # the same initial weights on every rank
    # DDP: each rank feeds micro-batches of batch_size / (world x accumulation) samples.
    plan = distributed.plan_batches(params.data.batch_size, ctx.world_size, t_cfg.micro_batch_size)
    loaders = _loaders(params, processed_dir, plan.micro_batch_size)
    micro_per_epoch = len(loaders[0])
    if t_cfg.max_train_batches is not None:
        micro_per_epoch = min(micro_per_epoch, t_cfg.max_train_batches * plan.accumulation_steps)
    steps_per_epoch = math.ceil(micro_per_epoch / plan.accumulation_steps)  # optimiser steps
    if steps_per_epoch == 0 and t_cfg.epochs > 0:
        raise ConfigError(f"{processed_dir}: the train split gives no batch")
    state = new_train_state(params, processed_dir, device, steps_per_epoch)
    autocast, _, amp_desc = amp_mode(device, t_cfg.amp)
    settings = RunSettings(
        params,
        device,
        ctx.rank,
        ctx.is_main,
        plan,
        micro_per_epoch,
        steps_per_epoch,
        autocast,
        DepthLoss.from_params(params),
        log_metrics=tracking and ctx.is_main,
    )
    last_path, best_path = out_dir / LAST, out_dir / BEST
    init = "resumed"
    if resume and last_path.is_file():
        state.restore(last_path, device)
        log.info("resuming from %s after epoch %d", last_path, state.epoch)
    else:
        if resume and ctx.is_main:
            log.info("resume: no %s yet; starting from scratch", last_path)
        init = apply_init(state.model, params)  # training.init_from (every rank, same weights)
        if ctx.is_main:
            best_path.unlink(missing_ok=True)  # never report an earlier run's best model
    if ctx.is_main:
        _describe(state, settings, ctx, amp_desc)
    tags = {
        "amp": amp_desc,
        "device": str(device),
        "world_size": str(ctx.world_size),
        "micro_batch_size": str(plan.micro_batch_size),
        "accumulation_steps": str(plan.accumulation_steps),
        "threads": threads,
        "init_from": init,
    }
    tracked = tracked_run(params, state, tags, enabled=tracking and ctx.is_main, context=context)
    with tracked, StopRequest(distributed=ctx.distributed) as stop:
        if settings.log_metrics and state.run_id is not None:
            _log_dataset(state.run_id, processed_dir, context.dataset_uri)
        _fit(state, loaders, settings, out_dir, ctx, stop)
    return TrainResult(
        best_path,
        state.best_val,
        state.run_id,
        sum(1 for h in state.history if "train_loss" in h),
        state.history,
    )


def _fit(
    state: TrainState,
    loaders: tuple[Any, Any],
    settings: RunSettings,
    out_dir: Path,
    ctx: distributed.DistContext,
    stop: StopRequest,
) -> None:
    """Train (or, for ``epochs = 0``, evaluate the initial model), then log the best model."""
    params, best_path = settings.params, out_dir / BEST
    if params.training.epochs == 0 and not (best_path.is_file() and state.history):
        # The untrained model, evaluated and saved as "best" (the pipeline's worse model).
        metrics = validate(
            state.model, loaders[1], settings.device, params, settings.autocast, ctx.is_main
        )
        state.best_val = {f"val_{k}": v for k, v in metrics.items()}
        state.best_rmse = metrics["rmse"] if math.isfinite(metrics["rmse"]) else math.inf
        _record(state, settings, {"epoch": 0, **state.best_val})
        if ctx.is_main and math.isfinite(state.best_rmse):
            state.to_checkpoint(best_path, params, state.best_val, full=False)
            state.to_checkpoint(out_dir / LAST, params, state.best_val, full=True)
    # DDP: wrap after resuming (DDP broadcasts rank 0's weights); ``state.model`` stays the
    # plain module that checkpoints and validation use (validation shards may differ in
    # length, so it must not run DDP's per-forward collectives).
    model = distributed.wrap_ddp(state.model, ctx, params.training.sync_batchnorm)
    _run_epochs(model, state, loaders, settings, out_dir, stop)
    if not math.isfinite(state.best_rmse):
        raise TrainingError(
            f"{out_dir}: every validation gave a non-finite val_rmse "
            f"({[h.get('val_rmse') for h in state.history]}), so there is no usable model; "
            "look at train_loss in the history (a learning rate too high, or bad data)"
        )
    if settings.log_metrics and state.run_id is not None:
        tracking.log_model(state.run_id, best_path, params.data.img_size)
        tracking.log_artifact(state.run_id, best_path, "checkpoint")
        # The file's digest, not its path: the path is scratch the pipeline step deletes.
        tracking.set_tags(state.run_id, {CHECKPOINT_SHA256: file_sha256(best_path)})


def _log_dataset(run_id: str, processed_dir: Path, uri: str) -> None:
    """The processed dataset (its manifest's digest and counts) as the run's training and
    validation input."""

    manifest = read_manifest(processed_dir)
    digest = manifest_digest(manifest, manifest_path(processed_dir))
    tracking.log_dataset(run_id, uri, digest, manifest["counts"], ("training", "validation"))
