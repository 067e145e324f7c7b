"""The registrar's bindings are rows of the node's own database, and a registrar loads them.

Real Kamailio (the node template, usrloc db_mode 1) on real PostgreSQL clusters
(stock authentication, the role ``asterisk`` with a password): each REGISTER is
a row of the ``location`` table at once, and a
second registrar started on a database holding a copy of those rows (as the
replication brings them to the slave) reaches a phone that registered on the
first one only, without that phone registering again.  The hourly replication
carries the table.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from kamailio_fixture import LineDatabase, free_udp_port, kamailio_binary, line_credentials, start_kamailio
from pg import _as_postgres
from test_replication import replicate
from test_sip_kamailio import register

from xivo_ha_simulator.events import CALL_ANSWERED, CALL_CONNECTED, CALL_FAILED, REGISTERED
from xivo_ha_simulator.phone import Phone, PhoneConfig, Registrar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed"),
]

BOUNDS = dict(min_expires=1, max_expires=3600, default_expires=120)


def bindings(database: LineDatabase) -> list[tuple[str, ...]]:
    """(username, contact, still valid) of every row of ``location``."""
    out = database.sql("SELECT username, contact, expires > now()::timestamp FROM location ORDER BY username")
    return [tuple(line.split("|")) for line in out.splitlines()]


def copy_location(source: LineDatabase, target: LineDatabase) -> None:
    """Replace ``target``'s bindings with ``source``'s rows, as the replication writes them (COPY)."""
    rows = _as_postgres(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", source.server.socket_dsn(source.name),
                         "-c", "COPY location TO STDOUT"]).stdout
    _as_postgres(["psql", "-Xq", "-v", "ON_ERROR_STOP=1", "-d", target.server.socket_dsn(target.name),
                  "-c", "TRUNCATE location", "-c", "COPY location FROM STDIN"], input=rows)


async def until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return predicate()


def test_each_register_is_a_row_at_once(kamailio):
    assert register(kamailio.port, 1001, 30).status_code == 200
    (row,) = bindings(kamailio.database)
    assert row[0] == "user1" and row[1].startswith("sip:user1@127.0.0.1:") and row[2] == "t"
    assert register(kamailio.port, 1002, 30).status_code == 200
    assert [r[0] for r in bindings(kamailio.database)] == ["user1", "user2"]


def test_a_registrar_started_on_copied_rows_connects_a_call_to_a_phone_registered_elsewhere(tmp_path):
    """Kamailio A on database A, Kamailio B on database B: the callee only ever registers on A."""
    db_a, db_b = LineDatabase(range(1001, 1011)), LineDatabase(range(1001, 1011))
    port_b = free_udp_port()
    a = start_kamailio(tmp_path, 0, database=db_a, **BOUNDS)
    handles = [a]

    async def scenario():
        config = PhoneConfig(expires=600, hold_time=0.3)
        callee = Phone("1001", Registrar("master", "127.0.0.1", a.port), None, config,
                       credentials=line_credentials(1001))
        caller = Phone("1002", Registrar("slave", "127.0.0.1", port_b), None, config,
                       credentials=line_credentials(1002))
        await callee.open()
        callee.start()
        assert await until(lambda: callee.node is not None)
        assert [r[0] for r in bindings(db_a)] == ["user1"]

        # B without the rows (a slave before any copy): the callee is not registered there.
        b = await asyncio.to_thread(start_kamailio, tmp_path, port_b, database=db_b, **BOUNDS)
        handles.append(b)
        await caller.open()
        caller.start()
        assert await until(lambda: caller.node is not None)
        caller.call("1001")
        assert await until(lambda: caller.stats.calls_failed == 1)
        assert [(e.kind, e.info["reason"]) for e in caller.events if e.kind == CALL_FAILED] == [
            (CALL_FAILED, "480 Temporarily Unavailable")]
        await asyncio.to_thread(b.stop)

        # The rows copied from A, then B started: it loads them and reaches the callee.
        copy_location(db_a, db_b)
        assert [r[0] for r in bindings(db_b)] == ["user1"]
        b = await asyncio.to_thread(start_kamailio, tmp_path, port_b, database=db_b, **BOUNDS)
        handles.append(b)
        caller.call("1001")
        assert await until(lambda: caller.stats.calls_connected == 1)
        assert await until(lambda: callee.stats.calls_answered == 1)
        registers = callee.stats.register_sent
        callee.stop()
        caller.stop()
        return callee, caller, registers

    try:
        callee, caller, registers = asyncio.run(scenario())
    finally:
        for handle in handles:
            handle.stop()
        db_a.stop()
        db_b.stop()
    assert registers == 2  # the 401, then the authenticated REGISTER, both to A: never to B
    assert [e.node for e in callee.events if e.kind == REGISTERED] == ["master"]
    assert [e.info["from"] for e in callee.events if e.kind == CALL_ANSWERED] == ["user2"]
    assert [e.info["to"] for e in caller.events if e.kind == CALL_CONNECTED] == ["1001"]


def test_the_hourly_replication_carries_the_bindings(master_node, master_db, slave_db):
    master_db.execute(
        "INSERT INTO location (ruid, username, contact, expires, callid, socket) VALUES "
        "('uloc-1', 'user1', 'sip:user1@10.0.0.50:5060', now() + interval '1 hour', 'c1', 'udp:10.0.0.1:5060')")
    slave_db.execute(
        "INSERT INTO location (ruid, username, contact, callid) VALUES ('uloc-slave', 'user9', 'sip:x', 'c9')")
    result = replicate("127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert slave_db.query("SELECT ruid, username, contact, socket FROM location") == [
        ("uloc-1", "user1", "sip:user1@10.0.0.50:5060", "udp:10.0.0.1:5060")]
    assert slave_db.query("SELECT last_value FROM location_id_seq") == master_db.query(
        "SELECT last_value FROM location_id_seq")
