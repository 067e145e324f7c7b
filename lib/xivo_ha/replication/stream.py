"""``[replication] mode = continuous``: PostgreSQL logical replication from the master to
the slave, based on the verified copy.

The engine is PostgreSQL's own (a publication on the master, a subscription on the
slave): it ships each committed transaction whole, in commit order, and resumes by
itself after a restart of either server.  Everything is set up over the connections
the verified copy already has; a re-base (:func:`rebase`) is one verified copy:

1. **Stop** the slave's subscription if any (disabled, its worker ended, detached from
   its slot): nothing from the old stream may land on the tables being copied.
2. **Prepare the master**: the role :data:`ROLE` (LOGIN REPLICATION, SELECT on the
   replicated tables, a new random password each time, never printed or stored on
   disk), the publication :data:`PUBLICATION` for exactly the plan's tables (never an
   excluded one), the old slots dropped.
3. **Slot and snapshot**: over a ``replication=database`` connection,
   ``CREATE_REPLICATION_SLOT .. LOGICAL pgoutput (SNAPSHOT 'export')``: the slot's
   stream starts exactly after the exported snapshot.
4. **Copy**: the verified copy, its master transaction on that snapshot; before the
   slave's commit, in the same transaction, ``CREATE SUBSCRIPTION`` on that slot
   (``copy_data = false``, ``disable_on_error = true``).  The copy holds everything
   up to the snapshot, the stream everything after it: nothing lost, nothing applied
   twice.  A copy that fails leaves the slave as it was and drops the new slot.

Failover (:func:`stop_on_slave`, from ``xivo-manage-slave-services start``) disables
the subscription first and brings the sequences up to the replicated rows, so that
nothing from the master overwrites what the slave learns while serving.  The stream
stays off until the slave stands by again: then the master's per-minute repair
(:func:`repair_needed`, ``xivo-master-slave-db-replication --repair-stream``) re-bases it.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .. import database
from ..errors import OperationFailed
from ..log import Progress, quiet
from .catalogue import inspect, qualified, sql_module
from .plan import Plan, make_plan
from .run import SLAVE_HINT, Outcome, Target, replicate

HOURLY = "hourly"
CONTINUOUS = "continuous"
PUBLICATION = "xivo_ha"
SUBSCRIPTION = "xivo_ha"
ROLE = "xivo_ha_replication"
SLOT_PREFIX = "xivo_ha_"
WARN_LAG = 60.0
STOP_WAIT = 10.0


def slot_name(now: float) -> str:
    """A new slot's name: one per re-base, so that an old one never stands in the way."""
    return f"{SLOT_PREFIX}{int(now * 1000):x}"


# ---------------------------------------------------------------------------
# What a node sees of the stream, and what it means (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    level: str  # "OK", "WARN", "FAIL"
    sentence: str
    remedy: str = ""


def verdict(mode: str, role: str, state: Mapping[str, Any], serving: bool = False) -> Verdict | None:
    """What ``state`` (from :func:`observe`) says about the stream; None when there is
    nothing to say (hourly mode and nothing left of a stream)."""
    copy = "the master's next verified copy (`xivo-master-slave-db-replication <slave>`, hourly) re-bases it"
    repair = ("the master's per-minute repair (`xivo-master-slave-db-replication --repair-stream <slave>`) "
              "re-bases it within a minute while the slave stands by; `xivo-master-slave-db-replication <slave>` "
              "on the master re-bases it at once")
    if state.get("error"):
        return Verdict("WARN" if mode == HOURLY else "FAIL", f"cannot read the stream's state: {state['error']}",
                       "check that PostgreSQL runs on this node")
    if mode == HOURLY:
        if state.get("exists"):
            return Verdict("WARN", f"[replication] mode is hourly but a replication stream is left ({describe(state)})",
                           f"run `xivo-ha enable {role} <peer>` again on this node: it removes it")
        return None
    if not state.get("exists"):
        what = "no subscription" if role == "slave" else "no replication slot"
        return Verdict("FAIL", f"continuous mode but {what}: configuration changes reach the slave hourly only",
                       repair.replace("re-bases it", "creates it"))
    if role == "slave" and serving and not state.get("enabled"):
        return Verdict("OK", "stream off while the slave serves (failover): the master's per-minute repair "
                             "re-bases it once the slave stands by again")
    if role == "slave" and not state.get("enabled"):
        cause = (f" after {state['errors']} apply error(s), e.g. a row that conflicts with one made here"
                 if state.get("errors") else "")
        return Verdict("FAIL", f"stream stopped: the subscription is disabled{cause}", repair)
    if not state.get("streaming"):
        return Verdict("FAIL", f"stream not running ({describe(state)}): is the peer's PostgreSQL reachable?", copy)
    lag, silence = state.get("lag_seconds"), state.get("silence_seconds")
    if lag is not None and lag > WARN_LAG:
        return Verdict("WARN", f"streaming, {_lag(state)}: over {WARN_LAG:g} s behind the master",
                       "check the network between the nodes and the slave's load")
    if silence is not None and silence > WARN_LAG:
        return Verdict("WARN", f"no message from the master for {silence:.0f} s (even an idle master sends one "
                               "every 30 s): the stream may be stuck",
                       "check the network between the nodes and the master's PostgreSQL")
    return Verdict("OK", f"streaming, {_lag(state)}")


