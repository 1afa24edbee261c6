"""The project's errors: one base, and the kinds that callers tell apart, in stage order.

Every message names the file, field, key or endpoint at fault. The edges map them once:
``depth_common.cli.parser.main`` to exit codes (:data:`EXIT_CODES`), the serving
transformer and the drift monitor to HTTP status codes (400, 413). A builtin base beside
:class:`DepthError` (``ValueError``, ``RuntimeError``, ``TimeoutError``) says what kind of
failure it is to code that knows nothing of this project.
"""

from __future__ import annotations

from typing import Any


class DepthError(Exception):
    """Base of every error this project raises on purpose (the message is for a person)."""


# -- input: configuration and files ---------------------------------------------------------
class ConfigError(DepthError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range (an
    encoder that does not fit, a missing Secret value, a job that does not match its CRD)."""


class DataError(DepthError, ValueError):
    """A data file is missing, unreadable or not what was expected (the message names it)."""


class CheckpointError(DataError):
    """A checkpoint file is unreadable or not in this project's format."""


class UnmanagedDirectoryError(DataError):
    """A directory the project would replace or write into holds files it did not write."""


class RepositoryError(DataError):
    """A model repository cannot be served locally; the message names the file and field."""


# -- requests from clients (HTTP 400 / 413 at the serving edges) ----------------------------
class RequestError(DataError):
    """What a client sent is malformed or refused (HTTP 400); the message names the input."""


class ImageDecodeError(RequestError):
    """An image could not be decoded or is refused; the message names the source and why."""


class FocalError(RequestError):
    """A ``focal_px`` that is not a finite number in (1, 100000] pixels; names its source."""


class EventError(RequestError):
    """A CloudEvent the drift monitor refuses; the message says what was wrong."""


class RequestTooLarge(DepthError):
    """A request would decode or answer more than a limit allows (HTTP 413, naming it)."""


# -- runs that end without what they were for ------------------------------------------------
class Stopped(DepthError):
    """The work was stopped on request (SIGTERM) after saving what resumes it; not a failure
    of the input, so the CLI reports it in one line with the exit code of a SIGTERM'd process."""


class TrainingInterrupted(Stopped, RuntimeError):
    """SIGTERM stopped a training run after it saved a resumable ``last.pt``."""


class TrainingError(DepthError, RuntimeError):
    """The run produced no usable model (every validation gave a non-finite RMSE)."""


class ParityError(DepthError, RuntimeError):
    """An exported model's outputs differ from the reference by more than the tolerance:
    ``max_abs_diff`` measured (metres), ``atol`` allowed, on batch size ``batch``."""

    def __init__(self, message: str, *, max_abs_diff: float, atol: float, batch: int) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.atol = atol
        self.batch = batch


class TensorRTUnavailable(DepthError, RuntimeError):
    """TensorRT, the CUDA bindings or a CUDA GPU is missing; the message says which."""


# -- the registry ------------------------------------------------------------------------------
class PromotionError(DepthError, RuntimeError):
    """The registry or a run is not in a state promotion can decide on (the message says why)."""


class RegistryLockTimeout(DepthError, TimeoutError):
    """The registry lock was not had in time; the message names the holder."""


class LineageNotFound(DepthError):
    """No registered version, alias, run or dataset matches the query (the message says which)."""


# -- serving and deploying -------------------------------------------------------------------
class DepthServingError(DepthError, RuntimeError):
    """A server refused or failed a request; ``status`` keeps the server's own code."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class DepthConnectionError(DepthServingError):
    """The server could not be reached, or did not answer within the client's timeout."""


class TritonServerError(DepthError, RuntimeError):
    """The local Triton server could not be prepared, started or stopped cleanly."""


class DeployError(DepthError, RuntimeError):
    """A deploy failed; ``result`` (a ``DeployResult``) holds what was observed."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class DeployTimeout(DeployError):
    """The InferenceService did not become Ready in time."""


class CanaryError(DepthError, RuntimeError):
    """A canary rollout failed (an error, not the analysis); ``outcome`` holds its steps."""

    def __init__(self, message: str, outcome: Any) -> None:
        super().__init__(message)
        self.outcome = outcome


# -- scale-out and containers ------------------------------------------------------------------
class JobFailed(DepthError, RuntimeError):
    """A TrainJob/PyTorchJob ended in a failed state; the message carries its reason."""


class NotEnded(DepthError, TimeoutError):
    """A launcher's wait ran out of time; ``phase`` is the last one seen."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class ContainerError(DepthError, RuntimeError):
    """No engine, no image, or an image that cannot run the pipeline."""


#: What a shell reports for a process that SIGTERM ended (128 + 15): a stopped run, not an error.
EXIT_STOPPED = 143
#: Exit status of ``python -m depth_common`` per error kind (first match wins; others: 1).
EXIT_CODES: tuple[tuple[type[DepthError], int], ...] = (
    (Stopped, EXIT_STOPPED),
    (ConfigError, 2),
    (DataError, 2),
    (LineageNotFound, 2),
)


def exit_code(error: DepthError) -> int:
    """The CLI's exit status for ``error`` (:data:`EXIT_CODES`, else 1)."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)
