"""decide_promotion / register_champion against a real MLflow SQLite store (no mocks).

One store per module (creating the schema costs seconds); each test uses its own registered
model name so tests stay independent.
"""

from __future__ import annotations

import itertools

import pytest

from depth_common.config import Params
from depth_common.promotion import (
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    PromotionError,
    champion_version,
    decide_promotion,
    format_decision,
    register_champion,
)

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
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
