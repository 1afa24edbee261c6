"""Promotion against a real MLflow SQLite store (no mocks): decide, register under the lock
(re-checked), crown, roll back the aliases; the race of two real processes.

One store per module (creating the schema costs seconds); each test uses its own registered
model name so tests stay independent.
"""

from __future__ import annotations

import itertools
import os

import pytest

from depth_common.config import Params
from depth_common.errors import PromotionError
from depth_common.registry.aliases import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    aliases,
    registry_client,
    restore_previous,
)
from depth_common.registry.promotion import (
    IN_FLIGHT_TAG,
    abandon_challenger,
    champion_version,
    crown_challenger,
    decide_promotion,
    format_decision,
    register_model,
)
from depth_common.registry.registry import Registry

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    from depth_common.registry.store import ensure_sqlite_store

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("promotion-tests")
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def params(store) -> Params:
    return Params().with_overrides(
        [f"mlflow.tracking_uri={store}", f"mlflow.model_name=Depth{next(_names)}"]
    )


def _run(rmse: float | None, *, model: bool = True) -> str:
    """A finished MLflow run with test metrics (``rmse`` metres) and a logged model."""
    import mlflow
    import torch

    with mlflow.start_run() as run:
        if rmse is not None:
            mlflow.log_metrics({"test_rmse": rmse, "test_abs_rel": rmse / 10})
        if model:
            mlflow.pytorch.log_model(
                torch.nn.Linear(2, 1),
                name="model",
                pip_requirements=["torch"],
                input_example=torch.zeros(1, 2).numpy(),
            )
    return run.info.run_id


def register_champion(run: str, params: Params, pipeline_run: str = "") -> int:
    """register + crown: what a pipeline run does when its deploy succeeds."""
    reg = register_model(run, params, pipeline_run=pipeline_run)
    assert reg.promoted, reg.reason
    crowned, why = crown_challenger(params, reg.version)
    assert crowned, why
    return reg.version


