"""Data-parallel training under ``torchrun``: environment, process group, samplers, collectives.

Everything here also works in a plain single process (no ``torchrun``): :func:`init_distributed`
then returns a context with ``world_size == 1`` and no process group, :func:`is_main_process`
is true, and the collectives are identities. So the training loop has one code path.

Effective batch (the definition this project uses): one optimiser step always sees exactly
``data.batch_size`` samples in total, whatever the world size::

    data.batch_size == world_size * micro_batch_size * accumulation_steps

``micro_batch_size`` is what each rank feeds through the model at once (``training.
micro_batch_size``; ``null`` = ``data.batch_size // world_size``, i.e. no accumulation).
Each rank scales its micro-batch loss by ``1 / accumulation_steps`` and DDP averages the
gradients over ranks, so the summed gradient is the mean over the effective batch of the
per-sample gradients -- equal to one process with ``batch_size`` when the loss is a mean of
per-sample losses. Sizes that do not divide exactly are refused with a
:class:`~depth_common.config.ConfigError` instead of silently changing the effective batch.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from depth_common.errors import ConfigError
from depth_common.model.checkpoint import resolve_device, unwrap

# torchrun's environment contract (torch.distributed.run): these are set for every worker.
# (MASTER_ADDR / MASTER_PORT are read by torch's env:// rendezvous itself.)
_ENV_INT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

DEFAULT_TIMEOUT_S = 1800.0
"""Collective timeout (seconds): a rank that waits longer for its peers fails instead of hanging."""


@dataclass(frozen=True)
class TorchrunEnv:
    """The process's place in the job, as ``torchrun`` describes it in the environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # picks the GPU of this rank
    local_world_size: int = 1  # ranks sharing this node's CPUs (the thread policy divides them)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TorchrunEnv:
        """Parse ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; absent
        ``WORLD_SIZE`` means a plain single process."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()
        values: dict[str, int] = {}
        for name in _ENV_INT:
            raw = env.get(name)
            if raw is None:
                if name in ("RANK", "WORLD_SIZE"):
                    raise ConfigError(
                        f"environment {name}: missing, expected an integer (set by torchrun)"
                    )
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ConfigError(f"environment {name}: got {raw!r}, expected an integer") from None
        world = values["WORLD_SIZE"]
        rank = values["RANK"]
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(
                f"environment RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE"
            )
        local_world = values.get("LOCAL_WORLD_SIZE", world)
        local_rank = values.get("LOCAL_RANK", rank)
        if not 0 <= local_rank < max(local_world, 1):
            raise ConfigError(
                f"environment LOCAL_RANK={local_rank}: expected 0 <= LOCAL_RANK < "
                f"LOCAL_WORLD_SIZE={local_world}"
            )
        return cls(
            rank=rank,
            world_size=world,
            local_rank=local_rank,
            local_world_size=local_world,
        )


@dataclass(frozen=True)
class DistContext:
    """What the training loop needs to know: who am I, on which device, is there a group."""

    env: TorchrunEnv
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def init_distributed(
    device: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> DistContext:
    """Join the torchrun job (NCCL on CUDA, gloo on CPU) or return a single-process context.

    ``timeout_s`` bounds every collective (seconds): a rank whose peers died or diverged fails
    with a timeout error instead of waiting forever; torchrun then stops the other workers and
    reports the first failing rank. Idempotent: a second call reuses the existing group.
    """
    env = TorchrunEnv.from_environ(environ)
    dev = resolve_device(device, env.local_rank)
    if env.world_size == 1:
        return DistContext(env=env, device=dev, backend=None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # NCCL: surface errors/timeouts as exceptions in this process instead of a silent hang.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistContext(env=env, device=dev, backend=backend)


def cleanup_distributed() -> None:
    """Leave the process group (no-op without one); call in ``finally`` on every rank."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return dist.get_world_size() if _group_active() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if _group_active() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that logs, checkpoints, prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (bounded by the process group's timeout)."""
    if _group_active():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks; returns a new tensor on ``tensor``'s device (input unchanged)."""
    if not _group_active():
        return tensor.clone()
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: decisions, run ids, paths)."""
    if not _group_active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -- seeding -------------------------------------------------------------------------------------


def rank_seed(base_seed: int, rank_: int) -> int:
    """The seed of one rank: distinct per rank so augmentation and dropout differ between
    ranks (identical streams would waste the extra data), reproducible for a given job."""
    return int(base_seed) + 1_000_003 * int(rank_)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) generators of this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- batch plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """How one optimiser step of ``batch_size`` samples is split over ranks and micro-steps."""

    batch_size: int  # samples per optimiser step, all ranks together (data.batch_size)
    world_size: int
    micro_batch_size: int  # samples per forward/backward on one rank
    accumulation_steps: int  # micro-steps per optimiser step on one rank

    def micro_scale(self, micro_index: int, num_micro: int) -> float:
        """Loss scale of micro-batch ``micro_index`` of ``num_micro``: ``1 / (micro-batches in
        its optimiser step)``, so a shorter tail step is a mean over its own samples too."""
        start = (micro_index // self.accumulation_steps) * self.accumulation_steps
        return 1.0 / min(self.accumulation_steps, num_micro - start)

    def is_step(self, micro_index: int, num_micro: int) -> bool:
        """Whether micro-batch ``micro_index`` (0-based) of ``num_micro`` in this epoch ends an
        optimiser step. The epoch's tail (fewer than ``accumulation_steps`` micro-batches) is
        stepped too rather than silently dropped or carried into the next epoch."""
        return (micro_index + 1) % self.accumulation_steps == 0 or micro_index + 1 == num_micro


def plan_batches(batch_size: int, world: int, micro_batch_size: int | None = None) -> BatchPlan:
    """Split ``batch_size`` (samples per optimiser step) over ``world`` ranks exactly.

    ``micro_batch_size=None`` uses ``batch_size // world`` per rank and no accumulation.
    Raises :class:`ConfigError` naming the params when the sizes do not divide exactly.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    if batch_size % world:
        raise ConfigError(
            f"data.batch_size: got {batch_size}, expected a multiple of the world size {world} "
            "(the effective batch is split evenly over ranks)"
        )
    per_rank = batch_size // world
    micro = per_rank if micro_batch_size is None else micro_batch_size
    if micro < 1 or per_rank % micro:
        raise ConfigError(
            f"training.micro_batch_size: got {micro_batch_size}, expected a divisor of "
            f"data.batch_size / world size = {batch_size} / {world} = {per_rank}"
        )
    return BatchPlan(batch_size, world, micro, per_rank // micro)


# -- model wrapping ------------------------------------------------------------------------------


def wrap_ddp(
    model: torch.nn.Module,
    ctx: DistContext,
    sync_batchnorm: bool = False,
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it in DDP under a process group.

    ``sync_batchnorm`` converts BatchNorm layers to :class:`torch.nn.SyncBatchNorm` so batch
    statistics are computed over the whole effective micro-batch (all ranks), which matters
    when a rank's micro-batch is small. DDP broadcasts rank 0's parameters and buffers at
    construction, so every rank starts from the same weights whatever its seed.
    ``find_unused_parameters``: let DDP skip parameters that get no gradient (costs one graph
    traversal per step); the DPT needs none (its encoder is pruned to what the taps use).
    Without a process group the model is returned unwrapped (on the device).
    """
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if sync_batchnorm:
        if ctx.device.type != "cuda":
            # torch's DDP refuses SyncBatchNorm on CPU modules; say so in params terms.
            raise ConfigError(
                "training.sync_batchnorm: got true, but SyncBatchNorm needs CUDA devices "
                f"(this rank runs on {ctx.device}); set it to false for CPU training"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def no_sync_unless(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on accumulation micro-steps (``sync=False``); the
    gradients then sync once, on the micro-step that ends the optimiser step."""
    if sync or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def sync_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    DDP broadcasts buffers only at the start of each training forward, so after the last
    training step of an epoch each rank holds running statistics updated by its own
    micro-batch. Validation right after would then evaluate a slightly different model on
    each rank than the one rank 0 checkpoints; syncing first makes them the same.
    """
    if not _group_active():
        return
    device = _collective_device()
    for buf in unwrap(model).buffers():
        work = buf.detach().to(device, copy=True)
        dist.broadcast(work, src=src)
        buf.data.copy_(work.to(buf.device))


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a non-finite loss somewhere)."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)
