"""How long a task's process took to get ready to work: interpreter start, the runner's own
set-up (kfp's executor) and the task's imports, up to the call of :func:`record_startup`.

A task calls :func:`record_startup` right after its imports. The figure is logged, and
appended as one JSON line to the file that ``DEPTH_STARTUP_LOG`` names (``make run`` points
it into the pipeline root, and its summary shows one row per task). Linux only (the process
start time comes from ``/proc``); elsewhere it records nothing.
"""

from __future__ import annotations

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


def record_startup(task: str) -> float | None:
    """Log and (with ``DEPTH_STARTUP_LOG`` set) append ``{"task", "startup_s", "pid", "time"}``."""
    seconds = seconds_since_process_start()
    if seconds is None:
        return None
    log.info("%s: ready %.2f s after the process started (interpreter + imports)", task, seconds)
    target = os.environ.get(ENV)
    if target:
        line = json.dumps(
            {"task": task, "startup_s": round(seconds, 3), "pid": os.getpid(), "time": time.time()}
        )
        # One short append per task: atomic enough for tasks that run one after another.
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
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
    """Summary lines: each task's start-up and the total."""
    if not rows:
        return []
    lines = ["", "task start-up (process start -> imports done):"]
    lines += [f"  {r['task']:<22} {float(r['startup_s']):>6.2f}s" for r in rows]
    lines.append(f"  {'total':<22} {sum(float(r['startup_s']) for r in rows):>6.2f}s")
    return lines
