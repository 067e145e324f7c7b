"""The phone state machine against a controllable registrar on 127.0.0.1.

Real UDP on loopback: the pure parts (timers and expiry from the time scale)
are tested in tests/unit/test_phone.py.

The registrar here is a test peer (a few lines of asyncio) whose answers the
test chooses: 200 with a granted expiry, silence, an error code, 423.  Time
runs fast: with a time scale of 50, T1 is 10 ms and Timer F 0.64 s.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from xivo_ha_simulator import report, sip
from xivo_ha_simulator.events import (
    EXPIRED,
    INTERVAL_TOO_BRIEF,
    PROBE_FAILED,
    PROBE_OK,
    REGISTER_FAILED,
    REGISTERED,
    STOPPED,
    SWITCHED,
    Event,
)
from xivo_ha_simulator.phone import (
    NEXT_REFRESH,
    PROBE,
    Fleet,
    FleetThread,
    Phone,
    PhoneConfig,
    Registrar,
)

pytestmark = pytest.mark.integration

FAST = dict(time_scale=50, expires=100)  # requested expiry 2 s, refresh at 1 s, Timer F 0.64 s


def aio(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))
    return wrapper


async def until(condition, timeout: float = 20.0) -> None:
    """Wait for ``condition()``; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.005)


class FakeRegistrar(asyncio.DatagramProtocol):
    """Answers REGISTER and OPTIONS the way the test says."""

    def __init__(self, name: str):
        self.name = name
        self.mode: str | int = "ok"  # "ok", "silent", or a status code to answer with
        self.grant: int | None = None  # None: grant what was asked
        self.min_expires: int | None = None  # answer 423 below it
        self.drop_first = 0  # requests to ignore before answering
        self.received: list[tuple[float, sip.SIP]] = []
        self.transport = None
        self.port = 0

    async def open(self) -> "FakeRegistrar":
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def close(self):
        if self.transport is not None:
            self.transport.close()

    @property
    def registrar(self) -> Registrar:
        return Registrar(self.name, "127.0.0.1", self.port)

    def requests(self, method: str = "REGISTER", since: float = 0.0) -> list[sip.SIP]:
        return [m for t, m in self.received if m.is_request and m.method == method and t >= since]

    def times(self, method: str = "REGISTER") -> list[float]:
        return [t for t, m in self.received if m.is_request and m.method == method]

    def datagram_received(self, data, addr):
        msg = sip.parse(data)
        self.received.append((time.monotonic(), msg))
        if msg.is_response:
            return
        if self.drop_first > 0:
            self.drop_first -= 1
            return
        if self.mode == "silent":
            return
        if isinstance(self.mode, int):
            self.send(sip.response_for(msg, self.mode, to_tag="fake"), addr)
            return
        if msg.method == "OPTIONS":
            self.send(sip.response_for(msg, 200, to_tag="fake"), addr)
        elif msg.method == "REGISTER":
            asked = msg.expires
            if self.min_expires is not None and asked is not None and 0 < asked < self.min_expires:
                self.send(sip.response_for(msg, 423, to_tag="fake",
                                           headers=[("Min-Expires", str(self.min_expires))]), addr)
                return
            granted = self.grant if self.grant is not None else asked
            contact = msg.contacts[0].uri
            self.send(sip.response_for(msg, 200, to_tag="fake",
                                       headers=[("Contact", f"<{contact}>;expires={granted}")]), addr)

    def send(self, msg: sip.SIP, addr):
        self.transport.sendto(bytes(msg), addr)


async def registrars(*names):
    return [await FakeRegistrar(name).open() for name in names]


async def new_phone(primary: FakeRegistrar, backup: FakeRegistrar | None = None, **config) -> Phone:
    settings = dict(FAST)
    settings.update(config)
    phone = Phone("1001", primary.registrar, backup.registrar if backup else None, PhoneConfig(**settings))
    await phone.open()
    return phone


def kinds(phone: Phone) -> list[tuple[str, str | None]]:
    return [(e.kind, e.node) for e in phone.events]


def events_of(phone: Phone, kind: str, node: str | None = None) -> list[Event]:
    return [e for e in phone.events if e.kind == kind and (node is None or e.node == node)]


