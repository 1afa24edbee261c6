"""`python -m depth_common train / evaluate` end to end on the synthetic fixtures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from helpers import DEMO

from depth_common.cli.parser import main
from depth_common.errors import EXIT_STOPPED


def test_cli_train_then_evaluate(processed_data, tmp_path, capsys) -> None:
    sets = [
        *DEMO,
        "training.epochs=1",
        "training.max_train_batches=1",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    args = [a for s in sets for a in ("--set", s)]
    rc = main(["train", *args, "--data", str(processed_data), "--out", str(tmp_path / "ckpt")])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"best checkpoint: {tmp_path / 'ckpt' / 'best.pt'}" in out
    rc = main(
        [
            "evaluate",
            *args,
            "--checkpoint",
            str(tmp_path / "ckpt" / "best.pt"),
            "--data",
            str(processed_data),
            "--out",
            str(tmp_path / "rep"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert f"{metrics['test_rmse']:.4f}" in out and "report:" in out


def test_cli_bad_checkpoint_is_one_line_error(processed_data, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    rc = main(["evaluate", "--checkpoint", str(bad), "--data", str(processed_data)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "bad.pt" in err


def test_status_and_rollback_on_a_mistyped_store_create_nothing(tmp_path, capsys) -> None:
    db = tmp_path / "typo" / "mlflow.db"
    for command in (["status"], ["rollback"], ["lineage", "--alias", "champion"]):
        rc = main([*command, "--set", f"mlflow.tracking_uri=sqlite:///{db}"])
        assert rc == 2
        assert capsys.readouterr().err.startswith(f"error: no MLflow store at {db} ")
    assert list(tmp_path.iterdir()) == []


def test_a_sigtermed_training_says_so_in_one_line(processed_data, tmp_path, capsys) -> None:
    """SIGTERM: one line (no traceback) and exit code 143; last.pt resumes (tests/training)."""
    out = tmp_path / "ckpt"

    def stop_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (out / "last.pt").is_file():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    sets = [*DEMO, "training.epochs=50", "training.max_train_batches=1"]
    sets += ["training.checkpoint_every=1", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    watcher = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
    watcher.start()
    args = [a for s in sets for a in ("--set", s)]
    rc = main(["train", *args, "--data", str(processed_data), "--out", str(out)])
    watcher.join(5)
    assert rc == EXIT_STOPPED == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("stopped: SIGTERM after ")
