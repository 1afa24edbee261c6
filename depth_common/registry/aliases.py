"""Registry state that follows serving: the aliases of the registered model and what each serves.

Aliases of ``params.mlflow.model_name``:

- ``challenger``: the version under canary (registered, serving a share of traffic or being
  analysed); cleared when its rollout ends either way;
- ``champion``: the version serving all traffic;
- ``previous``: the champion that ``champion`` replaced (what a rollback restores).

Each crowned version carries tag ``replaced_version`` (the champion before it), so a rollback
can move ``previous`` one step further back, and tag ``serving_source`` (its Triton
repository: a ``storageUri``, or a directory for the local target) so that any later rollback
can serve it again. Every function takes an ``MlflowClient``; the promotion lock
(:mod:`depth_common.registry.lock`) is the caller's business. Callers go through
:class:`depth_common.registry.registry.Registry`, which holds the client.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from depth_common.registry.store import ensure_sqlite_store

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
PREVIOUS_ALIAS = "previous"
ALIASES = (CHAMPION_ALIAS, CHALLENGER_ALIAS, PREVIOUS_ALIAS)
REPLACED_TAG = "replaced_version"
SOURCE_TAG = "serving_source"


def registry_client(tracking_uri: str) -> Any:  # -> mlflow.MlflowClient
    """A client on ``tracking_uri`` (a local SQLite store is created/upgraded first, safely)."""

    ensure_sqlite_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_missing(exc: Exception) -> bool:
    """True for MLflow's RESOURCE_DOES_NOT_EXIST (no such run / model / version / alias)."""

    return isinstance(exc, MlflowException) and exc.error_code == ErrorCode.Name(
        RESOURCE_DOES_NOT_EXIST
    )


def aliases(client: Any, name: str) -> dict[str, int]:
    """``{alias: version}`` of the registered model ``name`` (empty when it does not exist)."""
    try:
        model = client.get_registered_model(name)
    except Exception as exc:
        if is_missing(exc):
            return {}
        raise
    return {alias: int(v) for alias, v in (model.aliases or {}).items()}


def version_by_alias(client: Any, name: str, alias: str) -> Any:  # -> ModelVersion | None
    """The model version holding ``alias``, or None."""
    if alias not in aliases(client, name):
        return None
    return client.get_model_version_by_alias(name, alias)


def set_challenger(client: Any, name: str, version: int) -> None:
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, str(version))


def withdraw_challenger(client: Any, name: str, version: int) -> bool:
    """Clear ``challenger`` if it still points at ``version``; True if it did."""
    if aliases(client, name).get(CHALLENGER_ALIAS) != int(version):
        return False
    client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    return True


def crown(client: Any, name: str, version: int) -> int | None:
    """``champion`` → ``version``; the former champion becomes ``previous``; return it.

    Idempotent: crowning the champion again changes nothing. ``challenger`` is cleared when it
    pointed at ``version``.
    """
    current = aliases(client, name)
    former = current.get(CHAMPION_ALIAS)
    if former != int(version):
        if former is not None:
            client.set_registered_model_alias(name, PREVIOUS_ALIAS, str(former))
            client.set_model_version_tag(name, str(version), REPLACED_TAG, str(former))
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))
    withdraw_challenger(client, name, version)
    return former if former != int(version) else current.get(PREVIOUS_ALIAS)


def restore_previous(client: Any, name: str) -> tuple[int, int | None]:
    """Rollback in the registry: ``champion`` ← ``previous``; return (restored, rolled back).

    ``previous`` moves one step back (the version the restored one had replaced, if it is still
    registered) or is cleared. Raises LookupError when there is no ``previous``.
    """
    current = aliases(client, name)
    restored, rolled_back = current.get(PREVIOUS_ALIAS), current.get(CHAMPION_ALIAS)
    if restored is None:
        raise LookupError(f"registered model {name!r} has no {PREVIOUS_ALIAS!r} alias to restore")
    client.set_registered_model_alias(name, CHAMPION_ALIAS, str(restored))
    before = client.get_model_version(name, str(restored)).tags.get(REPLACED_TAG)
    if before and _exists(client, name, before) and int(before) != rolled_back:
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
    return restored, rolled_back


def _exists(client: Any, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
    except Exception as exc:
        if is_missing(exc):
            return False
        raise
    return True


def record_source(client: Any, name: str, version: int, source: str) -> None:
    """Tag ``version`` with the Triton repository it is served from."""
    client.set_model_version_tag(name, str(version), SOURCE_TAG, source)


def source_of(client: Any, name: str, version: int) -> str | None:
    return client.get_model_version(name, str(version)).tags.get(SOURCE_TAG)


def format_aliases(current: dict[str, int]) -> str:
    """``champion v2, previous v1`` (in the order champion, challenger, previous)."""
    parts = [f"{a} v{current[a]}" for a in ALIASES if a in current]
    return ", ".join(parts) or "no aliases"
