"""[replication] mode = continuous against two real PostgreSQL 15 clusters on 127.0.0.1.

The master's cluster runs with wal_level = logical and Debian's stock authentication
(the toolkit reaches it as the postgres OS user on its socket; the slave's subscription
logs in over TCP with scram-sha-256 and the role's random password).  The slave's
cluster trusts the master's address, as `xivo-ha enable slave` sets it up.  Each phase
of the stream runs the real commands, as cron and failover run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from pg import DEMO_USERS, TEMPLATE, Database, PgServer
from xivo_ha import database, role
from xivo_ha.replication import stream

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REPLICATION = REPO / "bin" / "xivo-master-slave-db-replication"
XIVO_HA = REPO / "bin" / "xivo-ha"
MANAGE = REPO / "bin" / "xivo-manage-slave-services"
REPLICATED = ["context", "dhcp", "extensions", "linefeatures", "staticsip", "trunkfeatures", "user_line",
              "userfeatures", "usersip", "voicemail"]
EXCLUDED = ["alembic_version", "call_log", "call_log_participant", "cel", "mail", "monitoring", "netiface",
            "provisioning", "queue_log", "resolvconf", "stat_agent", "stat_call_on_queue", "stat_queue"]
WAIT = 15.0


@pytest.fixture(scope="module")
def logical_server():
    server = PgServer(options="-c wal_level=logical").start()
    server.stock_auth()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def subscriber_server():
    server = PgServer().start()
    yield server
    server.stop()


class StockDatabase(Database):
    """A database of a cluster with stock authentication: reached on its socket as the
    postgres OS user (the effective uid is switched for the connection, as the toolkit does)."""

    @property
    def dsn(self) -> str:
        return self.server.socket_dsn(self.name)

    def connect(self) -> psycopg.Connection:
        with database.peer_credentials(self.dsn):
            return psycopg.connect(self.dsn, autocommit=True)

    def add_demo_users(self, first: int, count: int) -> None:
        subprocess.run(["psql", "-q", "-X", "-v", f"first={first}", "-v", f"count={count}", "-d", self.dsn,
                        "-f", str(DEMO_USERS)], check=True, capture_output=True, text=True, user="postgres")


@pytest.fixture
def master_db(logical_server):
    db = StockDatabase(logical_server, f"asterisk_{uuid.uuid4().hex[:10]}")
    logical_server.psql_as_postgres("postgres", f'CREATE DATABASE "{db.name}" TEMPLATE {TEMPLATE}')
    yield db
    _drop_everything(logical_server, db.name)


def _drop_everything(server: PgServer, name: str) -> None:
    for slot in server.psql_as_postgres("postgres", "SELECT slot_name FROM pg_replication_slots").split():
        server.psql_as_postgres("postgres", f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                                            f"WHERE slot_name = '{slot}' AND active_pid IS NOT NULL")
        time.sleep(0.2)
        server.psql_as_postgres("postgres", f"SELECT pg_drop_replication_slot('{slot}')")
    server.psql_as_postgres("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    server.psql_as_postgres("postgres", f"DROP ROLE IF EXISTS {stream.ROLE}")


@pytest.fixture
def slave_db(subscriber_server):
    db = subscriber_server.create_database()
    db.add_demo_users(500, 5)
    db.execute("UPDATE netiface SET address = '10.0.0.2'")
    db.execute("INSERT INTO queue_log (callid, event) VALUES ('slave-call', 'ENTERQUEUE')")
    yield db
    with db.connect() as conn:
        for (name,) in conn.execute("SELECT subname FROM pg_subscription").fetchall():
            conn.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
            conn.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
            conn.execute(f"DROP SUBSCRIPTION {name}")
    subscriber_server.drop_database(db.name)


@pytest.fixture
def master_node(node_root, monkeypatch, master_db, slave_db):
    monkeypatch.setenv("XIVO_HA_ALLOW_LOOPBACK_PEER", "1")
    monkeypatch.setenv("XIVO_HA_DATABASE_DSN", master_db.dsn)
    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_PORT", str(slave_db.server.port))
    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_DBNAME", slave_db.name)
    monkeypatch.setenv("XIVO_HA_REPLICATION_MODE", "continuous")
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    master_db.add_demo_users(1, 20)
    master_db.execute("INSERT INTO queue_log (callid, event) VALUES ('master-call', 'ENTERQUEUE')")
    role.write(role.HaConfig(role.Role.MASTER, "127.0.0.1"))
    return node_root


def run(command: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(command), *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


def rebase() -> subprocess.CompletedProcess:
    result = run(REPLICATION, "127.0.0.1")
    assert result.returncode == 0, result.stderr
    return result


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def slave_name(slave_db, user_id: int) -> list[tuple]:
    return slave_db.query("SELECT firstname FROM userfeatures WHERE id = %s", (user_id,))


def tables_of(snapshot: dict, names) -> dict:
    return {name: snapshot[name] for name in names}


def subscription(slave_db) -> dict:
    with slave_db.connect() as conn:
        return stream.observe(conn, "slave")


def test_normal_running_ships_each_change_within_seconds(master_node, master_db, slave_db):
    slave_before = slave_db.snapshot()
    result = rebase()
    assert result.stdout.startswith("Replicated 10 tables")
    assert tables_of(slave_db.snapshot(), REPLICATED) == tables_of(master_db.snapshot(), REPLICATED)
    # The publication lists exactly the replicated tables, never an excluded one.
    published = [row[0] for row in master_db.query("SELECT tablename FROM pg_publication_tables ORDER BY 1")]
    assert published == REPLICATED
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")

    started = time.monotonic()
    master_db.execute("UPDATE userfeatures SET firstname = 'Changed' WHERE id = 3")
    wait_for(lambda: slave_name(slave_db, 3) == [("Changed",)], "the change reaches the slave")
    assert time.monotonic() - started < 5
    # An excluded table changed on the master stays as it is on the slave.
    master_db.execute("UPDATE netiface SET address = '10.9.9.9'; INSERT INTO queue_log (callid, event) "
                          "VALUES ('after', 'ENTERQUEUE'); UPDATE userfeatures SET firstname = 'Marker' WHERE id = 4")
    wait_for(lambda: slave_name(slave_db, 4) == [("Marker",)], "the marker reaches the slave")
    after = slave_db.snapshot()
    assert tables_of(after, EXCLUDED) == tables_of(slave_before, EXCLUDED)
    # The role's password is nowhere in the node's files or in the command's output.
    conninfo = slave_db.query("SELECT subconninfo FROM pg_subscription")[0][0]
    password = dict(part.split("=", 1) for part in conninfo.split())["password"]
    assert len(password) >= 32
    assert password not in result.stdout + result.stderr
    for path in master_node.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes()
