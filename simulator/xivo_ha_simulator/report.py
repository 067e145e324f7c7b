"""What the phones saw, turned into downtime figures, a verdict and report files.

The maths is pure: it takes the fault time (and the failback time, if any)
and each phone's event list, and returns a :class:`Report`.  The writers then
produce ``report.json`` (every phone's events), ``junit.xml`` (one test case
per criterion) and ``timeline.png`` (phones registered per node over time).

Definitions, per phone:

* **downtime** = time from the fault to the phone's first successful
  registration (a ``registered`` event) at or after the fault, on any node.
  A phone that never registers again has an infinite downtime (``None`` in
  the per-phone data, ``null`` in JSON).
* **failback downtime** = time from the failback to the phone's first
  successful registration *on the primary* at or after the failback.

Times are measured on the monotonic clock of the simulator.  With a time
scale K (every SIP timer and expiry divided by K) a measured second stands for
K real seconds: figures compared with the bound (300 s by default) are
"real-equivalent", i.e. measured seconds x K.  Percentiles use the
nearest-rank method over all phones, never-registered phones counting as
infinite, so a p95 is finite only if at least 95 % of the phones came back.

The verdict is PASS when every phone was registered when the fault hit and
no phone's downtime (nor failback downtime, when there was a failback) is
over the bound.  For a fault the master serves through (``constants.SERVED``)
it is PASS when every phone was registered when the fault hit, none moved to
the slave or lost its registration, and the slave never started its services;
the downtimes are then reported in junit.xml but do not decide.  Each
criterion is a :class:`Criterion`, made once by :func:`compute`; the writers
only render them.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .constants import DEFAULT_BOUND, OUTAGE, SERVED
from .cti import reconnection_times
from .events import EXPIRED, NONE, REGISTER_FAILED, REGISTERED, STOPPED, SWITCHED, Event

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


@dataclass(frozen=True)
class SlaveActivity:
    """How often the slave started (failover) and stopped (failback) its services during the run."""

    failovers: int
    failbacks: int


@dataclass(frozen=True)
class Criterion:
    """One criterion of the verdict: a JUnit test case, and (if decisive) a sentence of the reasons."""

    name: str
    sentence: str
    failure: str | None = None  # why it is not met; None: met
    decisive: bool = True  # it decides the verdict; otherwise a figure reported in junit.xml only

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
) -> Report:
    """Per-phone downtimes, their statistics and the verdict: the only place a verdict is made.

    ``events`` maps a phone id to its events in time order; times are
    monotonic seconds like the events'.  ``restored`` is when the fault was
    undone (registrations lost after it do not count); ``slave`` is what the
    slave did, needed to judge a fault during which the master keeps serving.
    ``pstn`` maps a phone id to the PSTN calls to its DID (kept, not judged yet).
    ``cti`` maps a phone id to its user's XiVO Client events (``cti``): their
    reconnection times are reported, they do not decide the verdict; nor does
    ``rpo`` (an ``rpo.Rpo``), the users created shortly before the fault.
    """
    if expect == SERVED and slave is None:
        raise ValueError("a fault the master serves through is judged on the slave's activity: pass slave=")
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
        pstn={pid: list(evs) for pid, evs in (pstn or {}).items()},
        rpo=rpo,
    )
    if cti is not None:
        report.cti_reconnection = reconnection_times(cti, fault_time)
        report.cti = downtime_stats(report.cti_reconnection, time_scale, bound)
    report.criteria = _criteria(report)
    decisive = [c for c in report.criteria if c.decisive]
    report.passed = all(c.ok for c in decisive)
    report.reasons = [c.sentence for c in decisive]
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
    """The criteria of the report's fault: phones registered, downtimes within the bound, no failover."""
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
    for label, stats, measured in (
        ("failover", report.failover, report.downtimes),
        ("failback", report.failback, report.failback_downtimes),
    ):
        if stats is not None:
            failure = None if stats.ok else _over_bound(stats, measured, report.time_scale)
            criteria.append(Criterion(f"{label} downtime within {stats.bound:g}s", _stats_sentence(label, stats),
                                      failure, decisive=not served))
    if report.cti is not None:
        criteria.append(Criterion(f"CTI reconnection within {report.cti.bound:g}s",
                                  _stats_sentence("CTI reconnection", report.cti, "logged in"),
                                  None if report.cti.ok else _over_bound(report.cti, report.cti_reconnection,
                                                                          report.time_scale),
                                  decisive=False))
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
    return criteria


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


