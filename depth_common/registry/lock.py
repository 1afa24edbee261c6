"""A mutual-exclusion lock kept in the MLflow model registry itself (any backend, any host).

MLflow offers no conditional write (no compare-and-set on tags or aliases), but it does number
the versions of a registered model atomically and never reuses a number (deleted versions keep
theirs). That is a ticket dispenser: :func:`registry_lock` takes a ticket by creating a version
of the registered model ``<name>.<kind>-lock`` (tags: who holds it, until when), and holds
the lock once no lower ticket is live. Release deletes the ticket. A ticket whose holder died
stops counting after its ``expires_at``, so a crashed run delays the others by at most
``ttl_s`` seconds and no-one ever has to break a lock (which could race with its new owner).

The critical sections guarded this way are a few registry reads and writes (seconds); ``ttl_s``
must stay well above that, because a holder slower than its ticket's expiry would no longer be
exclusive (the usual lease caveat).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from mlflow.exceptions import MlflowException

from depth_common.errors import RegistryLockTimeout

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 120.0
_SOURCE = "depth-mlops:promotion-lock"  # a version's required source; nothing is stored there


def lock_model_name(model_name: str, kind: str = "promotion") -> str:
    return f"{model_name}.{kind}-lock"


def _holder_id(holder: str) -> str:
    return f"{holder or 'unnamed'}@{socket.gethostname()}:{os.getpid()}"


def _ensure_lock_model(client: Any, name: str) -> None:

    try:
        client.create_registered_model(
            name, description="Tickets of the promotion lock (depth_common.registry.lock)."
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(
            exc
        ):
            raise


def _live_tickets(client: Any, name: str, now: float) -> list[Any]:
    """Tickets (model versions) not released and not expired, lowest first."""
    live = []
    for mv in client.search_model_versions(f"name='{name}'"):
        expires = float((mv.tags or {}).get("expires_at", "0") or 0)
        if expires > now:
            live.append(mv)
    return sorted(live, key=lambda mv: int(mv.version))


def _renew(client: Any, name: str, ticket: int, ttl_s: float) -> None:
    client.set_model_version_tag(name, str(ticket), "expires_at", f"{time.time() + ttl_s:.3f}")


@contextlib.contextmanager
def registry_lock(
    client: Any,
    model_name: str,
    holder: str = "",
    *,
    timeout_s: float = 600.0,
    ttl_s: float = DEFAULT_TTL_S,
    poll_s: float = 0.2,
    kind: str = "promotion",
) -> Iterator[str]:
    """Hold the promotion lock of ``model_name`` for the ``with`` block; yields the ticket.

    Waits up to ``timeout_s`` seconds for the tickets before ours, then raises
    :class:`RegistryLockTimeout` naming the holder. ``holder`` (e.g. the pipeline run) is
    recorded on the ticket for whoever waits. ``kind`` names independent locks of one model
    (``promotion``: the registry's aliases; ``serving-<target>``: one serving target).
    """
    name = lock_model_name(model_name, kind)
    _ensure_lock_model(client, name)
    who = _holder_id(holder)
    mv = client.create_model_version(
        name, _SOURCE, tags={"holder": who, "expires_at": f"{time.time() + ttl_s:.3f}"}
    )
    ticket = int(mv.version)
    try:
        deadline = time.monotonic() + timeout_s
        renewed = time.monotonic()
        while True:
            ahead = [t for t in _live_tickets(client, name, time.time()) if int(t.version) < ticket]
            if time.monotonic() - renewed > ttl_s / 4:
                # A waiter keeps its own ticket alive, or the ones behind it would skip it.
                _renew(client, name, ticket, ttl_s)
                renewed = time.monotonic()
            if not ahead:
                break
            if time.monotonic() >= deadline:
                first = ahead[0]
                raise RegistryLockTimeout(
                    f"MLflow registry lock {name!r}: still held after {timeout_s:g} s by "
                    f"{first.tags.get('holder', '?')} (ticket {first.version}, expires "
                    f"{time.strftime('%H:%M:%S', time.localtime(float(first.tags['expires_at'])))})"
                )
            time.sleep(poll_s)
        _renew(client, name, ticket, ttl_s)  # the full ttl_s for the critical section
        log.info("registry lock %s held by %s (ticket %d)", name, who, ticket)
        yield str(ticket)
    finally:
        try:
            client.delete_model_version(name, str(ticket))
        except Exception as exc:  # the ticket expires on its own; do not hide the real error
            log.warning("registry lock %s: could not release ticket %d: %s", name, ticket, exc)
