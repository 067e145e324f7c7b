"""The PSTN caller: calls from the public network to the users' DIDs, through the trunk carrier.

One asyncio UDP user agent on the host places calls to random DIDs at
``rate`` calls per phone per real hour (divided by the time scale like every
other timer), only to the carrier's address.  The carrier relays each INVITE
to the node its trunk registered from last; that node routes the DID to the
user's phone.  A call is an INVITE (Timers A and B: retransmitted from T1
until a provisional answer, abandoned after 64*T1), the ACK of its final
answer, and, once connected, a BYE after the hold time; ACK and BYE follow the
carrier's Record-Route.  No media.

Events are kept per callee, keyed by the phone id the DID belongs to (see
``events``): ``CALL_PLACED``, then ``CALL_CONNECTED`` or ``CALL_FAILED``
(``reason``: the final answer, or ``timeout``), with ``to`` = the DID.

A **sweep** (:meth:`PstnCaller.sweep`, at the fault and at the restore)
measures every phone's incoming outage to within its ``patience``: every DID
is dialled at once (the first attempts spread over the patience), and dialled
again as soon as an attempt got no 2xx within the patience (``CALL_FAILED``,
reason ``no answer within P s``; the attempt is cancelled once it had a
provisional answer, and what it gets later is acknowledged, a late 2xx hung
up, never logged), until the DID connected once.  A DID's attempts never
overlap and start at least the patience apart, and at most
:data:`SWEEP_CONCURRENCY` sweep calls are under way at once (the others wait
their turn, oldest first): the sweep loads the cluster at most like that many
busy callers, whatever the number of phones.  The random calls leave the DIDs
of a sweep under way alone.  Its events carry ``sweep: true``.

    caller = PstnCaller(("172.28.5.20", 5060), {"01001001": "1001", ...}, PstnConfig(rate=60))
    await caller.open("172.28.5.1")
    caller.start()
    ...
    caller.sweep(patience=5, limit=600)   # at the fault
    caller.stop()
    caller.events   # {"1001": [Event, ...], ...}
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import sip
from .constants import DEFAULT_PSTN_RATE, DID_PREFIX
from .events import CALL_CONNECTED, CALL_ENDED, CALL_FAILED, CALL_PLACED, Event
from .loop import LoopThread, Pending

CARRIER = "carrier"  # the node label of the PSTN caller's events
USER = "pstn"
T1 = 0.5
T2 = 4.0
# Real seconds a call that got a provisional answer may wait for its final one
# (beyond the carrier's own INVITE timer, which answers 408 first).
RINGING_LIMIT = 180.0
SWEEP_CONCURRENCY = 50  # sweep calls under way at once, at most

_rand = random.Random()


def did_of(phone_id: str) -> str:
    """The DID of the user whose phone is ``phone_id`` (its extension): demo-users.sql's incalls."""
    return DID_PREFIX + phone_id


@dataclass(frozen=True)
class PstnConfig:
    """How the PSTN calls.  Durations are real seconds, divided by ``time_scale`` on the wire."""

    rate: float = DEFAULT_PSTN_RATE  # calls per phone per real hour (0: none)
    time_scale: float = 1.0
    hold_time: float = 30.0
    t1: float = T1
    t2: float = T2
    redial_after: float = 0.0  # real seconds before a caller dials a failed DID again (0: never)
    redials: int = 10  # at most this many times in a row

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("the PSTN call rate must not be negative")
        if self.redial_after < 0 or self.redials < 0:
            raise ValueError("redial_after and redials must not be negative")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.hold_time <= 0:
            raise ValueError("hold_time must be positive")

    def scaled(self, seconds: float) -> float:
        return seconds / self.time_scale


@dataclass(eq=False)
class _Sweep:
    """A sweep under way: its patience (measured seconds), end (loop time) and the DIDs not connected yet."""

    patience: float
    reason: str  # the failure reason of an attempt without a 2xx within the patience
    started: float
    until: float
    pending: set = field(default_factory=set)
    concurrency: int = SWEEP_CONCURRENCY
    waiting: collections.deque = field(default_factory=collections.deque)  # DIDs due, for a free call


