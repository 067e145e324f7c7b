"""What the users saw, turned into outage figures, a verdict and report files.

The maths is pure: it takes the fault time (and the failback time, if any),
each phone's event list, the PSTN calls to each phone and each user's CTI
client events, and returns a :class:`Report`.  The writers then produce
``report.json`` (every phone's figures and events), ``junit.xml`` (one test
case per criterion) and ``timeline.png`` (phones registered per node, and the
share of calls that succeeded, over time).

Phones are keyed by their number: the fleet labels each phone with its
extension (``phone.user``), and a call's ``to`` is that extension, so the
calls *to* phone ``p`` are the other phones' calls whose ``to`` is ``p``.  The
PSTN mapping is keyed by the callee's phone id, the CTI mapping by the user's.

**Attempts.**  A call attempt is a ``call_placed`` event and the result that
follows it in the caller's list for the same ``to`` (``call_connected``: a
success, ``call_failed``: a failure; a ``call_retried`` between them is part of
the same attempt, so a call connected through the backup after Timer B is a
success).  An attempt with no result when the phones stopped is left out.
Attempts are counted **before** (placed before the fault), **during** (placed
between the fault and its restore, or the end when it was never restored) and
**after** the fault (placed after the restore).

**Outage** (per phone, per direction: outgoing = its own calls, incoming = the
other phones' calls to it, PSTN = the carrier's calls to it, CTI = its user's
client).  Results are taken in the order they came.  An outage is a run of
failed attempts whose result came at or after the fault, and it lasts

* from the fault, when no attempt of that direction had succeeded since the
  fault (the fault is what took the service down; it is only sampled later),
  or when a run of failures was already under way at the fault;
* otherwise from the moment the run's first failed attempt was placed (a
  success after the fault proved the service up until then: a second outage
  after a failback, or a flap),

to the result of the next successful attempt.  A failed attempt placed before the
result of a success after the fault is left out: it shows the service as it was
before that success (a call to the powered-off master that times out after a
call through the slave got through).  A run that no success ends is
*never* back: infinite (``null`` in JSON, counted in ``never``).  A phone has
any number of outages: its **longest** and its **total** are reported (a
flapping fault makes several).  A phone with no attempt in a direction whose
result came after the fault is **unmeasured** there: nothing shows that it can
call (or be called), so it is listed and fails a decisive criterion, never
passed silently.  For CTI a connection lost, or one connection attempt failed,
is a failure at that instant, a login a success; a client with no CTI event
at all is unmeasured.

**Back** (per phone and call direction): from the fault to the result of its
first successful attempt after it, whatever failed before; never: infinite.
It bounds the outage from above (a phone whose first call after the fault
connected has no outage, yet was back only then); with a PSTN sweep, which
dials every DID at the fault and again within its patience, it is the PSTN
outage itself to within the patience.  Reported (``back_p50``, ``back_p95``,
``back_max``), not decisive.

**Registration** (as before): the downtime is the time from the fault to the
phone's first successful registration at or after the fault, on any node; the
failback downtime from the failback to its first registration *on the
primary* after it.

Times are measured on the monotonic clock of the simulator.  With a time
scale K (every SIP timer and expiry divided by K) a measured second stands for
K real seconds: figures compared with the bound (300 s by default) are
"real-equivalent", i.e. measured seconds x K.  Percentiles use the
nearest-rank method over the measured phones, a phone never back counting as
infinite, so a p95 is finite only if at least 95 % of them came back.

**Verdict.**  For a fault that takes the master down (``constants.OUTAGE``) it
is PASS when every phone was registered when the fault hit, and every phone's
longest outgoing, incoming and (when PSTN calls exist) PSTN outage is within
the bound, every phone measured in each.  Registration and CTI figures are
criteria of junit.xml but do not decide: registration alone no longer passes,
and the issue asks CTI reconnection to be reported; so is the configuration
RPO (``rpo``: users created shortly before the fault).  For a fault the master
serves through (``constants.SERVED``) it is PASS when every phone was
registered when the fault hit, none moved to the slave or lost its
registration, the slave never started its services, and calls kept working:
calls were placed during the fault and none of them failed.  Each criterion is
a :class:`Criterion`, made once by :func:`compute`; the writers only render
them.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .constants import DEFAULT_BOUND, OUTAGE, SERVED
from .cti import reconnection_times
from .events import (
    CALL_CONNECTED,
    CALL_FAILED,
    CALL_PLACED,
    CTI_CONNECT_FAILED,
    CTI_CONNECTED,
    CTI_LOST,
    EXPIRED,
    NONE,
    REGISTER_FAILED,
    REGISTERED,
    STOPPED,
    SWITCHED,
    Event,
)

OUTGOING = "outgoing"
INCOMING = "incoming"
PSTN = "pstn"
REGISTRATION = "registration"
CTI = "cti"
CALL_DIRECTIONS = (OUTGOING, INCOMING, PSTN)
DIRECTIONS = (INCOMING, OUTGOING, PSTN, REGISTRATION, CTI)  # report.json's order
PERIODS = ("before", "during", "after")
INTERNAL = "internal"  # the phones' calls to each other, each counted once
SUCCESS_BUCKET = 30.0  # real-equivalent seconds per bar of the call-success panel

# --------------------------------------------------------------------------- maths


def first_registration(events: Iterable[Event], since: float, node: str | None = None) -> float | None:
    """Time of the first ``registered`` event at or after ``since`` (on ``node`` if given)."""
    for event in events:
        if event.kind == REGISTERED and event.t >= since and (node is None or event.node == node):
            return event.t
    return None


def downtime(events: Iterable[Event], since: float, node: str | None = None) -> float | None:
    """Seconds from ``since`` to the first registration after it; ``None`` if none."""
    at = first_registration(events, since, node)
    return None if at is None else at - since


def node_at(events: Iterable[Event], when: float) -> str | None:
    """Which node the phone was registered on at instant ``when`` (``None``: nowhere)."""
    current = None
    for event in events:
        if event.t > when:
            break
        current = _next_node(current, event)
    return current


def _next_node(current: str | None, event: Event) -> str | None:
    if event.kind == REGISTERED:
        return event.node
    if event.kind in (EXPIRED, REGISTER_FAILED):
        # A failed transaction takes the phone down only on its current node:
        # trying the primary while registered on the backup changes nothing.
        return None if event.node == current else current
    if event.kind == STOPPED:
        return None
    return current


def percentile(values: Sequence[float | None], q: float) -> float | None:
    """Nearest-rank percentile, ``None`` counting as +infinity.

    Returns ``math.inf`` when the rank falls on a ``None``, ``None`` for no values.
    """
    if not values:
        return None
    ordered = sorted(math.inf if v is None else v for v in values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class DowntimeStats:
    """Downtime over all phones, real-equivalent seconds (measured x time scale)."""

    phones: int
    p50: float | None
    p95: float | None
    max: float | None
    over_bound: int
    never: int
    bound: float
    time_scale: float

    @property
    def ok(self) -> bool:
        return self.phones > 0 and self.over_bound == 0


def downtime_stats(
    downtimes: Mapping[str, float | None], time_scale: float = 1.0, bound: float = DEFAULT_BOUND
) -> DowntimeStats:
    """Percentiles and the count over ``bound`` of measured downtimes."""
    real = [None if d is None else d * time_scale for d in downtimes.values()]
    over = sum(1 for d in real if d is None or d > bound)
    return DowntimeStats(
        phones=len(real),
        p50=percentile(real, 50),
        p95=percentile(real, 95),
        max=percentile(real, 100),
        over_bound=over,
        never=sum(1 for d in real if d is None),
        bound=bound,
        time_scale=time_scale,
    )


# --------------------------------------------------------------------------- calls and CTI


@dataclass(frozen=True)
class Attempt:
    """One call: when it was placed, when and how it ended, and the other party."""

    placed: float
    ended: float | None  # None: no result when the phones stopped
    ok: bool
    node: str | None  # where its result came from
    reason: str | None  # why it failed
    peer: str  # the callee of an outgoing call (its ``to``), the caller of an incoming one


def call_attempts(events: Iterable[Event]) -> list[Attempt]:
    """One caller's attempts, in the order placed.

    Each result is paired with an open call to its ``to``: a connection with
    the one placed ``setup`` seconds before it, a failure with the oldest.
    """
    entries: list[list] = []
    open_calls: dict[str, list[int]] = {}
    for event in events:
        if event.kind not in (CALL_PLACED, CALL_CONNECTED, CALL_FAILED):
            continue
        info = event.info or {}
        to = str(info.get("to", ""))
        if event.kind == CALL_PLACED:
            open_calls.setdefault(to, []).append(len(entries))
            entries.append([event.t, None, False, event.node, None, to])
            continue
        waiting = open_calls.get(to)
        if not waiting:
            continue
        pick = 0
        if event.kind == CALL_CONNECTED and "setup" in info:
            placed = event.t - float(info["setup"])
            pick = min(range(len(waiting)), key=lambda i: abs(entries[waiting[i]][0] - placed))
        entry = entries[waiting.pop(pick)]
        entry[1:5] = [event.t, event.kind == CALL_CONNECTED, event.node,
                      None if event.kind == CALL_CONNECTED else str(info.get("reason", ""))]
    return [Attempt(*entry) for entry in entries]


def incoming_attempts(events: Mapping[str, Sequence[Event]]) -> dict[str, list[Attempt]]:
    """The calls to each phone, from every other phone's list, by the callee's number (``peer``: the caller)."""
    to_phone: dict[str, list[Attempt]] = {}
    for caller, evs in events.items():
        for attempt in call_attempts(evs):
            to_phone.setdefault(attempt.peer, []).append(replace(attempt, peer=caller))
    for attempts in to_phone.values():
        attempts.sort(key=lambda a: a.placed)
    return to_phone


@dataclass(frozen=True)
class Outage:
    start: float
    end: float | None  # None: never back

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


def outage_runs(samples: Iterable[tuple[float, float, bool]], since: float) -> list[Outage]:
    """The outages since ``since`` of ``(began, ended, ok)`` samples (see the module's definition)."""
    runs: list[Outage] = []
    start = None
    ok_since = False
    last_ok = None  # when the last success since ``since`` came
    for began, ended, ok in sorted(samples, key=lambda s: s[1]):
        if ended < since:
            start = None if ok else since  # a run under way at the fault counts from the fault
            continue
        if ok:
            if start is not None:
                runs.append(Outage(start, ended))
                start = None
            ok_since = True
            last_ok = ended
        elif last_ok is not None and began < last_ok:
            continue  # placed before a success proved the service up: stale
        elif start is None:
            start = max(since, began) if ok_since else since
    if start is not None:
        runs.append(Outage(start, None))
    return runs


@dataclass(frozen=True)
class PhoneOutages:
    """One phone, one direction: its outages since the fault and what they are made of."""

    outages: tuple[Outage, ...] = ()
    tries: int = 0  # attempts whose result came at or after the fault (CTI: events of the whole run)
    failures: int = 0  # of those, the failed ones
    last_failure: str | None = None  # "node: reason" of the last failed attempt
    periods: dict = field(default_factory=dict)  # "before"/"during"/"after" -> (attempts, failures)
    back: float | None = None  # measured seconds from the fault to its first success after it; None: none

    @property
    def measured(self) -> bool:
        return self.tries > 0

    @property
    def never(self) -> bool:
        return any(o.end is None for o in self.outages)

    @property
    def longest(self) -> float | None:
        """Measured seconds; ``None``: never back."""
        return None if self.never else max((o.duration for o in self.outages), default=0.0)

    @property
    def total(self) -> float | None:
        return None if self.never else sum(o.duration for o in self.outages)


def period_of(t: float, fault: float, restored: float | None) -> str:
    if t < fault:
        return "before"
    return "during" if restored is None or t < restored else "after"


def period_counts(attempts: Iterable[Attempt], fault: float, restored: float | None) -> dict[str, tuple[int, int]]:
    """(attempts, failures) placed before, during and after the fault; unfinished attempts left out."""
    counts = {period: [0, 0] for period in PERIODS}
    for attempt in attempts:
        if attempt.ended is None:
            continue
        entry = counts[period_of(attempt.placed, fault, restored)]
        entry[0] += 1
        entry[1] += not attempt.ok
    return {period: (n, failed) for period, (n, failed) in counts.items()}


def _why(node: str | None, reason: str | None) -> str:
    return f"{node or '?'}: {reason or 'failed'}"


def call_outages(attempts: Sequence[Attempt], fault: float, restored: float | None = None) -> PhoneOutages:
    """One phone's outages of one call direction since ``fault``."""
    done = [a for a in attempts if a.ended is not None]
    after = sorted((a for a in done if a.ended >= fault), key=lambda a: a.ended)
    failed = [a for a in after if not a.ok]
    first_ok = next((a.ended for a in after if a.ok), None)
    return PhoneOutages(
        outages=tuple(outage_runs(((a.placed, a.ended, a.ok) for a in done), fault)),
        tries=len(after),
        failures=len(failed),
        last_failure=_why(failed[-1].node, failed[-1].reason) if failed else None,
        periods=period_counts(done, fault, restored),
        back=None if first_ok is None else first_ok - fault,
    )


def cti_outages(events: Iterable[Event], fault: float) -> PhoneOutages:
    """One CTI client's outages since ``fault``: losses and failed connections until the next login.

    A failed connection while the client is logged in elsewhere (on the backup, trying its
    main again) is not one: its user still has a CTI server.
    """
    samples, failures, last, logged_in = [], 0, None, False
    for event in events:
        if event.kind == CTI_CONNECTED:
            logged_in = True
            samples.append((event.t, event.t, True))
        elif event.kind == CTI_LOST or (event.kind == CTI_CONNECT_FAILED and not logged_in):
            logged_in = False
            samples.append((event.t, event.t, False))
            if event.t >= fault:
                failures += 1
                last = _why(event.node, str((event.info or {}).get("reason", event.kind)))
    return PhoneOutages(tuple(outage_runs(samples, fault)), len(samples), failures, last)


@dataclass(frozen=True)
class OutageStats:
    """Longest outage per phone over the phones of one direction, real-equivalent seconds."""

    direction: str
    phones: int  # measured phones
    p50: float | None
    p95: float | None
    max: float | None
    max_total: float | None  # the largest total outage of a phone (several outages: flapping)
    over_bound: tuple[str, ...]  # phones whose longest outage is over the bound, or never ended
    never: tuple[str, ...]
    unmeasured: tuple[str, ...]  # phones with no attempt since the fault
    bound: float
    time_scale: float
    back_p50: float | None = None  # fault -> first success, over the measured phones (see the module)
    back_p95: float | None = None
    back_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.phones > 0 and not self.over_bound and not self.unmeasured


def outage_stats(direction: str, per_phone: Mapping[str, PhoneOutages], time_scale: float = 1.0,
                 bound: float = DEFAULT_BOUND) -> OutageStats:
    measured = {pid: o for pid, o in per_phone.items() if o.measured}
    longest = {pid: None if o.longest is None else o.longest * time_scale for pid, o in measured.items()}
    totals = [None if o.total is None else o.total * time_scale for o in measured.values()]
    back = [None if o.back is None else o.back * time_scale for o in measured.values()]
    return OutageStats(
        direction=direction,
        phones=len(measured),
        p50=percentile(list(longest.values()), 50),
        p95=percentile(list(longest.values()), 95),
        max=percentile(list(longest.values()), 100),
        max_total=percentile(totals, 100),
        over_bound=tuple(sorted(pid for pid, d in longest.items() if d is None or d > bound)),
        never=tuple(sorted(pid for pid, o in measured.items() if o.never)),
        unmeasured=tuple(sorted(pid for pid, o in per_phone.items() if not o.measured)),
        bound=bound,
        time_scale=time_scale,
        back_p50=percentile(back, 50),
        back_p95=percentile(back, 95),
        back_max=percentile(back, 100),
    )


def phone_calls(events: Mapping[str, Sequence[Event]], fault: float, restored: float | None = None,
                pstn: Mapping[str, Sequence[Event]] | None = None) -> dict[str, dict[str, PhoneOutages]]:
    """direction -> phone -> its outages: outgoing and incoming for every phone, PSTN for the PSTN's phones."""
    incoming = incoming_attempts(events)
    out = {
        OUTGOING: {pid: call_outages(call_attempts(evs), fault, restored) for pid, evs in events.items()},
        INCOMING: {pid: call_outages(incoming.get(pid, []), fault, restored) for pid in events},
    }
    if has_calls(pstn):
        out[PSTN] = {pid: call_outages(call_attempts(evs), fault, restored) for pid, evs in pstn.items()}
    return out


def has_calls(events: Mapping[str, Sequence[Event]] | None) -> bool:
    return bool(events) and any(e.kind == CALL_PLACED for evs in events.values() for e in evs)


def calls_unsettled(events: Mapping[str, Sequence[Event]], since: float,
                    pstn: Mapping[str, Sequence[Event]] | None = None) -> set[str]:
    """Phones not yet shown able to call and be called since ``since``: no attempt, or an outage still open.

    What the observation waits for before it ends (``pstn``: the PSTN calls, by callee).
    """
    waiting = set()
    for direction in phone_calls(events, since, pstn=pstn).values():
        waiting.update(pid for pid, o in direction.items() if not o.measured or o.never)
    return waiting


@dataclass(frozen=True)
class SlaveActivity:
    """How often the slave started (failover) and stopped (failback) its services during the run."""

    failovers: int
    failbacks: int
    serving_since: tuple[float, ...] = ()  # when it started serving, monotonic (one per failover)


@dataclass(frozen=True)
class Criterion:
    """One criterion of the verdict: a JUnit test case, and (if decisive) a sentence of the reasons."""

    name: str
    sentence: str
    failure: str | None = None  # why it is not met; None: met
    decisive: bool = True  # it decides the verdict; otherwise a figure reported in junit.xml only
    direction: str | None = None  # the outage direction it judges (outgoing, ..., registration), if any

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class Report:
    phones: int
    time_scale: float
    bound: float
    primary: str
    backup: str
    fault_time: float
    fault_wall: float
    failback_time: float | None
    failback_wall: float | None
    downtimes: dict  # phone id -> measured seconds or None
    failback_downtimes: dict | None
    failover: DowntimeStats
    failback: DowntimeStats | None
    failovers_seen: int
    registered_at_fault: dict  # node label -> phones
    lost_registration: int  # phones registered at the fault that lost it before the restore
    expect: str = OUTAGE  # what the fault expects of the cluster (constants.OUTAGE or SERVED)
    slave: SlaveActivity | None = None
    restored: float | None = None
    calls: dict = field(default_factory=dict)  # outgoing/incoming/pstn/cti -> phone id -> PhoneOutages
    outages: dict = field(default_factory=dict)  # outgoing/incoming/pstn/cti -> OutageStats
    call_counts: dict = field(default_factory=dict)  # internal/pstn -> period -> (attempts, failures)
    attempts: dict = field(default_factory=dict)  # internal (by caller)/pstn (by callee) -> phone id -> Attempts
    sources: dict = field(default_factory=dict)  # pstn/cti -> the events given, by phone id
    unregistered: dict = field(default_factory=dict)  # phone id -> "node: reason" of a REGISTER failing at the end
    pstn: dict = field(default_factory=dict)  # callee phone id -> the PSTN caller's events for it
    cti_reconnection: dict | None = None  # phone id -> measured seconds or None (cti.reconnection_time)
    cti: DowntimeStats | None = None
    rpo: object | None = None  # rpo.Rpo: the users created shortly before the fault
    # The verdict, set once by compute():
    criteria: list = field(default_factory=list)  # Criterion, in junit.xml's order
    passed: bool = False
    reasons: list = field(default_factory=list)  # one sentence per decisive criterion, then notes

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def _wall_of(mono: float | None) -> float | None:
    if mono is None:
        return None
    return time.time() - (time.monotonic() - mono)


def compute(
    events: Mapping[str, Sequence[Event]],
    fault_time: float,
    failback_time: float | None = None,
    *,
    time_scale: float = 1.0,
    bound: float = DEFAULT_BOUND,
    primary: str = "master",
    backup: str = "slave",
    fault_wall: float | None = None,
    failback_wall: float | None = None,
    expect: str = OUTAGE,
    slave: SlaveActivity | None = None,
    restored: float | None = None,
    pstn: Mapping[str, Sequence[Event]] | None = None,
    cti: Mapping[str, Sequence[Event]] | None = None,
    rpo: object | None = None,
    until: float | None = None,
) -> Report:
    """Per-phone outages, their statistics and the verdict: the only place a verdict is made.

    ``events`` maps a phone id to its events in time order; ``pstn`` the
    callee's phone id to the PSTN calls to it, ``cti`` the user's phone id to
    its CTI client's events; times are monotonic seconds like the events'.
    ``restored`` is when the fault was undone (registrations lost after it do
    not count; calls placed after it are "after"); ``slave`` is what the slave
    did, needed to judge a fault during which the master keeps serving.
    Their CTI reconnection times (``cti.reconnection_times``) and ``rpo`` (an
    ``rpo.Rpo``, the users created shortly before the fault) are reported, they
    do not decide the verdict.  ``until`` is when the observation ended: what
    happened after it (a call still under way then) is left out, so the state
    that ended the observation is the one judged.
    """
    if expect == SERVED and slave is None:
        raise ValueError("a fault the master serves through is judged on the slave's activity: pass slave=")
    if until is not None:
        events, pstn, cti = (None if source is None else {pid: [e for e in evs if e.t <= until]
                                                          for pid, evs in source.items()}
                             for source in (events, pstn, cti))
    downtimes = {pid: downtime(evs, fault_time) for pid, evs in events.items()}
    failback_downtimes = None
    if failback_time is not None:
        failback_downtimes = {pid: downtime(evs, failback_time, primary) for pid, evs in events.items()}
    report = Report(
        phones=len(events),
        time_scale=time_scale,
        bound=bound,
        primary=primary,
        backup=backup,
        fault_time=fault_time,
        fault_wall=fault_wall if fault_wall is not None else _wall_of(fault_time),
        failback_time=failback_time,
        failback_wall=failback_wall if failback_wall is not None else _wall_of(failback_time),
        downtimes=downtimes,
        failback_downtimes=failback_downtimes,
        failover=downtime_stats(downtimes, time_scale, bound),
        failback=None if failback_downtimes is None else downtime_stats(failback_downtimes, time_scale, bound),
        failovers_seen=sum(
            1 for evs in events.values()
            if any(e.kind == SWITCHED and e.t >= fault_time and e.node != primary for e in evs)
        ),
        registered_at_fault=_registered_at(events, fault_time),
        lost_registration=lost_registration(events, fault_time, restored),
        expect=expect,
        slave=slave,
        restored=restored,
        pstn={pid: list(evs) for pid, evs in (pstn or {}).items()},
        rpo=rpo,
    )
    report.unregistered = {pid: why for pid, why in ((pid, last_register_failure(evs, fault_time))
                                                     for pid, evs in events.items()) if why}
    report.calls = phone_calls(events, fault_time, restored, pstn)
    if cti:
        report.calls[CTI] = {pid: cti_outages(evs, fault_time) for pid, evs in cti.items()}
    report.outages = {direction: outage_stats(direction, per_phone, time_scale, bound)
                      for direction, per_phone in report.calls.items()}
    report.attempts = {INTERNAL: {pid: call_attempts(evs) for pid, evs in events.items()}}
    if PSTN in report.calls:
        report.attempts[PSTN] = {pid: call_attempts(evs) for pid, evs in pstn.items()}
    report.call_counts = {kind: period_counts((a for attempts in by_phone.values() for a in attempts),
                                              fault_time, restored)
                          for kind, by_phone in report.attempts.items()}
    report.sources = {name: dict(given) for name, given in ((PSTN, pstn), (CTI, cti)) if given}
    if cti is not None:
        report.cti_reconnection = reconnection_times(cti, fault_time)
        report.cti = downtime_stats(report.cti_reconnection, time_scale, bound)
    report.criteria = _criteria(report)
    decisive = [c for c in report.criteria if c.decisive]
    report.passed = all(c.ok for c in decisive)
    report.reasons = [c.sentence if c.ok or c.failure == c.sentence else f"{c.failure} ({c.sentence})"
                      for c in decisive]
    if slave is not None and expect != SERVED:
        report.reasons.append(f"the slave started its services {how_often(slave.failovers)} and stopped them "
                              f"{how_often(slave.failbacks)}")
    return report


def _registered_at(events: Mapping[str, Sequence[Event]], when: float) -> dict[str, int]:
    at: dict[str, int] = {}
    for evs in events.values():
        label = node_at(evs, when) or NONE
        at[label] = at.get(label, 0) + 1
    return at


def last_register_failure(events: Iterable[Event], since: float) -> str | None:
    """"node: reason" when the phone's last REGISTER outcome since ``since`` is a failure; else None."""
    last = None
    for event in events:
        if event.t >= since and event.kind in (REGISTERED, REGISTER_FAILED):
            last = event
    if last is None or last.kind == REGISTERED:
        return None
    return _why(last.node, str((last.info or {}).get("reason", "")))


def lost_registration(events: Mapping[str, Sequence[Event]], since: float, until: float | None = None) -> int:
    """Phones that were registered at ``since`` and lost it (expired or failed) before ``until``."""
    lost = 0
    for evs in events.values():
        current = node_at(evs, since)
        if current is None:
            lost += 1
            continue
        for event in evs:
            if event.t <= since:
                continue
            if until is not None and event.t > until:
                break
            if event.kind == REGISTERED:
                current = event.node
            elif event.kind in (EXPIRED, REGISTER_FAILED) and event.node == current:
                lost += 1
                break
    return lost


def _criteria(report: Report) -> list[Criterion]:
    """The criteria of the report's fault, in junit.xml's order (see the module's verdict)."""
    phones = report.phones
    registered = phones - report.registered_at_fault.get(NONE, 0)
    all_registered = phones > 0 and registered == phones
    criteria = [Criterion(
        "phones registered before the fault",
        f"{registered} of {phones} phones were registered when the fault hit"
        + ("" if all_registered else ": the measurement starts from an incomplete fleet"),
        None if all_registered else f"{phones - registered} of {phones} phones were not registered",
    )]
    served = report.expect == SERVED
    for direction in CALL_DIRECTIONS:
        stats = report.outages.get(direction)
        if stats is not None:
            criteria.append(Criterion(f"{LABELS[direction]} back within {stats.bound:g}s",
                                      _outage_sentence(stats), None if stats.ok else _outage_failure(report, stats),
                                      decisive=not served, direction=direction))
    for label, stats, measured in (
        ("failover", report.failover, report.downtimes),
        ("failback", report.failback, report.failback_downtimes),
    ):
        if stats is not None:
            failure = None if stats.ok else _over_bound(stats, measured, report.time_scale)
            criteria.append(Criterion(f"{label} downtime within {stats.bound:g}s", _stats_sentence(label, stats),
                                      failure, decisive=False,
                                      direction=REGISTRATION if label == "failover" else None))
    if report.cti is not None:
        criteria.append(Criterion(f"CTI reconnection within {report.cti.bound:g}s",
                                  _stats_sentence("CTI reconnection", report.cti, "logged in"),
                                  None if report.cti.ok else _over_bound(report.cti, report.cti_reconnection,
                                                                          report.time_scale),
                                  decisive=False, direction=CTI))
    if report.rpo is not None:
        rpo = report.rpo
        criteria.append(Criterion("users created before the fault can register on the slave", rpo.sentence,
                                  None if rpo.registered == rpo.users else rpo.sentence, decisive=False))
    if served:
        failovers = report.slave.failovers
        met = (registered == phones and report.failovers_seen == 0 and failovers == 0
               and report.lost_registration == 0)
        sentence = (f"expected no failover: {report.failovers_seen} phones moved to the slave, the slave "
                    f"started its services {how_often(failovers)}, {report.lost_registration} phones lost "
                    f"their registration")
        criteria.append(Criterion("no failover while the master serves", sentence, None if met else sentence))
        criteria.append(_calls_kept_working(report))
    return criteria


LABELS = {OUTGOING: "outgoing calls", INCOMING: "incoming calls", PSTN: "PSTN calls", CTI: "CTI reconnection",
          REGISTRATION: "registration"}


def _outage_sentence(stats: OutageStats) -> str:
    what = LABELS[stats.direction]
    if stats.phones == 0:
        return f"{what}: no phone had an attempt since the fault ({len(stats.unmeasured)} unmeasured)"
    text = (f"{what}: longest outage per phone p50 {_fmt_seconds(stats.p50)}, p95 {_fmt_seconds(stats.p95)}, "
            f"max {_fmt_seconds(stats.max)} (real-equivalent); {len(stats.over_bound)} of {stats.phones} "
            f"phones over the {stats.bound:g}s bound")
    if stats.never:
        text += f", {len(stats.never)} never back"
    if stats.unmeasured:
        text += f"; {len(stats.unmeasured)} phones without an attempt since the fault"
    return text


def _outage_failure(report: Report, stats: OutageStats, listed: int = 10) -> str:
    """Why a direction is not met, naming the phones (the worst first) and their last failure."""
    per_phone = report.calls[stats.direction]
    parts = []
    if stats.phones == 0:
        parts.append(f"no phone had an attempt since the fault ({LABELS[stats.direction]})")
    if stats.over_bound:
        worst = sorted(stats.over_bound, key=lambda pid: math.inf if per_phone[pid].longest is None
                       else per_phone[pid].longest, reverse=True)
        named = ", ".join(f"{pid} {_phone_failure(report, per_phone[pid], pid)}" for pid in worst[:listed])
        more = f" and {len(worst) - listed} more" if len(worst) > listed else ""
        parts.append(f"{LABELS[stats.direction]}: {len(stats.over_bound)} of {stats.phones} phones over "
                     f"{stats.bound:g}s: {named}{more}")
    if stats.unmeasured and stats.phones:
        more = f" and {len(stats.unmeasured) - listed} more" if len(stats.unmeasured) > listed else ""
        parts.append(f"{LABELS[stats.direction]}: no attempt since the fault for "
                     f"{', '.join(stats.unmeasured[:listed])}{more}, which cannot be judged")
    return "; ".join(parts)


def _phone_failure(report: Report, outages: PhoneOutages, pid: str) -> str:
    text = "never back" if outages.longest is None else f"{outages.longest * report.time_scale:.1f}s"
    why = [f"last failure {outages.last_failure}"] if outages.last_failure else []
    if outages.never and pid in report.unregistered:
        why.append(f"its last REGISTER failed, {report.unregistered[pid]}")
    return text + (f" ({'; '.join(why)})" if why else "")


def _calls_kept_working(report: Report, listed: int = 10) -> Criterion:
    """SERVED faults: calls were placed while the fault lasted, and none failed."""
    during = {kind: counts["during"] for kind, counts in report.call_counts.items()}
    placed = sum(n for n, _ in during.values())
    failed = sum(f for _, f in during.values())
    sentence = (f"calls while the master served: {placed} placed during the fault, {failed} failed ("
                + ", ".join(f"{kind} {n}/{f}" for kind, (n, f) in during.items()) + " placed/failed)")
    failure = None
    if placed == 0:
        failure = "no call was placed during the fault: nothing shows that calls kept working"
    elif failed:
        bad = [f"{caller}->{a.peer} ({_why(a.node, a.reason)})"
               for caller, a in _failed_during(report)][:listed]
        failure = f"{failed} calls failed during the fault: {', '.join(bad)}"
    return Criterion("calls kept working while the master serves", sentence, failure)


def _failed_during(report: Report) -> list[tuple[str, Attempt]]:
    """(caller, attempt) of the calls placed during the fault that failed, by the time they were placed."""
    found = []
    for kind, by_phone in report.attempts.items():
        for pid, attempts in by_phone.items():
            found += [(pid, a) if kind == INTERNAL else ("PSTN", replace(a, peer=pid)) for a in attempts
                      if a.ended is not None and not a.ok
                      and period_of(a.placed, report.fault_time, report.restored) == "during"]
    return sorted(found, key=lambda item: item[1].placed)


def _over_bound(stats: DowntimeStats, measured: Mapping[str, float | None], time_scale: float) -> str:
    worst = sorted(measured.items(), key=lambda kv: math.inf if kv[1] is None else kv[1], reverse=True)[:10]
    listed = ", ".join(f"{pid}={'never' if d is None else f'{d * time_scale:.1f}s'}" for pid, d in worst)
    return f"{stats.over_bound} of {stats.phones} phones over {stats.bound:g}s (worst: {listed})"


def how_often(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "never"
    return f"{value:.1f}s"


def _stats_sentence(what: str, stats: DowntimeStats, again: str = "registered") -> str:
    if stats.phones == 0:
        return f"{what}: no phones"
    text = (
        f"{what}: p50 {_fmt_seconds(stats.p50)}, p95 {_fmt_seconds(stats.p95)}, "
        f"max {_fmt_seconds(stats.max)} (real-equivalent); "
        f"{stats.over_bound} of {stats.phones} phones over the {stats.bound:g}s bound"
    )
    if stats.never:
        text += f", {stats.never} never {again} again"
    return text


# --------------------------------------------------------------------------- timeline


def occupancy(
    events: Mapping[str, Sequence[Event]], nodes: Sequence[str] = (), until: float | None = None
) -> tuple[list[float], dict[str, list[int]]]:
    """Phones registered per node over time, as a step function.

    Returns the change instants and, for each node label (plus ``"none"``),
    the number of phones on it from that instant on.  Phones count as
    "none" until their first registration; events after ``until`` are left out.
    """
    changes: list[tuple[float, str | None, str | None]] = []
    for evs in events.values():
        current = None
        for event in evs:
            if until is not None and event.t > until:
                break
            new = _next_node(current, event)
            if new != current:
                changes.append((event.t, current, new))
                current = new
    changes.sort(key=lambda c: c[0])
    labels = list(dict.fromkeys(list(nodes) + [c[2] for c in changes if c[2] is not None]))
    counts = {label: 0 for label in labels}
    counts[NONE] = len(events)
    times: list[float] = []
    series: dict[str, list[int]] = {label: [] for label in counts}
    for t, old, new in changes:
        counts[old if old is not None else NONE] -= 1
        counts[new if new is not None else NONE] += 1
        if times and times[-1] == t:
            for label in series:
                series[label][-1] = counts[label]
        else:
            times.append(t)
            for label in series:
                series[label].append(counts[label])
    return times, series


# --------------------------------------------------------------------------- writers


def _json_number(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return None
    return round(value, 6)


def _stats_dict(stats: DowntimeStats | None) -> dict | None:
    if stats is None:
        return None
    data = asdict(stats)
    for key in ("p50", "p95", "max"):
        data[key] = _json_number(data[key])
    return data


def _outage_dict(stats: OutageStats, decisive: bool) -> dict:
    return {
        "p50": _json_number(stats.p50),
        "p95": _json_number(stats.p95),
        "max": _json_number(stats.max),
        "max_total": _json_number(stats.max_total),
        "back_p50": _json_number(stats.back_p50),
        "back_p95": _json_number(stats.back_p95),
        "back_max": _json_number(stats.back_max),
        "phones": stats.phones,
        "never": len(stats.never),
        "over_bound": list(stats.over_bound),
        "unmeasured": list(stats.unmeasured),
        "decisive": decisive,
    }


def _registration_dict(stats: DowntimeStats, measured: Mapping[str, float | None], decisive: bool) -> dict:
    over = sorted(pid for pid, d in measured.items() if d is None or d * stats.time_scale > stats.bound)
    return {"p50": _json_number(stats.p50), "p95": _json_number(stats.p95), "max": _json_number(stats.max),
            "phones": stats.phones, "never": stats.never, "over_bound": over, "decisive": decisive}


def outages_dict(report: Report) -> dict:
    """report.json's ``outages``: each direction's figures (real-equivalent seconds), then ``over_bound``.

    A direction without data (no PSTN calls, no CTI clients) has p50/p95/max ``null``
    and 0 phones; an infinite figure (a phone never back) is ``null`` too, with
    ``never`` > 0.  ``over_bound``: the phones that could not call or be called
    again within the bound (outgoing, incoming or PSTN).
    """
    decisive = {c.direction for c in report.criteria if c.decisive}
    empty = OutageStats("", 0, None, None, None, None, (), (), (), report.bound, report.time_scale)
    out = {}
    for direction in DIRECTIONS:
        if direction == REGISTRATION:
            out[direction] = _registration_dict(report.failover, report.downtimes, direction in decisive)
            continue
        out[direction] = _outage_dict(report.outages.get(direction, empty), direction in decisive)
    out["over_bound"] = sorted({pid for direction in CALL_DIRECTIONS if direction in report.outages
                                for pid in report.outages[direction].over_bound})
    return out


def _phone_outages_dict(o: PhoneOutages) -> dict:
    data = {"longest": _json_number(o.longest), "total": _json_number(o.total), "never": o.never,
            "outages": [[round(x.start, 6), None if x.end is None else round(x.end, 6)] for x in o.outages],
            "tries": o.tries, "failures": o.failures, "last_failure": o.last_failure}
    if o.periods:
        data["attempts"] = {period: {"attempts": n, "failures": f} for period, (n, f) in o.periods.items()}
    return data


def to_dict(report: Report, events: Mapping[str, Sequence[Event]] | None = None,
            simulation: Mapping | None = None) -> dict:
    """The report as JSON-ready data; infinite durations become ``null``.

    ``simulation`` (what the run did besides the phones: scenario, slave, cluster)
    goes in last, as ``"simulation"``.
    """
    phones = {}
    for pid, measured in report.downtimes.items():
        entry = {"downtime": _json_number(measured)}
        if report.failback_downtimes is not None:
            entry["failback_downtime"] = _json_number(report.failback_downtimes.get(pid))
        for direction, per_phone in report.calls.items():
            if pid in per_phone:
                entry[direction] = _phone_outages_dict(per_phone[pid])
        if report.cti_reconnection is not None:
            entry["cti_reconnection"] = _json_number(report.cti_reconnection.get(pid))
        if events is not None:
            entry["events"] = [e.to_dict() for e in events.get(pid, ())]
            for name, given in report.sources.items():
                if pid in given:
                    entry[f"{name}_events"] = [e.to_dict() for e in given[pid]]
        phones[pid] = entry
    data = {
        "verdict": report.verdict,
        "reasons": report.reasons,
        "definitions": {
            "outage": "per phone and direction, a run of failed attempts whose result came after the fault: "
            "from the fault (no success since it, or a run under way at it), else from the run's first "
            "failed attempt, to the next success; never ended: null (never back)",
            "outgoing": "the phone's own calls",
            "incoming": "the other phones' calls to the phone's number",
            "pstn": "the carrier's calls to the phone's DID",
            "cti": "the user's CTI client: a lost connection or a failed connection attempt until the next login",
            "unmeasured": "phones with no attempt since the fault: they fail a decisive criterion",
            "back": "per phone and call direction, the fault -> the first success after it (back_p50/p95/max): "
            "an upper bound of the outage, the outage itself with a PSTN sweep",
            "attempts": "calls placed before the fault, during it (until the restore) and after; "
            "calls without a result when the phones stopped are left out",
            "downtime": "fault -> first successful registration after it, any node",
            "failback_downtime": "failback -> first successful registration on the primary after it",
            "cti_reconnection": "fault -> the user's XiVO Client logged in again, any CTI server "
            "(0: it never lost its connection)",
            "units": "per-phone values: measured seconds (monotonic clock); statistics: real-equivalent "
            "seconds (measured x time_scale); null: never back",
        },
        "phones": report.phones,
        "time_scale": report.time_scale,
        "bound_seconds": report.bound,
        "primary": report.primary,
        "backup": report.backup,
        "fault": {"t": report.fault_time, "wall": report.fault_wall},
        "failback": None
        if report.failback_time is None
        else {"t": report.failback_time, "wall": report.failback_wall},
        "restored": report.restored,
        "slave_serving_since": list(report.slave.serving_since) if report.slave is not None else [],
        "outages": outages_dict(report),
        "calls": {kind: {period: {"attempts": n, "failures": f} for period, (n, f) in counts.items()}
                  for kind, counts in report.call_counts.items()},
        "registered_at_fault": report.registered_at_fault,
        "failovers_seen": report.failovers_seen,
        "failover_downtime": _stats_dict(report.failover),
        "failback_downtime": _stats_dict(report.failback),
        "cti_reconnection": _stats_dict(report.cti),
        "rpo": None if report.rpo is None else report.rpo.to_dict(),
        "per_phone": phones,
    }
    if simulation is not None:
        data["simulation"] = dict(simulation)
    return data


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one rename, file and directory flushed to disk.

    The simulator's only file writer.  It mirrors ``xivo_ha.system.write_atomic``
    (which it cannot import: the simulator's package does not depend on the node's).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(report: Report, events: Mapping[str, Sequence[Event]], path: str | os.PathLike,
               simulation: Mapping | None = None) -> Path:
    path = Path(path)
    write_atomic(path, (json.dumps(to_dict(report, events, simulation), indent=1) + "\n").encode())
    return path


def junit_tree(report: Report, suite: str = "failover-simulation") -> ET.ElementTree:
    """JUnit XML: one test case per criterion, figures as properties."""
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(report.criteria)),
        failures=str(sum(1 for c in report.criteria if not c.ok)),
        errors="0",
        skipped="0",
        time="0",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.fault_wall)),
    )
    props = ET.SubElement(root, "properties")
    for name, value in (
        ("phones", report.phones),
        ("time_scale", report.time_scale),
        ("bound_seconds", report.bound),
        ("failovers_seen", report.failovers_seen),
        ("failover_p50", _json_number(report.failover.p50)),
        ("failover_p95", _json_number(report.failover.p95)),
        ("failover_max", _json_number(report.failover.max)),
        *((f"{direction}_{q}", _json_number(getattr(stats, q)))
          for direction, stats in report.outages.items() for q in ("p50", "p95", "max")),
        *((f"{kind}_{period}", f"{n} placed, {f} failed")
          for kind, counts in report.call_counts.items() for period, (n, f) in counts.items()),
    ):
        ET.SubElement(props, "property", name=name, value="null" if value is None else str(value))
    for criterion in report.criteria:
        case = ET.SubElement(root, "testcase", classname=suite, name=criterion.name, time="0")
        if criterion.ok:
            ET.SubElement(case, "system-out").text = criterion.sentence
        else:
            node = ET.SubElement(case, "failure", message=criterion.failure, type="AssertionError")
            node.text = criterion.sentence
    return ET.ElementTree(root)


