"""Thread counts that fit the CPUs this process may really use.

A container on a 64-core node with a CPU limit of 2 sees 64 CPUs in ``os.cpu_count()``, and
PyTorch and ONNX Runtime size their pools by what they see. Each parallel region then waits
for threads the kernel cannot run (the cgroup quota is spent, or another process holds the
core), which on this project's demo model costs 10-20x in throughput. :func:`decide_threads`
counts the CPUs from the process's affinity mask and its cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the tightest along the cgroup's ancestors), and
caps that by the CPUs of the mask that other processes left idle over a short sample when the
process starts (``/proc/stat``): a core another process keeps busy is not one this process
has. It rounds down: a thread that may only run part of the time stalls every region it joins.

Precedence: ``OMP_NUM_THREADS``, then ``MKL_NUM_THREADS`` (the variables PyTorch itself reads),
then a configured count (``training.threads``; 0 = derive), then the derived count divided
among ``share`` processes or model instances that split the same CPUs.

Importing this module imports neither torch nor onnxruntime; :func:`apply_torch_threads`
imports torch when called, :func:`ort_session_options` imports onnxruntime.
"""

from __future__ import annotations

# torch and onnxruntime are imported where their thread pools are set: this ground-floor
# module is imported by torch-free code (the serving repository, the demo).
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depth_common.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variables that fix the intra-op count, in the order PyTorch reads them.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_logged: set[tuple[str, int, int]] = set()


@dataclass(frozen=True)
class ThreadCounts:
    """Intra-op threads (torch / ONNX Runtime pools), inter-op threads, and why."""

    intra_op: int
    inter_op: int
    source: str  # e.g. "OMP_NUM_THREADS=1", "2 CPUs (affinity 2, cgroup v1 quota 2.00)"


# -- CPUs -------------------------------------------------------------------------------------


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is no mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _mounts(proc: Path) -> list[tuple[str, str, str, str]]:
    """``(fs type, mount root, mount point, super options)`` of the cgroup mounts."""
    out = []
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        out.append((tail[0], fields[3], fields[4], tail[2]))
    return out


