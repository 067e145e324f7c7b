"""The trunk: a node registers it to a real Kamailio carrier from its staticsip row; PSTN calls follow it."""

from __future__ import annotations

import asyncio
import time

import pytest
from carrier_fixture import (TRUNK_USER, add_trunk, set_register_row, start_carrier, start_trunk_node,
                             trunk_settings)
from kamailio_fixture import LineDatabase, kamailio_binary, line_credentials

from xivo_ha_simulator.events import CALL_CONNECTED, CALL_ENDED, CALL_FAILED, CALL_PLACED
from xivo_ha_simulator.phone import Phone, PhoneConfig, Registrar
from xivo_ha_simulator.pstn import PstnCaller, PstnConfig, did_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed"),
]


@pytest.fixture
def database():
    db = LineDatabase(range(1001, 1011))
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture
def carrier(tmp_path):
    handle = start_carrier(tmp_path)
    try:
        yield handle
    finally:
        handle.stop()


async def until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return predicate()


async def phone_on(node, number: int) -> Phone:
    phone = Phone(str(number), Registrar("node", "127.0.0.1", node.port), None,
                  PhoneConfig(expires=60, hold_time=0.3), credentials=line_credentials(number))
    await phone.open()
    phone.start()
    assert await until(lambda: phone.node is not None), f"phone {number} did not register"
    return phone


async def pstn_call(carrier, did: str, timeout: float = 10) -> list:
    """One PSTN call to ``did`` through the carrier: the callee's events, once the call ended or failed."""
    phone = did[len(did_of("")):]
    caller = PstnCaller((carrier.address, carrier.port), {did: phone}, PstnConfig(rate=0, hold_time=0.3))
    await caller.open("127.0.0.1")
    try:
        caller.call(did)
        await until(lambda: any(e.kind in (CALL_ENDED, CALL_FAILED) for e in caller.events[phone]), timeout)
    finally:
        caller.stop()
    return [(e.kind, e.info) for e in caller.events[phone]]


async def until_trunk_on(carrier, phone: Phone, timeout: float = 10) -> list:
    """Call ``phone``'s DID until the call connects (the trunk is bound where the phone is)."""
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        events = await pstn_call(carrier, did_of(phone.user), timeout=5)
        if any(kind == CALL_CONNECTED for kind, _ in events):
            return events
        await asyncio.sleep(0.2)
    return events


def test_the_node_registers_its_trunk_and_the_carrier_routes_a_did_to_the_phone(tmp_path, database, carrier):
    add_trunk(database, carrier, expiry=60)
    node = start_trunk_node(tmp_path, database)

    async def scenario():
        phone = await phone_on(node, 1001)
        try:
            return await until_trunk_on(carrier, phone), phone
        finally:
            phone.stop()

    try:
        events, phone = asyncio.run(scenario())
    finally:
        node.stop()
    did = did_of("1001")
    assert [kind for kind, _ in events] == [CALL_PLACED, CALL_CONNECTED, CALL_ENDED], events
    assert events[-1] == (CALL_ENDED, {"to": did})  # the BYE, through the carrier's Record-Route, got its 200
    assert phone.stats.calls_answered == 1


def test_a_pstn_caller_dials_a_failed_did_again_and_gets_through_once_the_phone_is_back(tmp_path, database,
                                                                                        carrier):
    add_trunk(database, carrier, expiry=60)
    node = start_trunk_node(tmp_path, database)

    async def scenario():
        anchor = await phone_on(node, 1001)
        assert CALL_CONNECTED in [k for k, _ in await until_trunk_on(carrier, anchor)]  # the trunk is up
        anchor.stop()
        did = did_of("1004")
        caller = PstnCaller((carrier.address, carrier.port), {did: "1004"},
                            PstnConfig(rate=0, hold_time=0.3, redial_after=0.3, redials=30))
        await caller.open("127.0.0.1")
        caller.start()  # rate 0: no random calls, only this one and its redials
        phone = None
        try:
            caller.call(did)  # 1004 is not registered yet: the call fails, the caller dials again
            await until(lambda: any(e.kind == CALL_FAILED for e in caller.events["1004"]))
            phone = await phone_on(node, 1004)
            await until(lambda: any(e.kind == CALL_CONNECTED for e in caller.events["1004"]))
        finally:
            caller.stop()
            if phone is not None:
                phone.stop()
        return [(e.kind, e.info) for e in caller.events["1004"]]

    try:
        events = asyncio.run(scenario())
    finally:
        node.stop()
    outcomes = [(kind, info) for kind, info in events if kind in (CALL_CONNECTED, CALL_FAILED)]
    assert outcomes[0][0] == CALL_FAILED and outcomes[-1][0] == CALL_CONNECTED, events
    assert all(kind == CALL_FAILED for kind, _ in outcomes[:-1])
    assert [kind for kind, _ in events].count(CALL_PLACED) == len(outcomes)