def to_dict(report: Report, events: Mapping[str, Sequence[Event]] | None = None,
            simulation: Mapping | None = None) -> dict:
    """The report as JSON-ready data; infinite downtimes become ``null``.

    ``simulation`` (what the run did besides the phones: scenario, slave, cluster)
    goes in last, as ``"simulation"``.
    """
    phones = {}
    for pid, measured in report.downtimes.items():
        entry = {"downtime": _json_number(measured)}
        if report.failback_downtimes is not None:
            entry["failback_downtime"] = _json_number(report.failback_downtimes.get(pid))
        if report.cti_reconnection is not None:
            entry["cti_reconnection"] = _json_number(report.cti_reconnection.get(pid))
        if events is not None:
            entry["events"] = [e.to_dict() for e in events.get(pid, ())]
        phones[pid] = entry
    data = {
        "verdict": report.verdict,
        "reasons": report.reasons,
        "definitions": {
            "downtime": "fault -> first successful registration after it, any node",
            "failback_downtime": "failback -> first successful registration on the primary after it",
            "cti_reconnection": "fault -> the user's XiVO Client logged in again, any CTI server "
            "(0: it never lost its connection)",
            "units": "per-phone values: measured seconds; statistics: real-equivalent seconds "
            "(measured x time_scale); null: never registered again",
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


def write_timeline(report: Report, events: Mapping[str, Sequence[Event]], path: str | os.PathLike) -> Path:
    """Phones registered per node over time; fault and failback as vertical lines."""
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
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        for label, ys in series.items():
            if not ys:
                continue
            style = {"linestyle": ":", "color": "grey"} if label == NONE else {}
            before = report.phones if label == NONE else 0  # nobody is registered at first
            ax.step([0.0] + xs + [end - origin], [before] + ys + [ys[-1]], where="post", label=label, **style)
        ax.axvline(report.fault_time - origin, color="red", linestyle="--", label="fault")
        if report.failback_time is not None:
            ax.axvline(report.failback_time - origin, color="green", linestyle="--", label="failback")
        scale = f" (x{report.time_scale:g} for real-equivalent)" if report.time_scale != 1 else ""
        ax.set_xlabel(f"measured seconds since start{scale}")
        ax.set_ylabel("phones registered")
        ax.set_title(f"{report.phones} phones, {report.primary} -> {report.backup}: {report.verdict}")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
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
    """The figures as a small terminal table, verdict last."""
    rows = [("", "p50", "p95", "max", f"over {report.bound:g}s", "never")]
    for label, stats in (("failover", report.failover), ("failback", report.failback), ("cti", report.cti)):
        if stats is None:
            continue
        rows.append((
            label,
            _fmt_seconds(stats.p50),
            _fmt_seconds(stats.p95),
            _fmt_seconds(stats.max),
            f"{stats.over_bound}/{stats.phones}",
            str(stats.never),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    at_fault = ", ".join(f"{k} {v}" for k, v in sorted(report.registered_at_fault.items()))
    lines.append("")
    lines.append(f"phones {report.phones}, time scale x{report.time_scale:g} (figures are real-equivalent)")
    lines.append(f"registered at fault: {at_fault}; switched to backup after the fault: {report.failovers_seen}")
    if report.rpo is not None:
        lines.append(f"configuration RPO: {report.rpo.sentence}")
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)
