"""Model promotion through the MLflow registry: decide, register under a lock, crown.

The registry holds the state (aliases of ``params.mlflow.model_name``, default ``ViT+Decoder``,
see :mod:`depth_common.registry.aliases`): ``champion`` is the model serving all traffic. A run is
promoted when its ``test_rmse`` (metres) beats the champion's by more than
``params.promotion.min_improvement`` (metres), or when there is no champion yet.

Race-free: two pipeline runs finishing together must never leave the worse model as champion.
``decide`` is only a first look; :func:`register_model` takes the registry's promotion lock
(:mod:`depth_common.registry.lock`), reads the champion and any challenger in flight again and
re-makes the decision before giving the ``challenger`` alias, and :func:`crown_challenger`
(called by the deploy step once the challenger serves) re-checks under the same lock before
``champion`` moves. So ``champion`` only ever moves to a version that beat the champion of that
moment.

Pure library code: real MLflow client calls, no kfp. Every function takes an optional
:class:`~depth_common.registry.registry.Registry` (one client for a whole deploy); without it,
one is opened on ``params.mlflow.tracking_uri`` (a Kubernetes Secret may add credentials through
MLflow's own environment variables, e.g. ``MLFLOW_TRACKING_TOKEN``; nothing here reads or logs
them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from depth_common.config import Params
from depth_common.errors import PromotionError
from depth_common.registry.aliases import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    format_aliases,
    is_missing,
)
from depth_common.registry.lineage import lineage_tags
from depth_common.registry.registry import Registry

#: Tag of a challenger version: until when (epoch seconds) its rollout counts as in flight.
IN_FLIGHT_TAG = "in_flight_until"
#: Version tag: the MLflow 3 logged model (``m-...``) the version was registered from.
LOGGED_MODEL_TAG = "logged_model_id"
#: Where train logs the model inside its run (``runs:/<run_id>/model``).
MODEL_ARTIFACT_PATH = "model"
#: The metric promotion compares (metres, lower is better).
PROMOTION_METRIC = "test_rmse"


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


def _registry(params: Params, registry: Registry | None) -> Registry:
    return registry if registry is not None else Registry.from_params(params)


def _run_metric(client, run_id: str, role: str) -> tuple[dict[str, float], float]:
    """All metrics of ``run_id`` and its ``test_rmse``; a clear error when either is missing."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if is_missing(exc):
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


def champion_version(params: Params, *, registry: Registry | None = None) -> int | None:
    """The version number holding alias ``champion`` of ``params.mlflow.model_name``, or None."""
    mv = _registry(params, registry).version_by_alias(CHAMPION_ALIAS)
    return None if mv is None else int(mv.version)


def decide_promotion(run_id: str, params: Params, *, registry: Registry | None = None) -> Decision:
    """Should run ``run_id`` replace the current champion?

    Promote when there is no champion, or when the challenger's ``test_rmse`` is lower than
    the champion's minus ``params.promotion.min_improvement`` (strictly: an equal RMSE keeps
    the champion). A run that already is the champion is promoted again so that a retried
    pipeline finishes its (idempotent) promotion steps. Raises :class:`PromotionError` when
    the challenger or the champion's run lacks ``test_rmse``.
    """
    reg = _registry(params, registry)
    client, name = reg.client, reg.model_name
    margin = params.promotion.min_improvement
    _, challenger = _run_metric(client, run_id, "challenger")
    mv = reg.version_by_alias(CHAMPION_ALIAS)
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


@dataclass(frozen=True)
class Registration:
    """Outcome of :func:`register_model`: ``version`` is None when not promoted after all."""

    promoted: bool
    version: int | None
    reason: str


def _in_flight(reg: Registry, run_id: str):  # -> (ModelVersion, rmse) | None
    """The live challenger of another run (its rollout has not ended nor expired), or None."""
    mv = reg.version_by_alias(CHALLENGER_ALIAS)
    if mv is None or mv.run_id == run_id:
        return None
    if float(mv.tags.get(IN_FLIGHT_TAG, "0") or 0) <= time.time():
        return None  # its run died between register and the end of its deploy
    where = f"challenger {reg.model_name!r} version {mv.version}:"
    _, rmse = _run_metric(reg.client, mv.run_id, where)
    return mv, rmse


def _logged_model_source(client, run_id: str) -> tuple[str, str | None]:
    """(source URI, MLflow 3 logged-model id) of the model logged at ``runs:/<run_id>/model``.

    What ``mlflow.register_model`` resolves, through the client: the run's logged model named
    ``model`` (the newest), else an ``MLmodel`` directory among the run's own artifacts.
    """
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"name = '{MODEL_ARTIFACT_PATH}'"
    )
    models = [m for m in found if m.source_run_id == run_id]
    if models:
        newest = max(models, key=lambda m: m.creation_timestamp)
        # The logged model's storage location, not "models:/<id>": MLflow's SQL store resolves
        # a models:/ source with a client on the process-wide tracking URI, not this client's.
        return newest.artifact_location, newest.model_id
    listed = {a.path for a in client.list_artifacts(run_id, MODEL_ARTIFACT_PATH)}
    if f"{MODEL_ARTIFACT_PATH}/MLmodel" not in listed:
        raise PromotionError(
            f"run {run_id!r} has no model logged at {MODEL_ARTIFACT_PATH!r} "
            "(train logs it when tracking is on)"
        )
    return f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}", None


