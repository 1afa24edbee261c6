"""Day-2 commands on the serving target, with the deploy step's own flow: rollback and status.

``python -m depth_common rollback`` serves the registry's ``previous`` version again (from the
``serving_source`` it was crowned with), smoke-tested, through the same
:class:`~depth_common.deploy.target.ServingTarget` and under the same lease as the deploy step,
then moves the aliases back (:func:`depth_common.registry.aliases.restore_previous`).
Everything -- reading ``previous``, serving it, moving the aliases -- happens inside the lease,
so two rollbacks at once run one after the other: the second reads what the first left and
rolls one step further (or stops: no ``previous`` left), and the registry always ends equal to
what serves. ``status`` says what serves, which registered version, and the canary's share.
"""

from __future__ import annotations

from dataclasses import replace

from depth_common.deploy.report import DeployResult
from depth_common.deploy.target import Release, ServingTarget
from depth_common.errors import DeployError
from depth_common.registry.aliases import (
    ALIASES,
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    SOURCE_TAG,
    format_aliases,
)
from depth_common.registry.registry import Registry


def _previous_release(registry: Registry) -> tuple[Release, int | None]:
    """(the ``previous`` version to serve again, the champion it replaces); DeployError when
    there is none or it cannot be served."""
    current = registry.aliases()
    previous, champion = current.get(PREVIOUS_ALIAS), current.get(CHAMPION_ALIAS)
    name = registry.model_name
    if previous is None:
        raise DeployError(
            f"registered model {name!r} has no {PREVIOUS_ALIAS!r} version to restore "
            f"({format_aliases(current)})"
        )
    source = registry.source_of(previous)
    if not source:
        raise DeployError(
            f"{name!r} version {previous} has no serving_source tag: it was never served by the "
            "deploy step, so there is no repository to serve it from"
        )
    return Release(previous, source, registry.version(previous).run_id or ""), champion


def rollback(registry: Registry, target: ServingTarget) -> DeployResult:
    """Serve ``previous`` again on ``target``; aliases follow. Returns the result.

    Raises :class:`DeployError` when there is nothing to restore, when serving it failed (the
    target then serves what it served before, the aliases are unchanged), or when the aliases
    were moved by someone outside the lease while it served (they are then left as found).
    """
    with target.lease(registry):
        release, champion = _previous_release(registry)
        result = target.serve(release)
        with registry.promotion_lock(f"rollback to v{release.version}"):
            now = registry.aliases()
            if (now.get(CHAMPION_ALIAS), now.get(PREVIOUS_ALIAS)) != (champion, release.version):
                raise DeployError(
                    f"served version {release.version} again, but the registry moved meanwhile "
                    f"(now {format_aliases(now)}, expected champion v{champion}, previous "
                    f"v{release.version}): aliases left as they are; check `status`"
                )
            restored, rolled_back = registry.restore_previous()
        aliases = registry.format_aliases()
    return replace(
        result,
        outcome="rolled back",
        reason=f"version {rolled_back} replaced by the previous champion v{restored}",
        aliases=aliases,
    )


def _registry_lines(registry: Registry) -> list[str]:
    current = registry.aliases()
    lines = [f"registered model {registry.model_name!r} ({registry.tracking_uri}):"]
    for alias in ALIASES:
        if alias not in current:
            lines.append(f"  {alias:<10} -")
            continue
        mv = registry.version(current[alias])
        rmse = mv.tags.get("test_rmse", "?")
        lines.append(
            f"  {alias:<10} v{mv.version}  run {mv.run_id}  test_rmse {rmse}  "
            f"source {mv.tags.get(SOURCE_TAG, '-')}"
        )
    return lines


def status(registry: Registry, target: ServingTarget) -> list[str]:
    """What serves, which registered version, and the canary's share: lines to print."""
    return [*target.status_lines(), *_registry_lines(registry)]
