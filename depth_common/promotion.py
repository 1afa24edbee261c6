"""Model promotion through the MLflow registry: decide, register, look up the champion.

The seed promoted "the latest run if it is the best of all finished runs with ``test_rmse``".
Here the registry holds that state: the version of the registered model
``params.mlflow.model_name`` (default ``ViT+Decoder``) carrying alias ``champion`` is the model
in production, and a challenger run is promoted when its ``test_rmse`` (metres) beats the
champion's by more than ``params.promotion.min_improvement`` (metres), or when there is no
champion yet. The previous champion keeps alias ``previous`` so a rollback is one alias move.

Pure library code: real MLflow client calls, no kfp. Every function takes the tracking URI
from ``params.mlflow.tracking_uri`` (a Kubernetes Secret may add credentials through MLflow's
own environment variables, e.g. ``MLFLOW_TRACKING_TOKEN``; nothing here reads or logs them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from depth_common.config import Params

CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
#: Where train logs the model inside its run (``runs:/<run_id>/model``).
MODEL_ARTIFACT_PATH = "model"
#: The metric promotion compares (metres, lower is better).
PROMOTION_METRIC = "test_rmse"


class PromotionError(RuntimeError):
    """The registry or a run is not in a state promotion can decide on (the message says why)."""


@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`decide_promotion`.

    ``challenger_rmse`` / ``champion_rmse`` are test RMSE in metres; the champion fields are
    ``None`` when the registered model has no ``champion`` alias yet.
    """

    promote: bool
    reason: str
    challenger_rmse: float
    champion_rmse: float | None = None
    champion_version: int | None = None
    champion_run_id: str | None = None


def _client(params: Params):  # -> mlflow.MlflowClient (imported lazily: mlflow is slow to import)
    from mlflow import MlflowClient

    uri = params.mlflow.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _is_missing(exc: Exception) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    return isinstance(exc, MlflowException) and exc.error_code == ErrorCode.Name(
        RESOURCE_DOES_NOT_EXIST
    )


