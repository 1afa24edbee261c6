"""Training loop: AdamW + warmup/cosine, AMP, grad clipping, per-epoch validation, best/last
checkpoints, early stopping, ``--resume`` and MLflow logging.

Layout of ``out_dir``: ``best.pt`` (lowest val RMSE so far: what evaluation and export use)
and ``last.pt`` (the end of the latest epoch, with optimizer/scheduler/scaler and
early-stopping state: what ``resume=True`` continues from). Both are written atomically.

Runs as one process or data-parallel under ``torchrun`` (``depth_common.distributed``): the
spots that differ are marked ``# DDP:``. Side effects (checkpoints, MLflow, progress bars) happen
only on rank 0, validation metrics are summed over ranks through the accumulator's state vector
(padding-free shards, so they equal the single-process numbers), the early-stopping decision is
rank 0's, and one optimiser step always sees ``data.batch_size`` samples in total
(``world_size x micro_batch_size x accumulation_steps``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depth_common import distributed as dist_
from depth_common.checkpoint import load_checkpoint, save_checkpoint
from depth_common.config import ConfigError, Params
from depth_common.losses import DepthLoss
from depth_common.metrics import DepthMetricsAccumulator
from depth_common.model import DPT, build_model

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"


@dataclass(frozen=True)
class TrainResult:
    """What a training job produced (``best_val`` keys: ``val_rmse``, ``val_abs_rel``, ...)."""

    checkpoint_path: Path
    best_val: dict[str, float]
    mlflow_run_id: str | None
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- process helpers
is_main_process = dist_.is_main_process  # True in a single process and on rank 0

# DDP: sums the accumulator state over ranks; identity in a single process.
_all_reduce_sum = dist_.all_reduce_sum


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: got 'cuda', but no CUDA device is available")
    return torch.device(device)


def seed_all(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- schedule
def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    Linear warmup from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then cosine decay
    to 0 at ``total_steps`` (``kind="cosine"``) or constant 1 (``kind="constant"``).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast(device: torch.device, amp: bool):
    """(context, scaler, description). CUDA: fp16 + GradScaler; CPU: bfloat16, no scaler."""
    if not amp:
        return contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False), "off (fp32)"
    if device.type == "cuda":
        return (
            lambda: torch.autocast("cuda", dtype=torch.float16),
            torch.amp.GradScaler("cuda"),
            "CUDA float16 autocast + GradScaler",
        )
    return (
        lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        torch.amp.GradScaler("cpu", enabled=False),
        "CPU bfloat16 autocast (no GradScaler needed)",
    )


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    params: Params,
    autocast: Any = contextlib.nullcontext,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics (``val_``-less keys: ``abs_rel``, ``rmse``, ...) of ``model`` over ``loader``."""
    model.eval()
    acc = DepthMetricsAccumulator(params.data.min_depth, params.data.max_depth)
    for image, depth in tqdm(loader, desc="val", leave=False, disable=not progress):
        with autocast():
            pred = model(image.to(device, non_blocking=True))
        acc.update(pred.float(), depth)
    # DDP: each rank saw its shard; sum (metric sums, image count) over ranks.
    acc = DepthMetricsAccumulator.from_state(
        _all_reduce_sum(acc.state().to(device)), params.data.min_depth, params.data.max_depth
    )
    return acc.compute()


# --------------------------------------------------------------------------- training
def _check_resumable(ckpt: dict, model: DPT, path: Path) -> None:
    if dict(ckpt["model_config"]) != model.config:
        raise ConfigError(
            f"{path}: model_config {ckpt['model_config']} does not match the params' model "
            f"{model.config}; resume with the same model.* and data.img_size"
        )
    for key in ("optimizer_state", "scheduler_state", "early_stop"):
        if key not in ckpt:
            raise ConfigError(f"{path}: no {key!r}; only a last.pt written by train() resumes")