def write_junit(report: Report, path: str | os.PathLike) -> Path:
    path = Path(path)
    tree = junit_tree(report)
    ET.indent(tree)
    write_atomic(path, ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True) + b"\n")
    return path


def success_share(attempts: Iterable[Attempt], origin: float, width: float) -> tuple[list[float], list[float]]:
    """Share of the calls placed in each bucket of ``width`` seconds (from ``origin``) that succeeded.

    Returns the buckets' left edges (relative to ``origin``) and shares in 0..1;
    buckets without a finished call are left out.  Calls without a result are not counted.
    """
    buckets: dict[int, list[int]] = {}
    for attempt in attempts:
        if attempt.ended is None:
            continue
        entry = buckets.setdefault(math.floor((attempt.placed - origin) / width), [0, 0])
        entry[0] += 1
        entry[1] += attempt.ok
    keys = sorted(buckets)
    return [k * width for k in keys], [buckets[k][1] / buckets[k][0] for k in keys]


def write_timeline(report: Report, events: Mapping[str, Sequence[Event]], path: str | os.PathLike) -> Path:
    """Phones registered per node over time, and below it the share of calls that succeeded per bucket.

    The fault, the failback and each moment the slave started serving are vertical lines on both.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    path = Path(path)
    # The plot ends when the simulation stopped the phones, not with their stop.
    stops = [e.t for evs in events.values() for e in evs if e.kind == STOPPED]
    until = min(stops) if stops else None
    times, series = occupancy(events, [report.primary, report.backup], until)
    starts = [evs[0].t for evs in events.values() if evs]
    origin = min(starts + [report.fault_time]) if starts else report.fault_time
    last = [e.t for evs in events.values() for e in evs[-1:]]
    end = max([until if until is not None else max(last, default=report.fault_time), report.fault_time,
               report.failback_time or report.fault_time])
    xs = [t - origin for t in times]
    fig, (ax, calls) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), dpi=100,
                                    gridspec_kw={"height_ratios": [3, 2]})
    try:
        for label, ys in series.items():
            if not ys:
                continue
            style = {"linestyle": ":", "color": "grey"} if label == NONE else {}
            before = report.phones if label == NONE else 0  # nobody is registered at first
            ax.step([0.0] + xs + [end - origin], [before] + ys + [ys[-1]], where="post", label=label, **style)
        width = SUCCESS_BUCKET / report.time_scale
        for kind, by_phone in report.attempts.items():
            left, share = success_share((a for attempts in by_phone.values() for a in attempts), origin, width)
            if not left:
                continue
            # One point per bucket, at its middle; a bucket without calls breaks the line.
            known = {round(x / width): 100 * y for x, y in zip(left, share)}
            buckets = range(min(known), max(known) + 1)
            calls.plot([(k + 0.5) * width for k in buckets], [known.get(k, math.nan) for k in buckets],
                       marker="o", markersize=3, label=f"{'internal' if kind == INTERNAL else 'PSTN'} calls")
        serving = report.slave.serving_since if report.slave is not None else ()
        for axes in (ax, calls):
            axes.axvline(report.fault_time - origin, color="red", linestyle="--", label="fault")
            if report.failback_time is not None:
                axes.axvline(report.failback_time - origin, color="green", linestyle="--", label="failback")
            for i, t in enumerate(serving):
                axes.axvline(t - origin, color="purple", linestyle="-.", label="slave serving" if i == 0 else None)
            axes.grid(True, alpha=0.3)
            axes.legend(loc="best", fontsize="small")
        scale = f" (x{report.time_scale:g} for real-equivalent)" if report.time_scale != 1 else ""
        calls.set_xlabel(f"measured seconds since start{scale}")
        ax.set_ylabel("phones registered")
        calls.set_ylabel(f"calls that succeeded, %\n(per {SUCCESS_BUCKET:g}s real-equivalent)")
        ax.set_title(f"{report.phones} phones, {report.primary} -> {report.backup}: {report.verdict}")
        ax.set_ylim(bottom=0)
        calls.set_ylim(-5, 105)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
    finally:
        plt.close(fig)
    write_atomic(path, png.getvalue())
    return path


def write_all(report: Report, events: Mapping[str, Sequence[Event]], directory: str | os.PathLike,
              simulation: Mapping | None = None) -> dict:
    """Write report.json (with ``simulation``, if given), junit.xml and timeline.png into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(report, events, directory / "report.json", simulation),
        "junit": write_junit(report, directory / "junit.xml"),
        "timeline": write_timeline(report, events, directory / "timeline.png"),
    }


