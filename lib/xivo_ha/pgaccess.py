"""PostgreSQL access between the nodes: pure edits of pg_hba.conf and postgresql.conf.

On the slave: the master's copy logs in (trust for the master's address).  On a master
in ``[replication] mode = continuous``: the slave's subscription logs in as the stream
role (scram-sha-256, the slave's address only), and the server runs with
``wal_level = logical`` and listens on every address (a PostgreSQL restart).

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
STREAM_MARKER = b"# xivo-ha: the slave streams this master's changes (logical replication)"
WAL_LEVEL_LINE = "wal_level = logical"
_WAL_LEVEL = WAL_LEVEL_LINE.encode()
_OUR_RULE = re.compile(rb"^host asterisk postgres (\S+)/32 trust$")
STREAM_USER = "xivo_ha_replication"
_STREAM_RULE = re.compile(rb"^host asterisk " + STREAM_USER.encode() + rb" (\S+)/32 scram-sha-256$")
_HOST_TYPES = {b"host", b"hostssl", b"hostnossl", b"hostgssenc", b"hostnogssenc"}
DATABASE, USER = "asterisk", "postgres"


def hba_rule(master_ip: str) -> str:
    return f"host {DATABASE} {USER} {master_ip}/32 trust"


def stream_rule(slave_ip: str) -> str:
    return f"host {DATABASE} {STREAM_USER} {slave_ip}/32 scram-sha-256"


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


def could_match(line: bytes, master_ip: str, user: str = USER) -> bool:
    """Whether a pg_hba.conf line could apply to a TCP connection from ``master_ip``
    to database asterisk as ``user`` (unknown forms count as "could")."""
    fields = line.split(b"#", 1)[0].split()
    if len(fields) < 4 or fields[0] not in _HOST_TYPES:
        return False
    databases, users, address = fields[1].split(b","), fields[2].split(b","), fields[3]
    if not any(d in (DATABASE.encode(), b"all") or d.startswith((b"@", b"/")) for d in databases):
        return False
    if not any(u in (user.encode(), b"all") or u.startswith((b"+", b"@", b"/")) for u in users):
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


def edit_hba(data: bytes, master_ip: str | None, slave_ip: str | None = None) -> bytes:
    """``data`` without our block, plus a block (when an address is given) before the first
    rule that could match one of its rules: the master's copy (``master_ip``, on a slave),
    the slave's stream (``slave_ip``, on a continuous master)."""
    lines, newline = _lines(data)
    lines = _without_ours(lines)
    rules = [(hba_rule(ip), ip, USER) for ip in [master_ip] if ip] + [
        (stream_rule(ip), ip, STREAM_USER) for ip in [slave_ip] if ip]
    if not rules:
        return b"".join(lines)
    block = [BEGIN + newline, *(rule.encode() + newline for rule, _, _ in rules), END + newline]
    for index, line in enumerate(lines):
        if any(could_match(line, ip, user) for _, ip, user in rules):
            return b"".join(lines[:index] + block + lines[index:])
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += newline
    return b"".join(lines + block)


def edit_conf(data: bytes, listen_all: bool, logical: bool = False) -> bytes:
    """``data`` without our overrides, plus listen_addresses when ``listen_all`` and
    wal_level = logical (after our marker) when ``logical``."""
    lines, newline = _lines(data)
    kept, after_stream = [], False
    for line in lines:
        bare = _bare(line)
        if bare in (CONF_MARKER, _LISTEN, STREAM_MARKER) or (after_stream and bare == _WAL_LEVEL):
            after_stream = bare == STREAM_MARKER
            continue
        after_stream = False
        kept.append(line)
    lines = kept
    if listen_all or logical:
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += newline
    if listen_all:
        lines += [CONF_MARKER + newline, _LISTEN + newline]
    if logical:
        lines += [STREAM_MARKER + newline, _WAL_LEVEL + newline]
    return b"".join(lines)


def hba_master(data: bytes) -> str | None:
    """The master address allowed by our block, if any."""
    for line in _block(data.splitlines()):
        match = _OUR_RULE.match(line)
        if match:
            return match.group(1).decode("ascii", errors="replace")
    return None


def hba_stream_peer(data: bytes) -> str | None:
    """The slave address our block lets in as the stream role, if any."""
    for line in _block(data.splitlines()):
        match = _STREAM_RULE.match(line)
        if match:
            return match.group(1).decode("ascii", errors="replace")
    return None


def streams(data: bytes) -> bool:
    """Whether postgresql.conf holds our wal_level = logical."""
    bare = [_bare(line) for line in data.splitlines()]
    return any(a == STREAM_MARKER and b == _WAL_LEVEL for a, b in zip(bare, bare[1:]))


def first_match(data: bytes, master_ip: str) -> str | None:
    """The rule PostgreSQL applies to the master's connection (first match), as text."""
    for line in data.splitlines():
        if could_match(line, master_ip):
            return _bare(line).decode("utf-8", errors="replace")
    return None


def listens_everywhere(data: bytes) -> bool:
    return any(_bare(line) == _LISTEN for line in data.splitlines())