def _ancestors(mount_point: str, mount_root: str, cgroup_path: str, host: Path) -> list[Path]:
    """The cgroup's directory and each parent up to the mount point, leaf first."""
    root = mount_root.rstrip("/")
    inside = cgroup_path == mount_root or cgroup_path.startswith(root + "/")
    # Outside the mount's root (another cgroup namespace): only the mount point is ours.
    parts = [p for p in cgroup_path[len(root) :].split("/") if p] if inside else []
    base = host / mount_point.lstrip("/")
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period or 100000)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _quota_v1(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(
    proc: Path = Path("/proc"), host: Path = Path("/")
) -> tuple[float, str] | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors, and which
    cgroup version set it; ``None`` when there is no quota (or no cgroup file system).

    ``proc`` and ``host`` exist for tests, which build a fake ``/proc`` and cgroup tree.
    """
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    v2_path, v1_path = None, None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and line.startswith("0::"):
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    limits: list[tuple[float, str]] = []
    for fstype, root, point, options in _mounts(proc):
        if fstype == "cgroup2" and v2_path is not None:
            dirs, reader, name = _ancestors(point, root, v2_path, host), _quota_v2, "v2"
        elif fstype == "cgroup" and v1_path is not None and "cpu" in options.split(","):
            dirs, reader, name = _ancestors(point, root, v1_path, host), _quota_v1, "v1"
        else:
            continue
        limits += [(q, name) for q in map(reader, dirs) if q is not None]
    return min(limits) if limits else None


def _cpu_times(proc: Path, cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """``{cpu: (total jiffies, idle + iowait jiffies)}`` of the CPUs in ``cpus``."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        cpu = int(name[3:])
        if cpu in cpus and len(values) >= 5:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            times[cpu] = (sum(ticks), ticks[3] + ticks[4])
    return times or None


@functools.lru_cache(maxsize=8)
def idle_cpus(
    cpus: frozenset[int], interval_s: float = 0.1, proc: Path = Path("/proc")
) -> float | None:
    """CPUs of ``cpus`` left idle over ``interval_s`` seconds (this process sleeps meanwhile),
    from ``/proc/stat``; ``None`` where it cannot tell. Sampled once per process and set."""
    before = _cpu_times(proc, set(cpus))
    if before is None:
        return None
    time.sleep(interval_s)
    after = _cpu_times(proc, set(cpus))
    if after is None:
        return None
    idle = 0.0
    for cpu, (total0, idle0) in before.items():
        total1, idle1 = after.get(cpu, (total0, idle0))
        if total1 > total0:
            idle += min(1.0, max(0.0, (idle1 - idle0) / (total1 - total0)))
        else:
            idle += 1.0  # no tick in the interval: nothing ran there
    return idle


# -- decision ---------------------------------------------------------------------------------


def threads_for_cpus(cpus: float, share: int = 1) -> int:
    """Intra-op threads for ``share`` equal consumers of ``cpus`` CPUs: whole CPUs each, >= 1."""
    return max(1, math.floor(cpus / max(1, share) + 1e-9))


def _env_count(environ: Mapping[str, str]) -> tuple[int, str] | None:
    for name in ENV_VARS:
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = int(raw.split(",")[0])  # OpenMP allows a per-level list: "4,2"
        except ValueError:
            raise ConfigError(
                f"environment {name}: got {raw!r}, expected an integer >= 1"
            ) from None
        if value < 1:
            raise ConfigError(f"environment {name}: got {raw!r}, expected an integer >= 1")
        return value, f"{name}={value}"
    return None


def decide_threads(
    configured: int = 0,
    *,
    share: int = 1,
    environ: Mapping[str, str] | None = None,
    probe: bool = True,
    proc: Path = Path("/proc"),
    host: Path = Path("/"),
) -> ThreadCounts:
    """The intra-op and inter-op counts for this process (see the module docstring).

    ``configured`` > 0 fixes the count unless the environment does; ``share`` divides the
    derived count among processes (DDP ranks on one node) or model instances on the same CPUs;
    ``probe`` caps it by the CPUs other processes leave idle (:func:`idle_cpus`).
    Inter-op is 1: the models here are one sequential graph, and a second pool would only
    compete with the intra-op threads for the same cores.
    """
    env = os.environ if environ is None else environ
    fixed = _env_count(env)
    if fixed is not None:
        return ThreadCounts(fixed[0], 1, fixed[1])
    if configured > 0:
        return ThreadCounts(configured, 1, f"training.threads={configured}")
    affinity = affinity_cpus()
    limit = cgroup_cpu_limit(proc, host)
    cpus: float = float(affinity) if limit is None else min(float(affinity), limit[0])
    why = f"affinity {affinity}, " + (
        "no cgroup CPU quota" if limit is None else f"cgroup {limit[1]} quota {limit[0]:.2f}"
    )
    idle = idle_cpus(_mask(), proc=proc) if probe else None
    if idle is not None:
        # A CPU three-quarters idle counts; one that others keep half busy does not.
        cpus = min(cpus, max(1.0, math.floor(idle + 0.25)))
        why += f", {idle:.2f} CPUs idle"
    if share > 1:
        why += f", shared by {share}"
    return ThreadCounts(threads_for_cpus(cpus, share), 1, why)


def _mask() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def log_once(counts: ThreadCounts, role: str) -> None:
    """Log the chosen counts once per process and role (the same decision is not repeated)."""
    key = (role, counts.intra_op, counts.inter_op)
    if key in _logged:
        return
    _logged.add(key)
    log.info(
        "%s threads: intra-op %d, inter-op %d (%s)",
        role,
        counts.intra_op,
        counts.inter_op,
        counts.source,
    )


# -- applying it ------------------------------------------------------------------------------


def apply_torch_threads(
    configured: int = 0, *, share: int = 1, role: str = "torch"
) -> ThreadCounts:
    """Decide and set torch's intra-op and inter-op pools; returns the counts (logged once)."""
    import torch

    counts = decide_threads(configured, share=share)
    torch.set_num_threads(counts.intra_op)
    # torch fixes the inter-op pool at its first parallel work (or first set): keep it then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(counts.inter_op)
    log_once(counts, role)
    return counts


class single_thread:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Run a block on one intra-op thread, then restore the count.

    For in-process data loading: per-image work (decode, augmentation, normalisation) is too
    small to split, and splitting it makes every tiny op wait for a thread another process may
    hold. DataLoader worker processes run on one thread for the same reason.
    """

    def __enter__(self) -> None:
        import torch

        self._saved = torch.get_num_threads()
        if self._saved != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._saved != 1:
            torch.set_num_threads(self._saved)


def ort_session_options(configured: int = 0, *, share: int = 1, role: str = "onnxruntime") -> Any:
    """``onnxruntime.SessionOptions`` with the decided intra-op and inter-op counts."""
    import onnxruntime as ort

    counts = decide_threads(configured, share=share)
    options = ort.SessionOptions()
    options.intra_op_num_threads = counts.intra_op
    options.inter_op_num_threads = counts.inter_op
    log_once(counts, role)
    return options