def format_table(report: Report) -> str:
    """The figures as a small terminal table (longest outage per phone), call counts, verdict last."""
    lines = figures(report)
    at_fault = ", ".join(f"{k} {v}" for k, v in sorted(report.registered_at_fault.items()))
    lines.append("")
    lines.append(f"phones {report.phones}, time scale x{report.time_scale:g} (figures are real-equivalent)")
    lines.append(f"registered at fault: {at_fault}; switched to backup after the fault: {report.failovers_seen}")
    lines.extend(calls_lines(report))
    if report.rpo is not None:
        lines.append(f"configuration RPO: {report.rpo.sentence}")
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)


def figures(report: Report) -> list[str]:
    """The table's lines: per direction, the longest outage per phone (p50/p95/max) and the phones over the bound."""
    rows = [("", "p50", "p95", "max", "max total", f"over {report.bound:g}s", "never", "no attempt")]
    for direction in (OUTGOING, INCOMING, PSTN, CTI):
        stats = report.outages.get(direction)
        if stats is None:
            continue
        rows.append((LABELS[direction], _fmt_seconds(stats.p50), _fmt_seconds(stats.p95), _fmt_seconds(stats.max),
                     _fmt_seconds(stats.max_total), f"{len(stats.over_bound)}/{stats.phones}", str(len(stats.never)),
                     str(len(stats.unmeasured))))
    for label, stats in (("registration", report.failover), ("failback registration", report.failback)):
        if stats is None:
            continue
        rows.append((label, _fmt_seconds(stats.p50), _fmt_seconds(stats.p95), _fmt_seconds(stats.max), "-",
                     f"{stats.over_bound}/{stats.phones}", str(stats.never), "-"))
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as columns: the first left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def calls_lines(report: Report) -> list[str]:
    """One line per kind of call: placed and failed, before, during and after the fault."""
    return [f"{'internal' if kind == INTERNAL else 'PSTN'} calls placed (failed): "
            + ", ".join(f"{period} {n} ({f})" for period, (n, f) in counts.items())
            for kind, counts in report.call_counts.items()]
