"""The local MLflow store (``sqlite:///``): created or upgraded once, whole, before anyone uses it.

MLflow creates a missing SQLite schema on first use, in place and in many steps (the initial
tables, then every migration). A process killed in between leaves tables without a schema
version, and every later open fails ("table datasets already exists"); two processes opening a
fresh file together race through the same steps. :func:`ensure_sqlite_store` avoids both:

- it holds a file lock (``<db>.lock``, released by the kernel if the holder dies) while it
  looks at the store, so one process creates or upgrades it and the others wait;
- a new schema is built in a temporary file beside the database and renamed into place when
  complete, and an upgrade runs on a copy that replaces the original only when it succeeded,
  so a kill at any moment leaves the store as it was (missing, or old but whole);
- temporary files of a killed predecessor are removed (the lock says nobody else is writing).

A store that is current is only read (its schema version), so calling this before every task
costs milliseconds. Remote stores (``http://``...) are left to the tracking server.
"""

from __future__ import annotations

# mlflow's SQL store utilities (sqlalchemy, alembic) are imported where the schema revision is
# read: aliases, registry, tracking and warm_start import this module and open a store
# without either.
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock, Timeout

from depth_common.errors import DataError

log = logging.getLogger(__name__)

_TEMP_MARK = ".init-"  # <db>.init-<pid>: a schema being built; any left over is a dead one's
LOCK_TIMEOUT_S = 600.0  # creating the schema takes ~10-30 s on a busy 2-core machine


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (relative or absolute), else None."""

    if not tracking_uri.startswith("sqlite:"):
        return None
    parsed = urlparse(tracking_uri)
    # sqlite:///rel/path.db → "/rel/path.db" (relative); sqlite:////abs/path.db → "//abs/..."
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    return Path(path) if path else None


def _schema_revision(db: Path) -> str | None:
    """The alembic revision stamped in ``db`` (None: no ``alembic_version`` table or row)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" not in names:
            return None
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    finally:
        con.close()


def _user_tables(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    finally:
        con.close()
    return {r[0] for r in rows if not r[0].startswith(("alembic_", "sqlite_"))}


def _holds_data(db: Path) -> bool:
    """True when ``db`` has any run or registered model (something a reset would lose)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        for table in ("runs", "registered_models"):
            try:
                if con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:  # noqa: S608
                    return True
            except sqlite3.OperationalError:  # the table was never created
                continue
        return False
    finally:
        con.close()


def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _with_engine(db: Path, step_name: str) -> None:
    """Run ``mlflow.store.db.utils.<step_name>`` on the SQLite file ``db``.

    ``_initialize_tables``: the full schema, as MLflow builds it on first use;
    ``_upgrade_db``: its migrations (``mlflow db upgrade``).
    """
    from mlflow.store.db import utils

    engine = utils.create_sqlalchemy_engine(f"sqlite:///{db}")
    try:
        getattr(utils, step_name)(engine)
    finally:
        engine.dispose()


def _build_schema(db: Path) -> None:
    _with_engine(db, "_initialize_tables")


def _temp_beside(db: Path) -> Path:
    return db.with_name(f"{db.name}{_TEMP_MARK}{os.getpid()}")


def _remove_leftovers(db: Path) -> None:
    for left in db.parent.glob(f"{db.name}{_TEMP_MARK}*"):
        log.warning("MLflow store: removing %s, left by an interrupted schema creation", left)
        left.unlink(missing_ok=True)


def _replace_with(db: Path, build) -> None:  # build: Callable[[Path], None]
    """Run ``build`` on a temporary file beside ``db``, then rename it over ``db``."""
    tmp = _temp_beside(db)
    try:
        build(tmp)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_and_upgrade(db: Path, tmp: Path) -> None:
    shutil.copyfile(db, tmp)
    _with_engine(tmp, "_upgrade_db")


def _create_or_upgrade(db: Path, head: str) -> str:
    """Under the lock: make ``db`` a complete store at ``head``; say what was done."""
    _remove_leftovers(db)
    if not db.exists() or not _user_tables(db):
        _replace_with(db, _build_schema)
        return "created"
    revision = _schema_revision(db)
    if revision == head:
        return "current"
    try:
        _replace_with(db, lambda tmp: _copy_and_upgrade(db, tmp))
        return f"upgraded from {revision}"
    except Exception as exc:
        if _holds_data(db):
            raise DataError(
                f"{db}: MLflow store at schema revision {revision!r} (expected {head!r}) and "
                f"upgrading a copy of it failed ({type(exc).__name__}: {exc}); the store is "
                "left as it was: back it up, then run `mlflow db upgrade sqlite:///<file>`"
            ) from exc
        # Half-created by a process killed during MLflow's own first use, and empty: rebuild.
        log.warning("MLflow store %s: incomplete schema and no data, building it anew", db)
        _replace_with(db, _build_schema)
        return "rebuilt (it was an incomplete, empty schema)"


def require_sqlite_store(tracking_uri: str) -> None:
    """For a command that only reads: refuse a SQLite store that does not exist (or is an empty
    file), creating nothing. MLflow would create one on first use, so a mistyped URI would
    report "no champion" from a new, empty store. Other URIs are the tracking server's."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return
    if not db.is_file() or db.stat().st_size == 0:
        raise DataError(
            f"no MLflow store at {db} (mlflow.tracking_uri={tracking_uri!r}); a read-only "
            "command creates none: check the URI"
        )


def ensure_sqlite_store(tracking_uri: str, timeout_s: float = LOCK_TIMEOUT_S) -> str | None:
    """Create or upgrade the SQLite store of ``tracking_uri`` once, safely; return what it did.

    None for a non-SQLite URI (nothing to do). Otherwise ``"current"``, ``"created"``,
    ``"upgraded from <rev>"`` or ``"rebuilt ..."``. Raises :class:`DataError` naming the file
    when the lock is not had within ``timeout_s`` seconds or a store with data cannot be
    upgraded (it is then left untouched).
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    db = db.resolve()
    head = _head_revision()
    try:
        if db.is_file() and db.stat().st_size and _schema_revision(db) == head:
            return "current"  # the common case: no lock needed to see that nothing is to do
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{db}: not a readable SQLite database ({exc})") from None

    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(db.with_name(f"{db.name}.lock")), timeout=timeout_s):
            done = _create_or_upgrade(db, head)
    except Timeout:
        raise DataError(
            f"{db}: another process held {db.name}.lock for {timeout_s:g} s while creating or "
            "upgrading the MLflow store"
        ) from None
    if done != "current":
        log.info("MLflow store %s: %s", db, done)
    return done
