"""Thread policy: CPUs from the affinity mask and the cgroup quota (fake /proc + cgroup trees),
the environment's and the config's precedence, and the counts the deployments declare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from depth_common.errors import ConfigError
from depth_common.threads import (
    affinity_cpus,
    cgroup_cpu_limit,
    decide_threads,
    threads_for_cpus,
)

ROOT = Path(__file__).resolve().parents[1]


def fake_host(
    tmp_path: Path, *, cgroup: str, mounts: list[str], files: dict[str, str]
) -> tuple[Path, Path]:
    """A fake ``/proc/self/{cgroup,mountinfo}`` and cgroup files under ``tmp_path/host``."""
    proc, host = tmp_path / "proc", tmp_path / "host"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text("\n".join(mounts) + "\n")
    for rel, text in files.items():
        path = host / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, host


V2_MOUNT = "31 23 0:28 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct"
V1_MEMORY = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"


def test_v2_quota_is_the_tightest_along_the_ancestors(tmp_path) -> None:
    proc, host = fake_host(
        tmp_path,
        cgroup="0::/kubepods/pod1/ctr\n",
        mounts=[V2_MOUNT],
        files={
            "sys/fs/cgroup/cpu.max": "max 100000",
            "sys/fs/cgroup/kubepods/cpu.max": "max 100000",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "150000 100000",  # the pod: 1.5 CPUs
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "400000 100000",  # container: 4
        },
    )
    assert cgroup_cpu_limit(proc, host) == (1.5, "v2")
    counts = decide_threads(environ={}, proc=proc, host=host)
    # 1.5 CPUs round down: a thread that runs half the time stalls every parallel region
    assert counts.intra_op == 1 and counts.inter_op == 1
    assert "cgroup v2 quota 1.50" in counts.source


def test_v2_without_a_quota_falls_back_to_the_affinity_mask(tmp_path) -> None:
    proc, host = fake_host(
        tmp_path,
        cgroup="0::/\n",
        mounts=[V2_MOUNT],
        files={"sys/fs/cgroup/cpu.max": "max 100000"},
    )
    assert cgroup_cpu_limit(proc, host) is None
    counts = decide_threads(environ={}, proc=proc, host=host)
    assert counts.intra_op == affinity_cpus() and "no cgroup CPU quota" in counts.source


def test_v1_cfs_quota_and_period(tmp_path) -> None:
    proc, host = fake_host(
        tmp_path,
        cgroup="5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        mounts=[V1_MEMORY, V1_MOUNT.replace(" / ", " /docker/abc ", 1)],
        files={
            # the container sees its own cgroup at the mount point (mount root = its path)
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroup_cpu_limit(proc, host) == (3.0, "v1")


def test_v1_unlimited_quota_is_no_limit(tmp_path) -> None:
    proc, host = fake_host(
        tmp_path,
        cgroup="4:cpu,cpuacct:/user.slice\n",
        mounts=[V1_MOUNT],
        files={
            "sys/fs/cgroup/cpu,cpuacct/user.slice/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu,cpuacct/user.slice/cpu.cfs_period_us": "100000",
        },
    )
    assert cgroup_cpu_limit(proc, host) is None


def test_no_cgroup_files_at_all(tmp_path) -> None:
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path) is None


def test_quota_above_the_affinity_mask_keeps_the_mask(tmp_path) -> None:
    proc, host = fake_host(
        tmp_path,
        cgroup="0::/\n",
        mounts=[V2_MOUNT],
        files={"sys/fs/cgroup/cpu.max": f"{(affinity_cpus() + 8) * 100000} 100000"},
    )
    assert decide_threads(environ={}, proc=proc, host=host).intra_op == affinity_cpus()


def test_environment_wins_over_config_and_derivation(tmp_path) -> None:
    assert decide_threads(7, environ={"OMP_NUM_THREADS": "3"}).intra_op == 3
    assert decide_threads(7, environ={"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5"}).source == (
        "OMP_NUM_THREADS=3"
    )
    assert decide_threads(7, environ={"MKL_NUM_THREADS": "5"}).intra_op == 5
    assert decide_threads(7, environ={"OMP_NUM_THREADS": "4,2"}).intra_op == 4  # nested list
    assert decide_threads(7, environ={}).intra_op == 7
    assert decide_threads(7, environ={}).source == "training.threads=7"
    for bad in ("zero", "0", "-2"):
        with pytest.raises(ConfigError, match=r"environment OMP_NUM_THREADS: got .* integer >= 1"):
            decide_threads(environ={"OMP_NUM_THREADS": bad})


@pytest.mark.parametrize(
    ("cpus", "share", "expected"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 4, 4), (15.9, 4, 3), (0.5, 1, 1), (3.0, 1, 3)],
)
def test_threads_for_cpus(cpus, share, expected) -> None:
    assert threads_for_cpus(cpus, share) == expected


@pytest.mark.skipif(affinity_cpus() < 2, reason="needs 2 CPUs in the affinity mask")
def test_a_process_pinned_to_one_cpu_chooses_one_thread() -> None:
    """A real child process with a one-CPU affinity mask: the policy and torch both follow."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]});"
        "from depth_common.threads import apply_torch_threads; import torch;"
        "c = apply_torch_threads(); print(c.intra_op, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_the_train_task_gets_as_many_threads_as_it_requests_cpus(tmp_path) -> None:
    """training.train_cpu is the train task's CPU request and limit; the limit's cgroup quota
    gives exactly that many threads (on a node with at least that many cores)."""
    import yaml

    from depth_common.config import load_params

    TRAIN_CPU = str(load_params(ROOT / "params.yaml").training.train_cpu)

    # the compiled pipeline's first document (the second holds the platform settings)
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "depth_pipeline.yaml").read_text()))
    executors = spec["deploymentSpec"]["executors"]
    trains = [e for name, e in executors.items() if name.startswith("exec-train")]
    assert trains
    for e in trains:
        res = e["container"]["resources"]
        assert res["resourceCpuRequest"] == res["resourceCpuLimit"] == TRAIN_CPU
    quota = int(float(TRAIN_CPU) * 100000)
    proc, host = fake_host(
        tmp_path,
        cgroup="0::/pod\n",
        mounts=[V2_MOUNT],
        files={"sys/fs/cgroup/pod/cpu.max": f"{quota} 100000"},
    )
    cpus, _ = cgroup_cpu_limit(proc, host)
    assert threads_for_cpus(cpus) == int(TRAIN_CPU)


