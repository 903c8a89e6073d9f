"""User-facing error types.

Every error a user can cause (bad config, missing data, unreadable checkpoint)
is raised as a :class:`ShieldtuneError` subclass.  The CLI prints these as one
line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ShieldtuneError(Exception):
    """Base class for errors that are the user's to fix; the message says how."""


class ConfigError(ShieldtuneError):
    """A configuration key has a missing, malformed or out-of-range value."""


class DataError(ShieldtuneError):
    """The dataset could not be found, downloaded or verified."""


class CheckpointError(ShieldtuneError):
    """A checkpoint or policy file is missing, corrupted or of the wrong kind."""


class TaskError(ConfigError):
    """A task (built-in or a user's plug-in) cannot be found, built, or breaks the contract."""


class StorageError(ShieldtuneError):
    """A file could not be written or a folder created (disk full, read-only, not a folder)."""


class StepFailedError(ShieldtuneError):
    """An environment step kept failing after its bounded retries (or could not be started)."""


class ClusterError(ShieldtuneError):
    """The Kubernetes API could not be reached, authenticated against, or refused a request."""


class TrackingError(ShieldtuneError):
    """The MLflow tracking server kept failing after bounded retries."""


def first_line(value: object, limit: int = 200) -> str:
    """The first non-empty line of ``str(value)`` (an exception, a server reply), at most
    ``limit`` characters, for one-line error messages; the type's name if there is no text."""
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    text = lines[0] if lines else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_existing_file(path: str | Path) -> bool:
    """``Path.is_file`` that answers False instead of raising for a name the file system
    cannot even look up (longer than its limit), so callers can report it in one line."""
    try:
        return Path(path).is_file()
    except OSError:
        return False
