"""Slave-side PostgreSQL access for the master: pure edits of pg_hba.conf and postgresql.conf.

The files are edited as bytes: whatever encoding and line endings they use (latin-1,
CRLF) are kept.  Our pg_hba.conf rule lives in a marked block, placed before the first
existing rule that could match the master's connection (PostgreSQL uses the first
matching rule); only the lines inside that block are ours.
"""

from __future__ import annotations

import ipaddress
import re

BEGIN = b"# BEGIN xivo-ha: the master replicates into this node (only these lines are ours)"
END = b"# END xivo-ha"
LEGACY_MARKER = b"# xivo-ha: the master replicates into this node"
CONF_MARKER = b"# xivo-ha: accept the master's replication connections"
LISTEN_LINE = "listen_addresses = '*'"
_LISTEN = LISTEN_LINE.encode()
_OUR_RULE = re.compile(rb"^host asterisk postgres (\S+)/32 trust$")
_HOST_TYPES = {b"host", b"hostssl", b"hostnossl", b"hostgssenc", b"hostnogssenc"}
DATABASE, USER = "asterisk", "postgres"


def hba_rule(master_ip: str) -> str:
    return f"host {DATABASE} {USER} {master_ip}/32 trust"


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    lines = data.splitlines(keepends=True)
    newline = b"\r\n" if lines and lines[0].endswith(b"\r\n") else b"\n"
    return lines, newline


def _bare(line: bytes) -> bytes:
    return line.rstrip(b"\r\n").strip()


def _without_ours(lines: list[bytes]) -> list[bytes]:
    """``lines`` without our block (and without the single rule an older version wrote)."""
    kept, inside, after_legacy = [], False, False
    for line in lines:
        bare = _bare(line)
        if bare.startswith(END) and inside:
            inside = False
        elif bare.startswith(b"# BEGIN xivo-ha"):
            inside = True
        elif bare == LEGACY_MARKER:
            after_legacy = True
            continue
        elif not inside and not (after_legacy and _OUR_RULE.match(bare)):
            kept.append(line)
        after_legacy = False
    return kept


def _block(lines: list[bytes]) -> list[bytes]:
    out, inside = [], False
    for line in lines:
        bare = _bare(line)
        if bare.startswith(b"# BEGIN xivo-ha"):
            inside = True
        elif bare.startswith(END):
            inside = False
        elif inside:
            out.append(bare)
    return out


def could_match(line: bytes, master_ip: str) -> bool:
    """Whether a pg_hba.conf line could apply to a TCP connection from ``master_ip``
    to database asterisk as user postgres (unknown forms count as "could")."""
    fields = line.split(b"#", 1)[0].split()
    if len(fields) < 4 or fields[0] not in _HOST_TYPES:
        return False
    databases, users, address = fields[1].split(b","), fields[2].split(b","), fields[3]
    if not any(d in (DATABASE.encode(), b"all") or d.startswith((b"@", b"/")) for d in databases):
        return False
    if not any(u in (USER.encode(), b"all") or u.startswith((b"+", b"@", b"/")) for u in users):
        return False
    if address == b"all" or address in (b"samehost", b"samenet"):
        return True
    try:
        text = address.decode("ascii")
        if "/" in text:
            network = ipaddress.ip_network(text, strict=False)
        elif len(fields) >= 5:
            network = ipaddress.ip_network(f"{text}/{fields[4].decode('ascii')}", strict=False)
        else:
            return True
    except (UnicodeDecodeError, ValueError):
        return True  # a host name or a form we do not read: it might match
    return ipaddress.ip_address(master_ip) in network


def edit_hba(data: bytes, master_ip: str | None) -> bytes:
    """``data`` without our block, plus a block for ``master_ip`` (when given) before the
    first rule that could match it."""
    lines, newline = _lines(data)
    lines = _without_ours(lines)
    if master_ip is None:
        return b"".join(lines)
    block = [BEGIN + newline, hba_rule(master_ip).encode() + newline, END + newline]
    for index, line in enumerate(lines):
        if could_match(line, master_ip):
            return b"".join(lines[:index] + block + lines[index:])
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += newline
    return b"".join(lines + block)


def edit_conf(data: bytes, listen_all: bool) -> bytes:
    """``data`` without our listen_addresses override, plus it when ``listen_all``."""
    lines, newline = _lines(data)
    lines = [line for line in lines if _bare(line) not in (CONF_MARKER, _LISTEN)]
    if listen_all:
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += newline
        lines += [CONF_MARKER + newline, _LISTEN + newline]
    return b"".join(lines)


def hba_master(data: bytes) -> str | None:
    """The master address allowed by our block, if any."""
    for line in _block(data.splitlines()):
        match = _OUR_RULE.match(line)
        if match:
            return match.group(1).decode("ascii", errors="replace")
    return None


def first_match(data: bytes, master_ip: str) -> str | None:
    """The rule PostgreSQL applies to the master's connection (first match), as text."""
    for line in data.splitlines():
        if could_match(line, master_ip):
            return _bare(line).decode("utf-8", errors="replace")
    return None


def listens_everywhere(data: bytes) -> bool:
    return any(_bare(line) == _LISTEN for line in data.splitlines())
