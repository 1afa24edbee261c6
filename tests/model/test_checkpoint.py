"""Checkpoint round trip (weights_only load), atomic write, and clear format errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from depth_common.config import Params
from depth_common.errors import CheckpointError
from depth_common.model.checkpoint import (
    FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from depth_common.model.dpt import build_model

PARAMS = Params().with_overrides(
    [
        "model.encoder=vit_tiny_patch16_224",
        "model.pretrained=false",
        "model.decoder_features=16",
        "data.img_size=[32,48]",
    ]
)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = build_model(PARAMS)
    opt = torch.optim.AdamW(model.param_groups(1e-3, 1e-3))
    loss = model(torch.randn(2, 3, 32, 48)).mean()
    loss.backward()
    opt.step()  # optimizer state with tensors, and BN running stats moved
    return model.eval(), opt


def test_round_trip(tmp_path, trained) -> None:
    model, opt = trained
    path = save_checkpoint(
        tmp_path / "sub" / "best.pt",
        model,
        PARAMS,
        epoch=3,
        metrics={"val_rmse": 4.5},
        mlflow_run_id="abc",
        optimizer=opt,
        extra={"early_stop": {"best_rmse": 4.5, "bad_epochs": 1}},
    )
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)  # the contract: plain types and tensors only
    assert raw["format"] == FORMAT
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["metrics"] == {"val_rmse": 4.5}
    assert ckpt["mlflow_run_id"] == "abc" and ckpt["early_stop"]["bad_epochs"] == 1
    assert ckpt["params"] == PARAMS.to_dict()
    assert ckpt["model_config"]["img_size"] == [32, 48]
    assert "optimizer_state" in ckpt and "scheduler_state" not in ckpt
    rebuilt, _ = model_from_checkpoint(path)
    assert not rebuilt.training
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupted_file(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"bad.pt: cannot be loaded"):
        load_checkpoint(bad)


def test_pickled_object_is_refused(tmp_path) -> None:
    # a full pickled object (what torch.save(model) gives) must not be unpickled
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump(Params(), f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(evil)


def test_wrong_format(tmp_path, trained) -> None:
    model, _ = trained
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)  # a bare state dict: a plain torch.save of the weights
    with pytest.raises(CheckpointError, match=r"state_dict.pt: format None, expected"):
        load_checkpoint(plain)
    partial = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "model_state": {}}, partial)
    with pytest.raises(CheckpointError, match=r"partial.pt: missing keys \['model_config'"):
        load_checkpoint(partial)


def test_state_not_matching_config(tmp_path, trained) -> None:
    model, _ = trained
    path = save_checkpoint(tmp_path / "x.pt", model, PARAMS, epoch=0, metrics={})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["decoder_features"] = 32
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="does not match model_config"):
        model_from_checkpoint(path)
