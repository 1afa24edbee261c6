"""The project's errors: one base, and the few kinds that callers tell apart.

Every message names the file, field or endpoint at fault. The edges map them once:
``depth_common.cli`` to exit codes, the serving transformer to HTTP status codes.
"""


class DepthError(Exception):
    """Base of every error this project raises on purpose (the message is for a person)."""


class ConfigError(DepthError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(DepthError, ValueError):
    """A data file is missing, unreadable or not what was expected (the message names it)."""


class Stopped(DepthError):
    """The work was stopped on request (SIGTERM) after saving what resumes it; not a failure of
    the input, so the CLI reports it in one line with the exit code of a SIGTERM'd process."""
