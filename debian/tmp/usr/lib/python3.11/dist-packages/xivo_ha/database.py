"""The local `asterisk` database: connection and the rows HA owns (SIP expiry).

psycopg is imported lazily so that commands which never touch the database start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import OperationFailed

if TYPE_CHECKING:
    import psycopg

SIP_EXPIRY_NAMES = ("minexpiry", "maxexpiry", "defaultexpiry")
HA_SIP_EXPIRY = {"minexpiry": "180", "maxexpiry": "300", "defaultexpiry": "240"}
BLANK_SIP_EXPIRY = {name: None for name in SIP_EXPIRY_NAMES}


def connect(dsn: str, timeout: int = 10, autocommit: bool = False) -> "psycopg.Connection":
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=timeout, autocommit=autocommit)
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot connect to the database ({describe_dsn(dsn)}): {first_line(exc)}") from None


def describe_dsn(dsn: str) -> str:
    """The DSN without any password, for messages."""
    import psycopg.conninfo

    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "invalid DSN"
    parts.pop("password", None)
    return " ".join(f"{key}={value}" for key, value in sorted(parts.items()))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_sip_expiry(conn: "psycopg.Connection") -> dict[str, str | None]:
    rows = conn.execute(
        "SELECT var_name, var_val FROM staticsip WHERE filename = 'sip.conf' AND category = 'general'"
        " AND var_name = ANY(%s)",
        (list(SIP_EXPIRY_NAMES),),
    ).fetchall()
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
