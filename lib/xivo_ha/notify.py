"""Telling the administrator that a periodic job failed: syslog, and a mail to root.

XiVO's cron jobs mail root when they fail; cron itself mails only what a job prints
on stdout/stderr, and our cron lines discard stdout.  So a failure is logged (syslog,
ident ``xivo-ha``, facility daemon, and stderr) and mailed to ``root`` with the
local MTA when one is installed (``sendmail``, else ``mail``).  No MTA: the syslog
line is all there is, and that is not an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time

from . import system

MAIL_TO = "root"
MAIL_TIMEOUT = 30.0
# Where Debian's MTAs put sendmail; cron's PATH (/usr/bin:/bin) does not include them.
SENDMAIL_PATHS = ("/usr/sbin/sendmail", "/usr/lib/sendmail")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def mailer() -> tuple[str, str] | None:
    """``("sendmail", path)`` or ``("mail", path)``: the first mail program found, or None."""
    found = shutil.which("sendmail")
    if found:
        return "sendmail", found
    for path in SENDMAIL_PATHS:
        if _executable(path):
            return "sendmail", path
    found = shutil.which("mail")
    if found:
        return "mail", found
    return None


def _subject(what: str) -> str:
    return f"[xivo-ha] {socket.gethostname()}: {what}"


def send_mail(subject: str, body: str) -> bool:
    """Mail ``body`` to root; False when no mail program exists.  Raises OperationFailed."""
    program = mailer()
    if program is None:
        return False
    kind, path = program
    if kind == "sendmail":
        message = (
            f"To: {MAIL_TO}\nSubject: {subject}\nAuto-Submitted: auto-generated\n"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}\n"
        )
        system.run([path, "-oi", "-t"], stdin=message, timeout=MAIL_TIMEOUT, check=True)
    else:
        system.run([path, "-s", subject, MAIL_TO], stdin=body + "\n", timeout=MAIL_TIMEOUT, check=True)
    return True


def failure(logger: logging.Logger, what: str, message: str, advice: str = "") -> None:
    """Log ``message`` as an error and mail it to root.

    ``what`` is the short subject (e.g. "slave replication failed"); ``advice`` is
    added to the mail body.  A mail that cannot be sent is logged, never raised: the
    original failure is what matters.
    """
    logger.error("%s", message)
    body = "\n\n".join(
        part for part in (
            message,
            advice,
            f"Host: {socket.gethostname()}\nTime: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
            f"Details are in syslog (ident xivo-ha).",
        ) if part
    )
    try:
        sent = send_mail(_subject(what), body)
    except Exception as exc:  # the mail is a courtesy: never let it hide the failure itself
        logger.warning("could not mail root about it: %s", exc)
        return
    if sent:
        logger.debug("mailed root about it")