def test_the_inference_service_threads_agree_with_its_cpu_limit() -> None:
    """OMP_NUM_THREADS of the predictor = the policy's count for its CPU limit, shared by the
    model instances Triton runs (export.instance_count)."""
    import yaml

    from depth_common.config import load_params

    isvc = yaml.safe_load((ROOT / "manifests" / "base" / "inferenceservice.yaml").read_text())
    model = isvc["spec"]["predictor"]["model"]
    env = {e["name"]: e["value"] for e in model["env"]}
    limit = model["resources"]["limits"]["cpu"]
    cpus = float(limit[:-1]) / 1000 if str(limit).endswith("m") else float(limit)
    instances = load_params(ROOT / "params.yaml").export.instance_count
    assert int(env["OMP_NUM_THREADS"]) == threads_for_cpus(cpus, instances)


def _stat(rows: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat with ``{cpu: (busy jiffies, idle jiffies)}`` per CPU."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{c} {busy} 0 0 {idle} 0 0 0 0 0 0" for c, (busy, idle) in rows.items()]
    return "\n".join(lines) + "\nintr 0\n"


def test_cpus_other_processes_keep_busy_are_not_counted(tmp_path, monkeypatch) -> None:
    """Over the sample, cpu1 is busy all the time (another process), cpu0 idle: 1 thread."""
    import depth_common.threads as T

    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(_stat({0: (100, 100), 1: (100, 100), 2: (5, 5)}))

    def tick(seconds: float) -> None:  # what the kernel's counters did while we slept
        (proc / "stat").write_text(_stat({0: (101, 199), 1: (200, 100), 2: (5, 5)}))

    monkeypatch.setattr(T.time, "sleep", tick)
    T.idle_cpus.cache_clear()
    idle = T.idle_cpus(frozenset({0, 1}), proc=proc)  # cpu2 is outside the mask
    assert idle == pytest.approx(0.99)
    monkeypatch.setattr(T, "_mask", lambda: frozenset({0, 1}))
    monkeypatch.setattr(T, "affinity_cpus", lambda: 2)
    counts = T.decide_threads(environ={}, proc=proc, host=tmp_path)
    assert counts.intra_op == 1 and "0.99 CPUs idle" in counts.source
    assert T.decide_threads(environ={}, probe=False, proc=proc, host=tmp_path).intra_op == 2
    T.idle_cpus.cache_clear()
