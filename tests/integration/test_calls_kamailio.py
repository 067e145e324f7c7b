"""Calls between phones through a real Kamailio routing by number from the node's database."""

from __future__ import annotations

import asyncio
import time

import pytest
from kamailio_fixture import kamailio_binary, line_credentials

from xivo_ha_simulator.events import CALL_ANSWERED, CALL_CONNECTED, CALL_ENDED, CALL_FAILED, CALL_PLACED
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
            await until(lambda: any(e.kind == CALL_ENDED for e in a.events))
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
