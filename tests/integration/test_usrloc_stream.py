"""Registrations follow the master over the continuous stream: real Kamailio on both nodes.

The master's registrar (Kamailio, the node template, usrloc write-through) runs on
the master's database (stock authentication, wal_level = logical), the slave's
database is fed by ``[replication] mode = continuous`` (the real replication
command, then PostgreSQL's logical replication).  A phone registers on the master
only; its binding reaches the slave's database within seconds; the failover step
of ``xivo-manage-slave-services start`` (the stream disabled, the sequences caught
up) runs, and the slave's registrar, started then, connects a call to that phone
without the phone registering again.  Phones that register on the slave while it
serves are written there (the sequence of the bindings was caught up).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from kamailio_fixture import ASTERISK_PASSWORD, ASTERISK_ROLE, LOCATION_GRANTS, kamailio_binary, line_credentials
from kamailio_fixture import start_kamailio
from test_replication_stream import (  # noqa: F401  (fixtures)
    logical_server,
    master_db,
    master_node,
    rebase,
    slave_db,
    subscriber_server,
)

from xivo_ha.replication import stream
from xivo_ha_simulator.events import CALL_ANSWERED, REGISTERED
from xivo_ha_simulator.phone import Phone, PhoneConfig, Registrar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed"),
]

BOUNDS = dict(min_expires=1, max_expires=3600, default_expires=120)


@dataclass(frozen=True)
class NodeDatabase:
    """What start_kamailio needs of a node's database: the registrar's URL."""

    url: str


def registrar_database(db) -> NodeDatabase:
    """The role ``asterisk`` with its password and its grants in ``db``; the URL Kamailio logs in with."""
    db.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ASTERISK_ROLE}') THEN "
               f"CREATE ROLE {ASTERISK_ROLE} LOGIN PASSWORD '{ASTERISK_PASSWORD}'; END IF; END $$")
    db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ASTERISK_ROLE}; {LOCATION_GRANTS}")
    return NodeDatabase(f"postgres://{ASTERISK_ROLE}:{ASTERISK_PASSWORD}@127.0.0.1:{db.server.port}/{db.name}")


async def until(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return predicate()


def users_in(db) -> list[str]:
    return [row[0] for row in db.query("SELECT username FROM location ORDER BY username")]


def test_a_phone_registered_on_the_master_is_called_through_the_slave_without_registering_again(
        master_node, master_db, slave_db, tmp_path):
    master_url, slave_url = registrar_database(master_db), registrar_database(slave_db)
    rebase()  # the verified copy, and the stream from its snapshot on
    assert stream.observe_local(slave_db.dsn, "slave").get("enabled")
    handles = []

    async def scenario():
        a = await asyncio.to_thread(start_kamailio, tmp_path, 0, database=master_url, **BOUNDS)
        handles.append(a)
        config = PhoneConfig(expires=600, hold_time=0.3)
        callee = Phone("1001", Registrar("master", "127.0.0.1", a.port), None, config,
                       credentials=line_credentials(1001))
        await callee.open()
        callee.start()
        assert await until(lambda: callee.node is not None)
        registered = time.monotonic()
        assert users_in(master_db) == ["user1"]
        assert await until(lambda: users_in(slave_db) == ["user1"]), "the binding did not reach the slave"
        lag = time.monotonic() - registered

        # Failover: what xivo-manage-slave-services start does first, then the slave's registrar.
        assert stream.stop_on_slave(slave_db.dsn) is not None
        b = await asyncio.to_thread(start_kamailio, tmp_path, 0, database=slave_url, **BOUNDS)
        handles.append(b)
        caller = Phone("1002", Registrar("slave", "127.0.0.1", b.port), None, config,
                       credentials=line_credentials(1002))
        await caller.open()
        caller.start()
        assert await until(lambda: caller.node is not None)
        caller.call("1001")
        assert await until(lambda: callee.stats.calls_answered == 1 and caller.stats.calls_connected == 1)
        registers = callee.stats.register_sent
        callee.stop()
        caller.stop()
        return callee, lag, registers

    try:
        callee, lag, registers = asyncio.run(scenario())
    finally:
        for handle in handles:
            handle.stop()
    print(f"binding on the slave {lag * 1000:.0f} ms after the master's 200 OK")
    assert registers == 2  # the 401, then the authenticated REGISTER: both to the master
    assert [e.node for e in callee.events if e.kind == REGISTERED] == ["master"]
    assert [e.info["from"] for e in callee.events if e.kind == CALL_ANSWERED] == ["user2"]
    # The slave wrote the binding of the phone that registered there while it served.
    assert users_in(slave_db) == ["user1", "user2"]
    assert users_in(master_db) == ["user1"]
