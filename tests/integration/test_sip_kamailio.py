"""Phones against real Kamailio registrars on loopback ports.

Digest authentication against the node's database (usersip), expiry bounds
as the node template renders them, OPTIONS answered, and a fleet failing over
from a killed registrar to a second one, then failing back by both policies
once the first one is back on its port.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from kamailio_fixture import kamailio_binary, line_credentials, start_kamailio

from xivo_ha_simulator import report, sip
from xivo_ha_simulator.events import PROBE_FAILED, PROBE_OK, REGISTER_FAILED, REGISTERED, SWITCHED
from xivo_ha_simulator.phone import NEXT_REFRESH, PROBE, Credentials, Fleet, Phone, PhoneConfig, Registrar

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(kamailio_binary() is None, reason="kamailio is not installed"),
]


def exchange(port: int, msg_for) -> sip.SIP:
    """Send one request built by ``msg_for(local_port)`` to 127.0.0.1:port, return the answer."""
    return exchanges(port, [msg_for])[-1]


def exchanges(port: int, builders) -> list[sip.SIP]:
    """Send each request of ``builders`` (``f(local_port, previous answer)``) from one socket; the answers."""
    answers: list[sip.SIP] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        for build in builders:
            args = (sock.getsockname()[1],) + ((answers[-1],) if answers else ())
            sock.sendto(bytes(build(*args)), ("127.0.0.1", port))
            answers.append(sip.parse(sock.recv(65535)))
    return answers


def register_steps(port: int, credentials: Credentials, expires: int | None, to_user: str | None = None):
    """REGISTER, then REGISTER answering the 401's challenge with the next CSeq: both answers."""
    call_id, tag = sip.new_call_id(), sip.new_tag()

    def first(local_port, headers=()):
        msg = sip.register(registrar_host="127.0.0.1", registrar_port=port, user=credentials.username,
                           domain="127.0.0.1", local_host="127.0.0.1", local_port=local_port, call_id=call_id,
                           cseq=1 + len(headers), from_tag=tag, expires=expires, extra_headers=headers)
        if to_user is not None:
            msg.set_header("To", f"<sip:{to_user}@127.0.0.1>")
        return msg

    def answer(local_port, challenged):
        challenge = sip.parse_challenge(challenged.get_header("WWW-Authenticate"))
        value = sip.authorization(challenge, username=credentials.username, password=credentials.password,
                                  method="REGISTER", uri=f"sip:127.0.0.1:{port}")
        return first(local_port, [("Authorization", value)])

    return exchanges(port, [first, answer])


def register(port: int, number: int, expires: int | None) -> sip.SIP:
    challenged, answer = register_steps(port, line_credentials(number), expires)
    assert challenged.status_code == 401
    return answer


async def phone_registration(port: int, expires: int, credentials: Credentials | None = None) -> Phone:
    phone = Phone("1010", Registrar("master", "127.0.0.1", port), None, PhoneConfig(expires=expires),
                  credentials=credentials or line_credentials(1010))
    await phone.open()
    phone.start()
    deadline = time.monotonic() + 20
    while phone.node is None and phone.stats.register_failed == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    phone.stop()
    return phone


def test_granted_expiry_obeys_min_max_and_default(tmp_path):
    with start_kamailio(tmp_path, 0, min_expires=5, max_expires=30, default_expires=12) as registrar:
        port = registrar.port
        answer = register(port, 1001, None)
        assert answer.status_code == 200
        assert answer.contacts[0].expires == 12  # default_expires
        assert sip.granted_expires(register(port, 1002, 20)) == 20
        assert sip.granted_expires(register(port, 1003, 1000)) == 30  # capped at max_expires
        too_brief = register(port, 1004, 2)
        assert (too_brief.status_code, too_brief.min_expires) == (423, 5)

        # The phones act on those answers: the granted lifetime, and Min-Expires.
        capped = asyncio.run(phone_registration(port, 1000))
        assert [e.info for e in capped.events if e.kind == REGISTERED] == [
            {"granted": 30, "requested": 1000}]
        raised = asyncio.run(phone_registration(port, 2))
        assert [e.kind for e in raised.events][:3] == ["started", "interval_too_brief", "registered"]
        assert [e.info for e in raised.events if e.kind == REGISTERED] == [
            {"granted": 5, "requested": 5}]


def test_below_min_expires_is_raised_silently_when_asked(tmp_path):
    with start_kamailio(tmp_path, 0, min_expires=5, max_expires=30, default_expires=12,
                        reject_too_brief=False) as registrar:
        answer = register(registrar.port, 1005, 2)
        assert answer.status_code == 200
        assert sip.granted_expires(answer) == 5


def test_a_phone_with_its_line_credentials_registers_after_the_challenge(kamailio):
    phone = asyncio.run(phone_registration(kamailio.port, 30))
    assert [e.kind for e in phone.events] == ["started", REGISTERED, "stopped"]
    assert phone.stats.register_sent == 2  # 401, then the answer with the next CSeq
    assert phone.contact_uri.startswith("sip:user10@")


def test_a_wrong_secret_is_refused(kamailio):
    challenged, answer = register_steps(kamailio.port, Credentials("user11", "not-the-secret"), 30)
    assert (challenged.status_code, answer.status_code) == (401, 401)
    phone = asyncio.run(phone_registration(kamailio.port, 30, Credentials("user11", "not-the-secret")))
    assert phone.stats.register_ok == 0
    assert [e.info["reason"] for e in phone.events if e.kind == REGISTER_FAILED] == [
        "401 Unauthorized (credentials refused)"]