@aio
async def test_registers_with_the_scaled_expiry_and_keeps_the_granted_one():
    (master,) = await registrars("master")
    master.grant = 1  # less than the 2 s asked for
    phone = await new_phone(master)
    try:
        phone.start()
        await until(lambda: len(master.requests()) >= 4)
        first = master.requests()[0]
        assert first.expires == 2
        registered = events_of(phone, REGISTERED, "master")
        assert registered[0].info == {"granted": 1, "requested": 2}
        assert phone.node is phone.primary and phone.granted == 1
        # Refreshes come before the granted second runs out: it never lapsed.
        assert not events_of(phone, EXPIRED)
        cseqs = [m.cseq[0] for m in master.requests()]
        assert cseqs == sorted(cseqs) and len(set(cseqs)) == len(cseqs)
        assert len({m.call_id for m in master.requests()}) == 1
        assert len({m.via_branch for m in master.requests()}) == len(master.requests())
    finally:
        phone.stop()
        master.close()


@aio
async def test_retransmits_at_t1_doubling_up_to_t2_until_answered():
    (master,) = await registrars("master")
    master.drop_first = 5
    phone = await new_phone(master, time_scale=10)  # T1 50 ms, T2 400 ms
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        sent = master.requests()
        assert len(sent) == 6
        assert len({(m.via_branch, m.cseq) for m in sent}) == 1  # one transaction, retransmitted
        times = master.times()
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert gaps[0] < gaps[1] < gaps[2] < gaps[3]  # 50, 100, 200, 400 ms
        assert gaps[4] < 1.5 * gaps[3]  # then capped at T2
        assert kinds(phone) == [("started", None), ("registered", "master")]
    finally:
        phone.stop()
        master.close()


@aio
async def test_timeout_on_the_primary_registers_to_the_backup():
    master, slave = await registrars("master", "slave")
    master.mode = "silent"
    phone = await new_phone(master, slave)
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        assert phone.node is phone.backup
        assert kinds(phone)[1:] == [("register_failed", "master"), ("registered", "slave")]
        assert events_of(phone, REGISTER_FAILED)[0].info == {"reason": "timeout"}
        assert len(master.requests()) > 1 and len({m.via_branch for m in master.requests()}) == 1
        assert not events_of(phone, SWITCHED)  # it never was on the primary
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_primary_going_silent_is_a_failover_with_a_switch():
    master, slave = await registrars("master", "slave")
    phone = await new_phone(master, slave)
    try:
        phone.start()
        await until(lambda: phone.node is phone.primary)
        master.mode = "silent"
        await until(lambda: phone.node is phone.backup)
        sequence = [k for k in kinds(phone) if k[0] != "expired"]
        assert sequence == [("started", None), ("registered", "master"), ("register_failed", "master"),
                            ("registered", "slave"), ("switched", "slave")]
        switch = events_of(phone, SWITCHED)[0]
        assert switch.info == {"from": "master", "to": "slave"}
        failed = events_of(phone, REGISTER_FAILED, "master")[0]
        assert report.node_at(phone.events, failed.t) is None  # down from the failed refresh
    finally:
        phone.stop()
        master.close()
        slave.close()


@pytest.mark.parametrize("code,reason", [(500, "500 Server Internal Error"), (503, "503 Service Unavailable"),
                                         (603, "603 Decline"), (403, "403 Forbidden")])
@aio
async def test_error_answer_fails_over_at_once(code, reason):
    master, slave = await registrars("master", "slave")
    master.mode = code
    phone = await new_phone(master, slave, time_scale=1)  # Timer F 32 s: only the answer can be quick
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        assert phone.node is phone.backup
        assert events_of(phone, REGISTER_FAILED, "master")[0].info == {"reason": reason}
        assert len(master.requests()) == 1  # a final answer ends the transaction: no retransmission
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_423_retries_with_min_expires_and_keeps_it():
    (master,) = await registrars("master")
    master.min_expires = 3
    phone = await new_phone(master, time_scale=100, expires=200)  # asks 2 s
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        assert [m.expires for m in master.requests()] == [2, 3]
        too_brief = events_of(phone, INTERVAL_TOO_BRIEF, "master")[0]
        assert too_brief.info == {"requested": 2, "min_expires": 3}
        assert events_of(phone, REGISTERED)[0].info == {"granted": 3, "requested": 3}
        await until(lambda: len(master.requests()) >= 3)  # the refresh
        assert master.requests()[2].expires == 3
        assert len(events_of(phone, INTERVAL_TOO_BRIEF)) == 1
    finally:
        phone.stop()
        master.close()


