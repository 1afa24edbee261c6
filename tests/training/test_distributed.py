"""depth_common.training.distributed in one process: torchrun env parsing, samplers, batch plan, the
single-process context and identity collectives, rank seeds.

The multi-process tests (collectives, DDP equivalence, the training loop under torchrun) are in
``test_distributed_torchrun.py``.
"""

from __future__ import annotations

import pytest
import torch

from depth_common.data import samplers as S
from depth_common.errors import ConfigError
from depth_common.training import distributed as D

# -- unit tests (one process) --------------------------------------------------------------------


def test_env_absent_means_single_process():
    env = D.TorchrunEnv.from_environ({})
    assert (env.rank, env.world_size, env.local_rank) == (0, 1, 0)


def test_env_parsed_from_torchrun_variables():
    env = D.TorchrunEnv.from_environ(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "trainer-node-0-0.job",
            "MASTER_PORT": "23456",
        }
    )
    assert env == D.TorchrunEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"WORLD_SIZE": "2"}, "RANK: missing"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE: got 'two'"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "0 <= RANK < WORLD_SIZE"),
        (
            {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"},
            "LOCAL_RANK",
        ),
    ],
)
def test_env_errors_name_the_variable(environ, needle):
    with pytest.raises(ConfigError, match=needle):
        D.TorchrunEnv.from_environ(environ)


def test_single_process_context_and_identity_collectives():
    ctx = D.init_distributed("cpu", environ={})
    assert not ctx.distributed and ctx.is_main and ctx.world_size == 1
    assert D.is_main_process() and D.world_size() == 1
    t = torch.tensor([1.5, 2.0])
    assert torch.equal(D.all_reduce_sum(t), t)
    assert D.broadcast_object({"stop": True}) == {"stop": True}
    assert D.any_rank(True) and not D.any_rank(False)
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model, ctx) is model


def test_sync_batchnorm_on_cpu_is_a_clear_config_error():
    ctx = D.DistContext(env=D.TorchrunEnv(0, 2), device=torch.device("cpu"), backend="gloo")
    with pytest.raises(ConfigError, match="training.sync_batchnorm: .*needs CUDA"):
        D.wrap_ddp(torch.nn.BatchNorm2d(3), ctx, sync_batchnorm=True)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_sampler_partitions_without_padding(n, world):
    shards = [list(S.ShardSampler(n, r, world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # every sample once, in order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_plan_batches_is_exact():
    p = D.plan_batches(8, 2)
    assert (p.micro_batch_size, p.accumulation_steps, p.micro_scale(0, 4)) == (4, 1, 1.0)
    p = D.plan_batches(8, 2, micro_batch_size=1)
    assert (p.micro_batch_size, p.accumulation_steps) == (1, 4)
    assert p.world_size * p.micro_batch_size * p.accumulation_steps == 8
    p = D.plan_batches(12, 1, micro_batch_size=4)
    assert p.accumulation_steps == 3
    # steps end every 3rd micro-batch, and the epoch's tail is stepped too
    assert [p.is_step(i, 7) for i in range(7)] == [False, False, True, False, False, True, True]
    assert [p.micro_scale(i, 7) for i in range(7)] == [1 / 3] * 6 + [1.0]
    assert [p.micro_scale(i, 5) for i in range(5)] == [1 / 3] * 3 + [1 / 2] * 2
    with pytest.raises(ConfigError, match="data.batch_size: got 6, expected a multiple of"):
        D.plan_batches(6, 4)
    with pytest.raises(ConfigError, match="training.micro_batch_size: got 3"):
        D.plan_batches(8, 2, micro_batch_size=3)


@pytest.mark.parametrize("n", [0, 1, 5, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_sampler_is_distributed_samplers_permutation(n, world):
    """Same indices as torch's DistributedSampler (the reference) for every rank and epoch,
    keyed by the epoch; set_epoch picks it, iterating again moves to the next one."""
    from torch.utils.data.distributed import DistributedSampler

    for r in range(world):
        ours = S.EpochSampler(n, seed=7, rank_=r, world=world)
        ref = DistributedSampler(range(n), num_replicas=world, rank=r, seed=7) if n else None
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            keys = list(ours)
            assert {e for e, _ in keys} <= {epoch}
            if ref is not None:
                ref.set_epoch(epoch)
                assert [i for _, i in keys] == list(ref)
        assert [e for e, _ in ours][:1] == ([4] if n else [])  # the next epoch after 3


def test_epoch_sampler_skips_what_a_stopped_epoch_already_did():
    s = S.EpochSampler(10, seed=1, rank_=0, world=1)
    whole = list(s.indices(2))
    s.set_epoch(2)
    s.skip(4)
    assert len(s) == 6 and [i for _, i in s] == whole[4:]
    s.set_epoch(2)
    assert [i for _, i in s] == whole  # the skip applied to one pass only


def test_rank_seeds_differ_and_are_reproducible():
    seeds = [D.rank_seed(42, r) for r in range(4)]
    assert len(set(seeds)) == 4 and seeds[0] == 42 and D.rank_seed(42, 3) == seeds[3]
