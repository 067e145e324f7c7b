"""Mail to root through the local MTA, for :mod:`events`.

XiVO's cron jobs mail root when they fail; cron itself mails only what a job prints
on stdout/stderr, and our cron lines discard stdout.  So the events (failover, a job
that fails, ...) are mailed to ``root`` with the local MTA when one is installed
(``sendmail``, else ``mail``).  No MTA: the syslog line is all there is, and that is
not an error.
"""

from __future__ import annotations

import os
import shutil

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