def _run_metric(client, run_id: str, role: str) -> tuple[dict[str, float], float]:
    """All metrics of ``run_id`` and its ``test_rmse``; a clear error when either is missing."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if _is_missing(exc):
            raise PromotionError(f"{role} run {run_id!r}: no such MLflow run") from None
        raise
    metrics = dict(run.data.metrics)
    value = metrics.get(PROMOTION_METRIC)
    if value is None or not math.isfinite(value):
        raise PromotionError(
            f"{role} run {run_id!r} has no finite {PROMOTION_METRIC!r} metric "
            f"(got {value!r}); evaluate logs test_* metrics to the training run"
        )
    return metrics, float(value)


def _champion(client, name: str):  # -> ModelVersion | None
    try:
        model = client.get_registered_model(name)
    except Exception as exc:
        if _is_missing(exc):  # nothing registered under this name yet
            return None
        raise
    if CHAMPION_ALIAS not in (model.aliases or {}):
        return None
    return client.get_model_version_by_alias(name, CHAMPION_ALIAS)


def champion_version(params: Params) -> int | None:
    """The version number holding alias ``champion`` of ``params.mlflow.model_name``, or None."""
    mv = _champion(_client(params), params.mlflow.model_name)
    return None if mv is None else int(mv.version)


def decide_promotion(run_id: str, params: Params) -> Decision:
    """Should run ``run_id`` replace the current champion?

    Promote when there is no champion, or when the challenger's ``test_rmse`` is lower than
    the champion's minus ``params.promotion.min_improvement`` (strictly: an equal RMSE keeps
    the champion). A run that already is the champion is promoted again so that a retried
    pipeline finishes its (idempotent) promotion steps. Raises :class:`PromotionError` when
    the challenger or the champion's run lacks ``test_rmse``.
    """
    client = _client(params)
    name = params.mlflow.model_name
    margin = params.promotion.min_improvement
    _, challenger = _run_metric(client, run_id, "challenger")
    mv = _champion(client, name)
    if mv is None:
        return Decision(
            True,
            f"no champion yet for {name!r}: promoting run {run_id} "
            f"({PROMOTION_METRIC} {challenger:.4f} m)",
            challenger,
        )
    version = int(mv.version)
    if not mv.run_id:
        raise PromotionError(
            f"champion {name!r} version {version} has no source run, so its "
            f"{PROMOTION_METRIC} is unknown; move alias {CHAMPION_ALIAS!r} to a version "
            "registered from a run"
        )
    _, champion = _run_metric(client, mv.run_id, f"champion {name!r} version {version}:")
    common = {
        "challenger_rmse": challenger,
        "champion_rmse": champion,
        "champion_version": version,
        "champion_run_id": mv.run_id,
    }
    if mv.run_id == run_id:
        return Decision(
            True,
            f"run {run_id} already is champion version {version}; "
            "re-running the promotion steps (they are idempotent)",
            **common,
        )
    threshold = champion - margin
    if challenger < threshold:
        return Decision(
            True,
            f"{PROMOTION_METRIC} {challenger:.4f} m < champion v{version}'s {champion:.4f} m"
            f" - min_improvement {margin:g} m: promoting run {run_id}",
            **common,
        )
    return Decision(
        False,
        f"{PROMOTION_METRIC} {challenger:.4f} m is not below champion v{version}'s "
        f"{champion:.4f} m - min_improvement {margin:g} m: keeping version {version}",
        **common,
    )


def register_champion(run_id: str, params: Params, pipeline_run: str = "") -> int:
    """Register ``runs:/<run_id>/model`` and give it alias ``champion``; return its version.

    The former champion (if another version) gets alias ``previous``. The version is tagged
    with the run's ``test_*`` metrics and ``pipeline_run`` (the orchestrator's run name or id;
    empty = not tagged). Idempotent: a run already registered keeps its version (no new one).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(params)
    name = params.mlflow.model_name
    metrics, _ = _run_metric(client, run_id, "challenger")
    tags = {k: f"{v:.6g}" for k, v in sorted(metrics.items()) if k.startswith("test_")}
    if pipeline_run:
        tags["pipeline_run"] = pipeline_run

    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = min(int(mv.version) for mv in existing)
    else:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "ALREADY_EXISTS" not in str(
                exc.error_code
            ):
                raise
        # mlflow.register_model resolves runs:/ URIs to the run's logged model (MLflow 3
        # LoggedModel or an MLmodel directory); it uses the process-wide URIs, so set them.
        mlflow.set_tracking_uri(params.mlflow.tracking_uri)
        mlflow.set_registry_uri(params.mlflow.tracking_uri)
        try:
            mv = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}", name)
        except MlflowException as exc:
            raise PromotionError(
                f"run {run_id!r} has no model logged at {MODEL_ARTIFACT_PATH!r} "
                f"(train logs it when tracking is on): {exc.message}"
            ) from None
        version = int(mv.version)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)

    current = _champion(client, name)
    if current is None or int(current.version) != version:
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS_ALIAS, current.version)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    return version


def format_decision(decision: Decision, model_name: str) -> str:
    """A short Markdown report of ``decision`` (for the pipeline UI and the run summary)."""
    verdict = "**promote**" if decision.promote else "**keep the champion**"
    champ = (
        "none"
        if decision.champion_version is None
        else f"version {decision.champion_version} ({decision.champion_rmse:.4f} m)"
    )
    return (
        f"# Promotion decision: {verdict}\n\n"
        f"| | |\n| --- | --- |\n"
        f"| registered model | `{model_name}` |\n"
        f"| challenger {PROMOTION_METRIC} | {decision.challenger_rmse:.4f} m |\n"
        f"| champion | {champ} |\n\n"
        f"{decision.reason}\n"
    )
