"""One object for the model registry: one ``MlflowClient`` on one store, one registered model.

A deploy, a promotion and a rollback each build a :class:`Registry` once (the local SQLite
store is checked or created then, under its file lock) and hand it down; every alias move and
every registry lock goes through it, with one argument order: the version (or holder) first.
The alias rules themselves are :mod:`depth_common.registry.aliases`; the locks
:mod:`depth_common.registry.lock`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from mlflow import MlflowClient

from depth_common.config import Params
from depth_common.registry import aliases as _aliases
from depth_common.registry.lock import DEFAULT_TTL_S, registry_lock
from depth_common.registry.store import ensure_sqlite_store, require_sqlite_store

DEFAULT_LOCK_TIMEOUT_S = 600.0


class Registry:
    """The registered model ``model_name`` in the MLflow store at ``tracking_uri``.

    ``lock_timeout_s`` bounds the wait for the promotion lock (seconds). ``must_exist``: for
    the commands that act on what was registered (``status``, ``rollback``), a missing local
    store is an error ("no MLflow store at ...") and nothing is created.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        must_exist: bool = False,
    ) -> None:

        if must_exist:
            require_sqlite_store(tracking_uri)
        ensure_sqlite_store(tracking_uri)
        self.tracking_uri, self.model_name = tracking_uri, model_name
        self.lock_timeout_s = lock_timeout_s
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_params(cls, params: Params, *, must_exist: bool = False) -> Registry:
        """The registry of ``params.mlflow`` (store and model name) and ``params.promotion``."""
        return cls(
            params.mlflow.tracking_uri,
            params.mlflow.model_name,
            lock_timeout_s=params.promotion.lock_timeout_s,
            must_exist=must_exist,
        )

    # -- reading ----------------------------------------------------------------------------------
    def aliases(self) -> dict[str, int]:
        """``{alias: version}`` (empty when the model is not registered yet)."""
        return _aliases.aliases(self.client, self.model_name)

    def format_aliases(self) -> str:
        return _aliases.format_aliases(self.aliases())

    def version(self, version: int | str) -> Any:  # -> mlflow ModelVersion
        return self.client.get_model_version(self.model_name, str(version))

    def version_by_alias(self, alias: str) -> Any:  # -> ModelVersion | None
        return _aliases.version_by_alias(self.client, self.model_name, alias)

    def source_of(self, version: int) -> str | None:
        """The Triton repository ``version`` was served from (tag ``serving_source``)."""
        return _aliases.source_of(self.client, self.model_name, version)

    # -- alias moves (the caller holds the promotion lock) ----------------------------------------
    def set_challenger(self, version: int) -> None:
        _aliases.set_challenger(self.client, self.model_name, version)

    def withdraw_challenger(self, version: int) -> bool:
        return _aliases.withdraw_challenger(self.client, self.model_name, version)

    def crown(self, version: int) -> int | None:
        return _aliases.crown(self.client, self.model_name, version)

    def restore_previous(self) -> tuple[int, int | None]:
        return _aliases.restore_previous(self.client, self.model_name)

    def record_source(self, version: int, source: str) -> None:
        _aliases.record_source(self.client, self.model_name, version, source)

    def set_version_tag(self, version: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name, str(version), key, value)

    # -- locks ------------------------------------------------------------------------------------
    def promotion_lock(self, holder: str) -> AbstractContextManager[str]:
        """The lock every alias move of this model is made under."""
        return registry_lock(self.client, self.model_name, holder, timeout_s=self.lock_timeout_s)

    def lock(
        self, holder: str, *, kind: str, timeout_s: float, ttl_s: float = DEFAULT_TTL_S
    ) -> AbstractContextManager[str]:
        """Another lock of this model, named ``kind`` (e.g. one serving target's lease)."""
        return registry_lock(
            self.client, self.model_name, holder, timeout_s=timeout_s, ttl_s=ttl_s, kind=kind
        )