def repair_needed(master_state: Mapping[str, Any], slave_report: Mapping[str, Any] | None,
                  problem: str = "") -> tuple[bool, str]:
    """Whether the master's per-minute repair (``--repair-stream``) re-bases the stream now,
    and why, from this master's :func:`observe` and the slave's ``xivo-ha status --json``
    (None when it could not be asked: ``problem`` says why).

    Only a slave that stands by is repaired, and only when its stream is off for good:
    no subscription, a disabled one (after a failover or a conflict), or no slot on this
    master.  A stream enabled but not connected right now is left to PostgreSQL, which
    reconnects by itself: a network blip costs no full copy.
    """
    if slave_report is None:
        return False, f"could not ask the slave whether it stands by ({problem}): the stream is not repaired now"
    failover = slave_report.get("failover") if isinstance(slave_report.get("failover"), dict) else {}
    if slave_report.get("role") == "master":
        return False, "the slave says it is a master (its /etc/xivo/ha.conf): its stream is not repaired"
    if failover.get("mode") == "serving":
        return False, ("the slave serves (failover): its stream is off, as expected while it serves; "
                       "it is repaired once the slave stands by again after failback")
    if failover.get("mode") != "standby":
        return False, (f"the slave cannot tell whether it serves (failover state {failover.get('mode') or 'missing'})"
                       ": its stream is not repaired until its next xivo-check-master-status run records it")
    replication = slave_report.get("replication")
    slave = replication.get("stream") if isinstance(replication, dict) else None
    if not isinstance(slave, dict):
        return False, "the slave stands by but does not report its stream (is its xivo-ha as recent as this one?)"
    if slave.get("error"):
        return False, f"the slave cannot read its stream: {slave['error']}"
    if master_state.get("error"):
        return False, f"cannot read this master's stream: {master_state['error']}"
    if not slave.get("exists"):
        return True, "the slave stands by and has no subscription"
    if not slave.get("enabled"):
        cause = f" after {slave['errors']} apply error(s)" if slave.get("errors") else ""
        return True, f"the slave stands by and its subscription is disabled{cause}"
    if not master_state.get("exists"):
        return True, "the slave stands by and this master has no replication slot"
    if not slave.get("streaming"):
        return False, (f"the stream is enabled but not connected right now ({describe(slave)}): "
                       "PostgreSQL reconnects by itself")
    return False, f"the stream is {describe(slave)}: nothing to repair"


def _lag(state: Mapping[str, Any]) -> str:
    lag, size = state.get("lag_seconds"), state.get("lag_bytes")
    return f"lag {'?' if lag is None else f'{lag:.1f}'} s / {'?' if size is None else size} bytes"


def describe(state: Mapping[str, Any]) -> str:
    """The stream state as a short phrase, e.g. ``streaming, lag 0.4 s / 0 bytes``."""
    if not state.get("exists"):
        return "none"
    parts = []
    if state.get("side") == "slave":
        parts.append("enabled" if state.get("enabled") else "disabled")
    parts.append("streaming" if state.get("streaming") else "not streaming")
    if state.get("lag_seconds") is not None or state.get("lag_bytes") is not None:
        parts.append(_lag(state))
    if state.get("errors"):
        parts.append(f"{state['errors']} apply errors")
    return ", ".join(parts)


