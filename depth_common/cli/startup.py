"""How long a task's process spends starting and importing.

A task calls :func:`record_startup` right after its imports. It measures the start-up: from
the process's start (``/proc``) to that call (interpreter, the runner's own set-up, the task's
imports). With ``DEPTH_STARTUP_LOG`` set (``make run`` points it into the pipeline root) it
appends, at exit, one JSON line ``{"task", "startup_s", "run_s", ...}`` to that file; the run
summary shows one row per task. Linux only; elsewhere it records nothing. Where the imports'
time goes, module by module, is Python's own ``python -X importtime`` (README, "Speed").
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "DEPTH_STARTUP_LOG"


def seconds_since_process_start(proc: Path = Path("/proc")) -> float | None:
    """Wall seconds since this process started (``/proc/self/stat`` field 22), or ``None``."""
    try:
        stat = (proc / "self" / "stat").read_text()
        uptime = float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, clock ticks
    return max(0.0, uptime - started)


def _append(target: str, row: dict[str, Any]) -> None:
    # One short append per task: atomic enough for tasks that run one after another.
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def record_startup(task: str) -> float | None:
    """Log the start-up; with ``DEPTH_STARTUP_LOG`` set, append the task's row at exit.
    Returns the start-up seconds (``None`` off Linux)."""
    seconds = seconds_since_process_start()
    if seconds is None:
        return None
    log.info("%s: ready %.2f s after the process started (interpreter + imports)", task, seconds)
    target = os.environ.get(ENV)
    if target:
        row = {
            "task": task,
            "startup_s": round(seconds, 3),
            "pid": os.getpid(),
            "time": time.time(),
        }

        def at_exit() -> None:
            row["run_s"] = round(time.time() - row["time"], 3)
            _append(target, row)

        atexit.register(at_exit)
    return seconds


def read_startup_log(path: str | Path) -> list[dict[str, Any]]:
    """The recorded rows in the order the tasks got ready (none if the file is absent)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a task killed mid-write: skip its line, keep the others
        if isinstance(row, dict) and "task" in row and "startup_s" in row:
            rows.append(row)
    return sorted(rows, key=lambda r: r.get("time", 0.0))


def format_startup(rows: list[dict[str, Any]]) -> list[str]:
    """Summary lines: each task's start-up and run time, and the totals."""
    if not rows:
        return []
    lines = [
        "",
        f"{'task start-up':<24} {'start-up':>9} {'run':>7}   (start-up: process start to the "
        "task's imports done; run: from there to the task's exit)",
    ]
    total = [0.0, 0.0]
    for r in rows:
        start, run = float(r["startup_s"]), float(r.get("run_s", 0.0))
        total[0] += start
        total[1] += run
        lines.append(f"{r['task']:<24} {start:>8.2f}s {run:>6.2f}s")
    lines.append(f"{'total':<24} {total[0]:>8.2f}s {total[1]:>6.2f}s")
    return lines
