"""depth_common.training.distributed across processes: collectives, DDP equivalence and the real
training loop under torchrun.

These tests run this file itself as the torchrun worker (``python -m torch.distributed.run
--standalone --nproc-per-node 2 tests/training/test_distributed_torchrun.py <scenario>``), gloo on CPU,
so what they exercise is the real process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from depth_common.data import samplers as S
from depth_common.training import distributed as D

ROOT = Path(__file__).resolve().parents[2]


# -- multi-process tests (torchrun, gloo) --------------------------------------------------------


def _torchrun_args(
    target: list[str], nproc: int = 2, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N <target>``, one OpenMP thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", *target]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def _torchrun(scenario: str, out: Path, nproc: int = 2, timeout: float = 120.0):
    """This file as the worker script, running ``scenario`` (its results under ``out``)."""
    return _torchrun_args([str(Path(__file__).resolve()), scenario, str(out)], nproc, timeout)


def _toy_model(seed: int) -> torch.nn.Module:
    """Conv + BatchNorm + conv: small, but with the BatchNorm the equivalence depends on."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 1, 3, padding=1),
    )


def _toy_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, 8, 8, generator=g), torch.rand(n, 1, 8, 8, generator=g) * 10


def _one_step(model, x, y, plan: D.BatchPlan, bn_eval: bool) -> None:
    """One optimiser step over this rank's ``x`` in ``plan.accumulation_steps`` micro-batches,
    as the training loop does it (loss scaled, DDP sync only on the last micro-step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    opt.zero_grad(set_to_none=True)
    micro = plan.micro_batch_size
    n_micro = x.shape[0] // micro
    for i in range(n_micro):
        xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]
        with D.no_sync_unless(model, plan.is_step(i, n_micro)):
            loss = torch.nn.functional.mse_loss(model(xs), ys) * plan.micro_scale(i, n_micro)
            loss.backward()
    opt.step()


EQUIV_CASES = {
    # name: (global batch, micro batch per rank, BatchNorm in eval, SyncBatchNorm).
    # SyncBatchNorm needs CUDA (torch's DDP refuses it on CPU), so CPU cases use BatchNorm in
    # eval mode: per-rank batch statistics would otherwise (rightly) differ from 2b's.
    "bn_eval": (8, None, True, False),
    "accum_bn_eval": (8, 2, True, False),
}


def _worker(scenario: str, out: Path) -> None:
    """Entry point of each torchrun worker."""
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def main() -> None:
        if scenario == "timeout":
            ctx = D.init_distributed("cpu", timeout_s=3)
        else:
            ctx = D.init_distributed("cpu")
        try:
            if scenario == "collectives":
                _collectives(ctx, out)
            elif scenario == "raise":
                if ctx.rank == 1:
                    raise ValueError("rank 1 broke on purpose")
                D.barrier()  # rank 0 would wait here for the full 30 min timeout
            elif scenario == "timeout":
                if ctx.rank == 1:
                    import time

                    time.sleep(60)  # alive but never joins: rank 0's barrier must time out
                D.barrier()
        finally:
            D.cleanup_distributed()

    main()


def _collectives(ctx: D.DistContext, out: Path) -> None:
    r = ctx.rank
    assert ctx.world_size == 2 and D.world_size() == 2 and D.is_main_process() == (r == 0)
    s = D.all_reduce_sum(torch.tensor([1.0 + r, 10.0 * r]))
    decision = D.broadcast_object({"stop": True, "from": r} if r == 0 else None)
    anyflag = D.any_rank(r == 1)
    # eval sampler shards of 5 samples
    shard = list(S.eval_sampler(5))
    # train sampler: disjoint shards that change with the epoch
    ts = S.train_sampler(10, seed=7)
    ts_e0 = [i for _, i in ts]
    ts.set_epoch(1)
    ts_e1 = [i for _, i in ts]
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(r + 1))  # as after each rank's own last training forward
    D.sync_buffers(bn)
    results = {
        "bn_mean": bn.running_mean.tolist(),
        "sum": s.tolist(),
        "decision": decision,
        "any": anyflag,
        "shard": shard,
        "train_e0": ts_e0,
        "train_e1": ts_e1,
    }
    for name, (batch, micro, bn_eval, sync_bn) in EQUIV_CASES.items():
        plan = D.plan_batches(batch, ctx.world_size, micro)
        model = D.wrap_ddp(_toy_model(seed=0 if r == 0 else 99), ctx, sync_batchnorm=sync_bn)
        x, y = _toy_batch(batch)
        per = batch // ctx.world_size
        _one_step(model, x[r * per : (r + 1) * per], y[r * per : (r + 1) * per], plan, bn_eval)
        if r == 0:
            torch.save(D.unwrap(model).state_dict(), out / f"{name}.pt")
    (out / f"rank{r}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def collectives_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun("collectives", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_collectives_under_torchrun(collectives_run):
    _, (r0, r1) = collectives_run
    for res in (r0, r1):
        assert res["sum"] == [3.0, 10.0]
        assert res["decision"] == {"stop": True, "from": 0}  # rank 0's object everywhere
        assert res["any"] is True
        assert res["bn_mean"] == [1.0, 1.0]  # rank 0's running statistics everywhere
    assert r0["shard"] + r1["shard"] == [0, 1, 2, 3, 4]
    for epoch in ("train_e0", "train_e1"):
        assert sorted(r0[epoch] + r1[epoch]) == list(range(10))
    assert r0["train_e0"] != r0["train_e1"]  # set_epoch reshuffles


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(EQUIV_CASES))
def test_two_ranks_equal_one_process_with_the_whole_batch(collectives_run, case):
    """2 processes x batch b (DDP) == 1 process x batch 2b, after one optimiser step."""
    out, _ = collectives_run
    batch, _micro, bn_eval, _sync = EQUIV_CASES[case]
    ddp_state = torch.load(out / f"{case}.pt", weights_only=True)
    model = _toy_model(seed=0)
    x, y = _toy_batch(batch)
    _one_step(model, x, y, D.plan_batches(batch, 1), bn_eval)
    ref = model.state_dict()
    start = _toy_model(seed=0).state_dict()
    moved = 0.0
    for k, v in ref.items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6, msg=k)
        if v.is_floating_point():
            moved = max(moved, (v - start[k]).abs().max().item())
    assert moved > 1e-3  # the step changed the weights: the comparison is not vacuous


@pytest.mark.slow
def test_an_exception_on_one_rank_fails_the_job_without_hanging(tmp_path):
    proc = _torchrun("raise", tmp_path, timeout=90)
    assert proc.returncode != 0
    assert "rank 1 broke on purpose" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_collective_waiting_for_a_missing_rank_times_out(tmp_path):
    proc = _torchrun("timeout", tmp_path, timeout=90)
    assert proc.returncode != 0
    text = (proc.stdout + proc.stderr).lower()
    assert "timed out" in text or "timeout" in text


# -- the real training loop under torchrun ------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_training(tmp_path_factory, tiny_params, processed_data):
    """``torchrun --standalone --nproc-per-node 2 -m depth_common train`` on the synthetic data."""
    from depth_common.scaleout.launch import write_params_file

    root = tmp_path_factory.mktemp("ddp_train")
    params = tiny_params.with_overrides(
        (
            "training.epochs=4",
            "training.patience=10",
            f"mlflow.tracking_uri='sqlite:///{root}/mlflow.db'",
            "mlflow.experiment=ddp-test",
        )
    )
    params_path = write_params_file(params, root / "params.yaml")
    out = root / "checkpoints"
    train_args = ["-m", "depth_common", "train", "--params", str(params_path)]
    train_args += ["--data", str(processed_data), "--out", str(out)]
    proc = _torchrun_args(train_args, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return params, out, proc


@pytest.mark.slow
def test_ddp_training_one_run_one_checkpoint_loss_decreases(ddp_training):
    import mlflow

    params, out, _ = ddp_training
    # no temp files: the checkpoints and the marker of a directory the project manages
    assert sorted(p.name for p in out.iterdir()) == [".depth-managed", "best.pt", "last.pt"]
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "ddp-test"]
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 only
    last = torch.load(out / "last.pt", weights_only=True)
    losses = [h["train_loss"] for h in last["history"] if "train_loss" in h]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    logged = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert len(logged) == 4  # one value per epoch, not one per rank


@pytest.mark.slow
def test_ddp_validation_equals_single_process_evaluation(ddp_training, processed_data):
    """The 2-process job's all-reduced val metrics == one process evaluating the checkpoint."""
    from depth_common.data.dataset import build_dataloader
    from depth_common.model.checkpoint import model_from_checkpoint
    from depth_common.training.loop import validate

    params, out, _ = ddp_training
    model, ckpt = model_from_checkpoint(out / "best.pt")
    # Batches of the ranks' micro-batch size (8 / 2): the same images go through the network
    # together as in the job. Per-image float32 results can still differ in the last bits with
    # the thread count (the job ran 1 thread per rank), hence rel 1e-6 -- far below what one
    # image counted twice (padding) or dropped would change (~1e-2 with 8 images).
    micro = params.with_overrides((f"data.batch_size={params.data.batch_size // 2}",))
    full_batch = params
    for p in (micro, full_batch):
        loader = build_dataloader(processed_data, "val", p, train=False)
        single = validate(model, loader, torch.device("cpu"), params)
        assert ckpt["metrics"].keys() == {f"val_{k}" for k in single}
        for k, v in single.items():
            assert ckpt["metrics"][f"val_{k}"] == pytest.approx(v, rel=1e-6, abs=1e-9), k


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