# The slave: how long the last message from the master took to arrive (its lag: the
# walsender sends each change as soon as it is decoded), how long ago it arrived (an
# idle master sends a keepalive every wal_sender_timeout / 2, 30 s by default), and the
# bytes received but not yet confirmed to the master.
_SLAVE_STATE_SQL = f"""
SELECT s.subenabled, st.pid IS NOT NULL,
       extract(epoch FROM st.last_msg_receipt_time - st.last_msg_send_time)::float8,
       extract(epoch FROM now() - st.last_msg_receipt_time)::float8,
       pg_wal_lsn_diff(st.received_lsn, st.latest_end_lsn)::bigint,
       coalesce(ss.apply_error_count, 0)
FROM pg_subscription s
LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL
LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid
WHERE s.subname = '{SUBSCRIPTION}'
  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# The master: bytes not yet confirmed by the slave, and the walsender's replay lag
# (NULL once the slave is idle and caught up: 0 then).
_MASTER_STATE_SQL = f"""
SELECT sl.active,
       extract(epoch FROM coalesce(r.replay_lag, interval '0'))::float8,
       greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), sl.confirmed_flush_lsn), 0)::bigint
FROM pg_replication_slots sl LEFT JOIN pg_stat_replication r ON r.pid = sl.active_pid
WHERE sl.slot_name LIKE '{SLOT_PREFIX}%' AND sl.database = current_database()
ORDER BY sl.active DESC LIMIT 1
"""


def observe(conn, side: str) -> dict[str, Any]:
    """The stream as ``side`` ("master" or "slave") sees it, as a JSON-able dictionary."""
    if side == "slave":
        row = conn.execute(_SLAVE_STATE_SQL).fetchone()
        if row is None:
            return {"side": side, "exists": False}
        enabled, streaming, seconds, silence, size, errors = row
        return {"side": side, "exists": True, "enabled": enabled, "streaming": bool(enabled and streaming),
                "lag_seconds": None if seconds is None else round(max(seconds, 0.0), 3),
                "silence_seconds": None if silence is None else round(max(silence, 0.0), 3),
                "lag_bytes": None if size is None else max(int(size), 0), "errors": int(errors)}
    row = conn.execute(_MASTER_STATE_SQL).fetchone()
    publication = conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone()[0]
    if row is None:
        return {"side": side, "exists": False, "publication": bool(publication)}
    active, seconds, size = row
    return {"side": side, "exists": True, "enabled": True, "streaming": bool(active), "publication": bool(publication),
            "lag_seconds": round(seconds, 3) if active else None, "lag_bytes": int(size), "errors": 0}


def observe_local(dsn: str, side: str) -> dict[str, Any]:
    """:func:`observe` on this node's database; ``{"error": ..}`` when it cannot be read."""
    import psycopg

    try:
        conn = database.connect(dsn, timeout=5, autocommit=True)
    except OperationFailed as exc:
        return {"side": side, "error": str(exc)}
    try:
        return observe(conn, side)
    except psycopg.Error as exc:
        return {"side": side, "error": database.first_line(exc)}
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# The slave: stop the stream (before a copy, on failover), create it (in the copy)
# ---------------------------------------------------------------------------


def _subscription_exists(conn) -> bool:
    return conn.execute(
        "SELECT count(*) FROM pg_subscription WHERE subname = %s AND subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())", (SUBSCRIPTION,)).fetchone()[0] > 0


def _worker_pids(conn) -> list[int]:
    return [row[0] for row in conn.execute(
        "SELECT st.pid FROM pg_stat_subscription st JOIN pg_subscription s ON s.oid = st.subid "
        "WHERE s.subname = %s AND st.pid IS NOT NULL", (SUBSCRIPTION,))]


def stop_subscription(conn, detach: bool) -> bool:
    """Disable the subscription (autocommit ``conn``) and wait until its workers ended;
    with ``detach``, forget its slot too (the master drops it).  False: there was none."""
    if not _subscription_exists(conn):
        return False
    sql = sql_module()
    name = sql.Identifier(SUBSCRIPTION)
    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
    deadline = time.monotonic() + STOP_WAIT
    while pids := _worker_pids(conn):
        if time.monotonic() > deadline:
            raise OperationFailed(f"the subscription's workers ({', '.join(map(str, pids))}) did not stop "
                                  f"within {STOP_WAIT:g} s")
        # A worker applying a transaction would finish it first: end it (its
        # transaction rolls back; the copy or the failover takes over from here).
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.1)
    if detach:
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(name))
    return True


