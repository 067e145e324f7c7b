"""xivo-master-slave-db-replication against two real PostgreSQL 15 clusters on 127.0.0.1.

The master database lives on ``postgres_server``, the slave's on
``second_postgres_server``; both are loaded with the reference schema and
different demo users.  The command runs as cron runs it: a separate process, with
the node's files under a temporary ``XIVO_HA_ROOT``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xivo_ha import role

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMMAND = REPO / "bin" / "xivo-master-slave-db-replication"
REPLICATED = ["context", "dhcp", "dialaction", "extensions", "incall", "linefeatures", "location", "staticsip",
              "trunkfeatures", "user_line", "userfeatures", "usersip", "voicemail"]
EXCLUDED = ["alembic_version", "call_log", "call_log_participant", "cel", "mail", "monitoring", "netiface",
            "provisioning", "queue_log", "resolvconf", "stat_agent", "stat_call_on_queue", "stat_queue"]


class Syslog:
    """A unix datagram socket standing in for /dev/log, drained by a thread as syslogd would."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while self.running:
            try:
                self.received.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    def messages(self) -> list[str]:
        return list(self.received)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def syslog(tmp_path):
    log = Syslog(tmp_path / "log.sock")
    yield log
    log.close()


@pytest.fixture
def master_db(asterisk_db):
    asterisk_db.add_demo_users(1, 40)
    asterisk_db.execute("INSERT INTO trunkfeatures (protocol, protocolid, description) VALUES ('sip', 1, 'provider')")
    asterisk_db.execute("INSERT INTO queue_log (callid, event) VALUES ('master-call', 'ENTERQUEUE')")
    return asterisk_db


@pytest.fixture
def slave_db(second_postgres_server):
    db = second_postgres_server.create_database()
    db.add_demo_users(500, 15)
    db.execute("UPDATE netiface SET address = '10.0.0.2'")
    db.execute("UPDATE resolvconf SET hostname = 'xivo-slave'")
    db.execute("INSERT INTO queue_log (callid, event) VALUES ('slave-call', 'ENTERQUEUE')")
    db.execute("INSERT INTO cel (eventtype, eventtime, uniqueid, linkedid) VALUES ('CHAN_START', now(), 'u', 'l')")
    yield db
    second_postgres_server.drop_database(db.name)


@pytest.fixture
def master_node(node_root, monkeypatch, master_db, slave_db, syslog):
    monkeypatch.setenv("XIVO_HA_ALLOW_LOOPBACK_PEER", "1")
    monkeypatch.setenv("XIVO_HA_DATABASE_DSN", master_db.dsn)
    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_PORT", str(slave_db.server.port))
    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_DBNAME", slave_db.name)
    monkeypatch.setenv("XIVO_HA_SYSLOG_SOCKET", str(syslog.path))
    # No MTA on the test machine's PATH unless a test provides one.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    role.write(role.HaConfig(role.Role.MASTER, "127.0.0.1"))
    return node_root


def replicate(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(COMMAND), *args], env=env or dict(os.environ),
        capture_output=True, text=True, timeout=timeout,
    )


