"""The serving lease: one rollout or rollback at a time per serving target, for any host.

Pods of two pipeline runs share no filesystem, so the lease of a KServe InferenceService is a
lock kept in the registry itself (:func:`depth_common.registry.lock.registry_lock`, kind
``serving-<namespace>.<name>``). A deploy holds it from reading what serves until the registry
follows what it served, so the registry's ``champion`` is always what the target serves.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from depth_common.registry.registry import Registry

#: Beyond the rollout's own waits: registry calls, smoke tests, the probes of each step.
LEASE_MARGIN_S = 600.0


def lease_ttl_s(ready_timeout_s: float, canary_steps: int) -> float:
    """The longest a rollout may hold the lease: a Ready wait per step, three more (first
    serve, promotion or rollback, and its second patch) and a margin (seconds)."""
    return ready_timeout_s * (canary_steps + 3) + LEASE_MARGIN_S


def serving_lease(
    registry: Registry, namespace: str, name: str, *, ttl_s: float, holder: str = ""
) -> AbstractContextManager[str]:
    """Hold the lease of InferenceService ``namespace/name`` (waits up to ``ttl_s`` seconds:
    a holder that died is skipped once its ticket expires after that long)."""
    return registry.lock(
        holder or f"{namespace}/{name}",
        kind=f"serving-{namespace}.{name}",
        timeout_s=ttl_s,
        ttl_s=ttl_s,
    )