def test_a_later_registration_takes_the_trunk_and_the_calls(tmp_path, database, carrier):
    # Two nodes, each with its own database (the registrars keep their bindings there).
    add_trunk(database, carrier, expiry=60)
    first = start_trunk_node(tmp_path, database)
    other = LineDatabase(range(1001, 1011))
    add_trunk(other, carrier, expiry=60)
    second = None

    async def scenario():
        nonlocal second
        a = await phone_on(first, 1002)  # registered on the first node only
        try:
            assert CALL_CONNECTED in [k for k, _ in await until_trunk_on(carrier, a)]
            second = start_trunk_node(tmp_path, other)  # registers its trunk now: the carrier's one binding
            b = await phone_on(second, 1003)
            try:
                on_second = await until_trunk_on(carrier, b)
                to_first = await pstn_call(carrier, did_of(a.user))
            finally:
                b.stop()
            return on_second, to_first
        finally:
            a.stop()

    try:
        on_second, to_first = asyncio.run(scenario())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        other.stop()
    assert CALL_CONNECTED in [k for k, _ in on_second]
    # The first node still runs and its phone is registered there, but the carrier sends the
    # DID to the second node, where that line is not registered.
    assert to_first[-1] == (CALL_FAILED, {"to": did_of("1002"), "reason": "480 Temporarily Unavailable"})


def test_an_unknown_did_gets_404(tmp_path, database, carrier):
    add_trunk(database, carrier, expiry=60)
    node = start_trunk_node(tmp_path, database)

    async def scenario():
        phone = await phone_on(node, 1004)
        try:
            assert CALL_CONNECTED in [k for k, _ in await until_trunk_on(carrier, phone)]
            return await pstn_call(carrier, did_of("4999"))
        finally:
            phone.stop()

    try:
        events = asyncio.run(scenario())
    finally:
        node.stop()
    assert events[-1] == (CALL_FAILED, {"to": did_of("4999"), "reason": "404 Not Found"})


def test_a_killed_node_goes_silent_the_carrier_times_out_until_the_binding_expires(tmp_path, database, carrier):
    add_trunk(database, carrier, expiry=3)
    node = start_trunk_node(tmp_path, database)

    async def scenario():
        phone = await phone_on(node, 1008)
        try:
            assert CALL_CONNECTED in [k for k, _ in await until_trunk_on(carrier, phone)]
            node.kill()  # no goodbye: the binding stays until its expiry
            killed = time.monotonic()
            silent = await pstn_call(carrier, did_of("1008"))
            await asyncio.sleep(max(0.0, killed + 4.5 - time.monotonic()))
            expired = await pstn_call(carrier, did_of("1008"))
            return silent, expired
        finally:
            phone.stop()

    try:
        silent, expired = asyncio.run(scenario())
    finally:
        node.stop()
    assert silent[-1] == (CALL_FAILED, {"to": did_of("1008"), "reason": "408 Request Timeout"})
    assert expired[-1] == (CALL_FAILED, {"to": did_of("1008"), "reason": "480 Temporarily Unavailable"})


def test_without_a_binding_the_carrier_answers_480(carrier):
    events = asyncio.run(pstn_call(carrier, did_of("1005")))
    assert events == [(CALL_PLACED, {"to": did_of("1005")}),
                      (CALL_FAILED, {"to": did_of("1005"), "reason": "480 Temporarily Unavailable"})]
    assert f"480 for DID {did_of('1005')}: no trunk binding" in carrier.log()


