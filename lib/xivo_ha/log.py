"""Logging: syslog (ident ``xivo-ha``, facility daemon), ``/var/log/xivo-ha.log`` and stderr.

The library logs to :data:`LOGGER` and never configures it; the command-line base
class (:class:`xivo_ha.cli.Command`) calls :func:`setup` once per process.  A
sentence meant for the person running a command goes through a :data:`Progress`
callback (``print``, ``LOGGER.debug``, or :func:`quiet`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Callable

from . import paths

IDENT = "xivo-ha"
SYSLOG_SOCKET_ENV = "XIVO_HA_SYSLOG_SOCKET"
FILE_FORMAT = "%(asctime)s %(levelname)s " + IDENT + "[%(process)d]: %(message)s"

LOGGER = logging.getLogger(IDENT)

# A callback that receives one sentence for the person running the command.
Progress = Callable[[str], None]


def quiet(_sentence: str) -> None:
    """A :data:`Progress` that says nothing."""


_stderr: logging.Handler | None = None


def setup(verbose: bool = False) -> logging.Logger:
    """Attach the stderr, syslog and log file handlers once per process; ``verbose``
    shows debug lines on stderr (it can be turned on later, never off)."""
    global _stderr
    if _stderr is None:
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
        _stderr = logging.StreamHandler(sys.stderr)
        _stderr.setFormatter(logging.Formatter("%(message)s"))
        _stderr.setLevel(logging.WARNING)
        LOGGER.addHandler(_stderr)
        for handler in (_syslog(), _log_file()):
            if handler is not None:
                handler.setLevel(logging.INFO)
                LOGGER.addHandler(handler)
    if verbose:
        LOGGER.setLevel(logging.DEBUG)
        _stderr.setLevel(logging.DEBUG)
    return LOGGER


def _syslog() -> logging.Handler | None:
    socket_path = os.environ.get(SYSLOG_SOCKET_ENV, "/dev/log")
    if not os.path.exists(socket_path):
        return None
    try:
        handler = logging.handlers.SysLogHandler(
            address=socket_path, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        return None
    handler.ident = f"{IDENT}[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _log_file() -> logging.Handler | None:
    """``/var/log/xivo-ha.log`` when the package created it and we may write it (root)."""
    path = paths.node(paths.LOG_FILE)
    if not path.is_file() or not os.access(path, os.W_OK):
        return None
    try:
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z"))
    return handler
