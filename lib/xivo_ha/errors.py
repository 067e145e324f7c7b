"""Exceptions that map to the house exit codes."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class XivoHaError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code = EXIT_FAILED


class UsageError(XivoHaError):
    """Bad input: nothing was changed."""

    exit_code = EXIT_USAGE


class OperationFailed(XivoHaError):
    """The operation was attempted and failed."""

    exit_code = EXIT_FAILED