def drop_subscription(conn) -> bool:
    """Stop and drop the subscription, leaving the master's slot alone; False: none."""
    if not stop_subscription(conn, detach=True):
        return False
    sql = sql_module()
    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(SUBSCRIPTION)))
    return True


# Each sequence owned by a column of a subscribed table: at least that column's
# maximum (logical replication does not ship sequences).
_OWNED_SEQUENCES_SQL = """
SELECT seq.relname, tab.relname, att.attname
FROM pg_depend d
JOIN pg_class seq ON seq.oid = d.objid AND seq.relkind = 'S'
JOIN pg_class tab ON tab.oid = d.refobjid
JOIN pg_namespace n ON n.oid = tab.relnamespace AND n.nspname = 'public'
JOIN pg_attribute att ON att.attrelid = tab.oid AND att.attnum = d.refobjsubid
WHERE d.deptype IN ('a', 'i') AND d.classid = 'pg_class'::regclass
  AND tab.oid IN (SELECT srrelid FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
                  WHERE s.subname = %s)
ORDER BY 1
"""


def catch_up_sequences(conn) -> list[str]:
    """Move each sequence of a subscribed table past the table's highest value; the
    sequences moved.  Run once the subscription is stopped."""
    sql = sql_module()
    moved = []
    for sequence, table, column in conn.execute(_OWNED_SEQUENCES_SQL, (SUBSCRIPTION,)).fetchall():
        highest = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(column),
                                                                       qualified(table))).fetchone()[0]
        if highest is None:
            continue
        current = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(qualified(sequence))).fetchone()
        if int(highest) > int(current[0]) or (int(highest) == int(current[0]) and not current[1]):
            conn.execute("SELECT setval(%s::regclass, %s, true)", (qualified(sequence).as_string(conn), int(highest)))
            moved.append(sequence)
    return moved


def stop_on_slave(dsn: str, progress: Progress = quiet) -> str | None:
    """Failover: disable the subscription, catch the sequences up; a sentence, or None
    when this node has no subscription."""
    import psycopg

    conn = database.connect(dsn, autocommit=True, what="cannot stop the replication stream")
    try:
        if not stop_subscription(conn, detach=False):
            return None
        moved = catch_up_sequences(conn)
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot stop the replication stream: {database.error_text(exc)}") from None
    finally:
        conn.close()
    sentence = ("replication stream from the master disabled (once this slave stands by again, the master "
                "re-bases it within a minute)")
    if moved:
        sentence += f"; sequences caught up: {', '.join(moved)}"
    progress(sentence)
    return sentence


def _create_subscription(slave, master_conninfo: str, slot: str) -> None:
    """In the caller's transaction.  The statement carries the password: the server is
    told not to log it, even when it fails."""
    sql = sql_module()
    slave.execute("SET LOCAL log_statement = 'none'; SET LOCAL log_min_error_statement = 'panic'; "
                  "SET LOCAL log_min_duration_statement = -1")
    slave.execute(sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(SUBSCRIPTION)))
    slave.execute(sql.SQL(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, slot_name = {}, "
        "copy_data = false, disable_on_error = true, enabled = true)"
    ).format(sql.Identifier(SUBSCRIPTION), sql.Literal(master_conninfo), sql.Identifier(PUBLICATION),
             sql.Literal(slot)))


# ---------------------------------------------------------------------------
# The master: role, publication, slots
# ---------------------------------------------------------------------------


def _role_exists(conn) -> bool:
    return conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()[0] > 0


def _our_slots(conn) -> list[tuple[str, int | None]]:
    return [tuple(row) for row in conn.execute(
        "SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name LIKE %s AND database = "
        "current_database()", (SLOT_PREFIX + "%",))]


def _drop_slot(conn, name: str) -> None:
    """Drop slot ``name``, ending the walsender that uses it first."""
    deadline = time.monotonic() + STOP_WAIT
    while True:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        if row is None:
            return
        if row[0] is None:
            break
        if time.monotonic() > deadline:
            raise OperationFailed(f"replication slot {name} stayed in use for {STOP_WAIT:g} s")
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        time.sleep(0.1)
    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def drop_slots(conn) -> list[str]:
    """Drop our slots: their names."""
    names = [name for name, _ in _our_slots(conn)]
    for name in names:
        _drop_slot(conn, name)
    return names


