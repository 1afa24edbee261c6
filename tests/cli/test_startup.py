"""Task start-up time: measured from the process's own start, recorded for the run summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from depth_common.cli.startup import format_startup, read_startup_log

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_task_records_its_start_up(tmp_path) -> None:
    """A child that spends 0.6 s before it is ready records at least that, and the 0.4 s it
    runs after as its run time; the summary lists both with totals."""
    log = tmp_path / "startup.jsonl"
    # A module that takes 0.4 s to import, imported after start-up: part of the run.
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.4)\n")
    code = (
        "import time; time.sleep(0.6);"
        "from depth_common.cli.startup import record_startup; record_startup('slow-task');"
        "import slow_module"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        "DEPTH_STARTUP_LOG": str(log),
    }
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    rows = read_startup_log(log)
    assert [r["task"] for r in rows] == ["slow-task", "slow-task"]
    assert all(0.6 <= r["startup_s"] < 60 for r in rows)
    assert all(0.4 <= r["run_s"] < 60 for r in rows)
    lines = format_startup(rows)
    assert lines[-1].split()[0] == "total"
    total = float(lines[-1].split()[1].rstrip("s"))
    assert total == pytest.approx(sum(r["startup_s"] for r in rows), abs=0.01)


def test_a_torn_line_is_skipped(tmp_path) -> None:
    log = tmp_path / "startup.jsonl"
    good = {"task": "train", "startup_s": 1.5, "time": 2.0}
    log.write_text(json.dumps(good) + "\n" + '{"task": "evalu')
    assert read_startup_log(log) == [good]
    assert read_startup_log(tmp_path / "absent.jsonl") == [] and format_startup([]) == []
