"""Training state: the model and its optimiser side plus the run's bookkeeping, to and from a
checkpoint; the schedule and the AMP mode it is built with."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from depth_common.config import Params
from depth_common.data.dataset import canonical_focal_for, read_manifest
from depth_common.errors import ConfigError
from depth_common.model.checkpoint import load_checkpoint, save_checkpoint
from depth_common.model.dpt import DPT, build_model


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


def amp_mode(device: torch.device, amp: bool) -> tuple[Callable[[], Any], Any, str]:
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


@dataclass
class TrainState:
    """Everything a resumed run needs: the model and its optimiser side, and the bookkeeping."""

    model: DPT
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    epoch: int = 0  # epochs completed
    best_rmse: float = math.inf
    bad_epochs: int = 0  # validations in a row without a val_rmse gain
    stopped: bool = False
    best_val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    # An epoch that SIGTERM cut short: {"micro_batches": done, "loss_sum": their loss sum}.
    progress: dict[str, float] | None = None

    def to_checkpoint(
        self, path: Path, params: Params, metrics: dict[str, float], *, full: bool
    ) -> None:
        """``best.pt`` (``full=False``: weights and metrics) or a resumable ``last.pt``."""
        # The camera the weights predict depth for travels with them (None: camera-blind).
        extra: dict[str, Any] = {"canonical_focal_px": canonical_focal_for(params)}
        if full:
            extra |= {
                "early_stop": {
                    "best_rmse": self.best_rmse,
                    "bad_epochs": self.bad_epochs,
                    "stopped": self.stopped,
                    "best_val": self.best_val,
                },
                "history": self.history,
            }
            if self.progress is not None:
                extra["epoch_progress"] = dict(self.progress)
        save_checkpoint(
            path,
            self.model,
            params,
            epoch=self.epoch,
            metrics=metrics,
            mlflow_run_id=self.run_id,
            optimizer=self.optimizer if full else None,
            scheduler=self.scheduler if full else None,
            scaler=self.scaler if full and self.scaler.is_enabled() else None,
            extra=extra,
        )

    def restore(self, path: Path, device: torch.device) -> None:
        """Continue from a ``last.pt`` that :meth:`to_checkpoint` wrote for this model."""
        ckpt = load_checkpoint(path, map_location=device)
        if dict(ckpt["model_config"]) != self.model.config:
            raise ConfigError(
                f"{path}: model_config {ckpt['model_config']} does not match the params' model "
                f"{self.model.config}; resume with the same model.* and data.img_size"
            )
        for key in ("optimizer_state", "scheduler_state", "early_stop"):
            if key not in ckpt:
                raise ConfigError(f"{path}: no {key!r}; only a last.pt written by train() resumes")
        self.model.load_state_dict(ckpt["model_state"])
        try:
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
        except ValueError as exc:
            raise ConfigError(f"{path}: optimizer state does not fit this model ({exc})") from exc
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        if "scaler_state" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler_state"])
        es = ckpt["early_stop"]
        self.epoch, self.best_rmse = int(ckpt["epoch"]), float(es["best_rmse"])
        self.bad_epochs, self.stopped = int(es["bad_epochs"]), bool(es["stopped"])
        self.best_val = dict(es["best_val"])
        self.history = [dict(h) for h in ckpt.get("history", [])]
        self.run_id = ckpt.get("mlflow_run_id")
        self.progress = dict(ckpt["epoch_progress"]) if "epoch_progress" in ckpt else None


def new_train_state(
    params: Params, processed_dir: Path, device: torch.device, steps: int
) -> TrainState:
    """Model (head bias at the training median depth), AdamW, warmup/cosine, scaler."""

    t_cfg = params.training
    # Start the head at the training median depth (the manifest's statistics) so the ReLU is
    # alive and the scale is right from step 0; 10 m if the manifest has no statistics.
    stats = read_manifest(processed_dir).get("stats", {}).get("train", {})
    model = build_model(params, init_depth=float(stats.get("depth_p50") or 10.0)).to(device)
    optimizer = torch.optim.AdamW(
        model.param_groups(t_cfg.encoder_lr, t_cfg.decoder_lr), weight_decay=t_cfg.weight_decay
    )
    warmup, total = t_cfg.warmup_epochs * steps, t_cfg.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, t_cfg.scheduler)
    )
    _, scaler, _ = amp_mode(device, t_cfg.amp)
    return TrainState(model, optimizer, scheduler, scaler)