@aio
async def test_423_without_a_usable_min_expires_is_a_failure():
    master, slave = await registrars("master", "slave")
    master.mode = 423  # no Min-Expires header
    phone = await new_phone(master, slave)
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        assert phone.node is phone.backup
        assert events_of(phone, REGISTER_FAILED, "master")[0].info["reason"].startswith("423")
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_failback_on_next_refresh():
    master, slave = await registrars("master", "slave")
    phone = await new_phone(master, slave, failback=NEXT_REFRESH)
    try:
        phone.start()
        await until(lambda: phone.node is phone.primary)
        master.mode = "silent"
        await until(lambda: phone.node is phone.backup)
        switched_at = events_of(phone, SWITCHED)[0].t
        # The next refresh tries the primary first and, as it is still silent, falls back.
        await until(lambda: any(e.t > switched_at for e in events_of(phone, REGISTER_FAILED, "master"))
                    and any(e.t > switched_at for e in events_of(phone, REGISTERED, "slave")[1:]))
        retry = next(e for e in events_of(phone, REGISTER_FAILED, "master") if e.t > switched_at)
        assert report.node_at(phone.events, retry.t) == "slave"  # still served by the backup meanwhile
        master.mode = "ok"
        await until(lambda: phone.node is phone.primary)
        last_switch = events_of(phone, SWITCHED)[-1]
        assert last_switch.info == {"from": "slave", "to": "master"}
        assert not master.requests("OPTIONS")  # this policy never probes
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_failback_by_probing_the_primary_with_options():
    master, slave = await registrars("master", "slave")
    phone = await new_phone(master, slave, failback=PROBE, probe_interval=20)  # probe every 0.4 s
    try:
        phone.start()
        await until(lambda: phone.node is phone.primary)
        master.mode = "silent"
        await until(lambda: phone.node is phone.backup)
        switched_at = events_of(phone, SWITCHED)[0].t
        await until(lambda: len(events_of(phone, PROBE_FAILED)) >= 2
                    and len(events_of(phone, REGISTERED, "slave")) >= 3)
        # While the primary is down only OPTIONS go to it; refreshes stay on the backup.
        assert not master.requests("REGISTER", since=switched_at + 0.001)
        assert master.requests("OPTIONS", since=switched_at)
        master.mode = "ok"
        await until(lambda: phone.node is phone.primary)
        probe_ok = events_of(phone, PROBE_OK, "master")[-1]
        back = events_of(phone, REGISTERED, "master")[-1]
        assert probe_ok.t <= back.t
        assert events_of(phone, SWITCHED)[-1].info == {"from": "slave", "to": "master"}
        # Back home: probing stops.
        probes_then = len(master.requests("OPTIONS"))
        await until(lambda: len(events_of(phone, REGISTERED, "master")) >= 3)
        assert len(master.requests("OPTIONS")) == probes_then
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_registration_lapses_when_refreshes_go_unanswered():
    (master,) = await registrars("master")
    master.grant = 1  # refresh at 0.5 s, Timer F 0.64 s: the binding lapses first
    phone = await new_phone(master)
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        master.mode = "silent"
        await until(lambda: events_of(phone, REGISTER_FAILED))
        assert kinds(phone)[1:4] == [("registered", "master"), ("expired", "master"), ("register_failed", "master")]
        assert phone.node is None
    finally:
        phone.stop()
        master.close()


@aio
async def test_both_registrars_down_then_retry_from_the_primary():
    master, slave = await registrars("master", "slave")
    master.mode = slave.mode = "silent"
    phone = await new_phone(master, slave, retry_interval=25)  # retry after 0.5 s
    try:
        phone.start()
        await until(lambda: len(events_of(phone, REGISTER_FAILED)) >= 2)
        assert kinds(phone)[1:3] == [("register_failed", "master"), ("register_failed", "slave")]
        master.mode = "ok"
        await until(lambda: phone.node is not None)
        assert phone.node is phone.primary
        assert len({m.via_branch for m in master.requests()}) == 2  # the first try, then the retry
    finally:
        phone.stop()
        master.close()
        slave.close()