def mta_outbox(tmp_path: Path, monkeypatch) -> Path:
    """An MTA stand-in first on PATH: it files what it is given, as sendmail -t would deliver it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    outbox = tmp_path / "outbox"
    sendmail = bin_dir / "sendmail"
    sendmail.write_text(f"#!/bin/sh\necho \"$@\" > {outbox}.args\ncat > {outbox}\n")
    sendmail.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return outbox


def tables_of(snapshot: dict, names) -> dict:
    return {name: snapshot[name] for name in names}


def sequences(db) -> dict:
    rows = db.query("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
    return dict(rows)


def record(node_root: Path, job: str = "replication") -> dict:
    return json.loads((node_root / "var/lib/xivo-ha" / f"{job}.json").read_text())


def test_replicates_configuration_and_leaves_excluded_tables_alone(master_node, master_db, slave_db):
    slave_before = slave_db.snapshot()
    result = replicate("127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"Replicated {len(REPLICATED)} tables, \d+ rows to 127\.0\.0\.1:\d+/\S+ in \d+\.\d\d s\n",
                        result.stdout)
    assert result.stderr == ""
    master_after, slave_after = master_db.snapshot(), slave_db.snapshot()
    assert tables_of(slave_after, REPLICATED) == tables_of(master_after, REPLICATED)
    assert tables_of(slave_after, EXCLUDED) == tables_of(slave_before, EXCLUDED)
    assert slave_db.query("SELECT address FROM netiface") == [("10.0.0.2",)]
    assert slave_db.query("SELECT callid FROM queue_log") == [("slave-call",)]
    master_sequences = sequences(master_db)
    slave_sequences = sequences(slave_db)
    for name in ("usersip_id_seq", "userfeatures_id_seq", "voicemail_uniqueid_seq", "trunkfeatures_id_seq"):
        assert slave_sequences[name] == master_sequences[name]
    # Excluded tables keep their own sequences.
    assert slave_sequences["cel_id_seq"] == 1 and master_sequences["cel_id_seq"] is None
    entry = record(master_node)
    assert entry["result"] == "success" and "Replicated" not in entry["detail"]
    assert f"{len(REPLICATED)} tables" in entry["detail"]
    # Nothing was left behind on disk but our state.
    assert sorted(p.name for p in (master_node / "var/lib/xivo-ha").iterdir()) == [
        "replication-fingerprint.json", "replication.json", "replication.lock"]
    assert oct((master_node / "var/lib/xivo-ha/replication-fingerprint.json").stat().st_mode & 0o777) == "0o600"


def test_circular_foreign_keys_arrive_intact(master_node, master_db, slave_db):
    assert replicate("127.0.0.1").returncode == 0
    dangling = slave_db.query(
        "SELECT count(*) FROM userfeatures u LEFT JOIN voicemail v ON v.uniqueid = u.voicemailid "
        "WHERE u.voicemailid IS NOT NULL AND (v.uniqueid IS NULL OR v.user_id <> u.id)"
    )
    assert dangling == [(0,)]
    assert slave_db.query("SELECT count(*) FROM userfeatures WHERE voicemailid IS NOT NULL") == [(40,)]
    # The slave still enforces its keys afterwards (the replica role was for the load only).
    with pytest.raises(Exception, match="foreign key"):
        slave_db.execute("UPDATE userfeatures SET voicemailid = 999999 WHERE id = (SELECT min(id) FROM userfeatures)")


def test_constraint_failure_half_way_leaves_the_slave_as_it_was(master_node, master_db, slave_db):
    # Only the slave has this rule, and the master's voicemail rows (copied last) break it.
    slave_db.execute("ALTER TABLE voicemail ADD CONSTRAINT slave_only_mailbox CHECK (mailbox >= '1500')")
    before, sequences_before = slave_db.snapshot(), sequences(slave_db)
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Slave replication failed: ")
    assert "slave_only_mailbox" in result.stderr
    assert slave_db.snapshot() == before
    assert sequences(slave_db) == sequences_before
    assert record(master_node)["result"] == "failed"
    assert not (master_node / "var/lib/xivo-ha/replication-fingerprint.json").exists()


def test_connection_dropped_during_the_copy_leaves_the_slave_as_it_was(master_node, master_db, slave_db):
    # The slave's backend dies while usersip rows arrive, after several tables were loaded.
    slave_db.execute(
        "CREATE FUNCTION drop_connection() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;"
        "CREATE TRIGGER drop_connection BEFORE INSERT ON usersip FOR EACH ROW EXECUTE FUNCTION drop_connection();"
        "ALTER TABLE usersip ENABLE ALWAYS TRIGGER drop_connection"
    )
    before, sequences_before = slave_db.snapshot(), sequences(slave_db)
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert result.stderr.startswith("Slave replication failed: ")
    assert "terminat" in result.stderr or "connection" in result.stderr
    assert slave_db.snapshot() == before
    assert sequences(slave_db) == sequences_before


def test_verification_mismatch_rolls_back_everything(master_node, master_db, slave_db):
    # A slave-side trigger alters rows as they arrive: counts match, content does not.
    slave_db.execute(
        "CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.fullname := upper(NEW.fullname); RETURN NEW; END $$;"
        "CREATE TRIGGER shout BEFORE INSERT ON voicemail FOR EACH ROW EXECUTE FUNCTION shout();"
        "ALTER TABLE voicemail ENABLE ALWAYS TRIGGER shout"
    )
    before, sequences_before = slave_db.snapshot(), sequences(slave_db)
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert "verification failed" in result.stderr
    assert "voicemail: same row count (40) but different content" in result.stderr
    assert slave_db.snapshot() == before
    # The sequences were already set when the verification failed: they rolled back too.
    assert sequences(slave_db) == sequences_before


def test_locale_mismatch_is_refused_with_the_remedy(master_node, master_db, second_postgres_server, monkeypatch):
    other = second_postgres_server.create_database(template="template0", lc_collate="C", lc_ctype="C")
    try:
        monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_DBNAME", other.name)
        result = replicate("127.0.0.1")
    finally:
        second_postgres_server.drop_database(other.name)
    assert result.returncode == 1
    message = result.stderr
    assert message.startswith("Slave replication failed: the databases differ in encoding or locale")
    assert "collation C.UTF-8, ctype C.UTF-8" in message and "collation C, ctype C" in message
    assert (f"sudo -u postgres dropdb {other.name} && sudo -u postgres createdb -E UTF8 -T template0 "
            f"--lc-collate=C.UTF-8 --lc-ctype=C.UTF-8 {other.name}") in message
    assert "pg_dump --schema-only" in message


def test_schema_version_mismatch_is_refused(master_node, master_db, slave_db):
    slave_db.execute("UPDATE alembic_version SET version_num = '0123456789ab'")
    before = slave_db.snapshot()
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert "schema versions differ (alembic_version: master 2c1b3ad2b9d7, slave 0123456789ab)" in result.stderr
    assert slave_db.snapshot() == before


def test_different_columns_are_refused(master_node, master_db, slave_db):
    slave_db.execute("ALTER TABLE usersip ADD COLUMN fromuser varchar(80)")
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert "table usersip has different columns (only on the slave: fromuser)" in result.stderr


def settle_until_nothing_written() -> None:
    """Run until the WAL shortcut applies: right after a copy the slave still writes a
    little on its own (autoanalyze, a running-transactions record), then stops."""
    for _ in range(120):
        result = replicate("127.0.0.1")
        if result.stdout.startswith("Nothing was written to either database"):
            return
        assert result.stdout.startswith("Nothing changed since"), result.stdout + result.stderr
        time.sleep(0.5)
    pytest.fail("the servers never stopped writing to their logs")


def test_unchanged_data_is_skipped_and_any_change_is_not(master_node, master_db, slave_db):
    assert replicate("127.0.0.1").returncode == 0

    # First unchanged run: both sides are scanned (row versions), nothing differs.
    skipped = replicate("127.0.0.1")
    assert skipped.returncode == 0
    assert skipped.stdout.startswith("Nothing changed since the last successful replication (last replication at ")
    assert skipped.stdout.rstrip().endswith("nothing to do (--force replicates anyway)")
    assert record(master_node)["result"] == "skipped"
    # Once neither server writes anything any more, not even a scan is needed.
    settle_until_nothing_written()

    master_db.execute("UPDATE userfeatures SET firstname = 'Changed' WHERE id = (SELECT min(id) FROM userfeatures)")
    changed = replicate("127.0.0.1")
    assert changed.stdout.startswith(f"Replicated {len(REPLICATED)} tables"), changed.stdout + changed.stderr
    assert slave_db.query("SELECT count(*) FROM userfeatures WHERE firstname = 'Changed'") == [(1,)]

    # A row deleted and another inserted keep the count: still a change.
    master_db.execute("DELETE FROM dhcp; INSERT INTO dhcp (active, pool_start) VALUES (1, '10.0.0.100')")
    assert replicate("127.0.0.1").stdout.startswith("Replicated")
    assert slave_db.query("SELECT active, pool_start FROM dhcp") == [(1, "10.0.0.100")]

    # Someone edits the slave (e.g. during a failover): the next run puts it back.
    settle_until_nothing_written()
    slave_db.execute("UPDATE staticsip SET var_val = 'yes' WHERE var_name = 'allowguest'")
    restored = replicate("127.0.0.1")
    assert restored.stdout.startswith("Replicated"), restored.stdout
    assert slave_db.query("SELECT var_val FROM staticsip WHERE var_name = 'allowguest'") == [("no",)]

    # Changes to excluded tables move the master's log, but change nothing replicated.
    master_db.execute("INSERT INTO cel (eventtype, eventtime, uniqueid, linkedid) VALUES ('HANGUP', now(), 'x', 'y')")
    assert replicate("127.0.0.1").stdout.startswith("Nothing changed")
    slave_db.execute("INSERT INTO cel (eventtype, eventtime, uniqueid, linkedid) VALUES ('HANGUP', now(), 'x', 'y')")
    assert replicate("127.0.0.1").stdout.startswith("Nothing changed")

    # Changing what is excluded is a reason to look again.
    master_db.execute("UPDATE usersip SET callerid = 'quiet change' WHERE id = (SELECT min(id) FROM usersip)")
    # (the usersip change is seen whatever the shortcut says)
    assert replicate("127.0.0.1").stdout.startswith("Replicated")

    forced = replicate("--force", "127.0.0.1")
    assert forced.stdout.startswith(f"Replicated {len(REPLICATED)} tables")


def test_dry_run_lists_tables_and_changes_nothing(master_node, master_db, slave_db):
    before = slave_db.snapshot()
    result = replicate("--dry-run", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Would replicate {len(REPLICATED)} tables (")
    assert any(re.fullmatch(r"\s+usersip\s+40 rows", line) for line in lines)
    assert any(re.fullmatch(r"\s+context\s+3 rows", line) for line in lines)
    assert "Excluded (left untouched on the slave): alembic_version, call_log" in result.stdout
    assert slave_db.snapshot() == before
    assert not (master_node / "var/lib/xivo-ha/replication.json").exists()


def test_repair_stream_in_hourly_mode_has_nothing_to_repair(master_node, slave_db):
    before = slave_db.snapshot()
    result = replicate("--repair-stream", "127.0.0.1")
    assert (result.returncode, result.stdout) == (0, "[replication] mode is hourly: there is no stream to repair\n")
    assert slave_db.snapshot() == before
    assert not (master_node / "var/lib/xivo-ha/replication.json").exists()


@pytest.mark.parametrize("switch", ["--force", "--dry-run"])
def test_repair_stream_with_force_or_dry_run_is_a_usage_error(master_node, switch):
    result = replicate("--repair-stream", switch, "127.0.0.1")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "--repair-stream" in result.stderr


def test_excluded_table_referring_to_a_replicated_one_keeps_its_rows(master_node, master_db, slave_db):
    for db in (master_db, slave_db):
        db.execute("ALTER TABLE provisioning ADD COLUMN context varchar(39) REFERENCES context (name)")
    slave_db.execute("INSERT INTO provisioning (net4_ip, net4_ip_rest, username, password, rest_port, http_port,"
                     " context) VALUES ('10.0.0.2', '127.0.0.1', 'slave', 'x', 1, 2, 'default')")
    before = slave_db.snapshot()
    result = replicate("--verbose", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert "emptied with DELETE because tables kept on the slave refer to them: context" in result.stderr
    assert slave_db.snapshot()["provisioning"] == before["provisioning"]
    assert tables_of(slave_db.snapshot(), REPLICATED) == tables_of(master_db.snapshot(), REPLICATED)


def test_verbose_shows_progress_on_stderr(master_node):
    result = replicate("-v", "127.0.0.1")
    assert result.returncode == 0
    assert "copying usersip" in result.stderr
    assert "verifying row counts and content checksums" in result.stderr


def test_refused_when_this_node_is_not_the_master(master_node, slave_db):
    role.write(role.HaConfig(role.Role.SLAVE, "127.0.0.1"))
    before = slave_db.snapshot()
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert "this node is not the master (its role is slave" in result.stderr
    (master_node / "etc/xivo/ha.conf").unlink()
    result = replicate("127.0.0.1")
    assert result.returncode == 1 and "its role is disabled" in result.stderr
    assert slave_db.snapshot() == before


@pytest.mark.parametrize("address", ["10.0.0.300", "slave.example.com", "", "::1"])
def test_bad_address_is_a_usage_error(master_node, address):
    result = replicate(address)
    assert result.returncode == 2
    assert "xivo-master-slave-db-replication:" in result.stderr
    assert not (master_node / "var/lib/xivo-ha/replication.json").exists()


@pytest.fixture
def unreachable_slave(master_node, monkeypatch):
    from pg import free_port

    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_PORT", str(free_port()))
    monkeypatch.setenv("XIVO_HA_REPLICATION_CONNECT_TIMEOUT", "2")
    return master_node


def test_failure_goes_to_stderr_syslog_and_the_job_record(unreachable_slave, syslog):
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Slave replication failed: cannot reach the slave database 127.0.0.1:")
    assert "xivo-ha enable slave" in result.stderr
    logged = [m for m in syslog.messages() if "Slave replication failed" in m]
    assert len(logged) == 1 and logged[0].startswith("<27>xivo-ha[")  # facility daemon (3), priority err (3)
    entry = record(unreachable_slave)
    assert entry["result"] == "failed" and entry["detail"].startswith("cannot reach the slave database")


def test_failure_is_mailed_to_root(unreachable_slave, tmp_path, monkeypatch):
    outbox = mta_outbox(tmp_path, monkeypatch)
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert "could not mail" not in result.stderr
    mail = outbox.read_text()
    assert "To: root\n" in mail and "Subject: [xivo-ha] " in mail and "slave replication failed" in mail
    assert "Slave replication failed: cannot reach the slave database" in mail
    assert "-t" in (tmp_path / "outbox.args").read_text().split()


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/usr/sbin/sendmail", "/usr/lib/sendmail")),
                    reason="this machine has an MTA")
def test_no_mail_program_is_not_an_error(unreachable_slave):
    result = replicate("127.0.0.1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1  # the failure line only, no complaint about mail


ODD_SEQUENCE = 'Seq "quoted" X'


def test_identifiers_with_quotes_spaces_and_upper_case_replicate(master_node, master_db, slave_db):
    for db in (master_db, slave_db):
        db.execute('CREATE TABLE "Odd ""Name"" tbl" ("Id" serial PRIMARY KEY, "Full Name" text)')
        db.execute('CREATE SEQUENCE "Seq ""quoted"" X"')
    master_db.execute('INSERT INTO "Odd ""Name"" tbl" ("Full Name") VALUES (\'a\'), (\'b "quoted"\'), (\'c\')')
    master_db.execute('SELECT setval(\'"Seq ""quoted"" X"\', 42)')
    result = replicate("127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert slave_db.query('SELECT "Id", "Full Name" FROM "Odd ""Name"" tbl" ORDER BY 1') == [
        (1, "a"), (2, 'b "quoted"'), (3, "c")]
    slave_sequences = sequences(slave_db)
    assert slave_sequences[ODD_SEQUENCE] == 42
    assert slave_sequences['Odd "Name" tbl_Id_seq'] == 3
    # The next value on the slave follows the master's.
    assert slave_db.query('SELECT nextval(\'"Seq ""quoted"" X"\')') == [(43,)]


# --- busy databases: bounded sessions, "busy" is not "failed" ------------------------------


@pytest.fixture
def short_limits(monkeypatch):
    monkeypatch.setenv("XIVO_HA_DATABASE_LOCK_TIMEOUT", "2")
    monkeypatch.setenv("XIVO_HA_DATABASE_STATEMENT_TIMEOUT", "30")


@pytest.fixture
def locked(master_db):
    """Lock a table on the master, as a schema migration or a VACUUM FULL would, for the test."""
    import psycopg

    conns = []

    def lock(table: str) -> None:
        conn = psycopg.connect(master_db.dsn)
        conns.append(conn)
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # held: the transaction stays open

    yield lock
    for conn in conns:
        conn.close()


@pytest.mark.parametrize("force", [False, True], ids=["scan", "force"])
def test_locked_table_on_the_master_is_busy_and_not_mailed(master_node, slave_db, short_limits, locked,
                                                           tmp_path, monkeypatch, force):
    outbox = mta_outbox(tmp_path, monkeypatch)
    before = slave_db.snapshot()
    locked("usersip")
    started = time.monotonic()
    result = replicate(*(["--force"] if force else []), "127.0.0.1", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 15
    assert result.stdout.startswith("Slave replication postponed: a table stayed locked longer than the lock timeout")
    assert "the next run tries again" in result.stdout
    assert "Slave replication failed" not in result.stderr
    entry = record(master_node)
    assert entry["result"] == "busy" and "lock timeout" in entry["detail"]
    assert not outbox.exists()
    assert slave_db.snapshot() == before


def test_another_run_holding_the_lock_is_busy_and_not_mailed(master_node, tmp_path, monkeypatch):
    import fcntl

    outbox = mta_outbox(tmp_path, monkeypatch)
    lock_file = master_node / "var/lib/xivo-ha/replication.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a concurrent run holds
        result = replicate("127.0.0.1", timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("Slave replication postponed: another replication is running")
    assert record(master_node)["result"] == "busy"
    assert not outbox.exists()


def test_status_with_a_locked_table_returns_within_the_lock_timeout(master_node, short_limits, locked):
    locked("staticsip")
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "bin" / "xivo-ha"), "status", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 15
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "lock timeout" in report["sip_expiry"]["error"]


def test_the_whole_run_has_a_deadline(master_node, master_db, slave_db, short_limits, monkeypatch):
    """The slave is slow on every row: the run is cancelled at its deadline, before any statement timeout."""
    monkeypatch.setenv("XIVO_HA_REPLICATION_TIMEOUT", "10")
    slave_db.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;"
        "CREATE TRIGGER slow BEFORE INSERT ON usersip FOR EACH ROW EXECUTE FUNCTION slow();"
        "ALTER TABLE usersip ENABLE ALWAYS TRIGGER slow"
    )
    before = slave_db.snapshot()
    started = time.monotonic()
    result = replicate("127.0.0.1", timeout=120)
    assert time.monotonic() - started < 40
    assert result.returncode == 1
    assert "did not finish within 10 s ([replication] timeout) and was cancelled" in result.stderr
    assert record(master_node)["result"] == "failed"
    assert slave_db.snapshot() == before


# --- a slave that serves is not overwritten (asked over the HA key, real sshd) ------------

from test_doctor import LOOPBACK  # noqa: E402


def serving_state(**changes) -> str:
    state = {
        "mode": "serving", "master": LOOPBACK, "condition": "down", "consecutive_failures": 3,
        "consecutive_successes": 0, "last_check": "2024-05-01T12:03:00.000+00:00",
        "last_failover": "2024-05-01T12:00:00.000+00:00", "last_failback": None,
        "reason": "master 127.0.0.1 does not answer ping (0/3 replies) for 1 check: failover, starting the services",
    }
    return json.dumps({**state, **changes})


@pytest.fixture
def serving_pair(pair, tmp_path):
    """The pair after a failover: the slave serves, and a user changed something on it."""
    pair.slave.path("/var/lib/xivo-ha").mkdir(parents=True, exist_ok=True)
    pair.slave.path("/var/lib/xivo-ha/failover.json").write_text(serving_state())
    pair.slave.db.execute("UPDATE staticsip SET var_val = 'changed during the failover' WHERE var_name = 'allowguest'")
    bin_dir = tmp_path / "mta"
    bin_dir.mkdir()
    (bin_dir / "sendmail").write_text(f"#!/bin/sh\ncat > {tmp_path / 'outbox'}\n")
    (bin_dir / "sendmail").chmod(0o755)
    pair.master.env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return pair


def replicate_from(pair, *args: str, env: dict | None = None):
    return pair.master.run(*args, LOOPBACK, command="xivo-master-slave-db-replication", env=env)


def changed_on_slave(pair) -> int:
    rows = pair.slave.db.query("SELECT count(*) FROM staticsip WHERE var_val = 'changed during the failover'")
    return rows[0][0]


def test_replication_refuses_while_the_slave_serves(serving_pair):
    changed = changed_on_slave(serving_pair)
    assert changed > 0
    result = replicate_from(serving_pair)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"Slave replication failed: the slave {LOOPBACK} is serving since 2024-05-01T12:00:00.000+00:00")
    assert "use --force to replicate anyway" in result.stderr
    assert changed_on_slave(serving_pair) == changed
    assert json.loads(serving_pair.job_record("replication").read_text())["result"] == "failed"
    assert "is serving since" in (serving_pair.tmp / "outbox").read_text()


def test_replication_refuses_while_the_slave_state_is_unknown(serving_pair):
    serving_pair.slave.path("/var/lib/xivo-ha/failover.json").write_text('{"mode": "serving", "last_failover": 1e400}')
    result = replicate_from(serving_pair)
    assert result.returncode == 1
    assert "cannot tell whether it serves (failover state unknown" in result.stderr
    assert changed_on_slave(serving_pair) > 0


def test_force_replicates_over_a_serving_slave_with_a_warning(serving_pair):
    result = replicate_from(serving_pair, "--force")
    assert result.returncode == 0, result.stderr
    assert "is serving since" in result.stderr and "replicating anyway (--force)" in result.stderr
    assert changed_on_slave(serving_pair) == 0


def test_a_standing_by_slave_is_replicated(serving_pair):
    serving_pair.slave.path("/var/lib/xivo-ha/failover.json").write_text(
        serving_state(mode="standby", last_failback="2024-05-01T13:00:00.000+00:00"))
    result = replicate_from(serving_pair, "--force")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert changed_on_slave(serving_pair) == 0


def test_slave_not_asked_and_its_database_in_use_is_refused(serving_pair):
    import psycopg

    serving_pair.sshd.stop()
    with psycopg.connect(serving_pair.slave.db.dsn, application_name="asterisk"):
        result = replicate_from(serving_pair, env={"XIVO_HA_SYNC_CONNECT_TIMEOUT": "3"})
    assert result.returncode == 1
    assert "has other clients (asterisk from 127.0.0.1)" in result.stderr
    assert changed_on_slave(serving_pair) > 0


def test_slave_not_asked_and_its_database_unused_is_replicated(serving_pair):
    serving_pair.sshd.stop()
    result = replicate_from(serving_pair, env={"XIVO_HA_SYNC_CONNECT_TIMEOUT": "3"})
    assert result.returncode == 0, result.stderr
    assert changed_on_slave(serving_pair) == 0
