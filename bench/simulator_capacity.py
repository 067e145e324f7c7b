#!/usr/bin/env python3
"""How much SIP load the simulator's phones generate, next to SIPp.

Against one Kamailio registrar on 127.0.0.1 (the node template, started with
the test fixture: it authenticates every REGISTER and INVITE against a node
database, real PostgreSQL, holding a line for each phone and each SIPp user,
and routes INVITEs by number to the callee's registered contact), in one run:

1. REGISTER/s at 0 failures, SIPp (``sipp`` from Debian's sip-tester, a
   REGISTER-only scenario written here) and our phones: the rate is ramped
   (the two generators take turns at each rate) until a REGISTER fails or
   goes unanswered (5 s), or the generator cannot keep up; the highest clean
   rate is then run three more times and the median achieved rate is kept
   (with ``--quick``: that ramp step's; when most of those runs fail, the
   next lower clean rate is repeated instead).  Both generators retransmit at
   500 ms.  SIPp answers a fresh 401 challenge for each registration (two
   REGISTERs per registration counted); our phones, as desk phones do, reuse
   the nonce of their last challenge (one REGISTER, checked by the registrar
   all the same), so the two rates are registrations per second, not
   messages.
2. The ratio ours / SIPp (target >= 0.25).  As both share two cores with
   the registrar, the generators' CPU time per REGISTER is shown too: when
   the achieved rates are close, Kamailio is the limit and the CPU figure
   tells how the generators compare on their own.
3. Calls/s at 0 failures, SIPp's UAC/UAS call scenario and our phones,
   ramped and repeated in the same way, and the ratio.  A call is INVITE,
   180, 200, ACK, a hold of ``CALL_HOLD`` seconds, BYE, 200; it counts when
   the BYE got its 200; the rate is calls completed per second of sending.
   Both sides go through the same registrar, which authenticates each
   INVITE (407), looks the number up in the database and relays statefully
   to the callee's registered contact; it does not Record-Route, so ACK and
   BYE go from caller to callee.  What differs from ``sipp -sn uac`` and
   ``-sn uas`` (scenarios written here, otherwise theirs):
   - the UAC answers the 407 with its line's credentials, a fresh challenge
     per call (our phones reuse the nonce, as for REGISTER), and sends ACK
     and BYE to the callee's Contact (``setdest``);
   - the UAS sends its 200 to the BYE to the BYE's sender (SIPp sends all of
     a call to where its INVITE came from: the registrar, which would drop
     that reply);
   - a late provisional answer (the registrar's two workers may relay the
     180 after the 200) does not abort a SIPp call
     (``-default_behaviors all,-abortunexp``); our phones ignore it too;
   - SIPp's UAS is one process behind one line, registered by this script
     (a REGISTER with its Contact), and every SIPp call goes to that number;
     our phones call random other phones of a pool of registered phones,
     which answer in the same process;
   - SIPp's UAS answers with SDP, our phones without; no media either side.
   The generator CPU figure counts both ends of the calls, for both.
4. The most phones kept registered and refreshing while calling: fleets of
   growing size with short expiries, each phone calling random others at
   ``--fleet-call-rate`` calls per hour (default: the simulator's own
   ``--call-rate`` default, 60, one a minute); a phone "keeps" when it
   registered and every refresh over two refresh cycles succeeded (no
   failure, no lapse); the calls connected and failed meanwhile are shown.
   Target >= 5000.

Everything is bounded: each step has a time limit, each part its share of
the time, and the whole run stops starting new steps after ``--budget``
seconds (default 480).  Only loopback addresses are used.  Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "simulator"))

from kamailio_fixture import free_udp_port, line_credentials, start_kamailio  # noqa: E402

from xivo_ha_simulator import sip  # noqa: E402
from xivo_ha_simulator.constants import DEFAULT_CALL_RATE  # noqa: E402
from xivo_ha_simulator.events import (  # noqa: E402
    CALL_CONNECTED,
    CALL_ENDED,
    CALL_FAILED,
    EXPIRED,
    REGISTER_FAILED,
    REGISTERED,
)
from xivo_ha_simulator.phone import Fleet, PhoneConfig, Registrar  # noqa: E402

HOST = "127.0.0.1"
STEP_SECONDS = 3.0  # sending time of one ramp step
ANSWER_TIMEOUT = 5.0  # a request unanswered this long (retransmissions included) is a failure
RATES = [500, 1000, 2000, 3000, 4000, 6000, 8000, 11000, 15000, 20000]
CALL_RATES = [50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000, 3000]
CALL_HOLD = 1.0  # seconds between a call's ACK and its BYE, both generators
REPEATS = 3
FLEET_SIZES = [1000, 2000, 5000, 8000, 10000]
KEEP_EXPIRES = 10  # seconds asked and granted: a refresh every 5 s
KEEP_CYCLES = 2
KEEP_CALL_RATE = DEFAULT_CALL_RATE  # calls per phone per hour in the kept fleets: the simulator's default
POOL = 4000  # phones taking turns for the REGISTER/s and calls/s measurements
POOL_LINES = range(500000, 500000 + POOL)  # extensions of the pool's lines
SIPP_LINES = range(200000, 200000 + POOL)  # and of the lines SIPp registers and calls from
SIPP_CALLEE = SIPP_LINES.stop  # the line SIPp's UAS answers for
FLEET_FIRST = 1_000_000  # first extension of the kept fleets
LOCAL_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
# Shares of the budget: the REGISTER ramp ends by 35 %, the calls ramp by 70 %, the fleets take the rest.
SHARES = {"register": 0.35, "calls": 0.70, "fleets": 1.0}

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- One registration per call: REGISTER, 401, REGISTER with the digest answer;
     users cycle through users.csv, each with its [authentication] keyword. -->
<scenario name="register-only">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Expires: 3600
      User-Agent: SIPp register bench
      Content-Length: [len]

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      [field1]
      Expires: 3600
      User-Agent: SIPp register bench
      Content-Length: [len]

    ]]>
  </send>
  <recv response="200" rtd="true"/>
</scenario>
"""