@aio
async def test_phone_answers_options_from_its_registrar():
    (master,) = await registrars("master")
    phone = await new_phone(master)
    try:
        phone.start()
        await until(lambda: phone.node is not None)
        qualify = sip.options(target_host="127.0.0.1", target_port=phone.local_port, user="srv", domain="d",
                              local_host="127.0.0.1", local_port=master.port, call_id="q1", cseq=1,
                              from_tag="s")
        master.send(qualify, ("127.0.0.1", phone.local_port))
        await until(lambda: any(m.is_response and m.call_id == "q1" for _, m in master.received))
        answer = next(m for _, m in master.received if m.is_response and m.call_id == "q1")
        assert answer.status_code == 200
    finally:
        phone.stop()
        master.close()


@aio
async def test_answers_to_other_transactions_are_ignored():
    (master,) = await registrars("master")
    master.mode = "silent"
    phone = await new_phone(master, time_scale=5)
    try:
        phone.start()
        await until(lambda: master.requests())
        req = master.requests()[0]
        stray = sip.response_for(req, 200, headers=[("Contact", f"<{phone.contact_uri}>;expires=60")])
        stray.set_header("Via", f"SIP/2.0/UDP 127.0.0.1:{phone.local_port};branch=z9hG4bKnotours")
        master.send(stray, ("127.0.0.1", phone.local_port))
        master.transport.sendto(b"not sip at all", ("127.0.0.1", phone.local_port))
        await asyncio.sleep(0.1)
        assert phone.node is None
        assert phone.stats.bad_datagrams == 1
        master.send(sip.response_for(req, 200, headers=[("Contact", f"<{phone.contact_uri}>;expires=60")]),
                    ("127.0.0.1", phone.local_port))
        await until(lambda: phone.node is not None)
        assert phone.granted == 60
    finally:
        phone.stop()
        master.close()


@aio
async def test_stop_ends_every_timer_and_logs_it():
    (master,) = await registrars("master")
    phone = await new_phone(master)
    phone.start()
    await until(lambda: phone.node is not None)
    phone.stop()
    phone.stop()  # idempotent
    count = len(master.requests())
    await asyncio.sleep(1.2)  # past the refresh time
    assert len(master.requests()) == count
    assert kinds(phone)[-1] == ("stopped", None)
    assert phone.node is None and phone.transport is None
    master.close()


@aio
async def test_fleet_counts_phones_per_registrar():
    master, slave = await registrars("master", "slave")
    fleet = Fleet(master.registrar, slave.registrar, 30, PhoneConfig(**FAST), first_user=2000,
                  local_hosts=("127.0.0.1", "127.0.0.2"))
    try:
        assert fleet.counts() == {"master": 0, "slave": 0, "none": 30}
        await fleet.start(rate=1000)
        assert await fleet.wait_registered(20)
        assert fleet.counts() == {"master": 30, "slave": 0, "none": 0}
        assert len({(p.local_host, p.local_port) for p in fleet.phones}) == 30
        assert {p.local_host for p in fleet.phones} == {"127.0.0.1", "127.0.0.2"}
        assert "master 30" in fleet.progress_line()
        master.mode = "silent"
        assert await fleet.wait_registered(20, node="slave")
        assert fleet.counts() == {"master": 0, "slave": 30, "none": 0}
        assert fleet.stats.timeouts >= 30
    finally:
        await fleet.stop()
        master.close()
        slave.close()
    assert fleet.counts() == {"master": 0, "slave": 0, "none": 30}
    events = fleet.events()
    assert sorted(events) == [str(2000 + i) for i in range(30)]
    assert all(evs[-1].kind == STOPPED for evs in events.values())
    assert sum(1 for evs in events.values() if any(e.kind == SWITCHED for e in evs)) == 30


def test_fleet_thread_serves_a_synchronous_driver():
    # The registrar gets a loop of its own, in another thread, like a remote host.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    master = asyncio.run_coroutine_threadsafe(FakeRegistrar("master").open(), loop).result(10)
    runner = FleetThread(Fleet(master.registrar, None, 5, PhoneConfig(**FAST)))
    try:
        runner.start()
        assert runner.wait_registered(20)
        assert runner.counts() == {"master": 5, "none": 0}
        assert len(runner.events()) == 5
    finally:
        runner.stop()
        loop.call_soon_threadsafe(master.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    events = runner.events()  # still readable once stopped
    assert all(evs[-1].kind == STOPPED for evs in events.values())
    assert all(any(e.kind == REGISTERED for e in evs) for evs in events.values())
