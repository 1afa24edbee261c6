"""Containerized vs subprocess local run: the same pipeline, side by side in one run.

    python -m bench.bench_containers                 # make bench-containers
    python -m bench.bench_containers --rounds 2 --set training.epochs=2

Each round runs ``pipelines.run_local`` once with ``SubprocessRunner`` and once with
``DockerRunner`` (the built component image), alternating which goes first so that a change
in the machine's load falls on both, each on its own fresh root and MLflow store. The figure
is the ratio of the summed wall times, docker / subprocess (target <= 1.3), with per-task
times to show where the difference goes (container start-up and imports, per task).
Writes bench/results_containers.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depth_common.config.params import overlay_overrides
from pipelines.run_local import DEMO_FILE, DEMO_SYNTHETIC, run_local

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results_containers.json"
TARGET = 1.3


def one_run(runner: str, overrides: Sequence[str], synthetic: dict[str, int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{runner}-") as tmp:
        # A store of its own: both runs find no champion and run the same tasks.
        store = f"mlflow.tracking_uri=sqlite:///{Path(tmp).resolve() / 'store' / 'mlflow.db'}"
        (Path(tmp) / "store").mkdir()
        run = run_local(
            ROOT / "params.yaml",
            [*overrides, store],
            synthetic=synthetic,
            root=Path(tmp) / "runs",
            runner=runner,
            console=io.StringIO(),
        )
        if not run.ok:
            raise SystemExit(f"the {runner} run failed: logs were in {run.log_dir}")
        return {
            "runner": runner,
            "wall_s": round(run.wall_s, 2),
            "tasks": {task: round(seconds, 2) for task, _, seconds in run.stages},
        }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Summed wall time per runner, the docker/subprocess ratio and the per-task overhead."""
    total = {
        r: sum(x["wall_s"] for x in runs if x["runner"] == r) for r in ("subprocess", "docker")
    }
    ratio = total["docker"] / total["subprocess"] if total["subprocess"] else None
    per_task: dict[str, dict[str, float]] = {}
    for x in runs:
        for task, seconds in x["tasks"].items():
            per_task.setdefault(task, {"subprocess": 0.0, "docker": 0.0})[x["runner"]] += seconds
    return {
        "wall_s": {k: round(v, 2) for k, v in total.items()},
        "ratio_docker_vs_subprocess": None if ratio is None else round(ratio, 3),
        "target_max": TARGET,
        "met": ratio is not None and ratio <= TARGET,
        "per_task_s": {t: {k: round(v, 2) for k, v in d.items()} for t, d in per_task.items()},
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<24} {'subprocess':>11} {'docker':>9}"]
    for task, d in summary["per_task_s"].items():
        lines.append(f"{task:<24} {d['subprocess']:>10.1f}s {d['docker']:>8.1f}s")
    w = summary["wall_s"]
    lines.append(f"{'wall':<24} {w['subprocess']:>10.1f}s {w['docker']:>8.1f}s")
    ratio = summary["ratio_docker_vs_subprocess"]
    verdict = "PASS" if summary["met"] else "MISSED"
    lines.append(f"docker / subprocess = {ratio:.2f}x (target <= {TARGET}x): {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (default 1)")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument(
        "--synthetic", type=json.loads, default=None, help="JSON options of the generated data"
    )
    parser.add_argument("--docker-first", action="store_true", help="start each pair with docker")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    overrides = [*overlay_overrides(DEMO_FILE), *args.set]
    synthetic = dict(args.synthetic if args.synthetic is not None else DEMO_SYNTHETIC)
    load = os.getloadavg()[0]
    runs = []
    for i in range(args.rounds):
        order = (
            ("subprocess", "docker")
            if (i + args.docker_first) % 2 == 0
            else ("docker", "subprocess")
        )
        for runner in order:
            print(f"round {i + 1}: {runner} ...", flush=True)
            runs.append(one_run(runner, overrides, synthetic))
    summary = summarise(runs)
    results = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load1_start": round(load, 2),
            "load1_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "overrides": overrides,
        "synthetic": synthetic,
        "runs": runs,
        "summary": summary,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
