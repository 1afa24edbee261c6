"""Keep one server process running; when it ends, leave nothing behind.

Run as a script (``python supervisor.py --name triton --workdir DIR -- tritonserver ...``) by
:class:`SupervisedProcess`, in a session (process group) of its own, it:

- starts the command in its group and restarts it when it dies unasked (the bundled Triton
  2.51 dies with SIGSEGV on one malformed binary request), with bounded exponential backoff
  (``--backoff-s`` doubling up to ``--max-backoff-s``) and at most ``--max-restarts``
  restarts within ``--window-s`` seconds, logging each exit and restart to its stderr (the
  server log);
- on SIGTERM/SIGINT, or when its parent dies (``PR_SET_PDEATHSIG``: a ``kill -9`` of
  ``serve``), stops the command with SIGTERM, SIGKILLs whatever is left in the group after
  ``--stop-timeout-s`` (Python-backend stubs), and removes ``--workdir`` and the
  ``/dev/shm/<--shm-prefix>*`` regions the server created.

It imports the standard library only: it starts in tens of milliseconds and needs no
``PYTHONPATH``. The child's pid is written to ``<workdir>/<name>.pid`` and the restart count to
``<workdir>/<name>.restarts`` (for tests and status).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent thread ends."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def group_members(pgid: int, exclude: int | None = None) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        if int(fields[2]) == pgid and fields[0] != "Z" and pid != exclude:
            alive.append(pid)
    return alive


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """The loop run inside the supervisor process (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir) if args.workdir else None
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.restart_times: list[float] = []

    def log(self, message: str) -> None:
        print(f"[supervisor {self.args.name}] {message}", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _record(self, suffix: str, value: int) -> None:
        if self.workdir is not None and self.workdir.is_dir():
            path = self.workdir / f"{self.args.name}.{suffix}"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"{value}\n")
            os.replace(tmp, path)

    def _spawn(self) -> None:
        self.child = subprocess.Popen(
            self.args.command,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # the server goes if the supervisor is SIGKILLed
        )
        self._record("pid", self.child.pid)

    def _next_delay(self) -> float | None:
        """Seconds to wait before the next restart, or None when the budget is spent."""
        now = time.monotonic()
        self.restart_times = [t for t in self.restart_times if now - t < self.args.window_s]
        if len(self.restart_times) >= self.args.max_restarts:
            return None
        self.restart_times.append(now)
        n = len(self.restart_times) - 1
        return min(self.args.backoff_s * 2**n, self.args.max_backoff_s)

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        die_with_parent()
        if self.args.parent_pid and os.getppid() != self.args.parent_pid:
            self.stopping = True  # the parent died before the death signal was armed
        code, restarts = 0, 0
        try:
            while not self.stopping:
                self._spawn()
                code = self._wait_child()
                if self.stopping:
                    break
                self._cleanup_shm()  # a crashed server leaves its regions behind
                delay = self._next_delay()
                if delay is None:
                    self.log(
                        f"{describe_exit(code)}; {self.args.max_restarts} restarts within "
                        f"{self.args.window_s:g} s already: giving up"
                    )
                    return 1
                restarts += 1
                self._record("restarts", restarts)
                self.log(f"{describe_exit(code)}; restart {restarts} in {delay:.1f} s")
                self._sleep_unless_stopping(delay)
            return 0
        finally:
            self._shutdown()

    def _wait_child(self) -> int:
        assert self.child is not None
        while True:
            try:
                return self.child.wait()
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue

    def _shutdown(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=self.args.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.log(f"ignored SIGTERM for {self.args.stop_timeout_s:g} s: killing")
        me = os.getpid()
        deadline = time.monotonic() + 5.0
        while (left := group_members(os.getpgid(me), exclude=me)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if child is not None:
            with contextlib.suppress(ChildProcessError):
                child.wait(timeout=1.0)
        self._cleanup_shm()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _cleanup_shm(self) -> None:
        if self.args.shm_prefix:
            for region in glob.glob(f"/dev/shm/{glob.escape(self.args.shm_prefix)}*"):
                with contextlib.suppress(OSError):
                    os.unlink(region)


class SupervisedProcess:
    """The parent's handle on a supervised command (the supervisor runs as its own process).

    ``workdir`` belongs to the supervisor from :meth:`start` on: it is deleted when the
    supervisor ends, however it ends short of SIGKILL on its own group. ``env`` is the whole
    environment of the supervisor and the command (nothing else is inherited).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        env: dict[str, str],
        log_path: Path,
        workdir: Path,
        shm_prefix: str | None = None,
        max_restarts: int = 5,
        stop_timeout_s: float = 20.0,
    ) -> None:
        self.name, self.command, self.env = name, list(command), env
        self.log_path, self.workdir, self.shm_prefix = log_path, workdir, shm_prefix
        self.max_restarts = max_restarts
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The supervisor's pid, which is also the process group of everything it runs."""
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def _read(self, suffix: str) -> int | None:
        try:
            return int((self.workdir / f"{self.name}.{suffix}").read_text())
        except (OSError, ValueError):
            return None

    def child_pid(self) -> int | None:
        """The supervised command's current pid (None before it started)."""
        return self._read("pid")

    def restarts(self) -> int:
        return self._read("restarts") or 0

    def start(self) -> None:
        cmd = [sys.executable, "-I", str(Path(__file__).resolve())]  # -I: stdlib only, no env
        cmd += ["--name", self.name, "--workdir", str(self.workdir)]
        cmd += ["--parent-pid", str(os.getpid()), "--max-restarts", str(self.max_restarts)]
        cmd += ["--stop-timeout-s", str(self.stop_timeout_s)]
        if self.shm_prefix:
            cmd += ["--shm-prefix", self.shm_prefix]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                [*cmd, "--", *self.command],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: reachable as a whole
                preexec_fn=die_with_parent,
            )

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops the command and cleans up); SIGKILL the group if
        it has not finished in time, then remove what it would have."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout_s + 10.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.shm_prefix:
            for region in glob.glob(f"/dev/shm/{glob.escape(self.shm_prefix)}*"):
                with contextlib.suppress(OSError):
                    os.unlink(region)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="what is supervised (log lines, pid file)")
    p.add_argument("--workdir", help="directory removed at exit")
    p.add_argument("--shm-prefix", help="/dev/shm region prefix removed at exit")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=5)
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--backoff-s", type=float, default=0.5)
    p.add_argument("--max-backoff-s", type=float, default=8.0)
    p.add_argument("--stop-timeout-s", type=float, default=20.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command to supervise (give it after --)")
    return args


if __name__ == "__main__":
    sys.exit(Supervisor(parse_args(sys.argv[1:])).run())
