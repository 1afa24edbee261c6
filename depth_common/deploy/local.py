"""Deploy target ``local``: serve the Triton repository on 127.0.0.1, smoke-test it, stop it,
and install the repository where ``make serve`` looks (``export.repository_dir``).

The server is the real ``tritonserver`` (:class:`LocalTritonServer`, free loopback ports); the
smoke test is the one the KServe target runs (:func:`smoke_test_v2`), with the served output
compared to ONNX Runtime's in-process output for the same ``model.onnx``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from depth_common.atomic import copy_atomic, remove_leftovers
from depth_common.deploy.report import DeployError, DeployResult
from depth_common.deploy.smoke import smoke_test_v2
from depth_common.errors import DataError

log = logging.getLogger(__name__)


def latest_version(repository: Path, model_name: str) -> int:
    """The highest numeric version directory of ``repository/model_name``."""
    model_dir = repository / model_name
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    if not (model_dir / "config.pbtxt").is_file() or not versions:
        raise DataError(
            f"{model_dir}: expected a Triton model (config.pbtxt and a numeric version directory)"
        )
    return max(versions)


def install_repository(source: Path, dest: Path) -> Path:
    """Copy ``source`` to ``dest``, replacing it; a reader sees the old or the new tree, whole.

    The copy is made next to ``dest`` (same filesystem) and renamed into place.
    """
    source, dest = source.resolve(), dest.resolve()
    if source == dest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest.parent, recursive=False)  # of installs killed half-way
    return copy_atomic(source, dest)


def deploy_local(
    repository_dir: str | Path,
    serve_dir: str | Path,
    *,
    model_name: str = "depth",
    model_version: str | int | None = None,
    onnx_path: str | Path | None = None,
    atol: float = 1e-3,
    ready_timeout_s: float = 60.0,
) -> DeployResult:
    """Smoke-test ``repository_dir`` on a local Triton, then install it at ``serve_dir``.

    ``serve_dir`` is ``export.repository_dir`` (``make serve`` serves it). ``model_version``
    defaults to the repository's latest version of ``model_name``; ``onnx_path`` (the
    reference for the ONNX Runtime comparison, ``atol`` metres) defaults to that version's
    ``model.onnx``. Raises :class:`DeployError` (and leaves ``serve_dir`` untouched) when the
    smoke test fails.
    """
    from depth_common.serving.server import LocalTritonServer

    repository = Path(repository_dir)
    version = latest_version(repository, model_name)
    if onnx_path is None:
        onnx_path = repository / model_name / str(version) / "model.onnx"
    label = str(model_version if model_version is not None else version)

    with LocalTritonServer(repository, ready_timeout_s=ready_timeout_s) as server:
        endpoint = f"http://{server.http_url}"
        smoke = smoke_test_v2(server.http_url, model_name, onnx_path=onnx_path, atol=atol)
    result = DeployResult("local", endpoint, model_name, label, str(repository), smoke)
    if not smoke.ok:
        raise DeployError(f"local smoke test of {repository} failed: {smoke.detail}", result)
    installed = install_repository(repository, Path(serve_dir))
    log.info("repository installed at %s (smoke test %.1f ms)", installed, smoke.latency_ms or 0)
    return DeployResult("local", endpoint, model_name, label, str(installed), smoke)
