"""Quiet local runs: kfp.local's output filed per task, one console line per finished task."""

from __future__ import annotations

import io
from pathlib import Path

from pipelines.task_logs import TaskLogRouter, failure_excerpt

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def _task(name: str, body: list[str], status: str) -> str:
    colour = GREEN if status == "SUCCESS" else RED
    lines = [f"12:00:00.000 - INFO - Executing task {CYAN}'{name}'{RESET}"]
    lines += [f"    {b}" for b in body]
    lines.append(
        f"12:00:01.000 - INFO - Task {CYAN}'{name}'{RESET} finished with status "
        f"{colour}{status}{RESET}"
    )
    lines.append("-" * 80)
    return "\n".join(lines) + "\n"


def test_each_task_gets_its_log_and_one_console_line(tmp_path: Path) -> None:
    console = io.StringIO()
    ticks = iter([0.0, 2.5, 10.0, 10.25])
    router = TaskLogRouter(tmp_path / "logs", console, clock=lambda: next(ticks))
    router.write("12:00:00.000 - INFO - Running pipeline: 'depth-pipeline'\n")
    text = _task("configure", ["resolved 3 keys", "x" * 5], "SUCCESS")
    for i in range(0, len(text), 7):  # kfp prints in pieces, not whole lines
        router.write(text[i : i + 7])
    router.write(_task("train", [f"epoch {i}" for i in range(300)], "SUCCESS"))
    router.close()

    out = console.getvalue().splitlines()
    assert out == [
        f"  {'configure':<26} {'SUCCESS':<8} {2.5:>7.1f}s",
        f"  {'train':<26} {'SUCCESS':<8} {0.25:>7.1f}s",
    ]
    train_log = (tmp_path / "logs" / "train.log").read_text()
    assert "epoch 299" in train_log and "\x1b[" not in train_log
    assert "resolved 3 keys" not in train_log
    assert "resolved 3 keys" in (tmp_path / "logs" / "configure.log").read_text()
    assert "Running pipeline" in (tmp_path / "logs" / "pipeline.log").read_text()
    assert router.finished[1][:2] == ("train", "SUCCESS")


def test_a_failed_task_shows_its_traceback_and_where_the_log_is(tmp_path: Path) -> None:
    console = io.StringIO()
    body = [f"epoch {i}" for i in range(100)] + [
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "ValueError: data.img_size [65, 128]: not a multiple of 16",
    ]
    router = TaskLogRouter(tmp_path, console)
    router.write(_task("train", body, "FAILURE"))
    router.close()
    out = console.getvalue()
    assert "train" in out.splitlines()[0] and "FAILURE" in out.splitlines()[0]
    assert "ValueError: data.img_size [65, 128]" in out
    assert "epoch 99" not in out  # the traceback, not the whole log
    assert f"full log: {tmp_path / 'train.log'}" in out


def test_failure_excerpt_without_a_traceback_is_the_tail() -> None:
    lines = [f"line {i}" for i in range(100)] + ["-" * 40]
    assert failure_excerpt(lines, limit=5) == [f"line {i}" for i in range(95, 100)]
    tb = ["a", "Traceback (most recent call last):", "b", "Traceback (most recent call last):", "c"]
    assert failure_excerpt(tb) == ["Traceback (most recent call last):", "c"]
