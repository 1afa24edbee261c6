"""Samplers of one rank: the shuffled training share (:class:`EpochSampler`) and the padding-free
evaluation shard (:class:`ShardSampler`); in a single process each covers the whole split."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def _placement(
    sampler: str, num_samples: int, rank: int | None, world: int | None
) -> tuple[int, int]:
    """(rank, world) given, else the process group's, checked against ``num_samples``."""
    # Asked of torch.distributed itself: the data layer sits below training's process group.
    grouped = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else dist.get_rank() if grouped else 0
    world = world if world is not None else dist.get_world_size() if grouped else 1
    if num_samples < 0 or not 0 <= rank < world:
        raise ValueError(
            f"{sampler}: need num_samples >= 0 and 0 <= rank < world, got "
            f"num_samples={num_samples}, rank={rank}, world={world}"
        )
    return rank, world


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``w`` gets the contiguous indices
    ``[r*n//w, (r+1)*n//w)`` of a dataset of ``n`` samples, in order.

    Unlike :class:`DistributedSampler` it never pads (no sample is seen twice) and never drops
    (``drop_last``): the shards partition ``range(n)`` exactly, so sums all-reduced over ranks
    equal the single-process sums. Shards differ in length by at most one sample; a rank may
    get none (``n < w``), which is fine for sum-based metrics.
    """

    def __init__(self, num_samples: int, rank_: int | None = None, world: int | None = None):
        self.rank, self.world = _placement("ShardSampler", num_samples, rank_, world)
        self.start = self.rank * num_samples // self.world
        self.stop = (self.rank + 1) * num_samples // self.world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class EpochSampler(Sampler[tuple[int, int]]):
    """Training sampler: this rank's share of a permutation that depends on (seed, epoch) only.

    Yields ``(epoch, index)`` keys, so the dataset can draw each item's augmentation from
    (seed, epoch, index) alone: batches are then the same with 0 or N DataLoader workers, with
    persistent workers, and after a resume (no generator state lives in a worker). The
    permutation and the sharding are :class:`~torch.utils.data.DistributedSampler`'s
    (``randperm`` seeded with ``seed + epoch``, padded by repetition to a multiple of the world
    size, rank ``r`` takes every ``world``-th index from ``r``), so ranks never overlap and the
    ranks' shards partition one permutation. One rank (a single process) takes it all.

    :meth:`set_epoch` picks the epoch; iterating without it moves on to the next epoch (a
    loader iterated twice reshuffles, as with ``shuffle=True``). :meth:`skip` drops the first
    samples of the next iteration only: a run resumed in mid-epoch continues where it stopped.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        *,
        shuffle: bool = True,
        rank_: int | None = None,
        world: int | None = None,
    ) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, int(seed), shuffle
        self.rank, self.world = _placement("EpochSampler", num_samples, rank_, world)
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, samples: int) -> None:
        self._skip = int(samples)

    def indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order."""
        n = self.num_samples
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = math.ceil(n / self.world) * self.world
        if order and total > n:
            order += (order * math.ceil((total - n) / n))[: total - n]
        return order[self.rank : total : self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        return iter([(epoch, i) for i in self.indices(epoch)[skip:]])

    def __len__(self) -> int:
        return max(0, math.ceil(self.num_samples / self.world) - self._skip)


def train_sampler(num_samples: int, *, seed: int) -> EpochSampler:
    """This rank's training sampler (the whole shuffled split in a single process). ``seed``
    must be the same on every rank (the *base* seed, not :func:`rank_seed`): the ranks must
    agree on one permutation to split it without overlap."""
    return EpochSampler(num_samples, seed)


def eval_sampler(num_samples: int) -> ShardSampler:
    """The evaluation sampler of this rank (the whole split, in order, in a single process)."""
    return ShardSampler(num_samples)
