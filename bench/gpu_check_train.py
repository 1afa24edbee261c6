"""The GPU check's training step: the real DPT, the training loop's AMP setup, N optimiser steps.

What one step does is what :func:`depth_common.training.train.train` does per batch: autocast forward
(CUDA: float16 + GradScaler, from the training loop's own ``_autocast``), the project's loss on
the float32 prediction, scaled backward, unscale + gradient clipping at
``training.grad_clip``, ``scaler.step`` / ``scaler.update``, AdamW over the model's two
parameter groups (encoder / decoder learning rates from params). The learning rate is constant
(no warmup/cosine: 50 steps are far too few for a schedule to matter).

Data: ``n_batches`` batches of street scenes rendered by :mod:`depth_common.data.synthetic` at the
model's input size (sky invalid, depth clamped to ``data.max_depth`` as preprocessing does),
normalised with the serving preprocessing, moved to the device once and cycled. Data loading is
therefore not in the timing: the figure is the model's training throughput.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np
import torch

from depth_common.config import Params

#: Steps excluded from the throughput (cuDNN autotuning, allocator growth, GradScaler's first
#: overflow-and-back-off steps all land there).
WARMUP_STEPS = 5


def synthetic_batches(
    n_batches: int, batch: int, img_size: tuple[int, int], max_depth: float, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` (image [B,3,H,W] float32 normalised, depth [B,1,H,W] metres, 0 = invalid)."""
    from depth_common.data.synthetic import cityscapes_camera, render_scene
    from depth_common.data.transforms import prepare_image

    rng = np.random.default_rng(seed)
    camera = cityscapes_camera(img_size)
    out = []
    for _ in range(n_batches):
        images, depths = [], []
        for _ in range(batch):
            rgb, depth = render_scene(rng, img_size, camera)
            images.append(prepare_image(rgb, img_size))
            depths.append(np.where(depth > 0, np.minimum(depth, max_depth), 0.0)[None])
        out.append(
            (
                torch.from_numpy(np.stack(images)),
                torch.from_numpy(np.stack(depths).astype(np.float32)),
            )
        )
    return out


def median_valid_depth(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Median of the valid (> 0) depths, metres: the head's starting bias, as training uses."""
    depth = torch.cat([d.flatten() for _, d in batches])
    valid = depth[depth > 0]
    return float(valid.median()) if valid.numel() else 10.0


def loss_trend(losses: list[float], period: int = 1) -> dict[str, Any]:
    """Means of the first and last fifth of the losses; ``decreasing`` when the last is lower.

    The batches are cycled, and each has its own loss level: the windows are whole cycles
    (multiples of ``period``), so both means cover every batch equally often.
    """
    window = max(period, (len(losses) // 5) // period * period)
    window = min(window, len(losses) // 2) or 1
    first = statistics.fmean(losses[:window])
    last = statistics.fmean(losses[-window:])
    finite = all(math.isfinite(v) for v in losses)
    return {
        "window": window,
        "first_window_mean": first,
        "last_window_mean": last,
        "finite": finite,
        "decreasing": finite and last < first,
    }


def run_training(
    params: Params,
    device: torch.device,
    *,
    steps: int,
    batch: int,
    amp: bool,
    n_batches: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """``steps`` optimiser steps of the DPT that ``params`` describes on ``device``.

    Returns losses per step, step times, samples/s after :data:`WARMUP_STEPS`, peak CUDA
    memory (MiB, torch's allocator), GradScaler's final scale and skipped steps, and
    :func:`loss_trend`. ``status`` is ``ok`` when every loss is finite and the trend decreases.
    """
    from depth_common.model.dpt import build_model
    from depth_common.training.distributed import seed_everything as seed_all
    from depth_common.training.losses import DepthLoss
    from depth_common.training.state import amp_mode

    if steps < 2:
        raise ValueError(f"--train-steps: got {steps}, expected >= 2 (a trend needs two points)")
    seed_all(seed)
    t_cfg = params.training
    data = synthetic_batches(n_batches, batch, params.data.img_size, params.data.max_depth, seed)
    model = build_model(params, init_depth=median_valid_depth(data)).to(device).train()
    data = [(x.to(device), y.to(device)) for x, y in data]
    optimizer = torch.optim.AdamW(
        model.param_groups(t_cfg.encoder_lr, t_cfg.decoder_lr), weight_decay=t_cfg.weight_decay
    )
    autocast, scaler, amp_desc = amp_mode(device, amp)
    criterion = DepthLoss.from_params(params)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses, step_s, skipped = [], [], 0
    for step in range(steps):
        image, depth = data[step % len(data)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            pred = model(image)
        loss = criterion(pred.float(), depth)
        scaler.scale(loss).backward()
        if t_cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip)
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        # A lowered scale means GradScaler found inf/NaN gradients and skipped this update.
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            skipped += 1
        losses.append(float(loss.detach()))  # synchronises: the step is done
        step_s.append(time.perf_counter() - start)
    return _summary(model, device, batch, losses, step_s, scaler, skipped, amp_desc, len(data))


def _summary(
    model: torch.nn.Module,
    device: torch.device,
    batch: int,
    losses: list[float],
    step_s: list[float],
    scaler: Any,
    skipped: int,
    amp_desc: str,
    period: int,
) -> dict[str, Any]:
    warm = step_s[WARMUP_STEPS:] if len(step_s) > WARMUP_STEPS else step_s
    trend = loss_trend(losses, period)
    result: dict[str, Any] = {
        "status": "ok" if trend["decreasing"] else "failed",
        "device": str(device),
        "amp": amp_desc,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch": batch,
        "steps": len(losses),
        "timed_steps": len(warm),
        "samples_per_s": batch * len(warm) / sum(warm),
        "step_ms_p50": statistics.median(warm) * 1e3,
        "first_step_ms": step_s[0] * 1e3,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_trend": trend,
        "losses": losses,
        "grad_scaler": {
            "enabled": bool(scaler.is_enabled()),
            "final_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
            "skipped_steps": skipped,
        },
    }
    if device.type == "cuda":
        result["peak_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    if not trend["decreasing"]:
        result["reason"] = (
            "loss not finite" if not trend["finite"] else "loss did not decrease"
        ) + (
            f": mean of the first {trend['window']} steps {trend['first_window_mean']:.4f}, "
            f"of the last {trend['window']} {trend['last_window_mean']:.4f}"
        )
    return result
