"""`python -m depth_common train / evaluate` end to end on the synthetic fixtures."""

from __future__ import annotations

import json

from helpers import DEMO

from depth_common.cli.parser import main


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