def prepare_master(conn, tables: Sequence[str], password: str) -> None:
    """Role (new password), privileges and publication for exactly ``tables``; old slots dropped."""
    sql = sql_module()
    role = sql.Identifier(ROLE)
    verb = "ALTER" if _role_exists(conn) else "CREATE"
    # The server only ever sees the SCRAM verifier, computed here: not even a log line
    # of the statement could show the password.
    verifier = conn.pgconn.encrypt_password(password.encode(), ROLE.encode(), b"scram-sha-256").decode("ascii")
    conn.execute(sql.SQL(verb + " ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(role, sql.Literal(verifier)))
    conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role))
    listed = sql.SQL(", ").join(qualified(t) for t in tables)
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(listed, role))
    exists = conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone()[0]
    verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
    conn.execute(sql.SQL(verb).format(sql.Identifier(PUBLICATION), listed))
    drop_slots(conn)


def publication_tables(conn) -> tuple[str, ...]:
    return tuple(row[0] for row in conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = 'public' ORDER BY 1",
        (PUBLICATION,)))


def remove_from_master(conn) -> list[str]:
    """Drop the slots, the publication and the role: what was removed."""
    sql = sql_module()
    removed = [f"replication slot {name}" for name in drop_slots(conn)]
    if conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone()[0]:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(PUBLICATION)))
        removed.append(f"publication {PUBLICATION}")
    if _role_exists(conn):
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
        removed.append(f"role {ROLE}")
    return removed


def remove_local(dsn: str, subscription: bool = True, master: bool = True) -> list[str]:
    """The stream's objects on this node: its subscription, and the master's slots,
    publication and role; what was removed."""
    import psycopg

    conn = database.connect(dsn, autocommit=True, what="cannot remove the replication stream")
    try:
        removed = [f"subscription {SUBSCRIPTION}"] if subscription and drop_subscription(conn) else []
        return removed + (remove_from_master(conn) if master else [])
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot remove the replication stream: {database.error_text(exc)}") from None
    finally:
        conn.close()


def local_objects(conn) -> list[str]:
    """The stream's objects in this node's database, e.g. ``["publication xivo_ha"]``."""
    found = [f"subscription {SUBSCRIPTION}"] if _subscription_exists(conn) else []
    found += [f"replication slot {name}" for name, _ in _our_slots(conn)]
    if conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone()[0]:
        found.append(f"publication {PUBLICATION}")
    if _role_exists(conn):
        found.append(f"role {ROLE}")
    return found


@dataclass(frozen=True)
class Teardown:
    subscription: bool  # drop this node's subscription
    master: bool        # drop this node's slots, publication and role
    reason: str

    @property
    def needed(self) -> bool:
        return self.subscription or self.master


def teardown(target_role: str, mode: str, objects: Sequence[str]) -> Teardown:
    """What a role change removes of the stream's objects on this node, and why (pure):
    a continuous master keeps its publication, role and slot, a continuous slave its
    subscription; everything else goes."""
    subscription = [o for o in objects if o.startswith("subscription ")]
    published = [o for o in objects if o not in subscription]
    if not objects:
        return Teardown(False, False, "no replication stream on this node")
    if mode == CONTINUOUS and target_role == "master":
        return Teardown(bool(subscription), False, "a master has no subscription")
    if mode == CONTINUOUS and target_role == "slave":
        return Teardown(False, bool(published), "a slave publishes nothing")
    why = "in hourly mode there is no stream" if mode == HOURLY else "a disabled node has no stream"
    return Teardown(bool(subscription), bool(published), why)


# ---------------------------------------------------------------------------
# The re-base: one verified copy that (re)starts the stream
# ---------------------------------------------------------------------------


def _replication_connection(master_dsn: str, limits):
    from psycopg.conninfo import make_conninfo

    return database.connect(make_conninfo(master_dsn, replication="database"), autocommit=True, limits=limits,
                            what="cannot open a replication connection to the master database")


