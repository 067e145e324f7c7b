"""Logging: syslog (ident ``xivo-ha``, facility daemon) plus stderr for humans."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

IDENT = "xivo-ha"
_configured = False


def setup(verbose: bool = False) -> logging.Logger:
    """Configure the ``xivo-ha`` logger once per process."""
    global _configured
    logger = logging.getLogger(IDENT)
    if _configured:
        return logger
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(message)s"))
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.addHandler(stderr)
    socket_path = os.environ.get("XIVO_HA_SYSLOG_SOCKET", "/dev/log")
    if os.path.exists(socket_path):
        try:
            handler = logging.handlers.SysLogHandler(
                address=socket_path, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            handler.ident = f"{IDENT}[{os.getpid()}]: "
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.setLevel(logging.INFO)
            logger.addHandler(handler)
        except OSError:
            pass
    _configured = True
    return logger


def get() -> logging.Logger:
    return setup()
