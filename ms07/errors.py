"""Small, flat exceptions. The CLI turns each into one clear line and an exit code."""

from __future__ import annotations


class Ms07Error(Exception):
    """Base of every error the CLI reports as one line (no traceback)."""

    exit_code = 1


class ConfigError(Ms07Error):
    """The configuration file or environment is invalid."""

    exit_code = 2


class UsageError(Ms07Error):
    """Bad input from the user: arguments, payloads, files."""

    exit_code = 2


class DependencyUnavailable(Ms07Error):
    """PostgreSQL, Redis or another service could not be reached."""

    exit_code = 3


class NotFound(Ms07Error):
    """A named object (distribution, destination, runbook, backup) does not exist."""

    exit_code = 4


class BackupError(Ms07Error):
    """A queue backup could not be written or verified, or a restore failed."""

    exit_code = 5


class NotRunning(DependencyUnavailable):
    """The embedded servers are not running and this command may not start them."""


class NoSchema(DependencyUnavailable):
    """The database has no ms07 schema and this command may not create it."""


class MissingExtra(Ms07Error):
    """An optional extra is needed for this feature."""

    exit_code = 2


class RunbookError(Ms07Error):
    """A runbook file is invalid: the message names the file, the line and what is wrong."""

    exit_code = 2


class Conflict(Ms07Error):
    """The change would contradict the current state (a destination with open jobs
    removed without saying what becomes of them, one added twice)."""

    exit_code = 1
