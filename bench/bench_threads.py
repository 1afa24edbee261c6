"""Training throughput under CPU contention: the old and the new thread policy, side by side.

    python -m bench.bench_threads                 # 3 rounds x (quiet, contended) x (old, new)
    python -m bench.bench_threads --rounds 1 --steps 4     # a smoke run

Each cell is a fresh process that trains the demo model (``params.demo.yaml``: vit_tiny
DPT, 64x128, batch 8, in-process loading) for a fixed number of optimiser steps on generated
data, through the real loader and loss, and reports samples/s after warm-up steps:

* ``old``: torch's defaults (intra-op threads = the CPUs of the affinity mask, the same pool for
  the in-process data loading), as the code ran before the thread policy;
* ``new``: :func:`depth_common.threads.apply_torch_threads` (affinity + cgroup quota) and the
  loading on one thread (:class:`depth_common.threads.single_thread`), as training runs now.

*Contended* cells run while a busy loop occupies one CPU of the mask (a separate process, pinned
with ``sched_setaffinity``, started before and stopped after the cell by this bench, and bounded
by a deadline of its own). Cells alternate (old/new, quiet/contended) over several rounds, and
each figure is the median of its rounds, so a change in the machine's load hits both policies
alike. Targets: new contended >= 0.7x new quiet; new quiet >= 0.95x old quiet. Results go to
``bench/results_threads.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results_threads.json"
POLICIES = ("old", "new")
MODES = ("quiet", "contended")
#: (key, description, threshold): each ratio must be >= its threshold.
TARGETS = (
    ("new_contended_vs_quiet", "new policy: contended / quiet samples/s", 0.70),
    ("new_vs_old_quiet", "quiet: new / old policy samples/s", 0.95),
)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cell(policy: str, data: Path, steps: int, warmup: int) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``steps`` optimiser steps → samples/s."""
    import contextlib

    import torch

    from depth_common.config import load_params
    from depth_common.config.params import overlay_overrides

    DEMO = overlay_overrides(ROOT / "params.demo.yaml")
    from depth_common.data.dataset import dataset_for, loader_for
    from depth_common.model.dpt import build_model
    from depth_common.threads import apply_torch_threads, single_thread
    from depth_common.training.losses import DepthLoss

    params = load_params(ROOT / "params.yaml", DEMO)
    if policy == "new":
        apply_torch_threads(params.training.threads, role="bench")
        loading: Any = single_thread
    else:
        loading = contextlib.nullcontext
    torch.manual_seed(0)
    model = build_model(params).train()
    optimizer = torch.optim.AdamW(model.param_groups(3e-4, 3e-4))
    criterion = DepthLoss.from_params(params)
    loader = loader_for(dataset_for(data, "train", params, train=True), params, train=True)

    def batches():
        while True:
            it = iter(loader)
            while True:
                with loading():
                    batch = next(it, None)
                if batch is None:
                    break
                yield batch

    stream = batches()

    def step() -> int:
        image, depth = next(stream)
        optimizer.zero_grad(set_to_none=True)
        criterion(model(image), depth).backward()
        optimizer.step()
        return int(image.shape[0])

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    samples = sum(step() for _ in range(steps))
    seconds = time.perf_counter() - t0
    return {
        "samples_per_s": samples / seconds,
        "seconds": seconds,
        "intra_op_threads": torch.get_num_threads(),
    }


