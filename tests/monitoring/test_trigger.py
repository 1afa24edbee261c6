"""Retraining launchers: a real local subprocess, KFP through a client double, the counting."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from depth_common.errors import ConfigError
from depth_common.monitoring.trigger import (
    KfpLauncher,
    LocalLauncher,
    Retrainer,
    build_launcher,
)


def test_local_launcher_runs_the_command_and_reports_its_exit(tmp_path) -> None:
    launcher = LocalLauncher(
        [sys.executable, "-c", "print('retraining'); raise SystemExit(3)"], tmp_path
    )
    run_id = launcher.launch("test")
    deadline = time.monotonic() + 30
    while launcher.status(run_id) == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launcher.status(run_id) == "failed"
    (log,) = tmp_path.glob("retrain-*.log")
    assert "retraining" in log.read_text()
    assert launcher.status("unknown") is None


def test_local_runs_stop_with_the_monitor(tmp_path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    launcher = LocalLauncher(sleeper, tmp_path)
    run_id = launcher.launch("test")
    assert launcher.status(run_id) == "running"
    t0 = time.monotonic()
    launcher.stop_all(timeout_s=10)
    assert launcher.status(run_id) == "failed" and time.monotonic() - t0 < 10


def test_kfp_launcher_submits_the_compiled_package(tmp_path, monkeypatch) -> None:
    package = tmp_path / "p.yaml"
    package.write_text("pipelineSpec: {}\n")
    calls = []

    class Client:
        def __init__(self, host: str, namespace: str | None) -> None:
            calls.append(("client", host, namespace))

        def create_run_from_pipeline_package(self, path: str, **kw: object) -> SimpleNamespace:
            calls.append(("run", path, kw["arguments"], kw["experiment_name"]))
            return SimpleNamespace(run_id="abc")

    launcher = KfpLauncher(
        "http://kfp", package, {"data_uri": "s3://d"}, namespace="ns", client_factory=Client
    )
    assert launcher.launch("drift") == "abc"
    assert calls == [
        ("client", "http://kfp", "ns"),
        ("run", str(package), {"data_uri": "s3://d"}, "depth-estimation"),
    ]


def test_build_launcher_refuses_what_cannot_work(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert build_launcher("none") is None
    with pytest.raises(ConfigError, match="--kfp-host"):
        build_launcher("kfp", package=tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        build_launcher("kfp", kfp_host="http://kfp", package=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="--trigger"):
        build_launcher("cron")


def test_only_consecutive_drifted_windows_count() -> None:
    launched = []
    launcher = SimpleNamespace(
        kind="local", launch=lambda r: launched.append(r) or "r", status=lambda i: None
    )
    retrainer = Retrainer(launcher, consecutive=3, cooldown_s=0)
    for drift in (True, True, False, True, True):
        assert retrainer.observe(drift, 0.001) is None
    run = retrainer.observe(True, 0.001)
    retrainer.wait_launched()
    assert run is not None and run.status == "running" and len(launched) == 1
    assert retrainer.drifted_windows == 0
    with pytest.raises(ConfigError, match="--consecutive"):
        Retrainer(launcher, consecutive=0)
