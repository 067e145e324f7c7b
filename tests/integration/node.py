"""A node under test: a temp root prefix, its own `asterisk` database, and the CLI run for real."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DEBIAN_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""
DEBIAN_CONF = """\
data_directory = '/var/lib/postgresql/15/main'
hba_file = '/etc/postgresql/15/main/pg_hba.conf'
#listen_addresses = 'localhost'
port = 5432
"""
REGISTRAR = {
    "X_type": "registrar", "id": "default", "displayname": "local", "deletable": False,
    "parent_ids": [], "raw_config": {}, "registrar_main": "10.0.0.1", "proxy_main": "10.0.0.1",
    "registrar_backup": None, "proxy_backup": None,
}
DEVICE_CONFIG = {"X_type": "device", "id": "autoprov", "parent_ids": ["base"], "raw_config": {"sip_lines": {}}}


@dataclass
class Node:
    root: Path
    db: object
    env: dict[str, str]

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def run(self, *argv: str, command: str = "xivo-ha", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **self.env, **(env or {})}
        return subprocess.run([sys.executable, str(REPO / "bin" / command), *argv], env=full_env,
                              capture_output=True, text=True, timeout=120)

    def tree(self) -> dict[str, tuple[str, int]]:
        """Every file under the root: sha256 and mode, for nothing-changed assertions.

        Lock files (``/var/lib/xivo-ha/*.lock``, they record the last holder's pid) are left out.
        """
        result = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not (path.suffix == ".lock" and path.parent == self.path("/var/lib/xivo-ha")):
                result[str(path.relative_to(self.root))] = (
                    hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o7777)
        return result

    def expiry(self) -> dict[str, str | None]:
        rows = self.db.query("SELECT var_name, var_val FROM staticsip WHERE var_name IN "
                             "('minexpiry', 'maxexpiry', 'defaultexpiry')")
        return dict(rows)

    def provd(self, name: str) -> dict:
        return json.loads(self.path(f"/var/lib/xivo-provd/jsondb/configs/{name}").read_text())


def make_node(root: Path, db, extra_env: dict[str, str] | None = None) -> Node:
    """A XiVO-like node tree: PostgreSQL config files and provd documents, no HA yet."""
    pg = root / "etc/postgresql/15/main"
    pg.mkdir(parents=True)
    (pg / "pg_hba.conf").write_text(DEBIAN_HBA)
    (pg / "pg_hba.conf").chmod(0o640)
    (pg / "postgresql.conf").write_text(DEBIAN_CONF)
    configs = root / "var/lib/xivo-provd/jsondb/configs"
    configs.mkdir(parents=True)
    (configs / "default").write_text(json.dumps(REGISTRAR))
    (configs / "autoprov").write_text(json.dumps(DEVICE_CONFIG))
    service = recorder(root.parent / "service", root.parent / "services.log")
    env = {
        **{f"XIVO_HA_SERVICES_{verb.upper()}_COMMAND": f"{service},{{service}},{verb}"
           for verb in ("start", "stop", "enable", "disable")},
        "XIVO_HA_ROOT": str(root),
        "XIVO_HA_DATABASE_DSN": db.dsn,
        "XIVO_HA_POSTGRESQL_RELOAD_COMMAND": f"touch,{root}/postgresql-reloaded",
        "XIVO_HA_SYSLOG_SOCKET": str(root / "no-syslog"),
        "XIVO_HA_PROVISIONING_URL": f"http://127.0.0.1:{closed_port()}/provd",
        **(extra_env or {}),
    }
    return Node(root, db, env)


def service_journal(node: Node) -> list[str]:
    """What the service recorder was asked, in order ("service asterisk enable", ...)."""
    log = node.root.parent / "services.log"
    return log.read_text().splitlines() if log.exists() else []


def closed_port() -> int:
    """A loopback port nothing listens on (provd not running)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def recorder(path: Path, log: Path, exit_code: int = 0) -> Path:
    """A real program that appends its name and arguments to ``log``, says it is done, exits."""
    path.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {log}\necho "{path.name} done"\nexit {exit_code}\n')
    path.chmod(0o755)
    return path
