"""The deploy step: serve a registered challenger version, and let the registry follow serving.

One flow over a :class:`~depth_common.deploy.target.ServingTarget` (local Triton or KServe,
built by :func:`serving_target`); :func:`deploy_model` is what the pipeline's ``deploy`` task
runs:

1. the version must still be the registry's ``challenger`` (a better run may have superseded
   it since ``register``: then nothing is served and the report says so);
2. the target's lease is held (local: a file lock on ``export.repository_dir``; KServe: a
   registry lock per InferenceService) until the registry has followed, and what the target
   serves now is the champion;
3. ``deploy.strategy: replace`` -- or nothing served yet, or the same version again -- smoke-tests
   and switches all traffic; ``canary`` runs :func:`~depth_common.deploy.canary.run_canary`
   with the analysis of :mod:`.analysis` on the caller's probe set (:mod:`.probe`);
4. on success the version is crowned ``champion`` under the promotion lock (``previous`` = the
   one it replaced) and tagged with its serving source; otherwise its ``challenger`` alias is
   withdrawn. Each analysed step's figures go to the challenger's MLflow run (step = the
   traffic percentage) with the Markdown report.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric

from depth_common.config import Params
from depth_common.deploy.analysis import Thresholds, analyse
from depth_common.deploy.canary import Analyse, CanaryOutcome, run_canary
from depth_common.deploy.kserve_canary import KServeTarget
from depth_common.deploy.local import LocalTarget
from depth_common.deploy.probe import ProbeSet, VersionEndpoint, measure
from depth_common.deploy.report import DeployResult, write_deploy_report
from depth_common.deploy.smoke import SmokeResult
from depth_common.deploy.target import Release, Served, ServingTarget
from depth_common.errors import CanaryError, DeployError
from depth_common.registry import promotion
from depth_common.registry.registry import Registry

log = logging.getLogger(__name__)


def serving_target(
    params: Params, *, api: Any = None, poll_s: float = 2.0, image: np.ndarray | None = None
) -> ServingTarget:
    """The target of ``params.deploy.target``; ``api`` is the Kubernetes client (KServe; default
    from the service account or ``~/.kube/config``), ``image`` the smoke tests' input."""
    model, atol = params.export.triton_model_name, params.export.parity_atol
    if params.deploy.target == "local":
        return LocalTarget(params.export.repository_dir, model, atol=atol, image=image)
    return KServeTarget(
        api, params.deploy, namespace=params.cluster.namespace, model_name=model,
        registered_model=params.mlflow.model_name, atol=atol, poll_s=poll_s, image=image,
    )  # fmt: skip


def make_analyse(params: Params, probes: ProbeSet) -> Analyse:
    """The analysis of one step: ``probes`` (at the challenger's input size) sent to both."""
    thresholds = Thresholds.from_config(params.deploy)

    def run(champion: VersionEndpoint, challenger: VersionEndpoint, percent: int):
        champ, chall = measure(champion, challenger, probes, timeout_s=30.0)
        return analyse(
            champ,
            chall,
            probes.depths,
            thresholds,
            percent,
            min_depth=params.data.min_depth,
            max_depth=params.data.max_depth,
        )

    return run


def _superseded(params: Params, registry: Registry, version: int) -> str | None:
    if promotion.is_challenger(params, version, registry=registry):
        return None
    return f"version {version} is no longer the challenger ({registry.format_aliases()})"


def _conclude(
    params: Params, registry: Registry, result: DeployResult, release: Release
) -> DeployResult:
    """Registry moves for the outcome, then MLflow figures; returns the final result."""
    version = release.version
    if result.outcome in ("promoted", "replaced"):
        registry.record_source(version, release.source)
        holder = release.run_id or f"crown v{version}"
        crowned, why = promotion.crown_challenger(params, version, holder, registry=registry)
        if not crowned:  # only when the registry moved under us: say so loudly
            raise DeployError(f"served version {version} but the registry refused it: {why}")
        reason = f"{result.reason}; {why}" if result.reason else why
        result = replace(result, reason=reason)
    elif result.outcome == "rolled back":
        promotion.abandon_challenger(params, version, registry=registry)
    result = replace(result, aliases=registry.format_aliases())
    _log_to_mlflow(registry, release.tracking_run_id or release.run_id, result)
    return result


def _log_to_mlflow(registry: Registry, run_id: str, result: DeployResult) -> None:
    if not run_id:
        return

    client = registry.client
    now = int(time.time() * 1000)
    batch = [
        Metric(key, float(value), now, step.traffic_percent)
        for step in result.steps
        for key, value in step.metrics().items()
        if math.isfinite(value)  # a figure that could not be measured is left out, not faked
    ]
    if batch:
        client.log_batch(run_id, metrics=batch)
    client.set_tag(run_id, "deploy.outcome", result.outcome or "failed")
    client.set_tag(run_id, "deploy.strategy", result.strategy)
    client.log_text(run_id, write_deploy_report(result), "deploy/report.md")


def _canary_result(base: DeployResult, outcome: CanaryOutcome, champion: str) -> DeployResult:
    return replace(
        base,
        strategy="canary",
        outcome="promoted" if outcome.promoted else "rolled back",
        reason=outcome.reason,
        champion_version=champion,
        steps=outcome.steps,
        rolled_back_to=None if outcome.promoted else base.rolled_back_to,
    )


