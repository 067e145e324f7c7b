"""The PSTN caller's sweep against a controllable carrier on 127.0.0.1.

Real UDP on loopback; the carrier here is a test peer whose answers the test
chooses (a provisional only, a late 2xx, silence, a 2xx at once), so that each
rule of the sweep is seen on the wire: a DID is dialled again as soon as an
attempt got no 2xx within the patience, the attempt is cancelled once it had a
provisional answer, what it gets later is acknowledged and never logged, and
the DID is done at its first connected call.  The sweep against the real
Kamailio carrier is in test_trunk_carrier.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from xivo_ha_simulator import sip
from xivo_ha_simulator.events import CALL_CONNECTED, CALL_FAILED, CALL_PLACED
from xivo_ha_simulator.pstn import PstnCaller, PstnConfig, did_of

pytestmark = pytest.mark.integration

PATIENCE = 0.2


class FakeCarrier(asyncio.DatagramProtocol):
    """Answers INVITEs as ``mode`` says: "trying" (100 only), "late" (100, then 200 after ``late``
    seconds, CANCEL or not), "silent", "ok" (200 at once).  A CANCEL gets 200, and its INVITE a 487
    unless it had a final answer (or will get its late 200)."""

    def __init__(self):
        self.mode = "trying"
        self.late = 0.35
        self.received: list[tuple[float, sip.SIP]] = []
        self.final: set[str] = set()  # the branches of the INVITEs answered (or to be answered) finally
        self.transport = None
        self.port = 0

    async def open(self) -> "FakeCarrier":
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def requests(self, method: str) -> list[sip.SIP]:
        return [m for _, m in self.received if m.is_request and m.method == method]

    def times(self, method: str) -> list[float]:
        return [t for t, m in self.received if m.is_request and m.method == method]

    def send(self, msg: sip.SIP, addr) -> None:
        if self.transport is not None:
            self.transport.sendto(bytes(msg), addr)

    def ok(self, invite: sip.SIP, addr) -> None:
        self.final.add(invite.via_branch)
        self.send(sip.response_for(invite, 200, to_tag="callee", headers=[("Contact", "<sip:1001@127.0.0.1:9>")]),
                  addr)

    def datagram_received(self, data, addr):
        msg = sip.parse(data)
        self.received.append((time.monotonic(), msg))
        if not msg.is_request or msg.method == "ACK":
            return
        if msg.method in ("BYE", "CANCEL"):
            self.send(sip.response_for(msg, 200, to_tag="callee"), addr)
            if msg.method == "CANCEL" and msg.via_branch not in self.final:
                invite = next(m for m in self.requests("INVITE") if m.via_branch == msg.via_branch)
                self.send(sip.response_for(invite, 487, to_tag="callee"), addr)
            return
        if self.mode == "silent":
            return
        if self.mode == "ok":
            self.ok(msg, addr)
            return
        self.send(sip.response_for(msg, 100), addr)
        if self.mode == "late":
            self.final.add(msg.via_branch)
            asyncio.get_running_loop().call_later(self.late, self.ok, msg, addr)


async def caller_for(carrier: FakeCarrier, phones=("1001",)) -> PstnCaller:
    caller = PstnCaller(("127.0.0.1", carrier.port), {did_of(p): p for p in phones},
                        PstnConfig(rate=0, hold_time=0.2))
    await caller.open("127.0.0.1")
    caller.start()
    return caller


async def until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


def swept(mode: str, limit: float, wait: float) -> tuple[PstnCaller, FakeCarrier]:
    """One DID swept ``wait`` seconds against a carrier answering as ``mode`` says."""
    async def scenario():
        carrier = await FakeCarrier().open()
        carrier.mode = mode
        caller = await caller_for(carrier)
        try:
            caller.sweep(PATIENCE, limit=limit)
            assert caller.sweeping() == 1
            await asyncio.sleep(wait)
            return caller, carrier
        finally:
            caller.stop()
            carrier.transport.close()

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def outcomes(caller: PstnCaller, phone: str = "1001") -> list[tuple[str, str | None]]:
    return [(e.kind, (e.info or {}).get("reason")) for e in caller.events[phone]
            if e.kind in (CALL_CONNECTED, CALL_FAILED)]


def test_an_unanswered_attempt_is_cancelled_and_dialled_again_until_a_call_connects():
    async def scenario():
        carrier = await FakeCarrier().open()
        caller = await caller_for(carrier)
        try:
            caller.sweep(PATIENCE, limit=10)
            await asyncio.sleep(0.7)  # three or four attempts get only a 100 Trying
            carrier.mode = "ok"
            await until(lambda: caller.sweeping() == 0)
            await asyncio.sleep(3 * PATIENCE)  # nothing is dialled once the DID connected
            return caller, carrier
        finally:
            caller.stop()
            carrier.transport.close()

    caller, carrier = asyncio.run(asyncio.wait_for(scenario(), 60))
    seen = outcomes(caller)
    assert seen[-1] == (CALL_CONNECTED, None) and len(seen) >= 3, seen
    assert set(seen[:-1]) == {(CALL_FAILED, f"no answer within {PATIENCE:g}s")}, seen
    events = caller.events["1001"]
    assert [e.kind for e in events].count(CALL_PLACED) == len(seen)  # one result per attempt, never two
    assert all((e.info or {}).get("sweep") is True for e in events)
    # The attempts never overlap: each placed after the previous one's result, the patience apart.
    placed = [e.t for e in events if e.kind == CALL_PLACED]
    results = [e.t for e in events if e.kind in (CALL_CONNECTED, CALL_FAILED)]
    assert all(p >= r for p, r in zip(placed[1:], results)), (placed, results)
    assert all(b - a >= PATIENCE - 0.01 for a, b in zip(placed, placed[1:])), placed
    # Every given-up attempt had its 100 Trying: each was cancelled, and its 487 acknowledged in its
    # transaction (same branch).
    cancelled = {m.via_branch for m in carrier.requests("CANCEL")}
    invites = {m.via_branch for m in carrier.requests("INVITE")}
    assert len(cancelled) == len(seen) - 1 and cancelled < invites
    assert cancelled <= {m.via_branch for m in carrier.requests("ACK")}


def test_a_2xx_after_the_sweep_gave_up_is_acknowledged_and_hung_up_never_logged():
    # 100 at once, 200 after 0.35 s (after the patience); one attempt, then a second one, then no more.
    caller, carrier = swept("late", limit=PATIENCE * 1.5, wait=1.2)
    assert outcomes(caller) == [(CALL_FAILED, f"no answer within {PATIENCE:g}s")] * 2
    invites = carrier.requests("INVITE")
    assert len({m.call_id for m in invites}) == 2
    # Each late 200 got its ACK and a BYE in its dialog; nothing of it was logged.
    assert {m.call_id for m in carrier.requests("ACK")} >= {m.call_id for m in invites}
    assert {m.call_id for m in carrier.requests("BYE")} == {m.call_id for m in invites}
    assert caller.connected == 0 and caller.sweeping() == 0


def test_without_any_answer_nothing_is_cancelled_and_the_limit_ends_the_sweep():
    caller, carrier = swept("silent", limit=1.0, wait=1.6)
    assert carrier.requests("CANCEL") == []  # no provisional: a CANCEL may not be sent (RFC 3261 9.1)
    attempts = len({m.call_id for m in carrier.requests("INVITE")})
    assert 4 <= attempts <= 6, attempts  # one per patience until the limit
    assert caller.sweeping() == 0
    assert all(kind == CALL_FAILED for kind, _ in outcomes(caller))


def test_every_did_is_dialled_the_first_attempts_spread_over_the_patience_a_new_sweep_replaces_the_last():
    phones = [str(1001 + i) for i in range(8)]

    async def scenario():
        carrier = await FakeCarrier().open()
        carrier.mode = "ok"
        caller = await caller_for(carrier, phones)
        try:
            caller.sweep(PATIENCE, limit=5)
            await until(lambda: caller.sweeping() == 0)
            first = carrier.times("INVITE")
            caller.sweep(PATIENCE, limit=5)
            assert caller.sweeping() == len(phones)
            await until(lambda: caller.sweeping() == 0)
            return caller, first, carrier.times("INVITE")
        finally:
            caller.stop()
            carrier.transport.close()

    caller, first, every = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(first) == len(phones) and 0 < max(first) - min(first) < PATIENCE
    assert len(every) == 2 * len(phones)
    assert all(outcomes(caller, p) == [(CALL_CONNECTED, None)] * 2 for p in phones)


def test_at_most_the_concurrency_of_sweep_calls_are_under_way_the_others_wait_their_turn():
    phones = [str(1001 + i) for i in range(6)]

    async def scenario():
        carrier = await FakeCarrier().open()  # 100 Trying only: every call lasts its whole patience
        caller = await caller_for(carrier, phones)
        try:
            caller.sweep(PATIENCE, limit=10, concurrency=2)
            peak = 0
            deadline = time.monotonic() + 4 * PATIENCE
            while time.monotonic() < deadline:
                peak = max(peak, len(caller._sweeping))
                await asyncio.sleep(0.005)
            carrier.mode = "ok"
            await until(lambda: caller.sweeping() == 0)
            return caller, peak
        finally:
            caller.stop()
            carrier.transport.close()

    caller, peak = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert peak == 2
    assert all(outcomes(caller, p)[-1] == (CALL_CONNECTED, None) for p in phones)
    # Two at a time, a patience each: six DIDs got one attempt each in three patiences.
    assert all(outcomes(caller, p).count((CALL_FAILED, f"no answer within {PATIENCE:g}s")) >= 1 for p in phones)
