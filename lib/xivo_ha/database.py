"""The local `asterisk` database: connection and the rows HA owns (SIP expiry).

psycopg is imported lazily so that commands which never touch the database start fast.

Local connections are made the XiVO way.  A stock Debian PostgreSQL lets the
`postgres` role in on the Unix socket only for the `postgres` OS user
(`local all postgres peer`), and XiVO's own scripts ran `sudo -u postgres psql`.  So
when root connects over the socket as a role that is also an OS user, the connection
is opened with that user's effective uid (the server reads the peer's credentials at
connect time), then root is restored.  No ident map, no password, no pg_hba change.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from .errors import OperationFailed, UsageError

if TYPE_CHECKING:
    import psycopg

SIP_EXPIRY_NAMES = ("minexpiry", "maxexpiry", "defaultexpiry")
HA_SIP_EXPIRY = {"minexpiry": "180", "maxexpiry": "300", "defaultexpiry": "240"}
BLANK_SIP_EXPIRY = {name: None for name in SIP_EXPIRY_NAMES}


_CREDENTIALS = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """How long one statement may run, and wait for a lock, in every session we open."""

    statement_timeout: float
    lock_timeout: float

    @classmethod
    def from_settings(cls, config=None) -> "Limits":
        """[database] statement_timeout and lock_timeout (the settings are read when not given)."""
        if config is None:
            from . import settings

            config = settings.load()
        return cls(float(config.database.statement_timeout), float(config.database.lock_timeout))

    def options(self) -> str:
        """libpq ``options``: the server applies them from the session's first statement."""
        return (f"-c statement_timeout={round(self.statement_timeout * 1000)} "
                f"-c lock_timeout={round(self.lock_timeout * 1000)}")


def connect(dsn: str, timeout: int = 10, autocommit: bool = False,
            limits: Limits | None = None, what: str = "", hint: str = "") -> "psycopg.Connection":
    """Connect to ``dsn``, with the session limits of ``limits`` (default: the settings').

    A failure is an :class:`OperationFailed`; with ``what`` (e.g. "cannot reach the
    slave database 10.0.0.2:5432/asterisk") its message starts with it and ends with
    ``hint``.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    shown = describe_dsn(dsn)
    if shown == INVALID_DSN:
        raise UsageError(f"[database] dsn is {INVALID_DSN}")
    limits = Limits.from_settings() if limits is None else limits
    try:
        given = conninfo_to_dict(dsn).get("options")
        limited = make_conninfo(dsn, options=f"{given} {limits.options()}" if given else limits.options())
        with peer_credentials(dsn):
            return psycopg.connect(limited, connect_timeout=timeout, autocommit=autocommit)
    except psycopg.Error as exc:
        message = f"cannot connect to the database ({shown}): {error_text(exc)}"
        raise OperationFailed(f"{what}: {message}{hint}" if what else message) from None


def peer_os_user(dsn: str, euid: int) -> str | None:
    """The OS user whose uid a connection to ``dsn`` must be opened with, or None.

    Only root switches, only for a Unix-socket connection (no host, or a host that is a
    directory), and only to a non-root OS user named like the database role.
    """
    import psycopg.conninfo

    if euid != 0:
        return None
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None
    host = parts.get("host") or os.environ.get("PGHOST") or ""
    if host and not all(part.startswith("/") for part in str(host).split(",")):
        return None
    user = parts.get("user") or os.environ.get("PGUSER") or "root"
    return None if user == "root" else str(user)


@contextlib.contextmanager
def peer_credentials(dsn: str) -> Iterator[None]:
    """Hold the effective uid of the OS user that peer authentication expects, if any."""
    user = peer_os_user(dsn, os.geteuid())
    if user is None:
        yield
        return
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        yield
        return
    with _CREDENTIALS:
        os.seteuid(uid)
        try:
            yield
        finally:
            os.seteuid(0)


def describe_dsn(dsn: str) -> str:
    """The DSN without any password, for messages."""
    import psycopg.conninfo

    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return INVALID_DSN
    parts.pop("password", None)
    return " ".join(f"{key}={value}" for key, value in sorted(parts.items()))


INVALID_DSN = "not a valid connection string (its value is not shown: it may hold a password)"


def error_text(exc: BaseException) -> str:
    """A psycopg error as one line that names what happened and never quotes a DSN."""
    import psycopg.errors

    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return f"lock timeout: a table is locked by another session ({first_line(exc)})"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"statement timeout or cancel ({first_line(exc)})"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"not a XiVO asterisk database: {first_line(exc)}"
    if isinstance(exc, psycopg.ProgrammingError) and "connection info string" in str(exc):
        return INVALID_DSN
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def schema_version(conn: "psycopg.Connection") -> str | None:
    """XiVO's alembic schema version: every row of ``public.alembic_version``, sorted and
    joined with commas (alembic keeps one row per head); None without that table or rows.

    The table's existence is asked first, so that a missing one does not abort the
    caller's transaction.
    """
    if conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0] is None:
        return None
    rows = conn.execute("SELECT version_num::text FROM public.alembic_version ORDER BY 1").fetchall()
    return ",".join(row[0] for row in rows) or None


def read_sip_expiry(conn: "psycopg.Connection") -> dict[str, str | None]:
    """The SIP expiry rows; a database without XiVO's tables is an OperationFailed."""
    import psycopg

    try:
        rows = conn.execute(
            "SELECT var_name, var_val FROM staticsip WHERE filename = 'sip.conf' AND category = 'general'"
            " AND var_name = ANY(%s)",
            (list(SIP_EXPIRY_NAMES),),
        ).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise OperationFailed(f"the database is not a XiVO asterisk database ({first_line(exc)})") from None
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot read the SIP expiry settings: {error_text(exc)}") from None
    found = dict(rows)
    return {name: found.get(name) for name in SIP_EXPIRY_NAMES}


def write_sip_expiry(conn: "psycopg.Connection", values: dict[str, str | None]) -> None:
    """Set the expiry rows (creating missing ones) in the caller's transaction."""
    for name, value in values.items():
        updated = conn.execute(
            "UPDATE staticsip SET var_val = %s WHERE filename = 'sip.conf' AND category = 'general'"
            " AND var_name = %s",
            (value, name),
        ).rowcount
        if not updated:
            conn.execute(
                "INSERT INTO staticsip (filename, category, var_name, var_val) VALUES ('sip.conf', 'general', %s, %s)",
                (name, value),
            )