def train(
    params: Params,
    processed_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    tracking: bool = True,
) -> TrainResult:
    """Train a DPT on ``processed_dir`` (preprocessed train/val splits); checkpoints in ``out_dir``.

    ``training.epochs = 0`` evaluates the initial model on val and saves it as ``best.pt``.
    ``resume=True`` continues from ``out_dir/last.pt`` (same MLflow run, optimizer,
    scheduler, scaler and early-stopping state); with no ``last.pt`` it starts from scratch,
    so a retried job is idempotent. ``tracking=False`` skips MLflow.

    Under ``torchrun`` every rank calls this; it joins (and afterwards leaves) the process
    group, and ``out_dir`` must be the same shared directory for all ranks.
    """
    # DDP: join torchrun's process group (a no-op context in a single process).
    dist = torch.distributed
    group_existed = dist.is_available() and dist.is_initialized()
    ctx = dist_.init_distributed(params.training.device, params.training.dist_timeout_s)
    try:
        return _train(params, Path(processed_dir), Path(out_dir), ctx, resume, tracking)
    finally:
        if ctx.distributed and not group_existed:
            dist_.cleanup_distributed()


def _train(
    params: Params,
    processed_dir: Path,
    out_dir: Path,
    ctx: dist_.DistContext,
    resume: bool,
    tracking: bool,
) -> TrainResult:
    from depth_common.data import build_dataloader

    t_cfg = params.training
    main = ctx.is_main
    device = ctx.device
    seed_all(t_cfg.seed)  # the same initial weights on every rank

    # DDP: each rank feeds micro-batches of batch_size / (world x accumulation) samples.
    plan = dist_.plan_batches(params.data.batch_size, ctx.world_size, t_cfg.micro_batch_size)
    loader_params = params
    if plan.micro_batch_size != params.data.batch_size:
        loader_params = params.with_overrides((f"data.batch_size={plan.micro_batch_size}",))
    train_loader = build_dataloader(processed_dir, "train", loader_params, train=True)
    val_loader = build_dataloader(processed_dir, "val", loader_params, train=False)
    if ctx.distributed:
        # DDP: a disjoint share of the shuffled train split, a padding-free shard of val.
        train_loader = build_dataloader(
            processed_dir,
            "train",
            loader_params,
            train=True,
            sampler=dist_.train_sampler(train_loader.dataset, seed=t_cfg.seed),
        )
        val_loader = build_dataloader(
            processed_dir,
            "val",
            loader_params,
            train=False,
            sampler=dist_.eval_sampler(val_loader.dataset),
        )
    micro_per_epoch = len(train_loader)
    if t_cfg.max_train_batches is not None:
        micro_per_epoch = min(micro_per_epoch, t_cfg.max_train_batches * plan.accumulation_steps)
    steps_per_epoch = math.ceil(micro_per_epoch / plan.accumulation_steps)  # optimiser steps
    if steps_per_epoch == 0 and t_cfg.epochs > 0:
        raise ConfigError(f"{processed_dir}: the train split gives no batch")

    # Start the head at the training median depth (the manifest's statistics) so the ReLU is
    # alive and the scale is right from step 0; 10 m if the manifest has no statistics.
    from depth_common.data import read_manifest

    stats = read_manifest(processed_dir).get("stats", {}).get("train", {})
    init_depth = float(stats.get("depth_p50") or 10.0)
    model = build_model(params, init_depth=init_depth).to(device)
    optimizer = torch.optim.AdamW(
        model.param_groups(t_cfg.encoder_lr, t_cfg.decoder_lr), weight_decay=t_cfg.weight_decay
    )
    warmup = t_cfg.warmup_epochs * steps_per_epoch
    total = t_cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, t_cfg.scheduler)
    )
    autocast, scaler, amp_desc = _autocast(device, t_cfg.amp)
    criterion = DepthLoss.from_params(params)

    start_epoch, best_rmse, bad_epochs, history, run_id = 0, math.inf, 0, [], None
    best_val: dict[str, float] = {}
    stopped = False
    last_path, best_path = out_dir / LAST, out_dir / BEST
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=device)
        _check_resumable(ckpt, model, last_path)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        if "scaler_state" in ckpt:
            scaler.load_state_dict(ckpt["scaler_state"])
        es = ckpt["early_stop"]
        start_epoch, best_rmse, bad_epochs = (
            int(ckpt["epoch"]),
            float(es["best_rmse"]),
            int(es["bad_epochs"]),
        )
        stopped = bool(es["stopped"])
        history = [dict(h) for h in ckpt.get("history", [])]
        best_val = dict(es["best_val"])
        run_id = ckpt.get("mlflow_run_id")
        log.info("resuming from %s after epoch %d", last_path, start_epoch)
    elif resume:
        log.info("resume: no %s yet; starting from scratch", last_path)

    if main and tracking:  # DDP: rank 0 only
        from depth_common import tracking as mlt

        if run_id is not None:
            mlt.configure(params.mlflow)
            mlt.set_status(run_id, "RUNNING")
        else:
            run_id = mlt.start_training_run(params)
        mlt.set_tags(
            run_id,
            {
                "amp": amp_desc,
                "device": str(device),
                "world_size": str(ctx.world_size),
                "micro_batch_size": str(plan.micro_batch_size),
                "accumulation_steps": str(plan.accumulation_steps),
            },
        )
    run_id = dist_.broadcast_object(run_id)  # DDP: every rank reports rank 0's run

    if main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "training %s (%.1fM params) at %s on %s; AMP: %s; %d steps/epoch; head starts at %.2f m",
            params.model.encoder,
            n_params / 1e6,
            "x".join(map(str, params.data.img_size)),
            device,
            amp_desc,
            steps_per_epoch,
            init_depth,
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

    # DDP: wrap after resuming (DDP broadcasts rank 0's weights); ``model`` stays the plain
    # module that checkpoints and validation use (validation shards may differ in length, so
    # it must not run DDP's per-forward collectives). The timm encoder's final norm gets no
    # gradient (the DPT taps bypass it), hence find_unused_parameters.
    ddp_model = dist_.wrap_ddp(model, ctx, t_cfg.sync_batchnorm, find_unused_parameters=True)

    def save(path: Path, epoch: int, metrics: dict[str, float], full: bool) -> None:
        if not main:  # DDP: rank 0 writes
            return
        extra = None
        if full:
            extra = {
                "early_stop": {
                    "best_rmse": best_rmse,
                    "bad_epochs": bad_epochs,
                    "stopped": stopped,
                    "best_val": best_val,
                },
                "history": history,
            }
        save_checkpoint(
            path,
            model,
            params,
            epoch=epoch,
            metrics=metrics,
            mlflow_run_id=run_id,
            optimizer=optimizer if full else None,
            scheduler=scheduler if full else None,
            scaler=scaler if full and scaler.is_enabled() else None,
            extra=extra,
        )

    def record(epoch: int, entry: dict[str, float]) -> None:
        history.append(entry)
        if main and run_id is not None:  # DDP: rank 0 only
            from depth_common import tracking as mlt

            mlt.log_metrics(run_id, {k: v for k, v in entry.items() if k != "epoch"}, epoch)

    try:
        if t_cfg.epochs == 0 and not (resume and best_path.is_file() and history):
            # The untrained model, evaluated and saved as "best" (the pipeline's worse model).
            metrics = validate(model, val_loader, device, params, autocast, progress=main)
            best_val = {f"val_{k}": v for k, v in metrics.items()}
            best_rmse = metrics["rmse"]
            record(0, {"epoch": 0, **best_val})
            save(best_path, 0, best_val, full=False)
            save(last_path, 0, best_val, full=True)

        for epoch in range(start_epoch, t_cfg.epochs):
            if stopped:
                break
            # Reseed per epoch so that a resumed run replays the same shuffle and augmentation
            # draws as an uninterrupted one (in-process loading; persistent workers keep theirs).
            # DDP: per-rank seeds, so ranks draw different augmentations (rank 0: the seed).
            epoch_seed = dist_.rank_seed(t_cfg.seed + epoch, ctx.rank)
            seed_all(epoch_seed)
            if isinstance(getattr(train_loader, "generator", None), torch.Generator):
                train_loader.generator.manual_seed(epoch_seed)
            if train_loader.num_workers == 0 and hasattr(train_loader.dataset, "reseed"):
                train_loader.dataset.reseed(epoch_seed)
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # DDP: DistributedSampler reshuffles per epoch
                sampler.set_epoch(epoch)
            ddp_model.train()
            t0 = time.perf_counter()
            loss_sum, n_batches = 0.0, 0
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{t_cfg.epochs}",
                leave=False,
                disable=not main,
                file=sys.stderr,
            )
            optimizer.zero_grad(set_to_none=True)
            for image, depth in train_loader:
                if n_batches >= micro_per_epoch:
                    break
                image = image.to(device, non_blocking=True)
                depth = depth.to(device, non_blocking=True)
                # DDP: gradients are all-reduced only on the micro-batch that ends a step.
                step_now = plan.is_step(n_batches, micro_per_epoch)
                with dist_.no_sync_unless(ddp_model, step_now):
                    with autocast():
                        pred = ddp_model(image)
                    loss = criterion(pred.float(), depth)
                    scale = plan.micro_scale(n_batches, micro_per_epoch)
                    scaler.scale(loss * scale).backward()
                if step_now:
                    if t_cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    bar.update(1)
                loss_sum += float(loss.detach())
                n_batches += 1
                bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
            bar.close()
            # DDP: average the epoch's loss over ranks for the log.
            sums = _all_reduce_sum(torch.tensor([loss_sum, float(n_batches)], device=device))
            train_loss = float(sums[0] / sums[1].clamp(min=1))
            # DDP: rank 0's BatchNorm statistics everywhere: the model rank 0 checkpoints.
            dist_.sync_buffers(model)
            metrics = validate(model, val_loader, device, params, autocast, progress=main)
            val = {f"val_{k}": v for k, v in metrics.items()}
            lr = optimizer.param_groups[-1]["lr"]  # the decoder's (the encoder's scales alike)
            entry = {"epoch": epoch + 1, "train_loss": train_loss, **val, "learning_rate": lr}
            record(epoch + 1, entry)

            improved = math.isfinite(metrics["rmse"]) and metrics["rmse"] < best_rmse
            if improved:
                best_rmse, bad_epochs, best_val = metrics["rmse"], 0, val
                save(best_path, epoch + 1, val, full=False)
            else:
                bad_epochs += 1
            # DDP: rank 0 decides, so all ranks stop after the same epoch.
            stopped = dist_.broadcast_object(bad_epochs >= t_cfg.patience)
            save(last_path, epoch + 1, val, full=True)
            if main:
                log.info(
                    "epoch %d/%d  train_loss %.4f  val_rmse %.3f m  val_abs_rel %.4f  "
                    "val_delta_1 %.3f  lr %.2e  %.1fs%s%s",
                    epoch + 1,
                    t_cfg.epochs,
                    train_loss,
                    val["val_rmse"],
                    val["val_abs_rel"],
                    val["val_delta_1"],
                    lr,
                    time.perf_counter() - t0,
                    "  (best)" if improved else "",
                    f"  early stop: no val_rmse gain for {bad_epochs} epochs" if stopped else "",
                )

        if not best_path.is_file() and main:
            # Every epoch gave a non-finite RMSE: keep the last state as "best" so that the
            # stages downstream still find a checkpoint, with its metrics saying what happened.
            save(best_path, len([h for h in history if "train_loss" in h]), best_val, full=False)

        if main and run_id is not None:  # DDP: rank 0 only
            from depth_common import tracking as mlt
            from depth_common.checkpoint import model_from_checkpoint

            best_model, _ = model_from_checkpoint(best_path)
            mlt.log_pytorch_model(run_id, best_model, params.data.img_size)
            mlt.log_artifact(run_id, best_path, "checkpoint")
            mlt.set_tags(run_id, {"best_checkpoint": str(best_path.resolve())})
            mlt.set_status(run_id, "FINISHED")
    except BaseException:
        if main and run_id is not None:
            from depth_common import tracking as mlt

            with contextlib.suppress(Exception):
                mlt.set_status(run_id, "FAILED")
        raise

    epochs_run = sum(1 for h in history if "train_loss" in h)
    return TrainResult(best_path, best_val, run_id, epochs_run, history)
