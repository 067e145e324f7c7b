"""`xivo-ha check`: doctor's checks as a monitoring plugin (Nagios, Icinga, Centreon...).

The monitoring-plugins conventions: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one
status line ``XIVO-HA <STATE> - <text>``, then ``|`` and performance data
``'label'=value[UOM];[warn];[crit];[min];[max]`` (``U`` when the value is unknown).

The checks are doctor's (:func:`doctor.run_checks`): a FAIL is CRITICAL, a WARN is
WARNING.  One more rule: a slave whose failover state says it serves is CRITICAL --
doctor finds it consistent (the services run as they should), but the master is down
and somebody must look.  Without ``--peer`` the facts are this node's only and no ssh
is made (the probes of the peer's ports and ping still run, bounded by [doctor]
connect_timeout and ping_timeout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from . import doctor
from .doctor import Facts, Limits
from .role import Role
from .settings import Settings

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
PREFIX = "XIVO-HA"


@dataclass(frozen=True)
class Perf:
    label: str
    value: float | None
    uom: str = ""
    warn: str = ""
    crit: str = ""
    minimum: str = ""
    maximum: str = ""

    def render(self) -> str:
        value = "U" if self.value is None else f"{self.value:g}"
        fields = [f"{value}{self.uom if self.value is not None else ''}", self.warn, self.crit,
                  self.minimum, self.maximum]
        return f"'{self.label}'=" + ";".join(fields).rstrip(";")


@dataclass(frozen=True)
class Verdict:
    code: int
    text: str
    perfdata: tuple[Perf, ...] = ()

    def line(self) -> str:
        head = f"{PREFIX} {NAMES[self.code]} - {self.text.replace('|', '/')}"
        if not self.perfdata:
            return head
        return head + " | " + " ".join(p.render() for p in self.perfdata)


def unknown(text: str) -> Verdict:
    return Verdict(UNKNOWN, doctor.one_line(text))


def serving(facts: Facts) -> bool | None:
    """Whether this node serves the phones: the master when its services run, the slave in failover."""
    current = doctor.role_of(facts)
    if current == Role.SLAVE.value:
        return (facts.get("failover") or {}).get("mode") == "serving"
    if current == Role.MASTER.value:
        services = facts.get("services") or {}
        return None if services.get("error") else services.get("summary") == "running"
    return None


def _job_age(facts: Facts, job: str) -> float | None:
    entry = (facts.get("jobs") or {}).get(job)
    if not entry:
        return None
    return max(0.0, float(facts.get("now", 0)) - float(entry.get("finished_at", 0)))


def perfdata(facts: Facts, limits: Limits) -> tuple[Perf, ...]:
    jobs = facts.get("jobs") or {}
    replication = jobs.get("replication") or {}
    state = facts.get("failover") or {}
    last_check = state.get("last_check")
    now = float(facts.get("now", 0))
    is_slave = doctor.role_of(facts) == Role.SLAVE.value
    serves = serving(facts)
    warn_age, fail_age = f"{limits.job_warn_age:g}", f"{limits.job_fail_age:g}"
    return (
        Perf("replication_age", _job_age(facts, "replication"), "s", warn_age, fail_age, "0"),
        Perf("replication_duration", replication.get("duration"), "s", minimum="0"),
        Perf("sync_age", _job_age(facts, "sync"), "s", warn_age, fail_age, "0"),
        Perf("last_check_age", None if last_check is None else max(0.0, now - float(last_check)), "s", minimum="0"),
        Perf("consecutive_failures", state.get("consecutive_failures") if is_slave else None, minimum="0"),
        Perf("serving", None if serves is None else int(serves), crit="0" if is_slave else "",
             minimum="0", maximum="1"),
    )


def decide(checks: Iterable[doctor.Check], facts: Facts, limits: Limits) -> Verdict:
    """The plugin's verdict over doctor's checks and this node's facts (pure)."""
    checks = list(checks)
    problems = [c for c in checks if c.status == doctor.FAIL] + [c for c in checks if c.status == doctor.WARN]
    code = CRITICAL if any(c.status == doctor.FAIL for c in checks) else WARNING if problems else OK
    texts = []
    current = doctor.role_of(facts)
    if current == Role.SLAVE.value and serving(facts):
        code = CRITICAL
        state = facts.get("failover") or {}
        texts.append(f"this slave serves the phones (failover): {state.get('reason') or 'the master is down'}")
    for c in problems:
        where = "peer " if c.node == doctor.PEER and c.id != "peer" else ""
        texts.append(f"{where}{c.id}: {c.finding}")
    if not texts:
        if current in (Role.MASTER.value, Role.SLAVE.value):
            texts.append(f"{current} of {doctor.peer_address(facts)}, {len(checks)} checks OK")
        else:
            texts.append(f"HA is {current or 'unknown'} on this node, {len(checks)} checks OK")
    return Verdict(code, "; ".join(texts), perfdata(facts, limits))


def run(settings: Settings, with_peer: bool = False) -> Verdict:
    """Observe this node (and the peer over ssh when ``with_peer``) and decide."""
    local = doctor.observe(settings, contact_peer=with_peer)
    limits = Limits.from_settings(settings)
    peer, problem = None, None
    if with_peer and doctor.role_of(local) in (Role.MASTER.value, Role.SLAVE.value):
        peer, problem = doctor.fetch_peer_facts(settings, local)
    checks = doctor.run_checks(local, peer, limits, problem, local_only=not with_peer)
    return decide(checks, local, limits)
