"""``pipelines.submit --schedule``: the cron check and the KFP recurring run (client double)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from depth_common.errors import ConfigError
from pipelines import submit


def test_kfp_cron_takes_five_or_six_fields() -> None:
    assert submit.kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert submit.kfp_cron("0 0 9 ? * 2-6") == "0 0 9 ? * 2-6"
    for bad in ("daily", "* * *", "0 3 * * 1; rm -rf /", "1 2 3 4 5 6 7"):
        with pytest.raises(ConfigError, match="--schedule"):
            submit.kfp_cron(bad)


def test_recurring_run_is_created_in_the_experiment(monkeypatch, tmp_path) -> None:
    calls: dict[str, object] = {}

    class Client:
        def __init__(self, host: str, existing_token: str | None, namespace: str | None) -> None:
            calls["client"] = (host, existing_token, namespace)

        def create_experiment(self, name: str, namespace: str | None = None) -> SimpleNamespace:
            calls["experiment"] = name
            return SimpleNamespace(experiment_id="exp-1")

        def create_recurring_run(self, **kw: object) -> SimpleNamespace:
            calls["recurring"] = kw
            return SimpleNamespace(recurring_run_id="job-1")

    import kfp

    monkeypatch.setattr(kfp, "Client", Client)
    sub = submit.Submission(
        "http://kfp", "depth", "nightly", Path(tmp_path / "p.yaml"), {"epochs": 3}, "ns"
    )
    assert submit.submit_recurring(sub, "secret", "0 0 3 * * 1") == "job-1"
    kw = calls["recurring"]
    assert calls["client"] == ("http://kfp", "secret", "ns") and calls["experiment"] == "depth"
    assert kw["experiment_id"] == "exp-1" and kw["cron_expression"] == "0 0 3 * * 1"
    assert kw["params"] == {"epochs": 3} and kw["pipeline_package_path"].endswith("p.yaml")
    assert kw["max_concurrency"] == 1 and kw["no_catchup"] is True


def test_dry_run_prints_the_schedule(capsys) -> None:
    assert submit.main(["--dry-run", "--schedule", "30 2 * * *"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["schedule"] == "0 30 2 * * *"
    assert submit.main(["--dry-run", "--schedule", "weekly"]) == 2
    assert "--schedule 'weekly'" in capsys.readouterr().err