class _Call:
    __slots__ = ("did", "phone", "call_id", "from_tag", "to_tag", "branch", "invite", "started", "interval",
                 "answered", "timer", "ack", "routes", "target", "bye", "bye_branch", "bye_deadline", "redial",
                 "sweep", "patience", "given_up", "cancelled")

    def __init__(self, did: str, phone: str, local_host: str, started: float, redial: int = 0,
                 sweep: _Sweep | None = None):
        self.did = did
        self.redial = redial  # how many times this caller had already dialled the DID in vain
        self.sweep = sweep  # the sweep that placed it, if any
        self.patience: asyncio.TimerHandle | None = None  # the sweep's give-up timer
        self.given_up = False  # logged failed by the sweep: what comes later is only answered
        self.cancelled = False
        self.phone = phone
        self.call_id = sip.new_call_id(local_host)
        self.from_tag = sip.new_tag()
        self.to_tag: str | None = None
        self.branch = sip.new_branch()
        self.invite = b""
        self.started = started
        self.interval = 0.0
        self.answered = False  # a provisional or final answer came: no more INVITE retransmissions
        self.timer: asyncio.TimerHandle | None = None
        self.ack: bytes | None = None  # the ACK of the 2xx, sent again for a retransmitted 2xx
        self.routes: list[str] = []
        self.target = ""
        self.bye: bytes | None = None
        self.bye_branch = ""
        self.bye_deadline = 0.0


