"""Deploy target ``local``, for real: the bundled tritonserver serves a tiny exported model, the
smoke test compares it with ONNX Runtime, and the repository lands where ``make serve`` looks."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import torch

from depth_common.atomic import mark_managed
from depth_common.deploy.local import deploy_local, install_repository, latest_version
from depth_common.deploy.report import write_deploy_report
from depth_common.errors import DataError, DeployError, UnmanagedDirectoryError
from depth_common.export.onnx import export_model


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_install_never_replaces_a_directory_the_project_did_not_write(tmp_path: Path) -> None:
    """``rollback --set export.repository_dir=~`` must not move a home directory aside."""
    src, home = tmp_path / "src", tmp_path / "home"
    (src / "depth" / "1").mkdir(parents=True)
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(UnmanagedDirectoryError, match=f"^{home}: not empty and not written"):
        install_repository(src, home)
    assert [p.name for p in home.rglob("*")] == ["photos", "a.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "src"]


def test_install_replaces_the_tree_whole(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "serve" / "repo"
    (src / "depth" / "2").mkdir(parents=True)
    (src / "depth" / "config.pbtxt").write_text("new")
    mark_managed(src)  # as build_triton_repository leaves it
    (dest / "depth" / "1").mkdir(parents=True)
    (dest / "depth" / "1" / "stale.onnx").write_text("old")
    mark_managed(dest)  # an earlier install wrote it
    assert install_repository(src, dest) == dest.resolve()
    assert _digest(dest) == _digest(src)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["repo"]  # no staging leftovers
    with pytest.raises(DataError, match="expected a Triton model"):
        latest_version(tmp_path / "serve" / "repo", "other")


@pytest.mark.slow
def test_local_deploy_serves_smoke_tests_and_installs(tiny: Path, tmp_path: Path) -> None:
    serve_dir = tmp_path / "saved_models" / "triton_repository"
    result = deploy_local(tiny, serve_dir, model_version=3)
    assert result.smoke.ok, result.smoke.detail
    assert result.smoke.output_shape == (1, 1, 32, 64)
    assert result.smoke.max_abs_diff is not None and result.smoke.max_abs_diff <= 1e-5
    assert result.smoke.latency_ms is not None and result.smoke.latency_ms > 0
    assert result.model_version == "3" and result.source == str(serve_dir.resolve())
    assert _digest(serve_dir) == _digest(tiny)
    port = int(result.endpoint.rsplit(":", 1)[1])
    assert _nothing_listens(port)  # the server was stopped
    report = write_deploy_report(result)
    assert "# Deploy: passed" in report and "| target | local |" in report


@pytest.mark.slow
def test_failing_local_smoke_test_leaves_the_served_repository_alone(
    tiny: Path, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    from helpers import TinyDepthNet

    other = export_model(TinyDepthNet(), tmp_path / "other.onnx", img_size=(32, 64)).path
    serve_dir = tmp_path / "serve"
    (serve_dir / "depth").mkdir(parents=True)
    (serve_dir / "depth" / "config.pbtxt").write_text("the model served before")
    before = _digest(serve_dir)
    with pytest.raises(DeployError, match="ONNX Runtime") as info:
        deploy_local(tiny, serve_dir, onnx_path=other)
    assert _digest(serve_dir) == before
    assert info.value.result is not None and not info.value.result.smoke.ok
