"""Hugging Face Hub push: the model card, the token rules, and a real ``huggingface_hub`` push to
a local TEST DOUBLE of the Hub's HTTP API (repo create, YAML validation, preupload, commit)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from doubles.loopback import JsonHandler, LoopbackServer

from depth_common.errors import ConfigError
from depth_common.export.hub import (
    HF_TOKEN_ENV,
    ModelCardInfo,
    hub_token,
    push_to_hub,
    render_model_card,
)

TOKEN = "hf_TESTDOUBLE_abcdefghijklmnopqrstuvwxyz"
REPO = "depth-team/dpt-cityscapes"
CARD = ModelCardInfo(
    title="DPT ViT-B/16 metric depth (Cityscapes)",
    metrics={"test_rmse": 7.12345, "test_abs_rel": 0.1034, "test_delta1": 0.8812},
    params={"model.encoder": "vit_base_patch16_224", "data.max_depth": 80.0, "a.pipe": "x|y"},
    data="Cityscapes leftImg8bit + disparity (train/val/test), depth from stereo, 80 m cap.",
    model_version="4",
    mlflow_run_id="0123456789abcdef",
    registered_model="ViT+Decoder",
)


class HubDouble(LoopbackServer):
    """TEST DOUBLE of the Hub endpoints ``HfApi.create_repo`` / ``create_commit`` call.

    Stores committed files in memory; every upload is answered as a regular (non-LFS) upload,
    which the real Hub does for small files. Records (method, path, Authorization) per request.
    """

    def __init__(self) -> None:
        self.repos: set[str] = set()
        self.files: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        double = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization")
                double.requests.append(("POST", self.path, auth))
                if auth != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                if self.path == "/api/repos/create":
                    body = json.loads(raw)
                    repo = f"{body['organization']}/{body['name']}"
                    if repo in double.repos:
                        return self._send(409, {"error": "You already created this model repo",
                                                "url": f"{base}/{repo}"})  # fmt: skip
                    double.repos.add(repo)
                    return self._send(200, {"url": f"{base}/{repo}", "name": repo, "id": repo})
                if self.path == "/api/validate-yaml":
                    yaml.safe_load(json.loads(raw)["content"].split("---")[1])
                    return self._send(200, {"errors": [], "warnings": []})
                parts = self.path.split("/")  # /api/models/<owner>/<name>/<op>/<revision>
                if len(parts) == 7 and parts[:3] == ["", "api", "models"]:
                    repo, op = f"{parts[3]}/{parts[4]}", parts[5]
                    if repo not in double.repos:
                        return self._send(404, {"error": "Repository not found"})
                    if op == "preupload":
                        files = json.loads(raw)["files"]
                        return self._send(200, {"files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files]})  # fmt: skip
                    if op == "commit":
                        lines = [json.loads(x) for x in raw.decode().splitlines() if x.strip()]
                        store = double.files.setdefault(repo, {})
                        for line in lines:
                            if line["key"] == "file":
                                v = line["value"]
                                assert v["encoding"] == "base64"
                                store[v["path"]] = base64.b64decode(v["content"])
                        return self._send(200, {"commitUrl": f"{base}/{repo}/commit/abc123",
                                                "commitOid": "abc123",
                                                "pullRequestUrl": None})  # fmt: skip
                return self._send(404, {"error": f"the test double does not serve {self.path}"})

        super().__init__(Handler)

    @property
    def endpoint(self) -> str:
        return self.base_url


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---")[1])


def test_model_card_has_every_section_and_valid_metadata() -> None:
    card = render_model_card(CARD)
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "depth-estimation"
    assert "onnx" in meta["tags"]
    for heading in ("Metrics", "Training data", "Intended use", "Limitations", "Parameters",
                    "Provenance", "Licence"):  # fmt: skip
        assert f"## {heading}" in card, heading
    assert "| test_rmse | 7.123 |" in card  # 4 significant digits
    assert "| data.max_depth | 80 |" in card
    assert "| a.pipe | x\\|y |" in card  # a pipe in a value cannot break the table
    assert "`0123456789abcdef`" in card and "`ViT+Decoder`, version 4" in card
    assert card.index("## Metrics") < card.index("## Training data") < card.index("## Provenance")


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(HF_TOKEN_ENV, raising=False)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(ConfigError, match="HF_TOKEN is not set.*hf-token.*hf_repo_id"):
        push_to_hub(onnx, REPO, card=CARD)
    monkeypatch.setenv(HF_TOKEN_ENV, "  ")
    with pytest.raises(ConfigError):
        hub_token()
    with pytest.raises(ValueError, match="owner/name"):
        push_to_hub(onnx, "no-owner", card=CARD)


def test_push_creates_the_repo_and_commits_model_repository_and_card(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(HF_TOKEN_ENV, TOKEN)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07fake-onnx-bytes" * 10)
    repo_dir = tmp_path / "triton_repository"
    (repo_dir / "depth" / "4").mkdir(parents=True)
    (repo_dir / "depth" / "config.pbtxt").write_text('name: "depth"\n')
    (repo_dir / "depth" / "4" / "model.onnx").write_bytes(onnx.read_bytes())
    caplog.set_level(logging.DEBUG)
    with HubDouble() as hub:
        first = push_to_hub(onnx, REPO, card=CARD, repository_dir=repo_dir, endpoint=hub.endpoint)
        again = push_to_hub(onnx, REPO, card=CARD, endpoint=hub.endpoint)  # repo exists: fine
    assert hub.repos == {REPO}
    stored = hub.files[REPO]
    assert stored["model.onnx"] == onnx.read_bytes()
    assert stored["triton_repository/depth/config.pbtxt"] == b'name: "depth"\n'
    assert stored["triton_repository/depth/4/model.onnx"] == onnx.read_bytes()
    assert stored["README.md"].decode() == render_model_card(CARD)
    assert set(first.files) == set(stored)
    assert first.commit_url.endswith("/commit/abc123") and REPO in first.repo_url
    assert again.files == ("model.onnx", "README.md")
    # The token went to the Hub as a bearer token, and nowhere else.
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {TOKEN}"}
    paths = [p for _, p, _ in hub.requests]
    assert paths.count("/api/repos/create") == 2 and f"/api/models/{REPO}/commit/main" in paths
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    assert TOKEN not in logged and TOKEN not in stored["README.md"].decode()


def test_a_wrong_token_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    monkeypatch.setenv(HF_TOKEN_ENV, "hf_wrong")
    with HubDouble() as hub, pytest.raises(HfHubHTTPError, match="401"):
        push_to_hub(onnx, REPO, card=CARD, endpoint=hub.endpoint)
    assert hub.repos == set()


def test_the_card_says_which_camera_the_depth_is_for(tmp_path: Path) -> None:
    import dataclasses

    import torch
    from helpers import TinyDepthNet

    from depth_common.export.hub import with_onnx_camera
    from depth_common.export.onnx import export_model

    assert "Camera-blind" in render_model_card(CARD)
    meta = {"canonical_focal_px": "70.0", "img_size": "[32, 64]"}
    torch.manual_seed(0)
    onnx = export_model(TinyDepthNet(), tmp_path / "m.onnx", img_size=(32, 64), metadata=meta)
    card = with_onnx_camera(CARD, onnx.path)
    assert (card.canonical_focal_px, card.input_width) == (70.0, 64)
    text = render_model_card(card)
    assert "## Camera" in text and "focal of 70 px at the 64 px input width" in text
    assert "49.1 deg horizontal field of view" in text  # 2 atan(32 / 70)
    blind = export_model(TinyDepthNet(), tmp_path / "b.onnx", img_size=(32, 64))
    assert with_onnx_camera(CARD, blind.path) == dataclasses.replace(CARD)


def test_card_states_lineage_and_links_the_report() -> None:
    from dataclasses import replace

    lineage = {"git_commit": "a" * 40, "data_digest": "b" * 32, "onnx_sha256": "c" * 64}
    card = render_model_card(replace(CARD, lineage=lineage, report="evaluation/report.html"))
    provenance = card.split("## Provenance", 1)[1]
    for key, value in lineage.items():
        assert f"- {key}: `{value}`" in provenance
    assert "[evaluation/report.html](evaluation/report.html)" in provenance
    assert "report.html" not in render_model_card(CARD)  # no report: no link
