"""One epoch: :func:`train_one_epoch` and :func:`validate`, over an explicit
:class:`~depth_common.training.state.TrainState` and the run's fixed :class:`RunSettings`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depth_common.config import Params
from depth_common.evaluation.metrics import DepthMetricsAccumulator
from depth_common.threads import single_thread
from depth_common.training import distributed
from depth_common.training.control import StopRequest
from depth_common.training.losses import DepthLoss
from depth_common.training.state import TrainState


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    params: Params,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    progress: bool = False,
) -> dict[str, float]:
    """Metrics (``val_``-less keys: ``abs_rel``, ``rmse``, ...) of ``model`` over ``loader``."""
    model.eval()
    acc = DepthMetricsAccumulator(params.data.min_depth, params.data.max_depth)
    batches = iter(tqdm(loader, desc="val", leave=False, disable=not progress))
    while True:
        with single_thread():  # in-process loading: per-image work, one thread
            batch = next(batches, None)
        if batch is None:
            break
        image, depth = batch
        with autocast():
            pred = model(image.to(device, non_blocking=True))
        acc.update(pred.float(), depth)
    # DDP: each rank saw its shard; sum (metric sums, image count) over ranks.
    acc = DepthMetricsAccumulator.from_state(
        distributed.all_reduce_sum(acc.state().to(device)),
        params.data.min_depth,
        params.data.max_depth,
    )
    return acc.compute()


@dataclass(frozen=True)
class RunSettings:
    """What every epoch needs besides the state (built once per run)."""

    params: Params
    device: torch.device
    rank: int
    is_main: bool
    plan: distributed.BatchPlan
    micro_per_epoch: int
    steps_per_epoch: int
    autocast: Callable[[], Any]
    criterion: DepthLoss
    log_metrics: bool  # rank 0 with MLflow on

    def step_seed(self, epoch: int, micro: int) -> int:
        """torch's seed before micro-batch ``micro`` of ``epoch`` on this rank (dropout and
        any other draw): a function of where the loop is, so a resumed run draws the same."""
        key = [self.params.training.seed % 2**63, epoch, self.rank, micro]
        return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])


def _optimizer_step(state: TrainState, settings: RunSettings) -> None:
    if settings.params.training.grad_clip > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.params.training.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: torch.nn.Module,
    state: TrainState,
    loader: Any,
    settings: RunSettings,
    epoch: int,
    stop: StopRequest,
) -> float | None:
    """Train ``epoch`` (0-based; what is left of it after a mid-epoch resume) → the mean
    train loss over ranks, or ``None`` when SIGTERM stopped it (``state.progress`` says where).

    ``model`` is the DDP wrapper under torchrun (``state.model`` otherwise).
    """
    done = state.progress or {"micro_batches": 0, "loss_sum": 0.0}
    state.progress = None
    n_batches, loss_sum = int(done["micro_batches"]), float(done["loss_sum"])
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip(n_batches * settings.plan.micro_batch_size)
    model.train()
    epochs, acc = settings.params.training.epochs, settings.plan.accumulation_steps
    bar = tqdm(
        total=settings.steps_per_epoch,
        initial=n_batches // acc,
        desc=f"epoch {epoch + 1}/{epochs}",
        leave=False,
        disable=not settings.is_main,
        file=sys.stderr,
    )
    state.optimizer.zero_grad(set_to_none=True)
    batches = iter(loader)
    while n_batches < settings.micro_per_epoch:
        with single_thread():  # in-process loading: per-image work, one thread
            batch = next(batches, None)
        if batch is None:
            break
        image, depth = (t.to(settings.device, non_blocking=True) for t in batch)
        torch.manual_seed(settings.step_seed(epoch, n_batches))
        # DDP: gradients are all-reduced only on the micro-batch that ends a step.
        step_now = settings.plan.is_step(n_batches, settings.micro_per_epoch)
        with distributed.no_sync_unless(model, step_now):
            with settings.autocast():
                pred = model(image)
            loss = settings.criterion(pred.float(), depth)
            scale = settings.plan.micro_scale(n_batches, settings.micro_per_epoch)
            state.scaler.scale(loss * scale).backward()
        loss_sum += float(loss.detach())
        n_batches += 1
        if step_now:
            _optimizer_step(state, settings)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
            if n_batches < settings.micro_per_epoch and stop.check():  # every rank agrees
                state.progress = {"micro_batches": n_batches, "loss_sum": loss_sum}
                bar.close()
                return None
    bar.close()
    # DDP: average the epoch's loss over ranks for the log.
    sums = distributed.all_reduce_sum(
        torch.tensor([loss_sum, float(n_batches)], device=settings.device)
    )
    return float(sums[0] / sums[1].clamp(min=1))
