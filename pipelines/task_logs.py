"""Quiet local runs: each kfp.local task's output goes to its own log file, the console gets one
line per finished task (its log tail only when it failed).

kfp.local prints every task's streamed output, inputs, outputs and status lines to
``sys.stdout`` (about 1,400 lines for the demo pipeline). :class:`TaskLogRouter` stands in for
``sys.stdout`` during the run: it splits that stream at kfp.local's own "Executing task" lines
into ``<log_dir>/<task>.log`` (anything outside a task into ``pipeline.log``), and writes
``  train                     SUCCESS    41.2s`` to the console as each task ends.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
#: Lines of a failed task's log shown on the console (the traceback is at the end).
FAILED_TAIL_LINES = 40


def failure_excerpt(lines: list[str], limit: int = FAILED_TAIL_LINES) -> list[str]:
    """The part of a failed task's output worth showing: from its last traceback on, else its
    last ``limit`` lines (kfp.local's own status lines left out)."""
    body = [ln for ln in lines if not _END.search(ln) and not set(ln.strip()) <= {"-"}]
    starts = [i for i, ln in enumerate(body) if "Traceback (most recent call last)" in ln]
    excerpt = body[starts[-1] :] if starts else body
    return excerpt[-limit:]


class TaskLogRouter(io.TextIOBase):
    """A text stream that files kfp.local's output per task and reports each task's end."""

    def __init__(
        self,
        log_dir: Path,
        console: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.clock = clock
        self._pending = ""
        self._task: str | None = None
        self._task_lines: list[str] = []
        self._started = 0.0
        self._file = open(self.log_dir / "pipeline.log", "a")  # noqa: SIM115 - closed in close()
        self.finished: list[tuple[str, str, float]] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._line(line + "\n")
        return len(text)

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()
        self.console.flush()

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        if not self._file.closed:
            self._file.close()
        super().close()

    def log_path(self, task: str) -> Path:
        return self.log_dir / f"{task}.log"

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        if m := _START.search(plain):
            self._file.close()
            self._task, self._task_lines = m.group(1), []
            self._started = self.clock()
            self._file = open(self.log_path(self._task), "a")  # noqa: SIM115
        self._file.write(plain)
        if self._task is not None:
            self._task_lines.append(plain.rstrip("\n"))
        if m := _END.search(plain):
            self._report(m.group(1), m.group(2))

    def _report(self, task: str, status: str) -> None:
        seconds = self.clock() - self._started
        self.finished.append((task, status, seconds))
        out = self.console
        out.write(f"  {task:<26} {status:<8} {seconds:>7.1f}s\n")
        if status != "SUCCESS":
            for ln in failure_excerpt(self._task_lines):
                out.write(f"  | {ln}\n")
            out.write(f"  full log: {self.log_path(task)}\n")
        out.flush()