def _register_version(reg: Registry, run_id: str, pipeline_run: str) -> int:
    """The registry version of ``runs:/<run_id>/model`` (created once), tagged with test_*."""

    client, name = reg.client, reg.model_name
    metrics, _ = _run_metric(client, run_id, "challenger")
    tags = {k: f"{v:.6g}" for k, v in sorted(metrics.items()) if k.startswith("test_")}
    tags.update(lineage_tags(client, run_id))  # code, data, params, runs, checkpoint
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
        source, model_id = _logged_model_source(client, run_id)
        mv = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
        version = int(mv.version)
        if model_id:  # the link MLflow keeps only for models:/ sources (see _logged_model_source)
            tags[LOGGED_MODEL_TAG] = model_id
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return version


def register_model(
    run_id: str, params: Params, pipeline_run: str = "", *, registry: Registry | None = None
) -> Registration:
    """Register ``runs:/<run_id>/model`` as the ``challenger``, if it still deserves it.

    Under the registry's promotion lock: the champion is read again and the decision of
    :func:`decide_promotion` re-made (another run may have been crowned since ``decide``), and
    a live challenger of another run (a rollout in flight) must be beaten too -- by the same
    rule -- or this run stands down. When promoted, the version (created once per run: a retry
    reuses it) gets alias ``challenger`` and tag ``in_flight_until`` (now +
    ``promotion.challenger_ttl_s``); the deploy step crowns it ``champion`` once it serves.
    """
    reg = _registry(params, registry)
    margin = params.promotion.min_improvement
    with reg.promotion_lock(pipeline_run or run_id):
        decision = decide_promotion(run_id, params, registry=reg)
        if not decision.promote:
            return Registration(
                False, None, f"re-checked under the registry lock: {decision.reason}"
            )
        rival = _in_flight(reg, run_id)
        if rival is not None and not decision.challenger_rmse < rival[1] - margin:
            mv, rmse = rival
            return Registration(
                False,
                None,
                f"version {mv.version} (run {mv.run_id}, {PROMOTION_METRIC} {rmse:.4f} m) is "
                f"being rolled out and is not beaten by {decision.challenger_rmse:.4f} m - "
                f"min_improvement {margin:g} m: standing down",
            )
        version = _register_version(reg, run_id, pipeline_run)
        reg.set_challenger(version)
        keep_in_flight(params, version, registry=reg)
    superseded = f"; supersedes in-flight version {rival[0].version}" if rival else ""
    return Registration(True, version, f"{decision.reason}{superseded}")


def keep_in_flight(params: Params, version: int, *, registry: Registry | None = None) -> None:
    """Mark ``version``'s rollout alive for another ``promotion.challenger_ttl_s`` seconds."""
    until = f"{time.time() + params.promotion.challenger_ttl_s:.0f}"
    _registry(params, registry).set_version_tag(version, IN_FLIGHT_TAG, until)


def is_challenger(params: Params, version: int, *, registry: Registry | None = None) -> bool:
    """Is ``version`` still the ``challenger`` (not superseded by a better run)?"""
    return _registry(params, registry).aliases().get(CHALLENGER_ALIAS) == int(version)


def crown_challenger(
    params: Params, version: int, holder: str = "", *, registry: Registry | None = None
) -> tuple[bool, str]:
    """After a successful rollout: ``champion`` → ``version`` (``previous`` ← the old one).

    Under the promotion lock, and only if ``version`` still is the challenger and still beats
    the champion of this moment; otherwise nothing moves. Returns (crowned, why).
    """
    reg = _registry(params, registry)
    with reg.promotion_lock(holder or f"crown v{version}"):
        current = reg.aliases()
        if current.get(CHALLENGER_ALIAS) != int(version):
            return (
                False,
                f"version {version} is no longer the challenger ({format_aliases(current)})",
            )
        decision = decide_promotion(reg.version(version).run_id, params, registry=reg)
        if not decision.promote:
            return False, decision.reason
        former = reg.crown(version)
    return True, f"version {version} is champion" + (f", previous v{former}" if former else "")


def abandon_challenger(params: Params, version: int, *, registry: Registry | None = None) -> bool:
    """The rollout of ``version`` ended without promotion: clear its ``challenger`` alias."""
    reg = _registry(params, registry)
    with reg.promotion_lock(f"abandon v{version}"):
        return reg.withdraw_challenger(version)


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
