"""The local MLflow store is created once, whole: a kill -9 during creation does not break it,
two processes creating it together both get a working store, and a store that MLflow itself
left half-created is rebuilt when it holds nothing (and refused, untouched, when it does)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depth_common.errors import DataError
from depth_common.registry.store import ensure_sqlite_store, require_sqlite_store

ROOT = Path(__file__).resolve().parents[2]
ENSURE = "import sys; from depth_common.registry.store import ensure_sqlite_store as e; print(e(sys.argv[1]))"


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def _works(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"e{time.time_ns()}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_during_creation_leaves_no_broken_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    proc = _spawn(ENSURE, uri)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("mlflow.db.init-*")):  # the schema is being built
        assert proc.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # well into MLflow's create + migrations
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not db.exists()  # the half-built schema never took the store's name
    assert list(tmp_path.glob("mlflow.db.init-*"))  # ... it is left over, beside it
    assert ensure_sqlite_store(uri) == "created"
    assert not list(tmp_path.glob("mlflow.db.init-*"))  # the leftover was cleaned up
    _works(uri)
    assert ensure_sqlite_store(uri) == "current"


def test_two_processes_creating_the_store_together_both_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    procs = [_spawn(ENSURE, uri) for _ in range(2)]
    outs = sorted(p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["created", "current"]  # one built it, the other waited and found it whole
    _works(uri)


def _half_created_by_mlflow(db: Path) -> None:
    """What MLflow's own in-place first use leaves when killed after its initial tables."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import create_sqlalchemy_engine

    engine = create_sqlalchemy_engine(f"sqlite:///{db}")
    try:
        Base.metadata.create_all(engine, tables=[Base.metadata.tables["experiments"]])
        Base.metadata.create_all(engine, tables=[Base.metadata.tables["runs"]])
    finally:
        engine.dispose()


def test_an_empty_half_created_store_is_rebuilt(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _half_created_by_mlflow(db)
    uri = f"sqlite:///{db}"
    # What every later run saw (in its own process: MLflow caches engines per URI).
    code = "import sys, mlflow; mlflow.MlflowClient(tracking_uri=sys.argv[1]).search_experiments()"
    seen = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True)
    assert seen.returncode != 0 and "OperationalError" in seen.stderr
    assert ensure_sqlite_store(uri).startswith("rebuilt")
    _works(uri)


def test_a_half_created_store_holding_data_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _half_created_by_mlflow(db)
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES (7, 'x', 'active')"
    )
    con.execute(
        "INSERT INTO runs (run_uuid, experiment_id, lifecycle_stage) VALUES ('r1', 7, 'active')"
    )
    con.commit()
    con.close()
    before = _digest(db)
    with pytest.raises(DataError, match=r"mlflow\.db: MLflow store at schema revision None"):
        ensure_sqlite_store(f"sqlite:///{db}")
    assert _digest(db) == before
    assert not list(tmp_path.glob("mlflow.db.init-*"))


def test_non_sqlite_uris_and_garbage_files(tmp_path: Path) -> None:
    assert ensure_sqlite_store("http://mlflow.example:5000") is None
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(DataError, match="junk.db: not a readable SQLite database"):
        ensure_sqlite_store(f"sqlite:///{junk}")


def test_a_read_only_opener_refuses_a_missing_store_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "mlflow.db"
    with pytest.raises(DataError, match=f"^no MLflow store at {db} "):
        require_sqlite_store(f"sqlite:///{db}")
    assert not (tmp_path / "typo").exists()
    empty = tmp_path / "empty.db"
    empty.touch()  # MLflow would build its schema into a zero-byte file
    with pytest.raises(DataError, match="no MLflow store at"):
        require_sqlite_store(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0
    ensure_sqlite_store(f"sqlite:///{tmp_path / 'real.db'}")
    require_sqlite_store(f"sqlite:///{tmp_path / 'real.db'}")  # an existing store: fine
    require_sqlite_store("http://mlflow:5000")  # a tracking server's: not ours to check
