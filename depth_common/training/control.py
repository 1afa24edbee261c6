"""Run control around the training loop: the SIGTERM stop request, the MLflow run's lifecycle,
and the two ways a run ends without a model."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

from depth_common.config import Params
from depth_common.errors import TrainingInterrupted
from depth_common.registry import tracking
from depth_common.registry.tracking import TaskContext
from depth_common.training import distributed


class StopRequest:
    """SIGTERM while the block runs → :meth:`check` turns true (the loop then saves and stops).

    Kubernetes sends SIGTERM before it kills a pod (and torchrun forwards it to its workers);
    the handler only sets a flag, so the loop stops at an optimiser-step boundary, where the
    state is consistent. Under DDP :meth:`check` is a collective: every rank stops at the same
    step when any rank got the signal. Outside the main thread no handler can be installed,
    and :meth:`check` stays false.
    """

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = distributed
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def check(self) -> bool:
        """Whether to stop now (the same answer on every rank)."""
        return distributed.any_rank(self.requested) if self.distributed else self.requested


@contextlib.contextmanager
def tracked_run(
    params: Params,
    state: Any,
    tags: Mapping[str, str],
    *,
    enabled: bool,
    context: TaskContext | None = None,
) -> Iterator[None]:
    """The MLflow run of ``state`` (``state.run_id``) for the block.

    With ``enabled`` (rank 0 with tracking on) it starts a run, or re-opens the one a resumed
    ``last.pt`` names (status RUNNING), and tags it; at the end it marks the run FINISHED,
    KILLED (SIGTERM) or FAILED (any other exception). Every rank learns rank 0's run id.
    """
    if enabled:
        if state.run_id is not None:
            tracking.configure(params.mlflow)
            tracking.set_status(state.run_id, "RUNNING")
        else:
            state.run_id = tracking.start_training_run(params, context)
        tracking.set_tags(state.run_id, tags)
    # DDP: every rank reports rank 0's run
    state.run_id = distributed.broadcast_object(state.run_id)
    try:
        yield
    except BaseException as exc:
        if enabled and state.run_id is not None:
            status = "KILLED" if isinstance(exc, TrainingInterrupted) else "FAILED"
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                tracking.set_status(state.run_id, status)
        raise
    if enabled and state.run_id is not None:
        tracking.set_status(state.run_id, "FINISHED")
