"""Rollback's registry rules against a real MLflow SQLite store, on a recording serving target
(the local and KServe targets themselves are exercised in test_rollout.py and test_kserve.py):
the aliases follow only what was served, and never when they moved while it served."""

from __future__ import annotations

import itertools

import pytest
from doubles.serving_target import RecordingTarget

from depth_common.deploy.rollback import rollback, status
from depth_common.errors import DeployError
from depth_common.registry.aliases import CHAMPION_ALIAS, PREVIOUS_ALIAS, REPLACED_TAG, SOURCE_TAG
from depth_common.registry.registry import Registry

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('rollback') / 'mlflow.db'}"


@pytest.fixture
def registry(store: str) -> Registry:
    """Versions 1-3 served one after the other: champion v3, previous v2 (which replaced v1)."""
    reg = Registry(store, f"Depth{next(_names)}")
    reg.client.create_registered_model(reg.model_name)
    for v in (1, 2, 3):
        reg.client.create_model_version(reg.model_name, f"file:///models/v{v}")
        reg.record_source(v, f"/srv/repo-v{v}")
        if v > 1:
            reg.set_version_tag(v, REPLACED_TAG, str(v - 1))
    reg.client.set_registered_model_alias(reg.model_name, CHAMPION_ALIAS, "3")
    reg.client.set_registered_model_alias(reg.model_name, PREVIOUS_ALIAS, "2")
    return reg


def test_rollback_serves_previous_then_moves_the_aliases(registry: Registry) -> None:
    target = RecordingTarget()
    result = rollback(registry, target)
    assert [(r.version, r.source) for r in target.served] == [(2, "/srv/repo-v2")]
    assert registry.aliases() == {CHAMPION_ALIAS: 2, PREVIOUS_ALIAS: 1}
    assert (result.outcome, result.aliases) == ("rolled back", "champion v2, previous v1")
    assert result.reason == "version 3 replaced by the previous champion v2"
    rollback(registry, target)
    assert [r.version for r in target.served] == [2, 1] and target.leases == 2
    assert registry.aliases() == {CHAMPION_ALIAS: 1}
    with pytest.raises(DeployError, match="no 'previous' version to restore .champion v1"):
        rollback(registry, target)
    lines = status(registry, target)
    assert lines[0] == "recorded: [2, 1]" and lines[2].startswith("  champion   v1")
    assert "source /srv/repo-v1" in lines[2]


def test_a_failed_serve_leaves_the_aliases(registry: Registry) -> None:
    def fail() -> None:
        raise DeployError("smoke test failed")

    with pytest.raises(DeployError, match="smoke test failed"):
        rollback(registry, RecordingTarget(fail))
    assert registry.aliases() == {CHAMPION_ALIAS: 3, PREVIOUS_ALIAS: 2}


def test_aliases_moved_by_a_writer_outside_the_lease_are_left_as_found(
    registry: Registry,
) -> None:
    def crown_v1() -> None:  # e.g. someone moving the alias by hand in the MLflow UI
        registry.client.set_registered_model_alias(registry.model_name, CHAMPION_ALIAS, "1")

    with pytest.raises(DeployError, match=r"registry moved meanwhile \(now champion v1, prev"):
        rollback(registry, RecordingTarget(crown_v1))
    assert registry.aliases() == {CHAMPION_ALIAS: 1, PREVIOUS_ALIAS: 2}


def test_a_previous_never_served_cannot_be_restored(registry: Registry) -> None:
    registry.client.delete_model_version_tag(registry.model_name, "2", SOURCE_TAG)
    with pytest.raises(DeployError, match="version 2 has no serving_source tag"):
        rollback(registry, RecordingTarget())
    assert registry.aliases() == {CHAMPION_ALIAS: 3, PREVIOUS_ALIAS: 2}
