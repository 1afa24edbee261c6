"""Deploy target ``local``: serve the Triton repository on 127.0.0.1, smoke-test it, stop it,
and install the repository where ``make serve`` looks (``export.repository_dir``).

:class:`LocalTarget` is the local :class:`~depth_common.deploy.target.ServingTarget`.
``deploy.strategy: replace`` is :func:`deploy_local`; ``canary`` is :class:`LocalCanary`, the
local :class:`~depth_common.deploy.canary.RolloutTarget`: champion and challenger as two
versions of one model in one local Triton (``version_policy: specific``). A deploy holds
:func:`serve_lock` so that two runs in one directory never write ``serve_dir`` together.

The server is the real ``tritonserver`` (:class:`LocalTritonServer`, free loopback ports); the
smoke test is the one the KServe target runs (:func:`smoke_test_v2`), with the served output
compared to ONNX Runtime's in-process output for the same ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from depth_common.atomic import copy_atomic, remove_leftovers
from depth_common.deploy.probe import VersionEndpoint
from depth_common.deploy.report import DeployResult
from depth_common.deploy.smoke import SmokeResult, smoke_test_v2
from depth_common.deploy.target import Release, Served
from depth_common.errors import DataError, DeployError
from depth_common.export.triton import (
    ONNX_FILENAME,
    parse_model_config,
    read_onnx_io,
    write_model_config,
)
from depth_common.registry.registry import Registry
from depth_common.serving.local_stack import LocalTransformer
from depth_common.serving.server import LocalTritonServer

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
    image: np.ndarray | None = None,
) -> DeployResult:
    """Smoke-test ``repository_dir`` on a local Triton, then install it at ``serve_dir``.

    ``serve_dir`` is ``export.repository_dir`` (``make serve`` serves it). ``model_version``
    defaults to the repository's latest version of ``model_name``; ``onnx_path`` (the
    reference for the ONNX Runtime comparison, ``atol`` metres) defaults to that version's
    ``model.onnx``; ``image`` (uint8 (h, w, 3)) is the smoke test's input (default: its own).
    Raises :class:`DeployError` (and leaves ``serve_dir`` untouched) when the smoke test fails.
    """

    repository = Path(repository_dir)
    version = latest_version(repository, model_name)
    if onnx_path is None:
        onnx_path = repository / model_name / str(version) / "model.onnx"
    label = str(model_version if model_version is not None else version)

    # The smoke test goes through both doors users take: tensors to Triton, and images to the
    # transformer in front of it (as the InferenceService's transformer component serves them).
    with (
        LocalTritonServer(repository, ready_timeout_s=ready_timeout_s) as server,
        LocalTransformer(
            server.grpc_url, model_name=model_name, predictor_model=model_name,
            ready_timeout_s=ready_timeout_s,
        ) as transformer,
    ):  # fmt: skip
        endpoint = f"http://{server.http_url}"
        smoke = smoke_test_v2(
            server.http_url, model_name, onnx_path=onnx_path, atol=atol,
            transformer_url=transformer.url, image=image,
        )  # fmt: skip
    result = DeployResult("local", endpoint, model_name, label, str(repository), smoke)
    if not smoke.ok:
        raise DeployError(f"local smoke test of {repository} failed: {smoke.detail}", result)
    installed = install_repository(repository, Path(serve_dir))
    log.info("repository installed at %s (smoke test %.1f ms)", installed, smoke.latency_ms or 0)
    return DeployResult("local", endpoint, model_name, label, str(installed), smoke)


# -- canary: champion and challenger as two versions of one model in one local Triton ----------


@contextlib.contextmanager
def serve_lock(serve_dir: str | Path, timeout_s: float = 3600.0) -> Iterator[None]:
    """Exclusive use of ``serve_dir`` (two pipelines in one directory deploy one at a time).

    A file lock beside it, which the kernel releases if the holder dies.
    """

    serve_dir = Path(serve_dir).resolve()
    serve_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = serve_dir.parent / f".{serve_dir.name}.lock"
    try:
        with FileLock(str(lock), timeout=timeout_s):
            yield
    except Timeout:
        raise DeployError(f"{lock}: another deploy held it for {timeout_s:g} s") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed there
        shutil.copy2(src, dst)


def build_canary_repository(
    champion_repo: Path, challenger_repo: Path, model_name: str, out_dir: Path
) -> tuple[int, int]:
    """``out_dir/<model_name>`` serving both latest versions; return (champion, challenger).

    The challenger's ``config.pbtxt`` with ``version_policy { specific { versions: [c, n] } }``
    and one version directory each holding its ``model.onnx`` (a hard link where the filesystem
    allows, else a copy: the local server accepts no model file outside its repository). Raises
    :class:`DeployError` when they cannot share one model config (different input size).
    """

    champ_v = latest_version(champion_repo, model_name)
    chall_v = latest_version(challenger_repo, model_name)
    champ_onnx = (champion_repo / model_name / str(champ_v) / ONNX_FILENAME).resolve()
    chall_onnx = (challenger_repo / model_name / str(chall_v) / ONNX_FILENAME).resolve()
    sizes = read_onnx_io(champ_onnx), read_onnx_io(chall_onnx)
    if sizes[0] != sizes[1]:
        raise DeployError(
            f"champion v{champ_v} takes {sizes[0]} pixels, challenger v{chall_v} {sizes[1]}: one "
            "Triton model cannot serve both; deploy it with deploy.strategy=replace"
        )
    cfg = parse_model_config(challenger_repo / model_name / "config.pbtxt")
    cfg.version_policy.specific.versions[:] = sorted({champ_v, chall_v})
    model_dir = out_dir / model_name
    for version, onnx in ((champ_v, champ_onnx), (chall_v, chall_onnx)):
        (model_dir / str(version)).mkdir(parents=True)
        _link_or_copy(onnx, model_dir / str(version) / ONNX_FILENAME)
    write_model_config(cfg, model_dir / "config.pbtxt")
    return champ_v, chall_v


class LocalCanary:
    """:class:`~depth_common.deploy.canary.RolloutTarget` on the local Triton.

    ``begin`` starts one server with both versions (the champion from ``serve_dir``, the
    challenger from ``repository``) and smoke-tests the challenger version against ONNX
    Runtime. There is no traffic router locally: a step's share only labels the analysis,
    which calls each version explicitly. ``promote`` installs the challenger's repository at
    ``serve_dir`` (only the winner stays); ``roll_back`` leaves ``serve_dir`` as it was.
    """

    def __init__(
        self,
        repository: Path,
        serve_dir: Path,
        model_name: str,
        *,
        onnx_path: Path | None,
        atol: float,
        ready_timeout_s: float = 60.0,
        image: np.ndarray | None = None,
    ) -> None:
        self.repository, self.serve_dir, self.model_name = repository, serve_dir, model_name
        self.onnx_path, self.atol, self.ready_timeout_s = onnx_path, atol, ready_timeout_s
        self.image = image
        self.versions: tuple[int, int] | None = None
        self.server = None
        self.smoke: SmokeResult | None = None
        self.restores: str | None = None  # a rollback leaves serve_dir as it was
        self._tmp: Path | None = None

    def begin(self, percent: int) -> None:

        self._tmp = Path(tempfile.mkdtemp(prefix="depth-canary-"))
        self.versions = build_canary_repository(
            self.serve_dir, self.repository, self.model_name, self._tmp / "repository"
        )
        self.server = LocalTritonServer(
            self._tmp / "repository", ready_timeout_s=self.ready_timeout_s
        ).start()
        self.smoke = smoke_test_v2(
            self.server.http_url,
            self.model_name,
            onnx_path=self.onnx_path,
            atol=self.atol,
            model_version=str(self.versions[1]),
            image=self.image,
        )
        if not self.smoke.ok:
            raise DeployError(f"smoke test of challenger v{self.versions[1]}: {self.smoke.detail}")

    def shift(self, percent: int) -> None:
        log.info("local canary: %d %% (no router locally; both versions are called)", percent)

    def endpoints(self) -> tuple[VersionEndpoint, VersionEndpoint]:
        assert self.server is not None and self.versions is not None
        url = f"http://{self.server.http_url}"
        champ, chall = self.versions
        return (
            VersionEndpoint("champion", f"v{champ}", url, self.model_name, str(champ)),
            VersionEndpoint("challenger", f"v{chall}", url, self.model_name, str(chall)),
        )

    def endpoint(self) -> str:
        return "(local Triton, stopped)"  # the canary's server only lives for the analysis

    def promote(self) -> None:
        self.close()
        install_repository(self.repository, self.serve_dir)

    def roll_back(self) -> None:
        self.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class LocalTarget:
    """:class:`~depth_common.deploy.target.ServingTarget` ``local``: what ``make serve`` serves
    from ``serve_dir`` (``export.repository_dir``), changed under :func:`serve_lock`.

    ``atol`` (metres) bounds the smoke test's difference from ONNX Runtime; ``image`` (uint8
    (h, w, 3)) is the smoke test's input (default: its own seeded image).
    """

    kind = "local"
    resource = None

    def __init__(
        self,
        serve_dir: str | Path,
        model_name: str,
        *,
        atol: float,
        image: np.ndarray | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.serve_dir, self.model_name = Path(serve_dir), model_name
        self.atol, self.image, self.ready_timeout_s = atol, image, ready_timeout_s

    def lease(self, registry: Registry) -> contextlib.AbstractContextManager[object]:
        return serve_lock(self.serve_dir)  # one machine: a file lock is enough

    def describe(self) -> Served | None:
        try:
            version = latest_version(self.serve_dir, self.model_name)
        except DataError:  # nothing (valid) served yet
            return None
        return Served(str(version), str(self.serve_dir.resolve()))

    def serve(self, release: Release) -> DeployResult:
        repository = Path(release.source)
        if not repository.is_dir():
            raise DeployError(f"{repository}: the repository of version {release.version} is gone")
        return deploy_local(
            repository, self.serve_dir, model_name=self.model_name,
            model_version=release.version, onnx_path=release.onnx_path, atol=self.atol,
            ready_timeout_s=self.ready_timeout_s, image=self.image,
        )  # fmt: skip

    def canary(self, release: Release, champion: Served) -> LocalCanary:
        return LocalCanary(
            Path(release.source), self.serve_dir, self.model_name, onnx_path=release.onnx_path,
            atol=self.atol, ready_timeout_s=self.ready_timeout_s, image=self.image,
        )  # fmt: skip

    def status_lines(self) -> list[str]:
        model_dir = self.serve_dir / self.model_name
        found = [p.name for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
        if not found:
            return [f"local: nothing served at {self.serve_dir} (no {model_dir.name}/<version>/)"]
        versions = ", ".join(sorted(found))
        return [f"local: {self.serve_dir} serves {model_dir.name} version(s) {versions}"]
