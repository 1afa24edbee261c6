"""The canary state machine, the same for every target: step up, analyse, promote or roll back.

A :class:`RolloutTarget` (KServe: :mod:`.kserve_canary`; local Triton: :mod:`.local`) moves
traffic; :func:`run_canary` decides. For each step of ``deploy.canary_steps`` below 100 the
challenger gets that share of traffic (``begin`` for the first, ``shift`` after), then both
versions are analysed (:mod:`.analysis`); the first failed analysis rolls back. The final 100
is the promotion: all traffic on the challenger and the canary removed. Any error on the way
(an API call failing, a revision that never becomes Ready) rolls back too, and the error that
is raised says what failed and how the rollback went.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from depth_common.deploy.analysis import StepAnalysis
from depth_common.deploy.probe import VersionEndpoint
from depth_common.errors import CanaryError

log = logging.getLogger(__name__)


class RolloutTarget(Protocol):
    """Where the two versions are served; every method returns once the change is live."""

    def begin(self, percent: int) -> None:
        """Serve the challenger beside the champion with ``percent`` % of the traffic."""

    def shift(self, percent: int) -> None:
        """Give the challenger ``percent`` % of the traffic."""

    def endpoints(self) -> tuple[VersionEndpoint, VersionEndpoint]:
        """(champion, challenger), each callable on its own."""

    def promote(self) -> None:
        """All traffic on the challenger; the canary removed."""

    def roll_back(self) -> None:
        """All traffic on the champion; the challenger removed."""


Analyse = Callable[[VersionEndpoint, VersionEndpoint, int], StepAnalysis]
#: Asked before each step and before promoting: a reason to stop (e.g. superseded), or None.
StillWanted = Callable[[], str | None]


@dataclass(frozen=True)
class CanaryOutcome:
    promoted: bool
    reason: str
    steps: tuple[StepAnalysis, ...] = field(default_factory=tuple)


def _always_wanted() -> str | None:
    return None


def describe_error(exc: BaseException) -> str:
    """One line: an API error (``kubernetes`` ApiException) as HTTP status, reason and the
    server's message rather than its multi-line dump with headers."""
    status, body = getattr(exc, "status", None), getattr(exc, "body", None)
    if isinstance(status, int) and body is not None:
        try:
            message = json.loads(body).get("message", "")
        except (TypeError, ValueError, AttributeError):
            message = str(body)[:200]
        return f"API error HTTP {status} {getattr(exc, 'reason', '') or ''}: {message}".strip()
    return f"{type(exc).__name__}: {exc}"


def run_canary(
    target: RolloutTarget,
    steps: Sequence[int],
    analyse: Analyse,
    still_wanted: StillWanted = _always_wanted,
) -> CanaryOutcome:
    """Roll the challenger out over ``steps`` (percentages ending with 100); see the module doc.

    Returns the outcome (promoted, or rolled back with the reason); raises
    :class:`CanaryError` when something failed on the way (after trying to roll back).
    """
    if not steps or steps[-1] != 100:
        raise ValueError(f"steps: got {list(steps)}, expected percentages ending with 100")
    done: list[StepAnalysis] = []
    started = False
    try:
        for percent in [p for p in steps if p < 100]:
            reason = still_wanted()
            if reason:
                return _roll_back(target, started, reason, done)
            step = target.shift if started else target.begin
            started = True  # before the call: a half-done begin must be rolled back too
            step(percent)
            result = analyse(*target.endpoints(), percent)
            done.append(result)
            log.info("canary at %d %%: %s", percent, "passed" if result.passed else "FAILED")
            if not result.passed:
                why = f"analysis failed at {percent} %: " + "; ".join(result.failures())
                return _roll_back(target, started, why, done)
        reason = still_wanted()
        if reason:
            return _roll_back(target, started, reason, done)
        if not started:  # steps == [100]: nothing to analyse, straight to all traffic
            started = True
            target.begin(100)
        target.promote()
    except Exception as exc:
        what = describe_error(exc)
        try:
            if started:
                target.roll_back()
        except Exception as again:  # the rollback's own failure must not hide the first one
            also = describe_error(again)
            outcome = CanaryOutcome(False, f"{what}; rollback failed too: {also}", tuple(done))
            raise CanaryError(
                f"canary failed ({what}) and the rollback failed: {also}", outcome
            ) from exc
        outcome = CanaryOutcome(False, f"{what}; rolled back", tuple(done))
        raise CanaryError(f"canary failed ({what}); rolled back to the champion", outcome) from exc
    return CanaryOutcome(True, f"analysis passed at {_steps_text(done)}; promoted", tuple(done))


def _steps_text(done: Sequence[StepAnalysis]) -> str:
    return ", ".join(f"{s.traffic_percent} %" for s in done) or "no step (steps: [100])"


def _roll_back(
    target: RolloutTarget, started: bool, reason: str, done: list[StepAnalysis]
) -> CanaryOutcome:
    if started:
        target.roll_back()  # an error here propagates to run_canary's handler
    return CanaryOutcome(False, f"{reason}; rolled back", tuple(done))
