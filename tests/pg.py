"""Throw-away PostgreSQL 15 clusters for tests and benchmarks (initdb + pg_ctl as postgres).

initdb and loading the reference schema take seconds; they run once per process and
locale, into a stopped seed cluster, and every server starts on a copy of that seed's
data directory: a cluster of its own, with the same content a fresh initdb would give.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "simulator" / "node" / "asterisk.sql"
DEMO_USERS = REPO / "simulator" / "node" / "demo-users.sql"
TEMPLATE = "asterisk_template"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(argv: list[str], netns: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` as the postgres OS user (when root), inside network namespace ``netns`` if given."""
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


@dataclass
class Database:
    server: "PgServer"
    name: str

    @property
    def dsn(self) -> str:
        return f"host={self.server.host} port={self.server.port} user=postgres dbname={self.name}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def query(self, sql: str, params=None) -> list[tuple]:
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def execute(self, sql: str, params=None) -> None:
        with self.connect() as conn:
            conn.execute(sql, params)

    def add_demo_users(self, first: int, count: int) -> None:
        subprocess.run(
            ["psql", "-q", "-X", "-v", f"first={first}", "-v", f"count={count}", "-d", self.dsn,
             "-f", str(DEMO_USERS)],
            check=True, capture_output=True, text=True,
        )

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every table's full content, sorted: for before/after comparisons."""
        tables = [row[0] for row in self.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        return {t: sorted(map(repr, self.query(f'SELECT * FROM "{t}"'))) for t in tables}


# Debian's stock pg_hba.conf for PostgreSQL 15 (no ident map, no trust).
DEBIAN_STOCK_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     peer
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


_SEEDS: dict[str, Path] = {}


def _owned_by_postgres(directory: Path) -> Path:
    os.chmod(directory, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(directory, pw.pw_uid, pw.pw_gid)
    return directory


def _seed(locale: str) -> Path:
    """The data directory of a stopped cluster holding the template database, made once per locale."""
    if locale not in _SEEDS:
        base = _owned_by_postgres(Path(tempfile.mkdtemp(prefix="xivo-ha-pg-seed-")))
        atexit.register(shutil.rmtree, base, True)
        data = base / "data"
        _as_postgres([str(PG_BIN / "initdb"), "--no-sync", "-D", str(data), "-E", "UTF8",
                      f"--locale={locale}", "-A", "trust", "-U", "postgres"])
        port = free_port()
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options,
                      "-l", str(base / "log"), "-w", "-t", "60", "start"])
        try:
            dsn = f"host=127.0.0.1 port={port} user=postgres dbname="
            with psycopg.connect(dsn + "postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {TEMPLATE}")
            subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn + TEMPLATE,
                            "-f", str(SCHEMA)], check=True, capture_output=True, text=True)
        finally:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        _SEEDS[locale] = data
    return _SEEDS[locale]


class PgServer:
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1:<free port>, trust auth.

    With ``netns``, it runs in that network namespace (a test host's own database, on that
    host's loopback) and this process reaches it on the Unix socket in ``dir``.

    ``stock_auth()`` switches it to Debian's stock authentication afterwards: then only
    the `postgres` OS user gets in, on the Unix socket in ``dir`` (``socket_dsn``).
    """

    def __init__(self, locale: str = "C.UTF-8", netns: str | None = None, options: str = ""):
        self.options = options  # more server options, e.g. "-c wal_level=logical"
        self.dir = Path(tempfile.mkdtemp(prefix="xivo-ha-pg-"))
        self.port = free_port()
        self.locale = locale
        self.netns = netns
        _owned_by_postgres(self.dir)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def host(self) -> str:
        """Where this process reaches the server: TCP on 127.0.0.1, or the Unix socket when the
        server listens on the loopback of another network namespace (``netns``)."""
        return str(self.dir) if self.netns else "127.0.0.1"

    def start(self) -> "PgServer":
        subprocess.run(["cp", "-a", str(_seed(self.locale)), str(self.data)], check=True,
                       capture_output=True, text=True)
        self.launch()
        return self

    def launch(self) -> None:
        """Start the server (again, after :meth:`halt`)."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off {self.options}"
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options.strip(),
                      "-l", str(self.dir / "log"), "-w", "-t", "60", "start"], netns=self.netns)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (:meth:`launch` starts it again)."""
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], netns=self.netns)

    def stock_auth(self) -> "PgServer":
        (self.data / "pg_hba.conf").write_text(DEBIAN_STOCK_HBA)
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "reload"])
        return self

    def socket_dsn(self, name: str) -> str:
        return f"host={self.dir} port={self.port} user=postgres dbname={name}"

    def psql_as_postgres(self, name: str, sql: str) -> str:
        """Run ``sql`` as the postgres OS user on the socket, as a XiVO admin would."""
        return _as_postgres(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", self.socket_dsn(name),
                             "-c", sql]).stdout

    def admin(self, name: str) -> Database:
        return Database(self, name)

    def create_database(self, name: str | None = None, template: str = TEMPLATE, **options) -> Database:
        name = name or f"asterisk_{uuid.uuid4().hex[:10]}"
        extra = "".join(f" {key.upper()} '{value}'" for key, value in options.items())
        self.admin("postgres").execute(f'CREATE DATABASE "{name}" TEMPLATE {template}{extra}')
        return Database(self, name)

    def drop_database(self, name: str) -> None:
        self.admin("postgres").execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
