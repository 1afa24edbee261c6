"""Day-2 commands on the serving target, with the pipeline's own code: rollback and status.

``python -m depth_common rollback`` serves the registry's ``previous`` version again (from the
``serving_source`` it was crowned with), smoke-tested, on the target of ``params.deploy``,
holding the same serving lock as the deploy step, then moves the aliases back
(:func:`depth_common.registry.aliases.restore_previous`). ``status`` says what serves, which
registered version, and the canary's traffic share.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from depth_common.config import Params
from depth_common.deploy.report import DeployError, DeployResult
from depth_common.registry.aliases import (
    ALIASES,
    PREVIOUS_ALIAS,
    SOURCE_TAG,
    aliases,
    format_aliases,
    registry_client,
    restore_previous,
    source_of,
)
from depth_common.registry.store import require_sqlite_store


def _previous(params: Params) -> tuple[Any, int, str]:
    """(client, previous version, its serving source); DeployError when there is none."""
    require_sqlite_store(params.mlflow.tracking_uri)  # a mistyped URI creates no store
    client = registry_client(params.mlflow.tracking_uri)
    name = params.mlflow.model_name
    previous = aliases(client, name).get(PREVIOUS_ALIAS)
    if previous is None:
        raise DeployError(f"registered model {name!r} has no {PREVIOUS_ALIAS!r} version to restore")
    source = source_of(client, name, previous)
    if not source:
        raise DeployError(
            f"{name!r} version {previous} has no serving_source tag: it was never served by the "
            "deploy step, so there is no repository to serve it from"
        )
    return client, previous, source


def rollback(params: Params, *, api: Any = None, poll_s: float = 2.0) -> DeployResult:
    """Serve ``previous`` again on ``params.deploy.target``; aliases follow. Returns the result."""
    from depth_common.registry.promotion import promotion_lock

    client, previous, source = _previous(params)
    model = params.export.triton_model_name
    if params.deploy.target == "local":
        from depth_common.deploy.local import deploy_local, serve_lock

        repo = Path(source)
        if not repo.is_dir():
            raise DeployError(f"{repo}: the repository of version {previous} is gone")
        onnx = repo / model / str(previous) / "model.onnx"
        with serve_lock(params.export.repository_dir):
            result = deploy_local(
                repo, params.export.repository_dir, model_name=model, model_version=previous,
                onnx_path=onnx if onnx.is_file() else None, atol=params.export.parity_atol,
            )  # fmt: skip
    else:
        from depth_common.deploy.kserve import deploy_kserve, model_annotations
        from depth_common.deploy.rollout import _serving_lease

        run_id = client.get_model_version(params.mlflow.model_name, str(previous)).run_id
        annotations = model_annotations(params.mlflow.model_name, previous, run_id)
        with _serving_lease(params):
            result = deploy_kserve(
                source, previous, params.deploy, namespace=params.cluster.namespace,
                model_name=model, api=api, poll_s=poll_s, annotations=annotations,
            )  # fmt: skip
    with promotion_lock(client, params, f"rollback to v{previous}"):
        restored, rolled_back = restore_previous(client, params.mlflow.model_name)
    now = format_aliases(aliases(client, params.mlflow.model_name))
    return replace(
        result,
        outcome="rolled back",
        reason=f"version {rolled_back} replaced by the previous champion v{restored}",
        aliases=now,
    )


def _registry_lines(params: Params) -> list[str]:
    require_sqlite_store(params.mlflow.tracking_uri)  # status only reads: it creates no store
    client = registry_client(params.mlflow.tracking_uri)
    name = params.mlflow.model_name
    current = aliases(client, name)
    lines = [f"registered model {name!r} ({params.mlflow.tracking_uri}):"]
    for alias in ALIASES:
        if alias not in current:
            lines.append(f"  {alias:<10} -")
            continue
        mv = client.get_model_version(name, str(current[alias]))
        rmse = mv.tags.get("test_rmse", "?")
        lines.append(
            f"  {alias:<10} v{mv.version}  run {mv.run_id}  test_rmse {rmse}  "
            f"source {mv.tags.get(SOURCE_TAG, '-')}"
        )
    return lines


def _local_lines(params: Params) -> list[str]:
    serve_dir = Path(params.export.repository_dir)
    model_dir = serve_dir / params.export.triton_model_name
    versions = sorted(p.name for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        return [f"local: nothing served at {serve_dir} (no {model_dir.name}/<version>/)"]
    return [f"local: {serve_dir} serves {model_dir.name} version(s) {', '.join(versions)}"]


def _kserve_lines(params: Params, api: Any) -> list[str]:
    from depth_common.deploy import kserve
    from depth_common.deploy.kserve_canary import served_model, traffic_split

    cfg, ns = params.deploy, params.cluster.namespace
    api = api if api is not None else kserve.kubernetes_api()
    live = kserve.get_inferenceservice(api, ns, cfg.name)
    if live is None:
        return [f"kserve: no InferenceService {ns}/{cfg.name}"]
    served = served_model(live)
    ready = kserve.ready_condition(live) or {}
    canary = live["spec"]["predictor"].get("canaryTrafficPercent")
    lines = [
        f"kserve: {ns}/{cfg.name} Ready={ready.get('status', '?')} serves "
        f"{served.storage_uri if served else '-'} (model version "
        f"{served.model_version if served else '-'}, run {served.run_id if served else '-'})",
        f"  canaryTrafficPercent: {canary if canary is not None else 'unset (no canary)'}",
    ]
    for tag, entry in sorted(traffic_split(live).items()):
        lines.append(
            f"  traffic {tag:<6} {entry.get('percent')} % → {entry.get('revisionName')}"
            + (f" ({entry['url']})" if entry.get("url") else "")
        )
    return lines


def status(params: Params, *, api: Any = None) -> list[str]:
    """What serves, which registered version, and the canary's share: lines to print."""
    serving = (
        _local_lines(params) if params.deploy.target == "local" else _kserve_lines(params, api)
    )
    return [*serving, *_registry_lines(params)]