class PstnCaller(asyncio.DatagramProtocol):
    """The public network's calls to the DIDs in ``dids`` (DID -> phone id), through ``carrier``."""

    def __init__(self, carrier: tuple[str, int], dids: Mapping[str, str], config: PstnConfig = PstnConfig()):
        self.carrier = (carrier[0], int(carrier[1]))
        self.dids = dict(dids)
        self.config = config
        self.events: dict[str, list[Event]] = {phone: [] for phone in self.dids.values()}
        self.local_host = ""
        self.local_port = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[str, _Call] = {}  # by Call-ID
        self._timer: asyncio.TimerHandle | None = None
        self._redials = Pending()
        self._sweep: _Sweep | None = None
        self._sweep_timers = Pending()
        self._sweeping: dict[str, _Call] = {}  # DID -> its sweep attempt under way (any sweep)
        self._running = False
        self.placed = self.connected = self.failed = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self, local_host: str, local_port: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.local_host = local_host
        await self.loop.create_datagram_endpoint(lambda: self, local_addr=(local_host, local_port))

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.local_port = transport.get_extra_info("sockname")[1]

    def connection_lost(self, exc) -> None:
        self.transport = None

    def error_received(self, exc) -> None:
        pass  # ICMP unreachable: the transaction timers decide

    def start(self) -> None:
        """Place calls at the configured rate until :meth:`stop`."""
        if self.transport is None:
            raise RuntimeError("open() the PSTN caller before start()")
        self._running = True
        self._schedule()

    def stop(self) -> None:
        """Stop placing calls, cancel every timer, close the socket.  Idempotent."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for call in self._calls.values():
            for timer in (call.timer, call.patience):
                if timer is not None:
                    timer.cancel()
        self._calls.clear()
        self._redials.cancel_all()
        self._sweep_timers.cancel_all()
        self._sweep = None
        self._sweeping.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _schedule(self) -> None:
        cfg = self.config
        if not (self._running and cfg.rate > 0 and self.dids):
            return
        per_second = cfg.rate * len(self.dids) / 3600.0 * cfg.time_scale
        self._timer = self.loop.call_later(_rand.expovariate(per_second), self._due)

    def _due(self) -> None:
        self._timer = None
        if self._running:
            did = _rand.choice(sorted(self.dids))
            if did not in self._sweeping and not (self.sweeping() and did in self._sweep.pending):
                self.call(did)
            self._schedule()

    # ------------------------------------------------------------------ sweeps

    def sweep(self, patience: float, limit: float, concurrency: int = SWEEP_CONCURRENCY) -> None:
        """Dial every DID now, each again as soon as an attempt got no 2xx within ``patience``,
        until each connected once or ``limit`` passed (real seconds, scaled), at most
        ``concurrency`` calls under way.  A new sweep replaces the one under way."""
        if not (patience > 0 and limit >= patience and math.isfinite(limit)):
            raise ValueError(f"a sweep needs 0 < patience <= limit (finite), not {patience!r} and {limit!r}")
        if not (isinstance(concurrency, int) and concurrency > 0):
            raise ValueError(f"a sweep needs at least one call under way, not {concurrency!r}")
        if self.transport is None:
            raise RuntimeError("open() the PSTN caller before sweep()")
        self._sweep_timers.cancel_all()
        now = self.loop.time()
        sweep = self._sweep = _Sweep(self.config.scaled(patience), f"no answer within {patience:g}s", now,
                                     now + self.config.scaled(limit), set(self.dids), concurrency)
        dids = sorted(self.dids)
        _rand.shuffle(dids)
        step = sweep.patience / max(1, len(dids))
        for i, did in enumerate(dids):
            self._sweep_timers.later(self.loop, i * step, lambda did=did: self._sweep_dial(sweep, did))

    def sweeping(self) -> int:
        """How many DIDs the sweep under way has not connected yet (0: none under way)."""
        sweep = self._sweep
        if sweep is None or self.loop is None or self.loop.time() >= sweep.until:
            return 0
        return len(sweep.pending)

    def _sweep_dial(self, sweep: _Sweep, did: str) -> None:
        if (sweep is not self._sweep or did not in sweep.pending or did in self._sweeping
                or self.transport is None or self.loop.time() >= sweep.until):
            return  # done, replaced, or the DID's attempt under way dials it again when it ends
        if len(self._sweeping) >= sweep.concurrency:
            if did not in sweep.waiting:
                sweep.waiting.append(did)
            return
        call = self._calls[self.call(did, sweep=sweep)]
        self._sweeping[did] = call
        call.patience = self.loop.call_later(sweep.patience, self._give_up, call)

    def _sweep_next(self, call: _Call, connected: bool) -> None:
        """A sweep attempt ended: its DID is done, or dialled again once the patience since it started passed."""
        if self._sweeping.get(call.did) is call:
            del self._sweeping[call.did]
        if call.patience is not None:
            call.patience.cancel()
            call.patience = None
        sweep = self._sweep
        if sweep is None:
            return
        if call.did in sweep.pending:
            if connected and call.started >= sweep.started:
                sweep.pending.discard(call.did)
            else:
                wait = max(0.0, call.started + sweep.patience - self.loop.time())
                self._sweep_timers.later(self.loop, wait, lambda: self._sweep_dial(sweep, call.did))
        while sweep.waiting and len(self._sweeping) < sweep.concurrency:
            self._sweep_dial(sweep, sweep.waiting.popleft())

    def _give_up(self, call: _Call) -> None:
        """No 2xx within the sweep's patience: a failed attempt; the call is cancelled and forgotten."""
        call.patience = None
        if self._calls.get(call.call_id) is not call:
            return
        if call.timer is not None:
            call.timer.cancel()
        self.failed += 1
        self._log(call, CALL_FAILED, reason=call.sweep.reason)
        call.given_up = True
        if call.answered:
            self._cancel(call)
        # What may still come for it is answered for at most Timer B, then it is forgotten.
        call.timer = self.loop.call_later(self.config.scaled(64 * self.config.t1), self._forget, call)
        self._sweep_next(call, connected=False)

    def _cancel(self, call: _Call) -> None:
        host, port = self.carrier
        call.cancelled = True
        self._send(bytes(self._request(call, "CANCEL", sip.sip_uri(call.did, host, port), 1, call.branch)))

    def _forget(self, call: _Call) -> None:
        self._calls.pop(call.call_id, None)

    # ------------------------------------------------------------------ calls

    def _log(self, call: _Call, kind: str, **info) -> None:
        if call.given_up:
            return  # the sweep logged its failure: nothing more of it counts
        if call.sweep is not None:
            info["sweep"] = True
        self.events[call.phone].append(Event(time.monotonic(), time.time(), kind, CARRIER,
                                             {"to": call.did, **info}))

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data, self.carrier)

    def _request(self, call: _Call, method: str, uri: str, cseq: int, branch: str, routes=()) -> sip.SIP:
        host, port = self.carrier
        return sip.request(method, uri, local_host=self.local_host, local_port=self.local_port,
                           from_uri=sip.sip_uri(USER, self.local_host), to_uri=sip.sip_uri(call.did, host, port),
                           call_id=call.call_id, cseq=cseq, from_tag=call.from_tag, to_tag=call.to_tag,
                           branch=branch, contact=f"<{sip.sip_uri(USER, self.local_host, self.local_port)}>",
                           extra_headers=[("Route", route) for route in routes])

    def call(self, did: str, redial: int = 0, sweep: _Sweep | None = None) -> str:
        """Call ``did`` now; its Call-ID."""
        if did not in self.dids:
            raise ValueError(f"{did} is not a DID of the simulated users")
        call = _Call(did, self.dids[did], self.local_host, self.loop.time(), redial, sweep)
        host, port = self.carrier
        call.invite = bytes(self._request(call, "INVITE", sip.sip_uri(did, host, port), 1, call.branch))
        call.interval = self.config.scaled(self.config.t1)
        self._calls[call.call_id] = call
        self.placed += 1
        self._log(call, CALL_PLACED)
        self._send(call.invite)
        call.timer = self.loop.call_later(call.interval, self._retransmit, call)
        return call.call_id

    def _retransmit(self, call: _Call) -> None:
        """Timer A (doubling, uncapped) until an answer; Timer B (64*T1) ends an unanswered attempt,
        the ringing limit one that the carrier is still trying."""
        elapsed = self.loop.time() - call.started
        limit = self.config.scaled(RINGING_LIMIT if call.answered else 64 * self.config.t1)
        if elapsed >= limit - 1e-9:
            self._fail(call, "timeout")
            return
        if not call.answered:
            self._send(call.invite)
            call.interval *= 2
        call.timer = self.loop.call_later(min(call.interval, limit - elapsed), self._retransmit, call)

    def _fail(self, call: _Call, reason: str) -> None:
        if call.timer is not None:
            call.timer.cancel()
        self._calls.pop(call.call_id, None)
        if call.given_up:
            return
        self.failed += 1
        self._log(call, CALL_FAILED, reason=reason)
        if call.sweep is not None:
            self._sweep_next(call, connected=False)
            return
        cfg = self.config
        if self._running and cfg.redial_after > 0 and call.redial < cfg.redials:
            self._redials.later(self.loop, cfg.scaled(cfg.redial_after), lambda: self._redial(call))

    def _redial(self, failed: _Call) -> None:
        if self._running:
            self.call(failed.did, failed.redial + 1)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = sip.parse(data)
        except (sip.SipParseError, ValueError, IndexError):
            return
        if msg.is_request:
            # No dialog starts here: refuse what the carrier might send.
            if msg.method != "ACK":
                self._send(bytes(sip.response_for(msg, 481 if msg.method == "BYE" else 501)))
            return
        call = self._calls.get(msg.call_id or "")
        cseq = msg.cseq
        if call is None or cseq is None:
            return
        if cseq[1] == "BYE" and msg.via_branch == call.bye_branch:
            self._bye_done(call, msg)
        elif cseq[1] == "INVITE":
            self._invite_answer(call, msg)

    def _invite_answer(self, call: _Call, msg: sip.SIP) -> None:
        code = msg.status_code or 0
        if code < 200:
            call.answered = True
            if call.given_up and not call.cancelled:
                self._cancel(call)  # given up before any answer: a CANCEL may go only now
            return
        if call.ack is not None:  # a retransmitted 2xx: our ACK was lost
            if code < 300:
                self._send(call.ack)
            return
        if call.timer is not None:
            call.timer.cancel()
        call.to_tag = msg.to_tag
        host, port = self.carrier
        if code >= 300:  # ACK in the transaction (same branch), to the carrier
            self._send(bytes(self._request(call, "ACK", sip.sip_uri(call.did, host, port), 1, call.branch)))
            self._fail(call, f"{code} {msg.reason}")
            return
        contacts = msg.contacts
        if not contacts:
            self._fail(call, "2xx without a Contact")
            return
        call.target = contacts[0].uri
        call.routes = list(reversed(msg.header_values("Record-Route")))
        call.ack = bytes(self._request(call, "ACK", call.target, 1, sip.new_branch(), call.routes))
        self._send(call.ack)
        if call.given_up:  # a 2xx after the sweep gave up: hang up at once
            self._hang_up(call)
            return
        self.connected += 1
        self._log(call, CALL_CONNECTED, setup=round(self.loop.time() - call.started, 6))
        if call.sweep is not None:
            self._sweep_next(call, connected=True)
        call.timer = self.loop.call_later(self.config.scaled(self.config.hold_time), self._hang_up, call)

    def _hang_up(self, call: _Call) -> None:
        call.bye_branch = sip.new_branch()
        call.bye = bytes(self._request(call, "BYE", call.target, 2, call.bye_branch, call.routes))
        call.interval = self.config.scaled(self.config.t1)
        call.bye_deadline = self.loop.time() + self.config.scaled(64 * self.config.t1)
        self._send(call.bye)
        call.timer = self.loop.call_later(call.interval, self._resend_bye, call)

    def _resend_bye(self, call: _Call) -> None:
        """Timers E and F of the BYE."""
        if self.loop.time() >= call.bye_deadline:
            self._calls.pop(call.call_id, None)
            self._log(call, CALL_ENDED, reason="timeout")
            return
        self._send(call.bye)
        call.interval = min(2 * call.interval, self.config.scaled(self.config.t2))
        call.timer = self.loop.call_later(min(call.interval, call.bye_deadline - self.loop.time()),
                                          self._resend_bye, call)

    def _bye_done(self, call: _Call, msg: sip.SIP) -> None:
        code = msg.status_code or 0
        if code < 200:
            return
        if call.timer is not None:
            call.timer.cancel()
        self._calls.pop(call.call_id, None)
        if code < 300:
            self._log(call, CALL_ENDED)
        else:
            self._log(call, CALL_ENDED, reason=f"{code} {msg.reason}")


