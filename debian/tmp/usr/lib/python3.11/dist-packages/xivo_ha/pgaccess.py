"""Slave-side PostgreSQL access for the master: pure edits of pg_hba.conf and postgresql.conf."""

from __future__ import annotations

import re

HBA_MARKER = "# xivo-ha: the master replicates into this node"
CONF_MARKER = "# xivo-ha: accept the master's replication connections"
LISTEN_LINE = "listen_addresses = '*'"
_HBA_RULE = re.compile(r"^\s*host\s+asterisk\s+postgres\s+\S+/32\s+trust\s*$")


def hba_rule(master_ip: str) -> str:
    return f"host asterisk postgres {master_ip}/32 trust"


def edit_hba(text: str, master_ip: str | None) -> str:
    """``text`` without any earlier master rule, plus the rule for ``master_ip`` when given."""
    lines = [
        line for line in text.splitlines()
        if line.strip() != HBA_MARKER and not _HBA_RULE.match(line)
    ]
    if master_ip is not None:
        lines += [HBA_MARKER, hba_rule(master_ip)]
    return "\n".join(lines) + "\n" if lines else ""


def edit_conf(text: str, listen_all: bool) -> str:
    """``text`` without our listen_addresses override, plus it when ``listen_all``."""
    lines = [line for line in text.splitlines() if line.strip() not in (CONF_MARKER, LISTEN_LINE)]
    if listen_all:
        lines += [CONF_MARKER, LISTEN_LINE]
    return "\n".join(lines) + "\n" if lines else ""


def hba_master(text: str) -> str | None:
    """The master address allowed by our rule, if any."""
    for line in text.splitlines():
        if _HBA_RULE.match(line):
            return line.split()[3].split("/")[0]
    return None


def listens_everywhere(text: str) -> bool:
    return any(line.strip() == LISTEN_LINE for line in text.splitlines())
