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
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from netns import SlaveServices
from node import closed_port, make_node, service_journal
from pg import DEMO_USERS, PG_BIN, TEMPLATE, Database, PgServer
from test_doctor import LOOPBACK, _build_pair
from test_replication import EXCLUDED, REPLICATED, serving_state
from xivo_ha import database, role
from xivo_ha.replication import stream

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REPLICATION = REPO / "bin" / "xivo-master-slave-db-replication"
XIVO_HA = REPO / "bin" / "xivo-ha"
MANAGE = REPO / "bin" / "xivo-manage-slave-services"
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
    assert result.stdout.startswith(f"Replicated {len(REPLICATED)} tables")
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
    # Nor in either server's log, nor in the master's catalogue (a SCRAM verifier only).
    for server in (master_db.server, slave_db.server):
        assert password not in (server.dir / "log").read_text(errors="replace")
    verifier = master_db.query("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (stream.ROLE,))[0][0]
    assert verifier.startswith("SCRAM-SHA-256$") and password not in verifier


def test_transactions_arrive_whole(master_node, master_db, slave_db):
    rebase()
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    seen: set[tuple] = set()
    for round_ in range(30):
        # One transaction changes two tables; the slave shows both changes or neither.
        master_db.execute(f"UPDATE userfeatures SET firstname = 'T{round_}' WHERE id = 5; "
                          f"UPDATE usersip SET callerid = 'T{round_}' WHERE name = 'user5'")
        for _ in range(3):
            seen.add(slave_db.query("SELECT (SELECT firstname FROM userfeatures WHERE id = 5), "
                                    "(SELECT callerid FROM usersip WHERE name = 'user5')")[0])
    wait_for(lambda: slave_name(slave_db, 5) == [("T29",)], "the last round reaches the slave")
    assert all(first == second or (first, second[:6]) == ("User", '"User ') for first, second in seen), seen
    assert any(first == second for first, second in seen)


@pytest.fixture
def pair(tmp_path, master_db, slave_db):
    """A master node and a slave node (each a root prefix and its own real database), made
    master and slave by `xivo-ha enable`, in continuous mode."""
    common = {"XIVO_HA_ALLOW_LOOPBACK_PEER": "1", "XIVO_HA_REPLICATION_MODE": "continuous",
              "XIVO_HA_REPLICATION_SLAVE_PORT": str(slave_db.server.port),
              "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave_db.name, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    (tmp_path / "master").mkdir()
    (tmp_path / "slave").mkdir()
    master = make_node(tmp_path / "master" / "root", master_db, common)
    slave = make_node(tmp_path / "slave" / "root", slave_db, common)
    master_db.add_demo_users(1, 20)
    assert master.run("enable", "master", "127.0.0.1").returncode == 0
    assert slave.run("enable", "slave", "127.0.0.1").returncode == 0
    return master, slave


def copy(master) -> subprocess.CompletedProcess:
    result = master.run("127.0.0.1", command="xivo-master-slave-db-replication")
    assert result.returncode == 0, result.stderr
    return result


def status(node) -> dict:
    result = node.run("status", "--json")
    return json.loads(result.stdout)["replication"]


def doctor_stream(node) -> dict:
    result = node.run("doctor", "--local-only", "--json")
    checks = json.loads(result.stdout)
    return next(c for c in checks if c["id"] == "replication-stream")


def same_replicated(master_db, slave_db) -> bool:
    return tables_of(master_db.snapshot(), REPLICATED) == tables_of(slave_db.snapshot(), REPLICATED)


def test_enable_master_opens_the_stream_and_status_shows_it(pair, master_db, slave_db):
    master, slave = pair
    hba = master.path("/etc/postgresql/15/main/pg_hba.conf").read_text()
    assert f"host asterisk {stream.ROLE} 127.0.0.1/32 scram-sha-256" in hba.splitlines()
    conf = master.path("/etc/postgresql/15/main/postgresql.conf").read_text().splitlines()
    assert "wal_level = logical" in conf and "listen_addresses = '*'" in conf
    assert master.path("/postgresql-reloaded").exists()
    cron = master.path("/etc/cron.d/xivo-ha-master").read_text().splitlines()
    assert "* * * * * root /usr/sbin/xivo-master-slave-db-replication --repair-stream 127.0.0.1 >/dev/null 2>&1" in cron
    # Before the first copy: no stream, which both nodes report as a failure.
    assert status(slave)["verdict"]["status"] == "FAIL"
    copy(master)
    wait_for(lambda: status(slave)["stream"].get("lag_bytes") is not None, "the slave reports its stream")
    slave_view, master_view = status(slave), status(master)
    assert slave_view["mode"] == "continuous" and slave_view["verdict"]["status"] == "OK"
    assert slave_view["stream"]["lag_seconds"] < 60 and slave_view["stream"]["lag_bytes"] >= 0
    assert master_view["stream"]["streaming"] and master_view["stream"]["lag_bytes"] >= 0
    assert doctor_stream(slave)["status"] == "OK"
    assert doctor_stream(master)["status"] == "OK"
    assert "replication: continuous, stream streaming" in slave.run("status").stdout


def test_failover_stops_the_stream_and_failback_waits_for_the_next_copy(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    master_db.add_demo_users(100, 3)  # rows the slave only has from the stream (its sequences lag)
    wait_for(lambda: slave_db.query("SELECT count(*) FROM usersip WHERE name = 'user102'") == [(1,)],
             "the stream ships the new users")
    # The master's PostgreSQL dies; the slave takes over.
    master_db.server.halt("immediate")
    try:
        result = slave.run("start", command="xivo-manage-slave-services")
        assert result.returncode == 0, result.stderr
        state = subscription(slave_db)
        assert state["exists"] and not state["enabled"]
        # What the slave learns while it serves: new users, with the sequences past the streamed rows.
        slave_db.add_demo_users(200, 2)
    finally:
        master_db.server.launch()
    # The master is back: its changes do not overwrite the serving slave.
    master_db.execute("UPDATE userfeatures SET firstname = 'After' WHERE id = 2")
    time.sleep(3)
    assert slave_name(slave_db, 2) != [("After",)]
    assert slave_db.query("SELECT count(*) FROM usersip WHERE name IN ('user200', 'user201')") == [(2,)]
    assert doctor_stream(slave)["status"] == "FAIL"
    # Failback, then the master's next verified copy re-bases the slave and restarts the stream.
    assert slave.run("stop", command="xivo-manage-slave-services").returncode == 0
    assert not subscription(slave_db)["enabled"]
    copy(master)
    assert same_replicated(master_db, slave_db)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the stream restarts")
    master_db.execute("UPDATE userfeatures SET firstname = 'Again' WHERE id = 2")
    wait_for(lambda: slave_name(slave_db, 2) == [("Again",)], "changes flow again")


def test_disable_removes_everything_the_stream_needed(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    result = slave.run("disable")
    assert result.returncode == 0, result.stderr
    assert f"subscription {stream.SUBSCRIPTION}" in result.stdout
    assert slave_db.query("SELECT count(*) FROM pg_subscription") == [(0,)]
    result = master.run("disable")
    assert result.returncode == 0, result.stderr
    assert master_db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert master_db.query("SELECT count(*) FROM pg_publication") == [(0,)]
    assert master_db.query("SELECT count(*) FROM pg_roles WHERE rolname = %s", (stream.ROLE,)) == [(0,)]
    hba = master.path("/etc/postgresql/15/main/pg_hba.conf").read_text()
    conf = master.path("/etc/postgresql/15/main/postgresql.conf").read_text()
    assert stream.ROLE not in hba and "wal_level" not in conf and "listen_addresses = '*'" not in conf


def test_role_change_to_hourly_master_removes_the_stream(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    result = master.run("enable", "master", "127.0.0.1", env={"XIVO_HA_REPLICATION_MODE": "hourly"})
    assert result.returncode == 0, result.stderr
    assert master_db.query("SELECT count(*) FROM pg_publication") == [(0,)]
    assert stream.ROLE not in master.path("/etc/postgresql/15/main/pg_hba.conf").read_text()


def test_a_failed_role_change_says_the_streams_objects_it_removed(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    hba = master.path("/etc/postgresql/15/main/pg_hba.conf")
    before = hba.read_bytes()
    result = master.run("enable", "master", "127.0.0.1",
                        env={"XIVO_HA_REPLICATION_MODE": "hourly", "XIVO_HA_POSTGRESQL_RELOAD_COMMAND": "false"})
    assert result.returncode == 1
    line = result.stderr.strip()
    assert line.startswith("xivo-ha: c. slave PostgreSQL access failed: ") and "\n" not in line
    assert f"Rollback incomplete, still applied: b. replication stream: removed replication slot {stream.SLOT_PREFIX}" in line
    assert "the next verified copy recreates the stream" in line
    assert hba.read_bytes() == before
    assert master_db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    # still the continuous master it was: its next verified copy starts the stream again
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the stream restarts")


def test_slave_postgresql_restarted_the_stream_resumes(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    slave_db.server.halt()
    try:
        master_db.execute("UPDATE userfeatures SET firstname = 'WhileDown' WHERE id = 7")
    finally:
        slave_db.server.launch()
    wait_for(lambda: slave_name(slave_db, 7) == [("WhileDown",)], "the change made while the slave was down")
    master_db.execute("UPDATE userfeatures SET firstname = 'AfterRestart' WHERE id = 7")
    wait_for(lambda: slave_name(slave_db, 7) == [("AfterRestart",)], "later changes")


def test_a_conflict_stops_the_stream_is_reported_and_the_next_copy_repairs_it(pair, master_db, slave_db):
    master, slave = pair
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    # A row made on the slave by hand takes the id the master's next context row gets.
    slave_db.execute("INSERT INTO context (name, displayname) VALUES ('clash', 'made on the slave')")
    master_db.execute("INSERT INTO context (name, displayname) VALUES ('clash', 'made on the master')")
    wait_for(lambda: not subscription(slave_db).get("enabled"), "disable_on_error stops the stream")
    view = status(slave)
    assert view["verdict"]["status"] == "FAIL" and "disabled" in view["verdict"]["finding"]
    assert view["stream"]["errors"] >= 1
    check = doctor_stream(slave)
    assert check["status"] == "FAIL" and "xivo-master-slave-db-replication" in check["remedy"]
    assert slave.run("doctor", "--local-only").returncode == 1
    copy(master)
    assert slave_db.query("SELECT displayname FROM context WHERE name = 'clash'") == [("made on the master",)]
    wait_for(lambda: subscription(slave_db).get("streaming"), "the re-based stream runs")
    assert doctor_stream(slave)["status"] == "OK"


def test_a_stream_the_slave_cannot_open_leaves_the_verified_copy_done(pair, master_db, slave_db):
    master, slave = pair
    hba = master_db.server.data / "pg_hba.conf"
    stock = hba.read_text()
    hba.write_text(f"host all {stream.ROLE} 127.0.0.1/32 reject\n" + stock)
    master_db.server.psql_as_postgres("postgres", "SELECT pg_reload_conf()")
    try:
        result = master.run("127.0.0.1", command="xivo-master-slave-db-replication")
    finally:
        hba.write_text(stock)
        master_db.server.psql_as_postgres("postgres", "SELECT pg_reload_conf()")
    assert result.returncode == 1
    assert f"replicated {len(REPLICATED)} tables" in result.stderr and "the stream could not start" in result.stderr
    # The failed statement, which carried the password, was not logged.
    assert "CREATE SUBSCRIPTION" not in (slave_db.server.dir / "log").read_text(errors="replace")
    assert same_replicated(master_db, slave_db)
    assert master_db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert doctor_stream(slave)["status"] == "FAIL"
    assert "the stream continues from there" in copy(master).stdout
    wait_for(lambda: subscription(slave_db).get("streaming"), "the next copy starts the stream")


def test_failover_starts_the_services_even_when_the_stream_cannot_be_stopped(pair):
    master, slave = pair
    unreachable = f"host=127.0.0.1 port={closed_port()} user=postgres dbname=asterisk"
    result = slave.run("start", command="xivo-manage-slave-services", env={"XIVO_HA_DATABASE_DSN": unreachable})
    assert result.returncode == 1
    assert "cannot stop the replication stream" in result.stderr
    assert [line for line in service_journal(slave) if line.endswith(" start")] == [
        "service monit start", "service asterisk start"]


# --- the master's per-minute repair (`--repair-stream`), the slave asked over the HA key ---------


@pytest.fixture
def asked_pair(tmp_path, sshd, master_db, slave_db):
    """The pair of test_doctor (a real sshd: the master asks the slave with `xivo-ha status
    --json`), in continuous mode, after its first verified copy started the stream."""
    master_services = SlaveServices(tmp_path / "master-services")
    slave_services = SlaveServices(tmp_path / "slave-services")
    master_services.add_sleeper("asterisk")
    slave_services.add_sleeper("asterisk")
    master_db.add_demo_users(1, 10)
    try:
        pair = _build_pair(tmp_path, sshd, master_db, slave_db, master_services, slave_services, mode="continuous")
        wait_for(lambda: subscription(slave_db).get("streaming"), "the first copy's stream runs")
        yield pair
    finally:
        master_services.cleanup()
        slave_services.cleanup()


def repair(pair) -> subprocess.CompletedProcess:
    result = pair.master.run("--repair-stream", LOOPBACK, command="xivo-master-slave-db-replication")
    assert result.returncode == 0, result.stderr
    return result


def slots(master_db) -> list[str]:
    return [row[0] for row in master_db.query("SELECT slot_name FROM pg_replication_slots ORDER BY 1")]


def failover_state(pair, mode: str) -> None:
    pair.slave.path("/var/lib/xivo-ha/failover.json").write_text(
        serving_state(mode=mode, last_failback=None if mode == "serving" else "2024-05-01T13:00:00.000+00:00"))


def test_repair_stream_rebases_once_the_slave_stands_by_after_failback(asked_pair, master_db, slave_db):
    pair = asked_pair
    fingerprint = pair.master.path("/var/lib/xivo-ha/replication-fingerprint.json")
    copied, slot = fingerprint.read_text(), slots(master_db)
    # The stream flows: nothing to do, nothing copied, nothing said.
    assert (repair(pair).stdout, repair(pair).stderr) == ("", "")
    assert slots(master_db) == slot and fingerprint.read_text() == copied

    # Failover: the slave serves with its subscription disabled; the repair leaves it so.
    assert pair.slave.run("start", command="xivo-manage-slave-services").returncode == 0
    failover_state(pair, "serving")
    assert not subscription(slave_db)["enabled"]
    assert repair(pair).stdout == ""
    assert not subscription(slave_db)["enabled"]
    assert slots(master_db) == slot and fingerprint.read_text() == copied

    # Failback: once the slave stands by, the next minute's repair re-bases it.
    assert pair.slave.run("stop", command="xivo-manage-slave-services").returncode == 0
    failover_state(pair, "standby")
    master_db.execute("UPDATE userfeatures SET firstname = 'DuringFailover' WHERE id = 3")
    result = repair(pair)
    assert result.stdout.startswith("Stream repaired (the slave stands by and its subscription is disabled): "
                                    f"replicated {len(REPLICATED)} tables"), result.stdout
    assert result.stdout.count("\n") == 1 and result.stderr == ""
    assert json.loads(pair.job_record("replication").read_text())["result"] == "success"
    assert slots(master_db) != slot and slave_name(slave_db, 3) == [("DuringFailover",)]
    wait_for(lambda: subscription(slave_db).get("streaming"), "the repaired stream runs")
    master_db.execute("UPDATE userfeatures SET firstname = 'AfterRepair' WHERE id = 4")
    wait_for(lambda: slave_name(slave_db, 4) == [("AfterRepair",)], "changes flow again")
    assert repair(pair).stdout == "" and len(slots(master_db)) == 1


def test_repair_stream_failing_every_minute_mails_once_and_once_more_when_it_works(asked_pair, master_db, slave_db):
    pair = asked_pair
    outbox = pair.tmp / "outbox"
    mta = pair.tmp / "mta"
    mta.mkdir()
    (mta / "sendmail").write_text(f"#!/bin/sh\ncat >> {outbox}\n")
    (mta / "sendmail").chmod(0o755)
    pair.master.env["PATH"] = f"{mta}:/usr/sbin:/usr/bin:/bin"
    with slave_db.connect() as conn:
        stream.stop_subscription(conn, detach=False)  # as after a conflict
    hba = master_db.server.data / "pg_hba.conf"
    stock = hba.read_text()
    hba.write_text(f"host all {stream.ROLE} 127.0.0.1/32 reject\n" + stock)
    master_db.server.psql_as_postgres("postgres", "SELECT pg_reload_conf()")
    try:
        for minute in range(2):
            result = pair.master.run("--repair-stream", LOOPBACK, command="xivo-master-slave-db-replication")
            assert result.returncode == 1 and "the stream could not start" in result.stderr
            assert json.loads(pair.job_record("replication").read_text())["result"] == "failed"
            assert outbox.read_text().count("Subject: [xivo-ha]") == 1
    finally:
        hba.write_text(stock)
        master_db.server.psql_as_postgres("postgres", "SELECT pg_reload_conf()")
    assert repair(pair).stdout.startswith("Stream repaired")
    mails = outbox.read_text()
    assert mails.count("Subject: [xivo-ha]") == 2 and "slave replication works again" in mails
    wait_for(lambda: subscription(slave_db).get("streaming"), "the repaired stream runs")


# --- leaving continuous mode with PostgreSQL really restarted by the role change ------------------


@pytest.fixture
def restarted_pair(subscriber_server, slave_db):
    """A master node whose PostgreSQL cluster reads the node's own postgresql.conf and
    pg_hba.conf (Debian's layout: config in /etc, owned by postgres) and is really
    restarted by the role change, as `systemctl restart postgresql` does; and a slave.
    Both made master and slave in continuous mode."""
    base = Path(tempfile.mkdtemp(prefix="xivo-ha-restarted-"))
    base.chmod(0o755)  # the postgres user reads the node's /etc/postgresql
    server = PgServer()
    master_db = StockDatabase(server, "asterisk")
    common = {"XIVO_HA_ALLOW_LOOPBACK_PEER": "1", "XIVO_HA_REPLICATION_MODE": "continuous",
              "XIVO_HA_REPLICATION_SLAVE_PORT": str(slave_db.server.port),
              "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave_db.name, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    master = make_node(base / "master" / "root", master_db, common)
    slave = make_node(base / "slave" / "root", slave_db, common)
    etc = master.path("/etc/postgresql/15/main")
    (etc / "postgresql.conf").write_text(f"data_directory = '{server.data}'\nhba_file = '{etc}/pg_hba.conf'\n"
                                         f"ident_file = '{etc}/pg_ident.conf'\n#listen_addresses = 'localhost'\n"
                                         f"port = {server.port}\n")
    (etc / "pg_ident.conf").write_text("")
    for path in etc.iterdir():
        os.chown(path, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
    server.options = f"-c config_file={etc}/postgresql.conf"
    master.env["XIVO_HA_POSTGRESQL_RELOAD_COMMAND"] = ",".join(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(server.data), "-l",
         str(server.dir / "log"), "-w", "-t", "60", "restart"])
    server.start()
    try:
        server.psql_as_postgres("postgres", f"CREATE DATABASE asterisk TEMPLATE {TEMPLATE}")
        master_db.add_demo_users(1, 20)
        result = master.run("enable", "master", "127.0.0.1")
        assert result.returncode == 0, result.stderr
        assert slave.run("enable", "slave", "127.0.0.1").returncode == 0
        yield master, slave, master_db
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def setting(db, name: str) -> str:
    return db.query("SELECT current_setting(%s)", (name,))[0][0]


@pytest.mark.parametrize("args, mode", [
    (("enable", "master", "127.0.0.1"), "hourly"),
    (("disable",), "continuous"),
    (("enable", "slave", "127.0.0.1"), "continuous"),
])
def test_leaving_the_stream_drops_the_slot_before_postgresql_restarts_without_logical_wal(
        restarted_pair, slave_db, args, mode):
    master, slave, master_db = restarted_pair
    assert setting(master_db, "wal_level") == "logical"
    copy(master)
    wait_for(lambda: subscription(slave_db).get("streaming"), "the subscription streams")
    result = master.run(*args, env={"XIVO_HA_REPLICATION_MODE": mode})
    assert result.returncode == 0, result.stderr
    # PostgreSQL came back after the role change's restart, without logical WAL or our slot.
    assert setting(master_db, "wal_level") == "replica"
    assert master_db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert f"replication slot {stream.SLOT_PREFIX}" in result.stdout