def _busy_loop(cpu: int, deadline_s: float) -> subprocess.Popen:
    """A process spinning on ``cpu`` until killed, or ``deadline_s`` at most."""
    code = (
        "import os, time\n"
        f"os.sched_setaffinity(0, {{{cpu}}})\n"
        f"end = time.monotonic() + {deadline_s}\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _run_cell(policy: str, data: Path, steps: int, warmup: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "bench.bench_threads", "--cell", policy, "--data", str(data)]
    cmd += ["--steps", str(steps), "--warmup", str(warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bench cell {policy} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare_data(root: Path) -> Path:
    from depth_common.config import load_params
    from depth_common.config.params import overlay_overrides

    DEMO = overlay_overrides(ROOT / "params.demo.yaml")
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.data.synthetic import generate_cityscapes

    params = load_params(ROOT / "params.yaml", (*DEMO, "data.num_workers=0"))
    generate_cityscapes(root / "raw", cities=2, per_split=8, seed=0)
    out = root / "processed"
    preprocess_dataset(root / "raw", out, params.data, splits=("train",), progress=False)
    return out


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Median samples/s per (policy, mode) and the target ratios."""
    med = {}
    for policy in POLICIES:
        for mode in MODES:
            values = [
                c["samples_per_s"] for c in cells if (c["policy"], c["mode"]) == (policy, mode)
            ]
            med[f"{policy}_{mode}"] = statistics.median(values) if values else None

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if med[a] and med[b] else None

    ratios = {
        "new_contended_vs_quiet": ratio("new_contended", "new_quiet"),
        "new_vs_old_quiet": ratio("new_quiet", "old_quiet"),
        "old_contended_vs_quiet": ratio("old_contended", "old_quiet"),
        "new_vs_old_contended": ratio("new_contended", "old_contended"),
    }
    targets = []
    for key, text, threshold in TARGETS:
        value = ratios[key]
        status = "not run" if value is None else ("PASS" if value >= threshold else "MISSED")
        targets.append(
            {
                "key": key,
                "target": text,
                "threshold": threshold,
                "measured": value,
                "status": status,
            }
        )
    return {"median_samples_per_s": med, "ratios": ratios, "targets": targets}


def format_table(results: dict[str, Any]) -> str:
    s = results["summary"]
    m = results["machine"]
    lines = [
        f"== threads under contention: demo model, {results['steps']} steps/cell, "
        f"{results['rounds']} rounds; cpus {m['cpus']}, load1 {m['load1_start']} -> {m['load1_end']}",
        f"{'policy':<8}{'quiet':>12}{'contended':>12}{'contended/quiet':>18}",
    ]
    for p in POLICIES:
        q, c = s["median_samples_per_s"][f"{p}_quiet"], s["median_samples_per_s"][f"{p}_contended"]
        r = c / q if q and c else None
        lines.append(f"{p:<8}{q or 0:>12.2f}{c or 0:>12.2f}{(f'{r:.2f}x' if r else '-'):>18}")
    lines.append("(samples/s, median over rounds)")
    for t in s["targets"]:
        measured = f"{t['measured']:.2f}x" if t["measured"] is not None else "-"
        lines.append(
            f"{t['status']:<8}{measured:>8}  (target >= {t['threshold']:.2f}x)  {t['target']}"
        )
    return "\n".join(lines)


def run(rounds: int, steps: int, warmup: int, out: Path) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    busy_cpu = cpus[-1]
    cells: list[dict[str, Any]] = []
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        data = _prepare_data(Path(tmp))
        for r in range(rounds):
            # Alternate the order so neither policy always runs first after a mode switch.
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            for mode in MODES:
                busy = _busy_loop(busy_cpu, deadline_s=900) if mode == "contended" else None
                try:
                    time.sleep(0.5 if busy else 0.0)
                    for policy in order:
                        cell = _run_cell(policy, data, steps, warmup, timeout=900)
                        cell.update(policy=policy, mode=mode, round=r, load1=os.getloadavg()[0])
                        cells.append(cell)
                        print(
                            f"[threads] round {r + 1}/{rounds} {mode:<9} {policy}: "
                            f"{cell['samples_per_s']:.2f} samples/s "
                            f"({cell['intra_op_threads']} threads, load1 {cell['load1']:.1f})",
                            flush=True,
                        )
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    results = {
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": len(cpus),
            "busy_cpu": busy_cpu,
            "load1_start": load_start,
            "load1_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "cells": cells,
    }
    results["summary"] = summarize(cells)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_threads", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per cell")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cell", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(_cell(args.cell, args.data, args.steps, args.warmup)))
        return 0
    results = run(args.rounds, args.steps, args.warmup, args.out)
    print()
    print(format_table(results))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