def _canary(
    params: Params,
    registry: Registry,
    target: ServingTarget,
    release: Release,
    champion: Served,
    analyse_fn: Analyse,
) -> DeployResult:
    """The canary of ``release`` against ``champion``: promoted or rolled back (returned), or
    failed on the way (:class:`DeployError`, after the rollback)."""

    def still_wanted() -> str | None:
        why_not = _superseded(params, registry, release.version)
        if why_not is None:  # still ours: tell later registers the rollout is alive
            promotion.keep_in_flight(params, release.version, registry=registry)
        return why_not

    rollout = target.canary(release, champion)
    base = DeployResult(
        target.kind, "", params.export.triton_model_name, str(release.version), release.source,
        SmokeResult(False, "not run"), target.resource, rolled_back_to=rollout.restores,
    )  # fmt: skip
    try:
        outcome = run_canary(rollout, params.deploy.canary_steps, analyse_fn, still_wanted)
    except CanaryError as exc:
        failed = _canary_result(base, exc.outcome, champion.version)
        raise DeployError(str(exc), replace(failed, smoke=rollout.smoke or base.smoke)) from exc
    finally:
        rollout.close()
    return replace(
        _canary_result(base, outcome, champion.version),
        endpoint=rollout.endpoint(),
        smoke=rollout.smoke or base.smoke,
    )


def _superseded_result(
    params: Params, target: ServingTarget, release: Release, why: str
) -> DeployResult:
    smoke = SmokeResult(False, "not run: superseded")
    return DeployResult(target.kind, "", params.export.triton_model_name, str(release.version),
                        release.source, smoke, outcome="superseded", reason=why)  # fmt: skip


def _roll_out(
    params: Params,
    registry: Registry,
    target: ServingTarget,
    release: Release,
    analyse_fn: Analyse | None,
    probes: ProbeSet | None,
) -> DeployResult:
    """Under the lease: replace or canary, by strategy and by what serves now (nothing, when
    a better run took the challenger alias while this one waited for the lease)."""
    why_not = _superseded(params, registry, release.version)
    if why_not:
        return _superseded_result(params, target, release, why_not)
    strategy = params.deploy.strategy
    champion = target.describe()
    if (
        strategy == "replace"
        or champion is None
        or champion.version == str(release.version)
        or champion.source == release.source
    ):
        result = target.serve(release)
        why = "nothing served yet" if champion is None else f"strategy {strategy}"
        return replace(result, outcome="replaced", reason=why)
    if analyse_fn is None:
        if probes is None:
            raise ValueError("probes: none given; a canary analyses each step on a probe set")
        analyse_fn = make_analyse(params, probes)
    return _canary(params, registry, target, release, champion, analyse_fn)


def deploy_model(
    params: Params,
    target: ServingTarget,
    release: Release,
    *,
    probes: ProbeSet | None = None,
    registry: Registry | None = None,
    analyse_fn: Analyse | None = None,
) -> DeployResult:
    """Serve ``release`` (a registered version) on ``target``; see the module docstring.

    ``probes`` are the canary's probe images with their true depth (the caller renders them at
    the model's input size), ``analyse_fn`` replaces the analysis on them. Returns the result
    (promoted, replaced, rolled back after a failed analysis, or superseded); raises
    :class:`DeployError` (after rolling back and withdrawing the challenger) when the rollout
    itself failed.
    """
    registry = registry if registry is not None else Registry.from_params(params)
    version = release.version
    why_not = _superseded(params, registry, version)
    if why_not:  # at once, without waiting for the lease
        result = _superseded_result(params, target, release, why_not)
        return _conclude(params, registry, result, release)
    promotion.keep_in_flight(params, version, registry=registry)
    # The registry follows under the same lease: a rollback waiting for it then sees the
    # aliases that match what serves.
    with target.lease(registry):
        try:
            result = _roll_out(params, registry, target, release, analyse_fn, probes)
        except DeployError as exc:
            promotion.abandon_challenger(params, version, registry=registry)
            if exc.result is not None:
                failed = replace(exc.result, outcome="failed", aliases=registry.format_aliases())
                _log_to_mlflow(registry, release.tracking_run_id or release.run_id, failed)
                exc.result = failed
            raise
        return _conclude(params, registry, result, release)


def summary_of_deploy(executor_output: dict[str, Any], params: Params) -> list[str]:
    """Lines for a local run's summary: the deploy report (its step tables) and the aliases.

    ``executor_output`` is the deploy task's ``executor_output.json`` (empty: no deploy ran).
    """
    lines: list[str] = []
    arts = executor_output.get("artifacts", {}).get("report", {}).get("artifacts", [])
    if arts:
        path = Path(arts[0].get("uri", ""))
        if path.is_file():
            lines += ["", path.read_text().rstrip()]
    try:
        lines.append(f"registry aliases: {Registry.from_params(params).format_aliases()}")
    except Exception as exc:  # the summary must not hide the run's own outcome
        lines.append(f"registry aliases: unknown ({exc})")
    return lines