def create_slot(repl, name: str) -> str:
    """``CREATE_REPLICATION_SLOT`` on a replication connection: the exported snapshot's name."""
    from psycopg import pq

    result = repl.pgconn.exec_(f"CREATE_REPLICATION_SLOT {name} LOGICAL pgoutput (SNAPSHOT 'export')".encode())
    if result.status != pq.ExecStatus.TUPLES_OK:
        message = (result.error_message or repl.pgconn.error_message).decode("utf-8", "replace").strip()
        first = message.splitlines()[0] if message else "?"
        raise OperationFailed(f"cannot create the replication slot {name}: {first} "
                              "(is wal_level = logical on the master? `xivo-ha enable master` sets it)")
    return result.get_value(0, 2).decode("ascii")


def _master_address(slave) -> str | None:
    """The master's address as the slave sees this connection (None over a Unix socket)."""
    return slave.execute("SELECT host(inet_client_addr())").fetchone()[0]


def _drop_slot_quietly(master, slot: str) -> None:
    """A failed re-base's new slot goes, so that it retains no WAL."""
    import psycopg

    try:
        _drop_slot(master, slot)
    except (psycopg.Error, OperationFailed):
        pass


def rebase(master_dsn: str, target: Target, exclude: Sequence[str], *, progress: Progress = quiet,
           limits=None, **options) -> Outcome:
    """The verified copy (:func:`~.run.replicate`, given ``options``) that (re)starts the
    stream; its outcome, the stream's start said in its sentence."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    limits = database.Limits.from_settings() if limits is None else limits
    slave = database.connect(target.dsn(), target.connect_timeout, autocommit=True, limits=limits,
                             what=f"cannot reach the slave database {target.label}", hint=SLAVE_HINT)
    try:
        master = database.connect(master_dsn, target.connect_timeout, autocommit=True, limits=limits,
                                  what="cannot connect to the master database")
    except OperationFailed:
        slave.close()
        raise
    repl = None
    slot = slot_name(time.time())
    try:
        try:
            if stop_subscription(slave, detach=True):
                progress("stopped the slave's subscription for the re-base")
            address = _master_address(slave)
            if address is None:
                raise OperationFailed(f"the slave {target.label} was reached over a Unix socket: it cannot stream "
                                      "from this master's address")
            plan = make_plan(inspect(master), exclude)
            password = secrets.token_urlsafe(32)
            prepare_master(master, plan.tables, password)
            port = master.execute("SELECT current_setting('port')").fetchone()[0]
            dbname = master.info.dbname
        except psycopg.Error as exc:
            raise OperationFailed(f"cannot prepare the replication stream: {database.error_text(exc)}") from None
        finally:
            slave.close()
        conninfo = make_conninfo(host=address, port=str(port), dbname=dbname, user=ROLE, password=password,
                                 application_name=SUBSCRIPTION, connect_timeout=str(target.connect_timeout))
        repl = _replication_connection(master_dsn, limits)
        snapshot = create_slot(repl, slot)
        progress(f"created replication slot {slot}, snapshot {snapshot}")

        refused: list[str] = []

        def subscribe(slave_conn, copied: Plan) -> None:
            # The master's copy transaction imported the snapshot long ago: the slot's
            # connection may go, so that the subscription can take the slot over.
            repl.close()
            if tuple(sorted(copied.tables)) != tuple(sorted(plan.tables)):
                raise OperationFailed("the master's tables changed during the run: try again")
            try:
                with slave_conn.transaction():  # a savepoint: the copy commits even without a stream
                    _create_subscription(slave_conn, conninfo, slot)
            except psycopg.Error as exc:
                refused.append(database.error_text(exc))
                return
            progress(f"subscription {SUBSCRIPTION} created on slot {slot}")

        outcome = replicate(master_dsn, target, exclude, force=True, progress=progress, limits=limits,
                            snapshot=snapshot, before_commit=subscribe, **options)
        if refused:
            raise OperationFailed(
                f"{outcome.sentence}, but the stream could not start: {refused[0]} (can the slave reach this "
                f"master's PostgreSQL port {port}? `xivo-ha enable master` sets up its pg_hba.conf line)")
    except BaseException:
        if repl is not None:
            repl.close()
            _drop_slot_quietly(master, slot)
        raise
    finally:
        master.close()
    return dataclasses.replace(outcome, sentence=f"{outcome.sentence}; the stream continues from there")
