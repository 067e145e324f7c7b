"""Calls between phones through a real Kamailio routing by number from the node's database.

And a call's failover: an INVITE to a registrar that is gone (killed) or
silent (frozen with SIGSTOP, its port still open: a blackhole) is retried
through the other registrar once the phone's INVITE timeout is over, and the
phone re-registers there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from kamailio_fixture import kamailio_binary, line_credentials, start_kamailio

from xivo_ha_simulator.events import (
    CALL_ANSWERED,
    CALL_CONNECTED,
    CALL_ENDED,
    CALL_FAILED,
    CALL_PLACED,
    CALL_RETRIED,
    REGISTERED,
    SWITCHED,
)
from xivo_ha_simulator.phone import Fleet, Phone, PhoneConfig, Registrar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed"),
]

CONFIG = dict(expires=60, hold_time=0.5)


async def registered_phones(port: int, *numbers: int) -> list[Phone]:
    phones = [Phone(str(n), Registrar("master", "127.0.0.1", port), None, PhoneConfig(**CONFIG),
                    credentials=line_credentials(n)) for n in numbers]
    for phone in phones:
        await phone.open()
        phone.start()
    deadline = time.monotonic() + 10
    while any(p.node is None for p in phones) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert all(p.node is not None for p in phones)
    return phones


async def until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def kinds(phone: Phone, *wanted: str) -> list:
    return [(e.kind, e.info) for e in phone.events if e.kind in wanted]


def test_a_call_to_a_registered_phone_connects_and_ends(kamailio):
    async def scenario():
        a, b = await registered_phones(kamailio.port, 1001, 1002)
        try:
            a.call("1002")
            assert a.calls_in_progress == 1
            await until(lambda: any(e.kind == CALL_ENDED for e in a.events))
            assert a.calls_in_progress == 0
        finally:
            a.stop()
            b.stop()
        return a, b

    a, b = asyncio.run(scenario())
    placed, connected, ended = kinds(a, CALL_PLACED, CALL_CONNECTED, CALL_ENDED, CALL_FAILED)
    assert placed == (CALL_PLACED, {"to": "1002"})
    assert connected[0] == CALL_CONNECTED and connected[1]["to"] == "1002"
    assert ended == (CALL_ENDED, {"to": "1002"})  # the BYE got its 200
    assert kinds(b, CALL_ANSWERED) == [(CALL_ANSWERED, {"from": "user1"})]
    assert a.stats.calls_connected == 1 and a.stats.calls_failed == 0
    assert not b._incoming  # the callee's dialog ended with the BYE


def test_an_unknown_number_gets_404(kamailio):
    async def scenario():
        (a,) = await registered_phones(kamailio.port, 1003)
        try:
            a.call("4999")
            await until(lambda: a.stats.calls_failed == 1)
        finally:
            a.stop()
        return a

    a = asyncio.run(scenario())
    assert kinds(a, CALL_FAILED) == [(CALL_FAILED, {"to": "4999", "reason": "404 Not Found"})]


def test_a_callee_that_is_not_registered_gets_480(kamailio):
    async def scenario():
        (a,) = await registered_phones(kamailio.port, 1004)
        try:
            a.call("1005")  # a line of this node's database, whose phone never registered
            await until(lambda: a.stats.calls_failed == 1)
        finally:
            a.stop()
        return a

    a = asyncio.run(scenario())
    assert kinds(a, CALL_FAILED) == [(CALL_FAILED, {"to": "1005", "reason": "480 Temporarily Unavailable"})]
    assert "480: line user5 has no binding" in kamailio.log()  # what support reads on the node


def test_a_user_dials_a_failed_call_again_and_gets_through_once_the_callee_is_back(kamailio):
    async def scenario():
        a = Phone("1006", Registrar("master", "127.0.0.1", kamailio.port), None,
                  PhoneConfig(**CONFIG, redial_after=0.3, redials=20), credentials=line_credentials(1006))
        await a.open()
        a.start()
        await until(lambda: a.node is not None)
        b = None
        try:
            a.call("1007")  # 1007 is not registered yet: 480, then the user dials again
            await until(lambda: a.stats.calls_failed >= 1)
            (b,) = await registered_phones(kamailio.port, 1007)
            await until(lambda: any(e.kind == CALL_CONNECTED for e in a.events))
        finally:
            a.stop()
            if b is not None:
                b.stop()
        return a

    a = asyncio.run(scenario())
    outcomes = kinds(a, CALL_FAILED, CALL_CONNECTED)
    assert outcomes[0] == (CALL_FAILED, {"to": "1007", "reason": "480 Temporarily Unavailable"})
    assert outcomes[-1][0] == CALL_CONNECTED and outcomes[-1][1]["to"] == "1007"
    assert all(kind == CALL_FAILED for kind, _ in outcomes[:-1])
    assert len(kinds(a, CALL_PLACED)) == len(outcomes)  # one dial per outcome, none after the success


def test_a_caller_with_a_wrong_secret_cannot_call(kamailio):
    async def scenario():
        a, b = await registered_phones(kamailio.port, 1006, 1007)
        try:
            a.credentials = type(a.credentials)(a.credentials.username, "not-the-secret")
            a.call("1007")
            await until(lambda: a.stats.calls_failed == 1)
        finally:
            a.stop()
            b.stop()
        return a, b

    a, b = asyncio.run(scenario())
    assert kinds(a, CALL_FAILED) == [
        (CALL_FAILED, {"to": "1007", "reason": "407 Proxy Authentication Required (credentials refused)"})]
    assert b.stats.calls_answered == 0


def test_a_fleet_places_calls_at_its_call_rate(kamailio):
    async def scenario():
        # 3600 calls per phone per hour: one a second each, held 0.3 s.
        fleet = Fleet(Registrar("master", "127.0.0.1", kamailio.port), None, 6,
                      PhoneConfig(expires=60, call_rate=3600, hold_time=0.3), first_user=1010,
                      credentials=line_credentials)
        try:
            await fleet.start()
            assert await fleet.wait_registered(10)
            await asyncio.sleep(3)
        finally:
            await fleet.stop()
        return fleet

    fleet = asyncio.run(scenario())
    stats = fleet.stats
    assert stats.calls_placed >= 6
    assert stats.calls_failed == 0
    assert stats.calls_connected >= stats.calls_placed - 6  # those still ringing at the stop aside
    assert stats.calls_answered >= stats.calls_connected


def kill(handle) -> None:
    handle.kill()


def freeze(handle) -> None:
    os.killpg(handle.pid, signal.SIGSTOP)  # its port stays bound: requests vanish unanswered


@pytest.fixture
def two_registrars(tmp_path):
    """A master and a slave registrar holding the same lines (the slave's database replicated)."""
    master = start_kamailio(tmp_path, 0, min_expires=1, max_expires=60, default_expires=10)
    try:
        slave = start_kamailio(tmp_path, 0, min_expires=1, max_expires=60, default_expires=10,
                               database=master.database)
    except BaseException:
        master.stop()
        raise
    try:
        yield master, slave
    finally:
        if master.alive:
            os.killpg(master.pid, signal.SIGCONT)
        slave.stop()
        master.stop()


async def failover_call(master, slave, fault, config: PhoneConfig, caller_number: int, callee_number: int):
    """The caller (master, then slave) calls the callee (registered on the slave) once the master is hit."""
    on_master = Registrar("master", "127.0.0.1", master.port)
    on_slave = Registrar("slave", "127.0.0.1", slave.port)
    caller = Phone(str(caller_number), on_master, on_slave, config, credentials=line_credentials(caller_number))
    callee = Phone(str(callee_number), on_slave, None, config, credentials=line_credentials(callee_number))
    for phone in (caller, callee):
        await phone.open()
        phone.start()
    try:
        await until(lambda: caller.node is on_master and callee.node is on_slave)
        assert caller.node is on_master and callee.node is on_slave
        fault(master)
        caller.call(str(callee_number))
        await until(lambda: any(e.kind in (CALL_ENDED, CALL_FAILED) for e in caller.events), timeout=20)
        await until(lambda: caller.node is on_slave, timeout=5)
        registered_on = caller.node
    finally:
        caller.stop()
        callee.stop()
    return caller, callee, registered_on


@pytest.mark.parametrize("fault, config", [
    (kill, PhoneConfig(expires=60, hold_time=0.3, invite_timeout=1.5)),
    # x20, default INVITE timeout: Timer B 64 x 25 ms = 1.6 s; 30 s granted, no refresh meanwhile
    (freeze, PhoneConfig(expires=600, hold_time=6, time_scale=20)),
], ids=["killed", "frozen"])
def test_a_call_whose_invite_times_out_connects_through_the_backup(two_registrars, fault, config):
    master, slave = two_registrars
    caller, callee, registered_on = asyncio.run(failover_call(master, slave, fault, config, 1021, 1022))

    calls = kinds(caller, CALL_PLACED, CALL_RETRIED, CALL_CONNECTED, CALL_FAILED, CALL_ENDED)
    assert [kind for kind, _ in calls] == [CALL_PLACED, CALL_RETRIED, CALL_CONNECTED, CALL_ENDED]
    placed, retried, connected, ended = (e for e in caller.events if e.kind in (
        CALL_PLACED, CALL_RETRIED, CALL_CONNECTED, CALL_ENDED))
    assert (placed.node, placed.info) == ("master", {"to": "1022"})
    assert retried.node == "slave"
    assert retried.info == {"to": "1022", "reason": "no answer from master to the INVITE: retrying the call "
                                                    "through slave"}
    assert retried.t - placed.t >= config.timer_b
    assert connected.node == "slave" and connected.info["to"] == "1022"
    # The setup time runs from the first INVITE: the user waited for the timeout too.
    assert config.timer_b <= connected.info["setup"] < config.timer_b + 2
    assert ended.info == {"to": "1022"}
    assert caller.stats.calls_placed == 1 and caller.stats.calls_connected == 1 and caller.stats.calls_failed == 0
    assert callee.stats.calls_answered == 1

    # The phone moved to the backup, as phones with a backup proxy do.
    assert registered_on is not None and registered_on.name == "slave"
    switched = [e for e in caller.events if e.kind == SWITCHED]
    assert [e.info for e in switched] == [{"from": "master", "to": "slave"}]
    assert [e.node for e in caller.events if e.kind == REGISTERED] == ["master", "slave"]
    assert switched[0].t >= retried.t


def test_a_call_fails_once_when_both_registrars_are_silent(two_registrars):
    master, slave = two_registrars
    config = PhoneConfig(expires=60, hold_time=0.3, invite_timeout=1.0)

    async def scenario():
        caller = Phone("1023", Registrar("master", "127.0.0.1", master.port),
                       Registrar("slave", "127.0.0.1", slave.port), config, credentials=line_credentials(1023))
        await caller.open()
        caller.start()
        try:
            await until(lambda: caller.node is not None)
            freeze(master)
            freeze(slave)
            caller.call("1024")
            await until(lambda: caller.stats.calls_failed == 1, timeout=10)
        finally:
            caller.stop()
            os.killpg(slave.pid, signal.SIGCONT)
        return caller

    caller = asyncio.run(scenario())
    calls = kinds(caller, CALL_PLACED, CALL_RETRIED, CALL_CONNECTED, CALL_FAILED)
    assert calls == [
        (CALL_PLACED, {"to": "1024"}),
        (CALL_RETRIED, {"to": "1024", "reason": "no answer from master to the INVITE: retrying the call "
                                                "through slave"}),
        (CALL_FAILED, {"to": "1024", "reason": "timeout"}),
    ]
    failed = next(e for e in caller.events if e.kind == CALL_FAILED)
    placed = next(e for e in caller.events if e.kind == CALL_PLACED)
    assert failed.node == "slave" and failed.t - placed.t >= 2 * config.timer_b
    assert caller.stats.calls_placed == 1 and caller.stats.calls_failed == 1