def test_a_wrong_trunk_secret_gets_no_binding(tmp_path, database, carrier):
    add_trunk(database, carrier, expiry=60, secret="not-the-carrier-secret")
    node = start_trunk_node(tmp_path, database)
    try:
        time.sleep(2)  # uac_reg's timer ran (every second): its REGISTER was challenged and refused
        events = asyncio.run(pstn_call(carrier, did_of("1006")))
    finally:
        node.stop()
    assert events[-1] == (CALL_FAILED, {"to": did_of("1006"), "reason": "480 Temporarily Unavailable"})


def test_a_phone_calling_from_elsewhere_still_authenticates(tmp_path, database, carrier):
    """Only the trunk's host is trusted: an unauthenticated INVITE to a DID from 127.0.0.1 is challenged."""
    add_trunk(database, carrier, expiry=60)
    node = start_trunk_node(tmp_path, database)

    async def scenario():
        callee = await phone_on(node, 1007)
        caller = PstnCaller(("127.0.0.1", node.port), {did_of("1007"): "1007"}, PstnConfig(rate=0))
        await caller.open("127.0.0.1")
        try:
            caller.call(did_of("1007"))
            await until(lambda: caller.failed + caller.connected > 0)
        finally:
            caller.stop()
            callee.stop()
        return [(e.kind, e.info) for e in caller.events["1007"]], callee

    try:
        events, callee = asyncio.run(scenario())
    finally:
        node.stop()
    assert events[-1] == (CALL_FAILED, {"to": did_of("1007"), "reason": "407 Proxy Authentication Required"})
    assert callee.stats.calls_answered == 0


def test_a_bad_register_row_is_left_out_with_its_reason(database, carrier):
    add_trunk(database, carrier, expiry=60)
    set_register_row(database, f"tcp://{TRUNK_USER}:secret@{carrier.address}:{carrier.port}~60")
    settings = trunk_settings(database, "127.0.0.1:5060")
    assert settings["registrations"] == 0
    assert settings["warnings"] == [f"trunk {TRUNK_USER} does not register: 'tcp://{TRUNK_USER}:***@"
                                    f"{carrier.address}:{carrier.port}~60': transport 'tcp' (only udp)"]
    assert settings["hosts"] == [carrier.address]  # its calls are still accepted, as Asterisk's peer would


def test_a_sweep_dials_each_did_again_until_it_connects_through_the_node_that_took_the_trunk(tmp_path, database,
                                                                                            carrier):
    # The first node is killed: the carrier relays to it, answers 100 Trying, nothing more comes; the
    # sweep cancels each attempt after its patience and dials again, until the second node registers
    # the trunk and the phones are registered there.
    add_trunk(database, carrier, expiry=60)
    first = start_trunk_node(tmp_path, database)
    other = LineDatabase(range(1001, 1011))
    add_trunk(other, carrier, expiry=60)
    second = None
    users = ("1001", "1002")

    async def scenario():
        nonlocal second
        phones = [await phone_on(first, int(user)) for user in users]
        caller = PstnCaller((carrier.address, carrier.port), {did_of(u): u for u in users},
                            PstnConfig(rate=0, hold_time=0.3))
        await caller.open("127.0.0.1")
        caller.start()
        try:
            assert CALL_CONNECTED in [k for k, _ in await until_trunk_on(carrier, phones[0])]
            first.kill()
            caller.sweep(0.5, limit=20)
            await asyncio.sleep(1.6)
            second = start_trunk_node(tmp_path, other)
            phones += [await phone_on(second, int(user)) for user in users]
            assert await until(lambda: caller.sweeping() == 0, timeout=15)
            await asyncio.sleep(1.0)  # the last calls' BYEs
            return {u: [(e.kind, e.info) for e in caller.events[u]] for u in users}
        finally:
            caller.stop()
            for phone in phones:
                phone.stop()

    try:
        events = asyncio.run(scenario())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        other.stop()
    for user in users:
        kinds = [kind for kind, _ in events[user]]
        results = [(kind, info.get("reason")) for kind, info in events[user] if kind in (CALL_CONNECTED, CALL_FAILED)]
        assert results[-1] == (CALL_CONNECTED, None) and kinds[-1] == CALL_ENDED, events[user]
        assert kinds.count(CALL_PLACED) == len(results)
        assert (CALL_FAILED, "no answer within 0.5s") in results, results
        assert all(info.get("sweep") for _, info in events[user])
