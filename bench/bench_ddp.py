"""Training throughput, 1 vs N data-parallel processes: samples/s of the DPT training step.

    python bench/bench_ddp.py                       # 1 and 2 processes, demo model, CPU here
    python bench/bench_ddp.py --nprocs 1 2 4 --set model.encoder=vit_base_patch16_224 \\
        --set data.img_size=[384,768] --set data.batch_size=16       # a GPU node

Each configuration is a real ``torchrun --standalone`` job running the same step as training
(``depth_common.training.distributed``: exact batch plan, DDP, loss scale; DPT + DepthLoss + AdamW) on
random tensors, so the data pipeline is out of the measurement. The global batch is
``data.batch_size`` whatever the process count (each rank does ``batch_size / N``), so samples/s
are comparable: ideal scaling is N x. Results go to ``bench/results_ddp.json``.

On a 2-core CPU machine expect little or no gain: both processes share the same cores that one
process already used (intra-op threads), and gloo all-reduces the gradients over TCP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker(args: argparse.Namespace) -> None:
    import torch

    from depth_common.config import load_params
    from depth_common.model.dpt import build_model
    from depth_common.training import distributed as D
    from depth_common.training.losses import DepthLoss

    params = load_params(ROOT / "params.yaml", args.set or ())
    ctx = D.init_distributed(params.training.device)
    try:
        D.seed_everything(D.rank_seed(params.training.seed, ctx.rank))
        plan = D.plan_batches(params.data.batch_size, ctx.world_size)
        model = D.wrap_ddp(
            build_model(params),
            ctx,
            params.training.sync_batchnorm,
            find_unused_parameters=args.find_unused == "on",
        )
        opt = torch.optim.AdamW(
            D.unwrap(model).param_groups(params.training.encoder_lr, params.training.decoder_lr)
        )
        loss_fn = DepthLoss.from_params(params)
        h, w = params.data.img_size
        x = torch.randn(plan.micro_batch_size, 3, h, w, device=ctx.device)
        y = torch.rand(plan.micro_batch_size, 1, h, w, device=ctx.device) * 50 + 1

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

        model.train()
        for _ in range(args.warmup):
            step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        D.barrier()
        # Per-step times: the gradient all-reduce inside backward keeps the ranks in step, and
        # the median resists the noise of other work on a shared machine.
        times = []
        t0 = time.perf_counter()
        for _ in range(args.steps):
            ts = time.perf_counter()
            step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - ts)
        D.barrier()
        elapsed = time.perf_counter() - t0
        median = sorted(times)[len(times) // 2]
        if ctx.is_main:
            Path(args.result).write_text(
                json.dumps(
                    {
                        "processes": ctx.world_size,
                        "device": str(ctx.device),
                        "backend": ctx.backend or "none",
                        "global_batch": plan.batch_size,
                        "micro_batch_per_rank": plan.micro_batch_size,
                        "steps": args.steps,
                        "seconds": elapsed,
                        "median_step_s": median,
                        "samples_per_s": plan.batch_size / median,
                        "samples_per_s_mean": plan.batch_size * args.steps / elapsed,
                    }
                )
            )
    finally:
        D.cleanup_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--set", action="append", default=None, metavar="SECTION.KEY=VALUE", help="on top of DEMO"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_ddp.json"))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP threads per process (default: the cores split evenly between the processes)",
    )
    parser.add_argument(
        "--find-unused",
        choices=("off", "on", "both"),
        default="off",
        help="DDP find_unused_parameters (the DPT needs none); both: each multi-process row twice",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over the rows, alternating their order"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker:
        from depth_common.config.params import overlay_overrides

        DEMO = overlay_overrides(ROOT / "params.demo.yaml")

        # --set adds to the DEMO preset (random-init weights: nothing is downloaded)
        args.set = [*DEMO, *(args.set or [])]
    if args.worker:
        _worker(args)
        return

    cores = os.cpu_count() or 1
    cells = [
        (n, flag)
        for n in args.nprocs
        for flag in (("off", "on") if args.find_unused == "both" and n > 1 else (args.find_unused,))
    ]
    rows = []
    for r in range(args.repeat):
        rows += _run_round(args, cells if r % 2 == 0 else cells[::-1], cores, r)
    _report(args, rows, cores)


def _run_round(args: argparse.Namespace, cells: list, cores: int, round_: int) -> list[dict]:
    rows = []
    for n, flag in cells:
        # Split the cores between the processes (torchrun's own default is 1 thread each).
        threads = args.threads or max(1, cores // n)
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={n}",
                __file__,
                "--worker",
                "--result",
                str(result),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--find-unused",
                flag,
            ]
            for s in args.set:
                cmd += ["--set", s]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            subprocess.run(cmd, check=True, env=env)
            row = json.loads(result.read_text())
        row.update(omp_threads_per_process=threads, find_unused_parameters=flag, round=round_)
        row["load1"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(
            f"{n} process(es) on {row['device']}: {row['samples_per_s']:.2f} samples/s "
            f"(median step {row['median_step_s'] * 1e3:.0f} ms) "
            f"(global batch {row['global_batch']}, {row['micro_batch_per_rank']} per rank, "
            f"{threads} thread(s) each, find_unused_parameters {flag})"
        )
    return rows


def _report(args: argparse.Namespace, rows: list[dict], cores: int) -> None:
    import torch

    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup_vs_first"] = row["samples_per_s"] / base
    report = {
        "machine": {
            "cpu_count": cores,
            # other work on the machine skews CPU numbers: keep the load next to them
            "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
            "cuda_devices": [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ],
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "overrides": args.set,
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