def summary(events: Mapping[str, Sequence[Event]], fault_time: float, restored: float | None,
            time_scale: float, **settings) -> dict:
    """What the PSTN calls showed, for report.json: outcomes before, during and after the fault.

    A call counts in the phase its outcome (connected or failed) falls in:
    before the fault, during it (until ``restored``; to the end without a
    restore), after the restore; the failures' reasons are counted from the
    fault and from the restore.  Times are real-equivalent seconds from the
    fault: when the first call after it connected, when the last one
    connected, when the last one failed.  ``settings`` (rate, trunk expiry)
    are copied in.
    """
    phases = {name: {"connected": 0, "failed": 0} for name in ("before", "during", "after")}
    reasons: dict[str, int] = {}
    reasons_after: dict[str, int] = {}
    first_connected = last_connected = last_failed = None
    for evs in events.values():
        for event in evs:
            if event.kind not in (CALL_CONNECTED, CALL_FAILED):
                continue
            if event.t < fault_time:
                phase = "before"
            elif restored is None or event.t < restored:
                phase = "during"
            else:
                phase = "after"
            since = round((event.t - fault_time) * time_scale, 1)
            if event.kind == CALL_CONNECTED:
                phases[phase]["connected"] += 1
                if since >= 0 and (first_connected is None or since < first_connected):
                    first_connected = since
                if since >= 0 and (last_connected is None or since > last_connected):
                    last_connected = since
            else:
                phases[phase]["failed"] += 1
                if since >= 0:
                    reason = str((event.info or {}).get("reason"))
                    reasons[reason] = reasons.get(reason, 0) + 1
                    if phase == "after":
                        reasons_after[reason] = reasons_after.get(reason, 0) + 1
                    last_failed = since if last_failed is None else max(last_failed, since)
    return {**settings, "calls": phases, "failures_after_fault": dict(sorted(reasons.items())),
            "failures_after_restore": dict(sorted(reasons_after.items())),
            "first_connected_after_fault": first_connected, "last_connected_after_fault": last_connected,
            "last_failed_after_fault": last_failed,
            "restored_after_fault": None if restored is None else round((restored - fault_time) * time_scale, 1)}


class PstnThread:
    """A :class:`PstnCaller` on its own event loop in a background thread, for synchronous drivers.

        pstn = PstnThread(PstnCaller((carrier, 5060), dids, PstnConfig(rate=60, time_scale=10)))
        pstn.start("172.28.5.1")
        ... the fault ...
        pstn.stop()
        events = pstn.events()   # per callee phone id
    """

    def __init__(self, caller: PstnCaller):
        self.caller = caller
        self._loop = LoopThread("pstn")

    def start(self, local_host: str, timeout: float = 30) -> None:
        async def begin():
            await self.caller.open(local_host)
            self.caller.start()
        self._loop.call(begin(), timeout)

    def sweep(self, patience: float, limit: float) -> None:
        """:meth:`PstnCaller.sweep` on the caller's loop."""
        self._loop.read(lambda: self.caller.sweep(patience, limit))

    def sweeping(self) -> int:
        return self._loop.read(self.caller.sweeping)

    def events(self) -> dict[str, list[Event]]:
        return self._loop.read(lambda: {phone: list(events) for phone, events in self.caller.events.items()})

    def stop(self, timeout: float = 60) -> None:
        async def end():
            self.caller.stop()
        self._loop.close(end, timeout)