def test_a_user_missing_from_the_database_never_registers(kamailio):
    # user500 is not in this node's database: what a stale slave does to a new user.
    phone = asyncio.run(phone_registration(kamailio.port, 30, line_credentials(1500)))
    assert phone.stats.register_ok == 0
    assert [e.kind for e in phone.events] == ["started", REGISTER_FAILED, "stopped"]


def test_a_line_removed_or_commented_in_the_database_is_refused(kamailio):
    assert register(kamailio.port, 1020, 30).status_code == 200
    kamailio.database.sql("UPDATE usersip SET commented = 1 WHERE name = 'user20'")
    assert register(kamailio.port, 1020, 30).status_code == 403
    kamailio.database.sql("UPDATE usersip SET commented = 0, category = 'trunk' WHERE name = 'user20'")
    assert register(kamailio.port, 1020, 30).status_code == 403
    kamailio.database.sql("DELETE FROM user_line WHERE line_id IN (SELECT id FROM linefeatures WHERE name = 'user21');"
                          "DELETE FROM linefeatures WHERE name = 'user21'; DELETE FROM usersip WHERE name = 'user21'")
    challenged, answer = register_steps(kamailio.port, line_credentials(1021), 30)
    assert answer.status_code == 401


def test_credentials_of_another_line_are_refused(kamailio):
    # user30's own credentials, registering user31's address of record.
    challenged, answer = register_steps(kamailio.port, line_credentials(1030), 30, to_user="user31")
    assert (challenged.status_code, answer.status_code) == (401, 403)


def test_options_is_answered(kamailio):
    answer = exchange(kamailio.port, lambda local_port: sip.options(
        target_host="127.0.0.1", target_port=kamailio.port, user="probe", domain="127.0.0.1",
        local_host="127.0.0.1", local_port=local_port, call_id="opt-1", cseq=1, from_tag="t"))
    assert answer.status_code == 200
    assert answer.cseq == (1, "OPTIONS")
    assert answer.call_id == "opt-1"


PHONES = 40
# x20: T1 25 ms, Timer F 1.6 s; 40 s asked -> 2 s granted, refresh every second.
CONFIG = dict(expires=40, time_scale=20, probe_interval=10, retry_interval=10)


async def wait_for(fleet: Fleet, node: str, timeout: float = 60) -> None:
    assert await fleet.wait_registered(timeout, node=node), fleet.progress_line()


async def failover_then_failback(tmp_path, policy: str):
    master = start_kamailio(tmp_path, 0, min_expires=1, max_expires=60, default_expires=10)
    slave = start_kamailio(tmp_path, 0, min_expires=1, max_expires=60, default_expires=10)
    restarted = None
    fleet = Fleet(Registrar("master", "127.0.0.1", master.port), Registrar("slave", "127.0.0.1", slave.port),
                  PHONES, PhoneConfig(failback=policy, **CONFIG), first_user=1001, credentials=line_credentials)
    try:
        await fleet.start(rate=400)
        await wait_for(fleet, "master")
        master.kill()
        fault = time.monotonic()
        await wait_for(fleet, "slave")
        restarted = start_kamailio(tmp_path, master.port, min_expires=1, max_expires=60, default_expires=10,
                                   database=master.database)
        failback = time.monotonic()
        await wait_for(fleet, "master")
    finally:
        await fleet.stop()
        for handle in (master, slave, restarted):
            if handle is not None:
                handle.stop()
    events = fleet.events()
    return events, report.compute(events, fault, failback, time_scale=CONFIG["time_scale"])


def test_fleet_fails_over_and_back_on_next_refresh(tmp_path):
    events, result = asyncio.run(failover_then_failback(tmp_path, NEXT_REFRESH))
    assert result.registered_at_fault == {"master": PHONES}
    assert result.failovers_seen == PHONES
    assert result.failover.never == 0 and result.failback.never == 0
    for evs in events.values():
        switches = [(e.info["from"], e.info["to"]) for e in evs if e.kind == SWITCHED]
        assert switches == [("master", "slave"), ("slave", "master")]
        assert not any(e.kind in (PROBE_OK, PROBE_FAILED) for e in evs)


def test_fleet_fails_over_and_back_by_probing(tmp_path):
    events, result = asyncio.run(failover_then_failback(tmp_path, PROBE))
    assert result.failovers_seen == PHONES
    assert result.failback.never == 0
    for evs in events.values():
        switches = [(e.info["from"], e.info["to"]) for e in evs if e.kind == SWITCHED]
        assert switches == [("master", "slave"), ("slave", "master")]
        back = next(e for e in evs if e.kind == SWITCHED and e.node == "master")
        probe_ok = [e for e in evs if e.kind == PROBE_OK and e.t <= back.t]
        assert probe_ok, "the move back follows an answered OPTIONS"
        # While on the slave, no REGISTER tried the master: only probes failed.
        on_slave = next(e for e in evs if e.kind == SWITCHED and e.node == "slave").t
        assert not [e for e in evs if e.kind == REGISTER_FAILED and e.node == "master"
                    and on_slave < e.t < back.t]