def _alias(params: Params, alias: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(params.mlflow.tracking_uri, params.mlflow.tracking_uri)
    return int(client.get_model_version_by_alias(params.mlflow.model_name, alias).version)


def test_first_model_is_promoted_and_registered(params):
    run = _run(3.0)
    assert champion_version(params) is None
    d = decide_promotion(run, params)
    assert d.promote and d.champion_version is None and d.challenger_rmse == 3.0
    assert "no champion" in d.reason
    assert register_champion(run, params, pipeline_run="pr-1") == 1
    assert champion_version(params) == 1

    from mlflow import MlflowClient

    mv = MlflowClient(params.mlflow.tracking_uri).get_model_version(params.mlflow.model_name, "1")
    assert mv.run_id == run
    assert mv.tags["pipeline_run"] == "pr-1"
    assert float(mv.tags["test_rmse"]) == 3.0
    assert float(mv.tags["test_abs_rel"]) == pytest.approx(0.3)
    assert "| challenger test_rmse | 3.0000 m |" in format_decision(d, params.mlflow.model_name)


def test_registering_leaves_the_process_wide_mlflow_uris_as_they_were(params, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    assert register_champion(_run(3.0), params) == 1
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_REGISTRY_URI" not in os.environ  # nor exported to subprocesses


def test_one_registry_carries_a_whole_promotion(params, monkeypatch):
    """decide, register, crown and abandon through one Registry open no other (each opening
    re-checked the SQLite store under its file lock) and leave the fluent API's state alone."""
    import mlflow

    from depth_common.registry import aliases as aliases_module

    champion, better, worse = _run(3.0), _run(2.0), _run(1.0)
    registry = Registry.from_params(params)
    opened: list[str] = []
    init = Registry.__init__

    def counting(self, *args, **kwargs) -> None:
        opened.append("Registry")
        init(self, *args, **kwargs)

    monkeypatch.setattr(Registry, "__init__", counting)
    monkeypatch.setattr(aliases_module, "registry_client", lambda *a: opened.append("client"))
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    for run in (champion, better):
        reg = register_model(run, params, registry=registry)
        assert crown_challenger(params, reg.version, registry=registry)[0]
    late = register_model(worse, params, registry=registry)
    assert decide_promotion(worse, params, registry=registry).promote
    assert abandon_challenger(params, late.version, registry=registry)
    assert champion_version(params, registry=registry) == 2
    assert opened == []
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    mv = registry.version(2)
    # the run's logged model, registered from its storage location (no process-wide URI needed)
    logged = registry.client.get_logged_model(mv.tags["logged_model_id"])
    assert mv.run_id == better == logged.source_run_id and mv.source == logged.artifact_location


def test_better_challenger_moves_champion_and_keeps_previous(params):
    first, second = _run(3.0), _run(2.5)
    register_champion(first, params)
    d = decide_promotion(second, params)
    assert d.promote
    assert (d.champion_version, d.champion_rmse, d.challenger_rmse) == (1, 3.0, 2.5)
    assert register_champion(second, params) == 2
    assert _alias(params, CHAMPION_ALIAS) == 2
    assert _alias(params, PREVIOUS_ALIAS) == 1


def test_worse_and_equal_challengers_keep_champion(params):
    champ = _run(2.0)
    register_champion(champ, params)
    worse = decide_promotion(_run(2.1), params)
    equal = decide_promotion(_run(2.0), params)
    for d in (worse, equal):
        assert not d.promote
        assert d.champion_version == 1 and d.champion_rmse == 2.0
        assert "keeping version 1" in d.reason
    assert champion_version(params) == 1


def test_min_improvement_is_a_margin_in_metres(params):
    register_champion(_run(2.0), params)
    strict = params.with_overrides(["promotion.min_improvement=0.2"])
    assert not decide_promotion(_run(1.85), strict).promote  # better, but by less than 0.2 m
    assert decide_promotion(_run(1.75), strict).promote
    assert decide_promotion(_run(1.85), params).promote  # default margin 0


def test_champion_without_test_rmse_is_a_clear_error(params):
    from mlflow import MlflowClient

    bare = _run(None)
    register_champion_src = _run(1.0)
    register_champion(register_champion_src, params)
    # Point the alias at a version whose run never got test metrics (e.g. registered by hand).
    client = MlflowClient(params.mlflow.tracking_uri)
    mv = client.create_model_version(params.mlflow.model_name, f"runs:/{bare}/model", run_id=bare)
    client.set_registered_model_alias(params.mlflow.model_name, CHAMPION_ALIAS, mv.version)
    with pytest.raises(
        PromotionError, match=r"champion .* version 2: run .* no finite 'test_rmse'"
    ):
        decide_promotion(_run(0.5), params)


def test_challenger_without_test_rmse_is_a_clear_error(params):
    with pytest.raises(PromotionError, match=r"challenger run .* no finite 'test_rmse'"):
        decide_promotion(_run(None, model=False), params)
    with pytest.raises(PromotionError, match="no such MLflow run"):
        decide_promotion("0" * 32, params)


def test_register_is_idempotent(params):
    from mlflow import MlflowClient

    first, second = _run(3.0), _run(2.0)
    assert register_champion(first, params) == 1
    assert register_champion(second, params) == 2
    assert register_champion(second, params) == 2  # same run again: no third version
    client = MlflowClient(params.mlflow.tracking_uri)
    versions = client.search_model_versions(f"name='{params.mlflow.model_name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    # ... and the re-run did not overwrite 'previous' with the champion itself.
    assert (_alias(params, CHAMPION_ALIAS), _alias(params, PREVIOUS_ALIAS)) == (2, 1)
    again = decide_promotion(second, params)
    assert again.promote and "already is champion" in again.reason


def test_register_without_logged_model_fails_clearly(params):
    with pytest.raises(PromotionError, match="no model logged at 'model'"):
        register_champion(_run(1.0, model=False), params)
    assert champion_version(params) is None


def _aliases(params: Params) -> dict[str, int]:
    return aliases(registry_client(params.mlflow.tracking_uri), params.mlflow.model_name)


def test_register_re_decides_under_the_lock(params):
    """decide said promote, but a better run was crowned before register: stand down."""
    late = _run(2.0)
    assert decide_promotion(late, params).promote  # no champion yet
    register_champion(_run(1.5), params)  # another pipeline finished first, and better
    reg = register_model(late, params)
    assert not reg.promoted and reg.version is None
    assert reg.reason.startswith("re-checked under the registry lock:")
    assert "keeping version 1" in reg.reason
    assert _aliases(params) == {CHAMPION_ALIAS: 1}


def test_registered_version_is_the_challenger_until_its_deploy_crowns_it(params):
    register_champion(_run(3.0), params)
    reg = register_model(_run(2.0), params, pipeline_run="pr-2")
    assert reg.promoted and reg.version == 2
    assert _aliases(params) == {CHAMPION_ALIAS: 1, CHALLENGER_ALIAS: 2}
    assert champion_version(params) == 1  # serving has not followed yet
    assert crown_challenger(params, 2) == (True, "version 2 is champion, previous v1")
    assert _aliases(params) == {CHAMPION_ALIAS: 2, PREVIOUS_ALIAS: 1}
    assert crown_challenger(params, 2)[0] is False  # no longer the challenger: nothing moves


def test_a_failed_rollout_withdraws_only_its_own_challenger(params):
    register_champion(_run(3.0), params)
    reg = register_model(_run(2.0), params)
    assert abandon_challenger(params, reg.version)
    assert _aliases(params) == {CHAMPION_ALIAS: 1}
    assert not abandon_challenger(params, reg.version)


def test_a_rollout_in_flight_must_be_beaten(params):
    register_champion(_run(3.0), params)
    first = register_model(_run(2.0), params)  # rolling out
    worse = register_model(_run(2.5), params)  # better than the champion, not than v2
    assert not worse.promoted and "version 2" in worse.reason and "standing down" in worse.reason
    better = register_model(_run(1.0), params)
    assert better.promoted and "supersedes in-flight version 2" in better.reason
    assert _aliases(params)[CHALLENGER_ALIAS] == better.version
    ok, why = crown_challenger(params, first.version)
    assert not ok and "no longer the challenger" in why  # the superseded one cannot win
    # A challenger whose run died (its in-flight mark expired) no longer blocks anyone.
    client = registry_client(params.mlflow.tracking_uri)
    client.set_model_version_tag(params.mlflow.model_name, str(better.version), IN_FLIGHT_TAG, "1")
    assert register_model(_run(2.2), params).promoted


def test_rollback_restores_champion_and_moves_previous_one_step_back(params):
    register_champion(_run(3.0), params)
    register_champion(_run(2.0), params)
    register_champion(_run(1.0), params)
    assert _aliases(params) == {CHAMPION_ALIAS: 3, PREVIOUS_ALIAS: 2}
    client = registry_client(params.mlflow.tracking_uri)
    assert restore_previous(client, params.mlflow.model_name) == (2, 3)
    assert _aliases(params) == {CHAMPION_ALIAS: 2, PREVIOUS_ALIAS: 1}
    assert restore_previous(client, params.mlflow.model_name) == (1, 2)
    assert _aliases(params) == {CHAMPION_ALIAS: 1}
    with pytest.raises(LookupError, match="no 'previous'"):
        restore_previous(client, params.mlflow.model_name)


# -- with real processes ---------------------------------------------------------------------

RACER = """
import json, sys, time
from pathlib import Path
from depth_common.config import Params
from depth_common.registry.promotion import crown_challenger, decide_promotion, register_model

uri, name, run_id, delay, gate = sys.argv[1:6]
params = Params().with_overrides([f"mlflow.tracking_uri={uri}", f"mlflow.model_name={name}"])
decided = decide_promotion(run_id, params).promote
Path(gate, run_id).touch()
while len(list(Path(gate).iterdir())) < 2:  # both decided before either registers
    time.sleep(0.05)
time.sleep(float(delay))
reg = register_model(run_id, params)
crowned = crown_challenger(params, reg.version)[0] if reg.promoted else False
print(json.dumps({"decided": decided, "registered": reg.promoted, "crowned": crowned}))
"""


def _racers(params: Params, runs_and_delays, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    gate = tmp_path / "gate"
    gate.mkdir()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                params.mlflow.tracking_uri,
                params.mlflow.model_name,
                run,
                str(delay),
                str(gate),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for run, delay in runs_and_delays
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


@pytest.mark.parametrize("worse_last", [True, False])
def test_two_concurrent_promotions_never_crown_the_worse_model(params, tmp_path, worse_last):
    from mlflow import MlflowClient

    register_champion(_run(3.0), params)
    better, worse = _run(1.0), _run(2.0)
    # Both decide against v1 (both promote); then one registers 1.5 s after the other.
    delays = [(better, 0.0), (worse, 1.5)] if worse_last else [(worse, 0.0), (better, 1.5)]
    results = dict(zip([r for r, _ in delays], _racers(params, delays, tmp_path), strict=True))
    assert results[better]["decided"] and results[worse]["decided"]
    champion = MlflowClient(params.mlflow.tracking_uri).get_model_version_by_alias(
        params.mlflow.model_name, CHAMPION_ALIAS
    )
    assert champion.run_id == better  # whatever the order, the better model is champion
    assert results[better]["crowned"]
    if worse_last:
        assert not results[worse]["registered"]  # re-checked: stood down
    assert CHALLENGER_ALIAS not in _aliases(params)


HOLDER = """
import sys, time
from mlflow import MlflowClient
from depth_common.registry.lock import registry_lock

uri, name, hold, log, ttl = sys.argv[1:6]
client = MlflowClient(uri, uri)
with registry_lock(client, name, "holder", ttl_s=float(ttl), poll_s=0.05):
    with open(log, "a") as fh:
        fh.write(f"in {time.time():.3f}\\n")
    time.sleep(float(hold))
    with open(log, "a") as fh:
        fh.write(f"out {time.time():.3f}\\n")
"""


def test_registry_lock_excludes_across_processes_and_survives_a_killed_holder(params, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    log = tmp_path / "log"
    uri, name = params.mlflow.tracking_uri, params.mlflow.model_name

    def spawn(hold: float, ttl: float) -> subprocess.Popen:
        args = [sys.executable, "-c", HOLDER, uri, name, str(hold), str(log), str(ttl)]
        return subprocess.Popen(args, env=env)

    procs = [spawn(1.0, 60), spawn(1.0, 60), spawn(1.0, 60)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0]
    events = [line.split() for line in log.read_text().splitlines()]
    assert [e[0] for e in events] == ["in", "out"] * 3  # never two inside at once
    # A holder killed inside the section: the next one gets in once its ticket expires.
    log.unlink()
    victim = spawn(60.0, 4)
    while not log.exists():
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    start = time.time()
    assert spawn(0.0, 60).wait(timeout=600) == 0
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["in", "in", "out"]
    assert time.time() - start < 60  # waited for the 4 s ticket, not forever
