"""TEST DOUBLE: a serving target that records what it was asked to serve.

Implements :class:`depth_common.deploy.target.ServingTarget` without serving anything, for the
registry rules of the deploy and rollback flows (the real targets have their own tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from depth_common.deploy.report import DeployResult
from depth_common.deploy.smoke import SmokeResult
from depth_common.deploy.target import Release, Served
from depth_common.registry.registry import Registry


def _nothing() -> None:
    return None


class RecordingTarget:
    """Serves by recording; ``on_lease`` runs when the lease is taken (what happened while
    waiting for it), ``during_serve`` inside ``serve`` (another writer, or a failure)."""

    kind, resource = "local", None

    def __init__(
        self,
        during_serve: Callable[[], None] = _nothing,
        on_lease: Callable[[], None] = _nothing,
    ) -> None:
        self.served: list[Release] = []
        self.during_serve, self.on_lease = during_serve, on_lease
        self.leases = 0

    @contextlib.contextmanager
    def lease(self, registry: Registry) -> Iterator[None]:
        self.leases += 1
        self.on_lease()
        yield

    def describe(self) -> Served | None:
        last = self.served[-1] if self.served else None
        return None if last is None else Served(str(last.version), last.source)

    def serve(self, release: Release) -> DeployResult:
        self.during_serve()
        self.served.append(release)
        return DeployResult("local", "", "depth", str(release.version), release.source,
                            SmokeResult(True, "recorded"))  # fmt: skip

    def canary(self, release: Release, champion: Served):
        raise AssertionError("the recording target runs no canary")

    def status_lines(self) -> list[str]:
        return [f"recorded: {[r.version for r in self.served]}"]
