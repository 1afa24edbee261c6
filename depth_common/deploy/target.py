"""Where a model is served, as one small protocol: deploy, canary and rollback run over it.

:class:`ServingTarget` is implemented by :class:`~depth_common.deploy.local.LocalTarget` (the
bundled Triton, repository installed at ``export.repository_dir``) and
:class:`~depth_common.deploy.kserve.KServeTarget` (one InferenceService). The flow that uses
them is written once, in :mod:`depth_common.deploy.rollout` (deploy, canary) and
:mod:`depth_common.deploy.rollback`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from depth_common.deploy.canary import RolloutTarget
from depth_common.deploy.report import DeployResult
from depth_common.deploy.smoke import SmokeResult
from depth_common.registry.registry import Registry


@dataclass(frozen=True)
class Release:
    """A registered model version to serve, and where its Triton repository is.

    ``source`` is a directory (local) or a ``storageUri`` (KServe); ``onnx_path`` the model
    file the smoke test compares the served output with (None: the repository's own, where
    the target can read it, else no comparison).
    """

    version: int
    source: str
    run_id: str = ""
    onnx_path: Path | None = None
    #: The MLflow run the rollout logs its figures and report to (a pipeline's deploy task run;
    #: "" = ``run_id``, the training run the version was registered from).
    tracking_run_id: str = ""


@dataclass(frozen=True)
class Served:
    """What a target serves now: its registered model version ("unknown" when not recorded)
    and its repository (directory or ``storageUri``)."""

    version: str
    source: str


class CanaryRollout(RolloutTarget, Protocol):
    """A canary in progress on one target (the steps of :class:`RolloutTarget`), plus what the
    report needs once it ended."""

    smoke: SmokeResult | None  # the challenger's smoke test, once ``begin`` ran it
    restores: str | None  # what a rollback returns to (None: nothing changed on the target)

    def endpoint(self) -> str:
        """The address the promoted version is served at, for the report."""

    def close(self) -> None:
        """Release what the canary started (servers, temporary files); idempotent."""


class ServingTarget(Protocol):
    """One serving target; every method returns once the change is live."""

    kind: str  # "local" | "kserve": the report's target
    resource: str | None  # "namespace/name" of the InferenceService (None: local)

    def lease(self, registry: Registry) -> AbstractContextManager[object]:
        """Exclusive use of the target while a deploy or rollback reads, changes and records
        it (the registry follows what serves before the lease is released)."""

    def describe(self) -> Served | None:
        """What serves now (None: nothing, or nothing valid)."""

    def serve(self, release: Release) -> DeployResult:
        """Serve ``release`` with all traffic, smoke-tested; on a failure the target serves
        what it served before and :class:`~depth_common.deploy.report.DeployError` is raised."""

    def canary(self, release: Release, champion: Served) -> CanaryRollout:
        """A canary of ``release`` beside ``champion``; nothing changes until ``begin``."""

    def status_lines(self) -> list[str]:
        """What serves, for ``python -m depth_common status``."""