UAC_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- SIPp's uac, through an authenticating registrar that does not Record-Route:
     INVITE, 407, ACK, INVITE with the digest answer, 180, 200; ACK and, after
     the hold, BYE to the callee's Contact.  Callers cycle through callers.csv. -->
<scenario name="uac-digest">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: SIPp call bench
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="407" auth="true"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      [field1]
      Max-Forwards: 70
      User-Agent: SIPp call bench
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true">
    <action>
      <ereg regexp="&lt;(sip:[^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="all,contact"/>
      <ereg regexp="([0-9]+[.][0-9]+[.][0-9]+[.][0-9]+):([0-9]+)" search_in="hdr" header="Contact:"
            assign_to="hostport,host,port"/>
      <setdest host="[$host]" port="[$port]" protocol="udp"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      ACK [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="HOLD_MS"/>
  <send retrans="500">
    <![CDATA[

      BYE [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
  <Reference variables="all,hostport"/>
</scenario>
""".replace("HOLD_MS", str(int(CALL_HOLD * 1000)))

UAS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- SIPp's uas (sipp -sd uas), but the 200 to the BYE goes to the BYE's sender. -->
<scenario name="uas">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK" optional="true" rtd="true" crlf="true"/>
  <recv request="BYE">
    <action>
      <ereg regexp="SIP/2.0/UDP ([0-9.]+):([0-9]+)" search_in="hdr" header="Via:" assign_to="via,host,port"/>
      <setdest host="[$host]" port="[$port]" protocol="udp"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <timewait milliseconds="4000"/>
  <Reference variables="via"/>
</scenario>
"""


class Budget:
    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.seconds = seconds
        self.deadline = self.started + seconds
        self.part_end = self.deadline

    def part(self, name: str) -> None:
        """From now on, steps must end within the share of the budget that ends part ``name``."""
        self.part_end = self.started + SHARES[name] * self.seconds

    def left(self) -> float:
        return min(self.deadline, self.part_end) - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


def say(text: str) -> None:
    print(text, flush=True)


def step_cost(hold: float = 0.0) -> float:
    """What one ramp step usually takes: sending, the last answers, a hold, starting the generator."""
    return STEP_SECONDS + hold + ANSWER_TIMEOUT / 2 + 1


# --------------------------------------------------------------------------- SIPp


def sipp_stats(path: Path) -> dict:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    return rows[-1] if rows else {}


def _count(row: dict, name: str) -> int:
    return int(row.get(name, 0) or 0)


def sipp_run(workdir: Path, port: int, rate: int, count: int) -> dict:
    """One SIPp run of ``count`` REGISTERs at ``rate``/s; counts from its final statistics."""
    stats = workdir / f"sipp-{rate}-{time.monotonic_ns()}.csv"
    command = [
        "sipp", f"{HOST}:{port}", "-sf", str(workdir / "register.xml"), "-inf", str(workdir / "users.csv"),
        "-i", HOST, "-p", "0", "-r", str(rate), "-rp", "1000", "-m", str(count), "-l", "5000",
        "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-recv_timeout", str(int(ANSWER_TIMEOUT * 1000)), "-timeout", str(int(count / rate + 30)),
        "-timeout_error", "-max_socket", "64",
    ]
    started = time.monotonic()
    cpu_before = _children_cpu()
    try:
        subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=count / rate + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"rate": rate, "ok": 0, "failed": count, "retransmissions": 0, "achieved": 0.0, "cpu_us": None}
    elapsed = time.monotonic() - started
    cpu = _children_cpu() - cpu_before  # SIPp's own CPU time: the registrar is not a waited-for child
    last = sipp_stats(stats)
    ok = _count(last, "SuccessfulCall(C)")
    failed = max(_count(last, "FailedCall(C)"), count - ok)
    return {
        "rate": rate,
        "ok": ok,
        "failed": failed,
        "retransmissions": _count(last, "Retransmissions(C)"),
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "cpu_us": cpu / ok * 1e6 if ok else None,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _udp_port_bound(port: int) -> bool:
    """Something listens on UDP ``port`` (read from /proc/net/udp: no probe that could take the port)."""
    wanted = f":{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1].endswith(wanted) for line in list(table)[1:])


def register_contact(registrar_port: int, number: int, contact_port: int) -> int:
    """Register line ``number`` with the Contact ``sip:<user>@127.0.0.1:<contact_port>``; the final status."""
    credentials = line_credentials(number)
    call_id, tag = sip.new_call_id(HOST), sip.new_tag()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(ANSWER_TIMEOUT)
        local_port = sock.getsockname()[1]

        def send(cseq: int, extra=()) -> sip.SIP:
            msg = sip.register(registrar_host=HOST, registrar_port=registrar_port, user=credentials.username,
                               domain=HOST, local_host=HOST, local_port=local_port, call_id=call_id, cseq=cseq,
                               from_tag=tag, expires=3600, extra_headers=extra)
            msg.set_header("Contact", f"<{sip.sip_uri(credentials.username, HOST, contact_port)}>")
            sock.sendto(bytes(msg), (HOST, registrar_port))
            return sip.parse(sock.recv(65535))

        answer = send(1)
        if answer.status_code == 401:
            challenge = sip.parse_challenge(answer.get_header("WWW-Authenticate") or "")
            value = sip.authorization(challenge, username=credentials.username, password=credentials.password,
                                      method="REGISTER", uri=sip.sip_uri(None, HOST, registrar_port))
            answer = send(2, [("Authorization", value)])
        return answer.status_code or 0


def sipp_call_run(workdir: Path, port: int, uas_port: int, rate: int, count: int) -> dict:
    """``count`` calls at ``rate``/s from SIPp's UAC to SIPp's UAS (answering for ``SIPP_CALLEE``)."""
    tag = f"{rate}-{time.monotonic_ns()}"
    uac_stats, uas_stats = workdir / f"uac-{tag}.csv", workdir / f"uas-{tag}.csv"
    cpu_before = _children_cpu()
    uas = subprocess.Popen(
        ["sipp", "-sf", str(workdir / "uas.xml"), "-i", HOST, "-p", str(uas_port), "-nostdin",
         "-default_behaviors", "all,-abortunexp",
         "-trace_stat", "-stf", str(uas_stats), "-fd", "1", "-timeout", str(int(count / rate + 60))],
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = time.monotonic() + 5
        while not _udp_port_bound(uas_port) and time.monotonic() < ready:
            time.sleep(0.02)
        uac_port = free_udp_port(HOST)  # the UAC's Via must name its own port: BYE's 200 comes back there
        command = [
            "sipp", f"{HOST}:{port}", "-sf", str(workdir / "uac.xml"), "-inf", str(workdir / "callers.csv"),
            "-s", str(SIPP_CALLEE), "-i", HOST, "-p", str(uac_port), "-r", str(rate), "-rp", "1000",
            "-m", str(count), "-l", str(max(1000, int(4 * rate * (CALL_HOLD + 1)))), "-nostdin",
            "-trace_stat", "-stf", str(uac_stats), "-fd", "1", "-recv_timeout", str(int(ANSWER_TIMEOUT * 1000)),
            "-timeout", str(int(count / rate + CALL_HOLD + 30)), "-timeout_error",
            "-default_behaviors", "all,-abortunexp",
        ]
        started = time.monotonic()
        try:
            subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=count / rate + CALL_HOLD + 60, check=False)
        except subprocess.TimeoutExpired:
            return {"rate": rate, "ok": 0, "failed": count, "retransmissions": 0, "achieved": 0.0, "cpu_us": None,
                    "setup_ms": None}
        elapsed = time.monotonic() - started
    finally:
        uas.terminate()
        try:
            uas.wait(timeout=10)
        except subprocess.TimeoutExpired:
            uas.kill()
            uas.wait(timeout=10)
    cpu = _children_cpu() - cpu_before  # both SIPp processes, UAC and UAS
    last = sipp_stats(uac_stats)
    ok = _count(last, "SuccessfulCall(C)")
    setup = last.get("ResponseTime1(C)")  # mean time from the first INVITE to the 200, hh:mm:ss:usec
    return {
        "rate": rate,
        "ok": ok,
        "failed": max(_count(last, "FailedCall(C)"), count - ok),
        "retransmissions": _count(last, "Retransmissions(C)"),
        "achieved": ok / max(elapsed - CALL_HOLD, count / rate),
        "cpu_us": cpu / ok * 1e6 if ok else None,
        "setup_ms": _sipp_duration(setup) * 1000 if setup else None,
    }


def _sipp_duration(text: str) -> float:
    hours, minutes, seconds, micros = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + seconds + micros / 1e6


# --------------------------------------------------------------------------- our phones


async def our_rate_step(fleet: Fleet, rate: int, count: int) -> dict:
    """``count`` REGISTERs at ``rate``/s from a pool of registered phones, each refreshing on demand."""
    loop = asyncio.get_running_loop()
    phones = fleet.phones
    stats = fleet.stats
    ok0, failed0, retrans0 = stats.register_ok, stats.register_failed, stats.retransmissions
    sent = index = 0
    cpu_before = time.process_time()
    started = loop.time()
    send_limit = started + 3 * count / rate + 5  # the generator falling behind ends the step
    while sent < count and loop.time() < send_limit:
        due = min(count, int((loop.time() - started) * rate) + 1)
        tries = 0
        while sent < due and tries < len(phones):
            phone = phones[index % len(phones)]
            index += 1
            tries += 1
            if phone.refresh_now():
                sent += 1
                tries = 0
        await asyncio.sleep(0.001)
    last_ok, last_change = stats.register_ok, loop.time()
    drain_limit = loop.time() + ANSWER_TIMEOUT
    while any(p.busy for p in phones) and loop.time() < drain_limit:
        await asyncio.sleep(0.005)
        if stats.register_ok != last_ok:
            last_ok, last_change = stats.register_ok, loop.time()
    cpu = time.process_time() - cpu_before
    unanswered = sum(1 for p in phones if p.busy)
    ok = stats.register_ok - ok0
    elapsed = max(last_change - started, count / rate)
    return {
        "rate": rate,
        "ok": ok,
        "failed": stats.register_failed - failed0 + unanswered + (count - sent),
        "retransmissions": stats.retransmissions - retrans0,
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "cpu_us": cpu / ok * 1e6 if ok else None,
    }


async def our_call_step(fleet: Fleet, rate: int, count: int) -> dict:
    """``count`` calls at ``rate``/s between the pool's phones, each to a random other phone."""
    loop = asyncio.get_running_loop()
    phones = fleet.phones
    stats = fleet.stats
    marks = [len(p.events) for p in phones]
    retrans0 = stats.retransmissions
    sent = 0
    cpu_before = time.process_time()
    started = loop.time()
    first = time.monotonic()  # the events' clock
    send_limit = started + 3 * count / rate + 5  # the generator falling behind ends the step
    while sent < count and loop.time() < send_limit:
        due = min(count, int((loop.time() - started) * rate) + 1)
        while sent < due:
            phone = phones[sent % len(phones)]
            phone.call(random.choice(phone.peers))
            sent += 1
        await asyncio.sleep(0.001)
    drain_limit = loop.time() + CALL_HOLD + 2 * ANSWER_TIMEOUT  # ringing, the hold, the BYE
    while any(p.calls_in_progress for p in phones) and loop.time() < drain_limit:
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu_before
    unfinished = sum(p.calls_in_progress for p in phones)
    ok = failed = 0
    last_end = first
    setups = []
    for phone, mark in zip(phones, marks):
        for event in phone.events[mark:]:
            if event.kind == CALL_ENDED:
                if event.info and "reason" in event.info:
                    failed += 1  # the BYE got no 200
                else:
                    ok += 1
                    last_end = max(last_end, event.t)
            elif event.kind == CALL_FAILED:
                failed += 1
            elif event.kind == CALL_CONNECTED:
                setups.append(event.info["setup"])
    elapsed = last_end - first  # to the last BYE's 200
    return {
        "rate": rate,
        "ok": ok,
        "failed": failed + unfinished + (count - sent),
        "retransmissions": stats.retransmissions - retrans0,
        "achieved": ok / max(elapsed - CALL_HOLD, count / rate) if ok else 0.0,
        "cpu_us": cpu / ok * 1e6 if ok else None,
        "setup_ms": statistics.mean(setups) * 1000 if setups else None,
    }


async def our_pool(port: int) -> Fleet:
    # K=1: T1 500 ms like SIPp's retrans; a long expiry so that no refresh of
    # its own interferes: every REGISTER is one the bench asked for.
    fleet = Fleet(Registrar("registrar", HOST, port), None, POOL,
                  PhoneConfig(expires=3600, time_scale=1, hold_time=CALL_HOLD),
                  local_hosts=LOCAL_HOSTS, first_user=POOL_LINES.start, credentials=line_credentials)
    await fleet.start(rate=4000)
    await fleet.wait_registered(30)
    return fleet


# --------------------------------------------------------------------------- ramp


def ramp(generators: dict, budget: Budget, rates: list[int], unit: str, cost: float) -> dict:
    """Each generator's highest target rate with 0 failures, and its steps.

    ``generators``: name -> step(rate, count).  The generators take turns at
    each rate, so that a time budget cut leaves them measured alike.
    """
    outcome = {name: {"best": None, "steps": []} for name in generators}
    running = list(generators)
    for rate in rates:
        for name in list(running):
            if not budget.allows(cost):
                say(f"  {name}: time budget reached, ramp stopped")
                running.remove(name)
                continue
            result = generators[name](rate, int(rate * STEP_SECONDS))
            outcome[name]["steps"].append(result)
            cpu, setup = result["cpu_us"], result.get("setup_ms")
            say(f"  {name:5} target {rate:>6}/s  achieved {result['achieved']:8.0f}/s  ok {result['ok']:>6}"
                f"  failed {result['failed']:>5}  retransmissions {result['retransmissions']:>5}"
                f"  CPU {'-' if cpu is None else f'{cpu:.0f}'} us/{unit}"
                + ("" if "setup_ms" not in result else f"  setup {'-' if setup is None else f'{setup:.1f}'} ms"))
            if result["failed"] == 0:
                outcome[name]["best"] = rate
            if result["failed"] or result["achieved"] < 0.85 * rate:
                running.remove(name)  # failing, or saturated: a higher target would not be reached either
        if not running:
            break
    return outcome


def repeat(step, rate: int | None, budget: Budget, cost: float) -> list[dict]:
    runs = []
    while rate and len(runs) < REPEATS and budget.allows(cost):
        runs.append(step(rate, int(rate * STEP_SECONDS)))
    return runs


def measured(name: str, generators: dict, ramped: dict, budget: Budget, cost: float) -> dict:
    """A generator's figures: the median of the repeats at its best rate, else its best ramp step.

    When most repeats at the best rate fail, that rate was clean by luck: the
    next lower clean rate of the ramp is repeated instead.
    """
    steps = ramped[name]["steps"]
    clean_rates = sorted({r["rate"] for r in steps if r["failed"] == 0}, reverse=True)
    best, runs = None, []
    for best in clean_rates:
        runs = repeat(generators[name], best, budget, cost)
        if not runs or median_clean(runs) > 0:
            break
    clean = [r for r in steps if r["failed"] == 0 and r["rate"] == best]
    basis = runs or clean
    return {
        "best_target": best,
        "median_achieved": round(median_clean(basis)) if basis else 0,
        "from": f"median of {len(runs)} repeats" if runs else "the ramp step",
        "steps": steps,
        "repeats": runs,
        "cpu_us": median_of(basis or steps, "cpu_us"),
        "setup_ms": median_of(basis or steps, "setup_ms"),
    }


def median_clean(results: list[dict]) -> float:
    """The median achieved rate, a run with failures counting as 0."""
    return statistics.median(r["achieved"] if r["failed"] == 0 else 0.0 for r in results)


def median_of(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key)]
    return statistics.median(values) if values else None


def compare(generators: dict, ramped: dict, budget: Budget, cost: float) -> dict:
    figures = {name: measured(name, generators, ramped, budget, cost) for name in generators}
    sipp, ours = figures["sipp"], figures["ours"]
    figures["ratio"] = round(ours["median_achieved"] / sipp["median_achieved"], 3) if sipp["median_achieved"] else 0.0
    figures["cpu_ratio"] = round(sipp["cpu_us"] / ours["cpu_us"], 3) if sipp["cpu_us"] and ours["cpu_us"] else 0.0
    return figures


# --------------------------------------------------------------------------- phones kept


async def keep_fleet(port: int, size: int, call_rate: float) -> dict:
    config = PhoneConfig(expires=KEEP_EXPIRES, time_scale=1, call_rate=call_rate, hold_time=CALL_HOLD)
    refresh = KEEP_EXPIRES * config.refresh_ratio
    fleet = Fleet(Registrar("registrar", HOST, port), None, size, config, local_hosts=LOCAL_HOSTS,
                  first_user=FLEET_FIRST, credentials=line_credentials)
    loop = asyncio.get_running_loop()
    try:
        opened = loop.time()
        await fleet.open()
        # Spread the first registrations over one refresh interval: the steady load is size/refresh per s.
        await fleet.start(rate=size / refresh)
        all_registered = await fleet.wait_registered(KEEP_EXPIRES)
        window_start = time.monotonic()
        await asyncio.sleep(KEEP_CYCLES * refresh + 1.0)
        window_end = time.monotonic()
        setup = window_start - opened
    finally:
        await fleet.stop()
    kept = connected = failed = 0
    for events in fleet.events().values():
        troubles = [e for e in events if e.kind in (REGISTER_FAILED, EXPIRED) and e.t <= window_end]
        refreshes = [e for e in events if e.kind == REGISTERED and window_start <= e.t <= window_end]
        if not troubles and len(refreshes) >= KEEP_CYCLES:
            kept += 1
        window = [e for e in events if window_start <= e.t <= window_end]
        connected += sum(1 for e in window if e.kind == CALL_CONNECTED)
        failed += sum(1 for e in window if e.kind == CALL_FAILED)
    seconds = window_end - window_start
    return {"phones": size, "kept": kept, "all_registered": all_registered, "setup_seconds": round(setup, 1),
            "register_per_second": round(size / refresh), "retransmissions": fleet.stats.retransmissions,
            "timeouts": fleet.stats.timeouts, "calls_connected": connected, "calls_failed": failed,
            "calls_per_second": round((connected + failed) / seconds, 1)}


# --------------------------------------------------------------------------- main


def write_scenarios(workdir: Path) -> None:
    (workdir / "register.xml").write_text(SCENARIO)
    (workdir / "uac.xml").write_text(UAC_SCENARIO)
    (workdir / "uas.xml").write_text(UAS_SCENARIO)
    # SIPp cycles through as many users as our pool has phones: same registrar state size.
    users = "".join(f"{c.username};[authentication username={c.username} password={c.password}]\n"
                    for c in map(line_credentials, SIPP_LINES))
    (workdir / "users.csv").write_text("SEQUENTIAL\n" + users)
    (workdir / "callers.csv").write_text("SEQUENTIAL\n" + users)


def print_comparison(title: str, unit: str, figures: dict, target: str = "") -> None:
    sipp, ours = figures["sipp"], figures["ours"]
    say(f"{title} at 0 failures (at the highest clean rate):")
    say(f"  SIPp  {sipp['median_achieved']:8.0f}/s  (target {sipp['best_target']}/s, {sipp['from']})")
    say(f"  ours  {ours['median_achieved']:8.0f}/s  (target {ours['best_target']}/s, {ours['from']})")
    say(f"  ratio ours/SIPp {figures['ratio']:.2f}" + (f"  (target {target})" if target else ""))
    if sipp["cpu_us"] and ours["cpu_us"]:
        say(f"Generator CPU per {unit} (median at the highest clean rate): SIPp {sipp['cpu_us']:.0f} us,"
            f" ours {ours['cpu_us']:.0f} us; one core's worth ours/SIPp {figures['cpu_ratio']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=480, help="seconds after which no new step starts")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument("--quick", action="store_true", help="a short run: fewer rates and fleets")
    parser.add_argument("--fleet-call-rate", type=float, default=KEEP_CALL_RATE, metavar="N",
                        help="calls per phone per hour in the kept fleets (0: registrations only)")
    args = parser.parse_args()
    if not 0 <= args.fleet_call_rate <= 36000:
        parser.error("--fleet-call-rate must be between 0 and 36000")
    if shutil.which("sipp") is None:
        say("sipp is not installed (Debian package sip-tester): apt-get install sip-tester")
        return 1
    global RATES, CALL_RATES, FLEET_SIZES, REPEATS
    if args.quick:
        RATES, CALL_RATES, FLEET_SIZES, REPEATS = [1000, 4000], [100, 400], [1000, 5000], 0
    budget = Budget(args.budget)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="simulator-capacity-") as tmp:
        workdir = Path(tmp)
        write_scenarios(workdir)
        registrar = start_kamailio(workdir, 0, min_expires=1, max_expires=3600, default_expires=60,
                                   children=2, shm_mb=256, lines=POOL_LINES)
        loop = asyncio.new_event_loop()
        pool = None
        try:
            registrar.database.add_lines(range(SIPP_LINES.start, SIPP_CALLEE + 1))
            registrar.database.add_lines(range(FLEET_FIRST, FLEET_FIRST + max(FLEET_SIZES)))
            say(f"Kamailio registrar on {HOST}:{registrar.port} (2 UDP workers, PostgreSQL behind it); "
                f"{STEP_SECONDS:g} s per step, unanswered after {ANSWER_TIMEOUT:g} s = failure")

            pool = loop.run_until_complete(our_pool(registrar.port))

            budget.part("register")
            say("REGISTER/s ramp:")
            cost = step_cost()
            generators = {
                "sipp": lambda rate, count: sipp_run(workdir, registrar.port, rate, count),
                "ours": lambda rate, count: loop.run_until_complete(our_rate_step(pool, rate, count)),
            }
            ramped = ramp(generators, budget, RATES, "REGISTER", cost)
            results["register_rate"] = compare(generators, ramped, budget, cost)

            budget.part("calls")
            uas_port = free_udp_port(HOST)
            status = register_contact(registrar.port, SIPP_CALLEE, uas_port)
            say(f"Calls/s ramp (hold {CALL_HOLD:g} s; SIPp's UAS answers for {SIPP_CALLEE}, registered on"
                f" {HOST}:{uas_port}: {status}; ours call one another, {POOL} phones):")
            cost = step_cost(CALL_HOLD)
            generators = {
                "sipp": lambda rate, count: sipp_call_run(workdir, registrar.port, uas_port, rate, count),
                "ours": lambda rate, count: loop.run_until_complete(our_call_step(pool, rate, count)),
            }
            ramped = ramp(generators, budget, CALL_RATES, "call", cost)
            results["call_rate"] = compare(generators, ramped, budget, cost)
            loop.run_until_complete(pool.stop())
            pool = None

            budget.part("fleets")
            say(f"Phones kept registered while calling ({KEEP_EXPIRES} s expiry, refresh every "
                f"{KEEP_EXPIRES // 2} s, {KEEP_CYCLES} cycles; {args.fleet_call_rate:g} calls per phone per hour,"
                f" hold {CALL_HOLD:g} s):")
            fleets, most = [], 0
            for size in FLEET_SIZES:
                if not budget.allows((1 + KEEP_CYCLES) * KEEP_EXPIRES / 2 + 3):
                    say("  time budget reached, fleets stopped")
                    break
                outcome = loop.run_until_complete(keep_fleet(registrar.port, size, args.fleet_call_rate))
                fleets.append(outcome)
                say(f"  {size:>6} phones: {outcome['kept']:>6} kept  ({outcome['register_per_second']} REGISTER/s,"
                    f" {outcome['retransmissions']} retransmissions, {outcome['timeouts']} timeouts,"
                    f" set up in {outcome['setup_seconds']} s; calls {outcome['calls_per_second']}/s:"
                    f" {outcome['calls_connected']} connected, {outcome['calls_failed']} failed)")
                if outcome["kept"] == size:
                    most = size
                else:
                    break
            results["phones_kept"] = {"fleets": fleets, "most": most, "call_rate_per_phone_hour": args.fleet_call_rate}
        finally:
            if pool is not None:
                loop.run_until_complete(pool.stop())
            loop.close()
            registrar.stop()

    say("")
    print_comparison("REGISTER/s", "REGISTER", results["register_rate"], ">= 0.25")
    say("  (when both achieved rates are close, the registrar is the limit, not the generators)")
    calls = results.get("call_rate")
    if calls:
        print_comparison("Calls/s", "call", calls)
        sipp_setup, our_setup = calls["sipp"]["setup_ms"], calls["ours"]["setup_ms"]
        if sipp_setup and our_setup:
            say(f"Mean call setup, first INVITE to 200, at the highest clean rate: SIPp {sipp_setup:.1f} ms,"
                f" ours {our_setup:.1f} ms (SIPp's includes its 407 round trip)")
    kept = results.get("phones_kept")
    if kept:
        say(f"Most phones kept registered and refreshing while calling: {kept['most']}  (target >= 5000)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
