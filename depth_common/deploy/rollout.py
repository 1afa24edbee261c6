"""The deploy step: serve a registered challenger version, and let the registry follow serving.

:func:`deploy_model` is what the pipeline's ``deploy`` task runs (and what
``python -m depth_common rollback`` reuses for its replace):

1. the version must still be the registry's ``challenger`` (a better run may have superseded
   it since ``register``: then nothing is served and the report says so);
2. the serving target is held exclusively (local: a file lock on ``export.repository_dir``;
   KServe: a registry lock per InferenceService), and what it serves now is the champion;
3. ``deploy.strategy: replace`` -- or nothing served yet, or the same version again -- smoke-tests
   and switches all traffic; ``canary`` runs :func:`~depth_common.deploy.canary.run_canary`
   with the analysis of :mod:`.analysis` on the probe set of :mod:`.probe`;
4. on success the version is crowned ``champion`` under the promotion lock (``previous`` = the
   one it replaced) and tagged with its serving source; otherwise its ``challenger`` alias is
   withdrawn. Each analysed step's figures go to the challenger's MLflow run (step = the
   traffic percentage) with the Markdown report.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from depth_common.config import Params
from depth_common.deploy.analysis import Thresholds, analyse
from depth_common.deploy.canary import Analyse, CanaryError, CanaryOutcome, run_canary
from depth_common.deploy.probe import VersionEndpoint, make_probe_set, measure
from depth_common.deploy.report import DeployError, DeployResult, write_deploy_report
from depth_common.deploy.smoke import SmokeResult

log = logging.getLogger(__name__)


def make_analyse(params: Params, onnx_path: str | Path) -> Analyse:
    """The analysis of one step: the probe set (at the challenger's input size) to both."""
    from depth_common.export.triton import read_onnx_io

    probes = make_probe_set(read_onnx_io(onnx_path), params.deploy.probe_images)
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


def _registry_aliases(params: Params) -> str:
    from depth_common.registry.aliases import aliases, format_aliases, registry_client

    client = registry_client(params.mlflow.tracking_uri)
    return format_aliases(aliases(client, params.mlflow.model_name))


def _superseded(params: Params, version: int) -> str | None:
    from depth_common.registry.promotion import is_challenger

    if is_challenger(params, version):
        return None
    return f"version {version} is no longer the challenger ({_registry_aliases(params)})"


def _conclude(params: Params, result: DeployResult, run_id: str, source: str) -> DeployResult:
    """Registry moves for the outcome, then MLflow figures; returns the final result."""
    from depth_common.registry import promotion
    from depth_common.registry.aliases import record_source, registry_client

    version = int(result.model_version)
    if result.outcome in ("promoted", "replaced"):
        client = registry_client(params.mlflow.tracking_uri)
        record_source(client, params.mlflow.model_name, version, source)
        crowned, why = promotion.crown_challenger(params, version, run_id)
        if not crowned:  # only when the registry moved under us: say so loudly
            raise DeployError(f"served version {version} but the registry refused it: {why}")
        reason = f"{result.reason}; {why}" if result.reason else why
        result = replace(result, reason=reason)
    elif result.outcome == "rolled back":
        promotion.abandon_challenger(params, version)
    result = replace(result, aliases=_registry_aliases(params))
    _log_to_mlflow(params, run_id, result)
    return result


def _log_to_mlflow(params: Params, run_id: str, result: DeployResult) -> None:
    if not run_id:
        return
    import math
    import time

    from mlflow.entities import Metric

    from depth_common.registry.aliases import registry_client

    client = registry_client(params.mlflow.tracking_uri)  # explicit: no process-wide URI here
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


def _run(target: Any, params: Params, analyse_fn: Analyse, version: int) -> CanaryOutcome:
    def still_wanted() -> str | None:
        from depth_common.registry import promotion
        from depth_common.registry.aliases import registry_client

        why_not = _superseded(params, version)
        if why_not is None:  # still ours: tell later registers the rollout is alive
            client = registry_client(params.mlflow.tracking_uri)
            promotion.keep_in_flight(client, params, version)
        return why_not

    return run_canary(target, params.deploy.canary_steps, analyse_fn, still_wanted)


# -- local ---------------------------------------------------------------------------------------


def _deploy_local(
    params: Params, repository: Path, version: int, onnx_path: Path, analyse_fn: Analyse | None
) -> DeployResult:
    from depth_common.deploy.local import LocalCanary, deploy_local, latest_version, serve_lock

    model, serve_dir = params.export.triton_model_name, Path(params.export.repository_dir)
    atol = params.export.parity_atol
    with serve_lock(serve_dir):
        try:
            champion = latest_version(serve_dir, model)
        except Exception:  # nothing (valid) served yet
            champion = None
        if params.deploy.strategy == "replace" or champion in (None, version):
            result = deploy_local(
                repository, serve_dir, model_name=model, model_version=version,
                onnx_path=onnx_path, atol=atol,
            )  # fmt: skip
            why = "nothing served yet" if champion is None else f"strategy {params.deploy.strategy}"
            return replace(result, outcome="replaced", reason=why)
        target = LocalCanary(repository, serve_dir, model, onnx_path=onnx_path, atol=atol)
        base = DeployResult(
            "local",
            "",
            model,
            str(version),
            str(serve_dir.resolve()),
            SmokeResult(False, "not run"),
        )
        try:
            outcome = _run(target, params, analyse_fn or make_analyse(params, onnx_path), version)
        except CanaryError as exc:
            failed = _canary_result(base, exc.outcome, str(champion))
            raise DeployError(str(exc), replace(failed, smoke=target.smoke or base.smoke)) from exc
        finally:
            target.close()
        endpoint = base.endpoint or "(local Triton, stopped)"
        smoke = target.smoke or base.smoke
        return replace(_canary_result(base, outcome, str(champion)), endpoint=endpoint, smoke=smoke)


# -- KServe --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _serving_lease(params: Params) -> Iterator[None]:
    """One deploy at a time per InferenceService (a registry lock: pods share no filesystem)."""
    from depth_common.registry.aliases import registry_client
    from depth_common.registry.lock import registry_lock

    cfg, ns = params.deploy, params.cluster.namespace
    client = registry_client(params.mlflow.tracking_uri)
    ttl = cfg.timeout_s * (len(cfg.canary_steps) + 3) + 600.0  # the longest a rollout can take
    with registry_lock(
        client,
        params.mlflow.model_name,
        f"{ns}/{cfg.name}",
        timeout_s=ttl,
        ttl_s=ttl,
        kind=f"serving-{ns}.{cfg.name}",
    ):
        yield


def _deploy_kserve(
    params: Params,
    storage_uri: str,
    version: int,
    run_id: str,
    onnx_path: Path,
    *,
    api: Any,
    poll_s: float,
    analyse_fn: Analyse | None,
) -> DeployResult:
    from depth_common.deploy import kserve
    from depth_common.deploy.kserve_canary import KServeCanary, served_model
    from depth_common.deploy.manifests import build_inferenceservice

    cfg, ns, model = params.deploy, params.cluster.namespace, params.export.triton_model_name
    annotations = kserve.model_annotations(params.mlflow.model_name, version, run_id)
    api = api if api is not None else kserve.kubernetes_api()
    live = kserve.get_inferenceservice(api, ns, cfg.name)
    champion = served_model(live) if live is not None else None
    common = {
        "namespace": ns, "model_name": model, "onnx_path": onnx_path,
        "atol": params.export.parity_atol,
    }  # fmt: skip
    if cfg.strategy == "replace" or champion is None or champion.storage_uri == storage_uri:
        result = kserve.deploy_kserve(
            storage_uri, version, cfg, api=api, poll_s=poll_s, annotations=annotations, **common
        )
        why = "nothing served yet" if champion is None else f"strategy {cfg.strategy}"
        return replace(result, outcome="replaced", reason=why)
    isvc = build_inferenceservice(
        "cpu",  # the overlay deploy_kserve uses too
        name=cfg.name,
        namespace=ns,
        storage_uri=storage_uri,
        model_version=version,
        transformer_args=cfg.transformer_args(),
    )
    isvc["metadata"].setdefault("annotations", {}).update(annotations)
    target = KServeCanary(
        api, cfg, isvc, champion, challenger_label=f"v{version}", poll_s=poll_s, **common
    )
    resource = f"{ns}/{cfg.name}"
    base = DeployResult(
        "kserve", "", model, str(version), storage_uri, SmokeResult(False, "not run"), resource,
        rolled_back_to=champion.storage_uri,
    )  # fmt: skip
    try:
        outcome = _run(target, params, analyse_fn or make_analyse(params, onnx_path), version)
    except CanaryError as exc:
        failed = _canary_result(base, exc.outcome, champion.model_version)
        raise DeployError(str(exc), replace(failed, smoke=target.smoke or base.smoke)) from exc
    endpoint = kserve.endpoint_of(target.live) if target.live else ""
    smoke = target.smoke or base.smoke
    return replace(
        _canary_result(base, outcome, champion.model_version), endpoint=endpoint, smoke=smoke
    )


# -- the step ------------------------------------------------------------------------------------


def deploy_model(
    params: Params,
    *,
    version: int,
    run_id: str,
    onnx_path: str | Path,
    repository: str | Path | None = None,
    storage_uri: str | None = None,
    api: Any = None,
    poll_s: float = 2.0,
    analyse_fn: Analyse | None = None,
) -> DeployResult:
    """Serve registered ``version`` on ``params.deploy.target``; see the module docstring.

    ``repository`` is the Triton repository directory (local target), ``storage_uri`` its
    object-store URI (KServe). Returns the result (promoted, replaced, rolled back after a
    failed analysis, or superseded); raises :class:`DeployError` (after rolling back and
    withdrawing the challenger) when the rollout itself failed.
    """
    from depth_common.registry import promotion

    onnx_path = Path(onnx_path)
    target = params.deploy.target
    source = str(Path(repository).resolve()) if target == "local" else str(storage_uri)
    why_not = _superseded(params, version)
    if why_not:
        smoke = SmokeResult(False, "not run: superseded")
        result = DeployResult(target, "", params.export.triton_model_name, str(version), source,
                              smoke, outcome="superseded", reason=why_not)  # fmt: skip
        return _conclude(params, result, run_id, source)
    from depth_common.registry.aliases import registry_client

    promotion.keep_in_flight(registry_client(params.mlflow.tracking_uri), params, version)
    try:
        if target == "local":
            result = _deploy_local(params, Path(source), version, onnx_path, analyse_fn)
        else:
            with _serving_lease(params):
                result = _deploy_kserve(
                    params, source, version, run_id, onnx_path,
                    api=api, poll_s=poll_s, analyse_fn=analyse_fn,
                )  # fmt: skip
    except DeployError as exc:
        promotion.abandon_challenger(params, version)
        if exc.result is not None:
            failed = replace(exc.result, outcome="failed", aliases=_registry_aliases(params))
            _log_to_mlflow(params, run_id, failed)
            exc.result = failed
        raise
    return _conclude(params, result, run_id, source)


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
        lines.append(f"registry aliases: {_registry_aliases(params)}")
    except Exception as exc:  # the summary must not hide the run's own outcome
        lines.append(f"registry aliases: unknown ({exc})")
    return lines
