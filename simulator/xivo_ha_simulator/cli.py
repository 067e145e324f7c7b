"""xivo-ha-simulator: measure what a XiVO HA failover costs the phones.

``xivo-ha-simulator run`` builds a master/slave cluster from the node image (our
.deb inside), configures HA with the real toolkit, registers N SIP phones
(primary = master, backup = slave, from the master's provisioning), injects a
fault from the catalog, optionally restores the master, and reports every
phone's downtime against the 5-minute bound.  ``xivo-ha-simulator down`` removes
the cluster.

    main(["run", "--scenario", "power-off", "--failback-after", "60"]) -> 0 (PASS) or 1 (FAIL)

``argv`` excludes the program name.  Exit codes: 0 PASS, 1 FAIL (or the cluster
could not be built: the message says why), 2 bad usage.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from plumbum import cli

from . import __version__, faults
from .cluster import MASTER, PROJECT, SLAVE, BringUp, Checker, Cluster, ClusterError

DEFAULT_BOUND = 300.0
FIRST_USER = 1001  # phone i is the line of extension 1001 + i
REAL_EXPIRES = 3600  # what the phones ask for (real seconds); the registrar caps it
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class PositiveFloat:
    def __init__(self, maximum: float):
        self.maximum = maximum

    def __call__(self, text: str) -> float:
        value = float(text)
        if not (0 < value <= self.maximum) or math.isnan(value):
            raise ValueError(f"{text} is not in (0, {self.maximum:g}]")
        return value

    def __str__(self) -> str:
        return f"(0, {self.maximum:g}]"

    __repr__ = __str__


class NonNegativeFloat(PositiveFloat):
    def __call__(self, text: str) -> float:
        value = float(text)
        if not (0 <= value <= self.maximum):
            raise ValueError(f"{text} is not in [0, {self.maximum:g}]")
        return value

    def __str__(self) -> str:
        return f"[0, {self.maximum:g}]"

    __repr__ = __str__


@dataclass
class Options:
    phones: int = 200
    scenario: str = faults.DEFAULT
    time_scale: float = 10.0
    failback_after: float | None = None
    report_dir: str = "simulation-report"
    sip_probe: bool = False
    failback_policy: str = "next-refresh"
    failures_before_failover: int | None = None
    bound: float = DEFAULT_BOUND
    reuse: bool = False
    project: str = PROJECT
    net: str | None = None


@dataclass
class Outcome:
    """What a run established; ``verdict`` is PASS or FAIL."""

    verdict: str
    reasons: list
    report: object  # xivo_ha_simulator.report.Report
    failovers_seen: int  # phones that moved to the slave after the fault
    slave_failovers: int  # times the slave started its services
    slave_failbacks: int
    lost_registration: int  # phones that lost their registration during the fault
    counts_at_end: dict
    files: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"


class Progress:
    """The live line: phones per registrar, the slave's mode, time (measured and real-equivalent)."""

    def __init__(self, out: TextIO, time_scale: float):
        self.out = out
        self.time_scale = time_scale
        self.tty = hasattr(out, "isatty") and out.isatty()
        self._last_line = 0.0
        self._width = 0

    def show(self, elapsed: float, phase: str, counts: dict, slave_mode: str | None) -> None:
        text = (f"{phase:<10} t+{elapsed:6.1f}s (real {elapsed * self.time_scale:6.0f}s)  "
                f"master {counts.get(MASTER, 0):5d}  slave {counts.get(SLAVE, 0):5d}  "
                f"none {counts.get('none', 0):5d}  | slave {slave_mode or '?'}")
        if self.tty:
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.out.flush()
        elif time.monotonic() - self._last_line >= 5.0:
            self.out.write(text + "\n")
            self.out.flush()
            self._last_line = time.monotonic()

    def done(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0


def lost_registration(events: dict, since: float, until: float | None = None) -> int:
    """Phones that were registered at ``since`` and lost it (expired or failed) before ``until``."""
    from .report import EXPIRED, REGISTER_FAILED, REGISTERED, node_at

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


class Simulation:
    """One run: cluster, phones, fault, measurement, report."""

    def __init__(self, options: Options, out: TextIO = sys.stdout):
        self.o = options
        self.out = out
        self.fault = faults.get(options.scenario)
        self.k = float(options.time_scale)
        self.started = time.monotonic()
        self.facts: dict = {}  # what the fault's steps reported (e.g. packets dropped)

    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        self.out.flush()

    # ---------------------------------------------------------------- phases

    def cluster(self) -> tuple[Cluster, BringUp]:
        cluster = Cluster(self.o.project, self.k, self.o.net, log=self.say)
        if self.o.reuse and cluster.exists() and cluster.time_scale_of_nodes() == self.k:
            self.say("reusing the running cluster: resetting it")
            info = self.reuse(cluster)
        else:
            if self.o.reuse:
                self.say("no running cluster with this time scale: creating one")
            cluster.up(recreate=True)
            info = cluster.bring_up(self.o.phones)
        return cluster, info

    def reuse(self, cluster: Cluster) -> BringUp:
        cluster.reset(self.o.sip_probe)
        users, _ = cluster.users_digest(MASTER)
        slave_ip = cluster.address(SLAVE)
        if users < self.o.phones:
            cluster.add_users(MASTER, self.o.phones)
            cluster.exec(MASTER, ["xivo-ha", "enable", "master", slave_ip], timeout=120)
        cluster.exec(MASTER, ["xivo-master-slave-db-replication", slave_ip], timeout=300)
        on_master, on_slave = cluster.users_digest(MASTER), cluster.users_digest(SLAVE)
        if on_master != on_slave:
            raise ClusterError(f"after replication the slave has {on_slave[0]} users, the master {on_master[0]}")
        primary, backup = cluster.provisioned_registrars()
        return BringUp(master=cluster.address(MASTER), slave=slave_ip, gateway=cluster.gateway,
                       primary=primary, backup=backup, users=on_master[0], expiry=cluster.sip_expiry(MASTER),
                       granted=cluster.granted(MASTER), steps=[])

    def provisioned(self, info: BringUp, fetch) -> tuple[str, str]:
        """Each phone fetches its own config from the master's provisioning; they must agree."""
        pairs: dict[tuple[str, str | None], list[int]] = {}
        for number in range(FIRST_USER, FIRST_USER + self.o.phones):
            try:
                pairs.setdefault(fetch(info.master, number), []).append(number)
            except OSError as exc:
                raise ClusterError(f"phone {number} could not fetch its provisioning file: {exc}") from None
        for (primary, backup), numbers in pairs.items():
            if primary != info.master or backup != info.slave:
                raise ClusterError(f"{len(numbers)} phone(s) (e.g. {numbers[0]}) are provisioned with registrar "
                                   f"{primary} and backup {backup}, not {info.master} and {info.slave}: "
                                   f"`xivo-ha enable master` did not update their device configs")
        self.say(f"{self.o.phones} phones provisioned over HTTP: registrar {info.master}, backup {info.slave}")
        return info.master, info.slave

    def slave_settings(self, cluster: Cluster) -> dict:
        """Write this run's probe and failover settings on the slave; return them."""
        wanted = {("probe", "sip_probe"): "on" if self.o.sip_probe else "off",
                  ("failover", "failures_before_failover"): "1"}
        for section, key, value in self.fault.slave_settings:
            wanted[(section, key)] = value
        if self.o.failures_before_failover is not None:
            wanted[("failover", "failures_before_failover")] = str(self.o.failures_before_failover)
        for (section, key), value in wanted.items():
            cluster.set_setting(SLAVE, section, key, value)
        return {f"{section}.{key}": value for (section, key), value in wanted.items()}

    # ---------------------------------------------------------------- the run

    def run(self) -> Outcome:
        from . import report as rep
        from .phone import Fleet, FleetThread, PhoneConfig, Registrar, provisioned_pair

        o, k, fault = self.o, self.k, self.fault
        self.say(f"scenario {fault.name}: {fault.summary}; {o.phones} phones, time scale x{k:g}, "
                 f"SIP probe {'on' if o.sip_probe else 'off'}"
                 + (f", failback after {o.failback_after:g}s" if o.failback_after is not None else ""))
        timings = {}
        t = time.monotonic()
        cluster, info = self.cluster()
        timings["cluster"] = round(time.monotonic() - t, 1)
        settings = self.slave_settings(cluster)
        self.say(f"cluster ready in {timings['cluster']:.0f}s: master {info.master}, slave {info.slave}; "
                 f"{info.users} users replicated; SIP expiry {_expiry(info.expiry)} granted as "
                 f"{_expiry(info.granted)} s; slave settings {', '.join(f'{k_}={v}' for k_, v in settings.items())}")
        if info.primary != info.master:
            raise ClusterError(f"the master's provisioning names {info.primary} as main registrar, not {info.master}")

        checker = Checker(cluster, log=self.say)
        runner = None
        try:
            checker.start()
            config = PhoneConfig(expires=REAL_EXPIRES, time_scale=k, failback=o.failback_policy)
            primary, backup = self.provisioned(info, provisioned_pair)
            fleet = Fleet(Registrar(MASTER, primary), Registrar(SLAVE, backup), o.phones, config,
                          local_hosts=(info.gateway,), first_user=FIRST_USER)
            runner = FleetThread(fleet)
            granted = info.granted.get("max_expires") or config.requested_expires
            refresh = max(1.0, min(granted, config.requested_expires) * config.refresh_ratio)
            # Phones start spread over one refresh interval, as real phones have
            # every phase: the fault then hits each at a different point of its cycle.
            spread = refresh
            self.say(f"starting {o.phones} phones over {spread:.1f}s (registrations refreshed every ~{refresh:.1f}s, "
                     f"{refresh * k:.0f}s real)")
            t = time.monotonic()
            runner.start(rate=o.phones / spread, timeout=spread + 60)
            if not runner.wait_registered(timeout=30 + 2 * config.timer_f, node=MASTER):
                self.say(f"not every phone registered on the master: {runner.counts()}")
            timings["phones"] = round(time.monotonic() - t, 1)
            outcome_data = self.inject_and_observe(cluster, checker, runner)
        finally:
            events = runner.events() if runner is not None else {}
            if runner is not None:
                runner.stop()
            checker.stop()
        t0, t0_wall, t1, t1_wall, restored, counts_end = outcome_data
        report = rep.compute(events, t0, t1, time_scale=k, bound=o.bound, primary=MASTER, backup=SLAVE,
                             fault_wall=t0_wall, failback_wall=t1_wall)
        lost = lost_registration(events, t0, restored)
        verdict, reasons = self.verdict(report, checker, lost)
        outcome = Outcome(verdict, reasons, report, report.failovers_seen, checker.failovers(), checker.failbacks(),
                          lost, counts_end, timings=timings)
        self.checker_checks, self.checker_down = checker.checks_between(t0, restored)
        timings["observation"] = round(time.monotonic() - t0, 1)
        timings["total"] = round(time.monotonic() - self.started, 1)
        outcome.files = self.write(outcome, events, checker, info, settings)
        return outcome

    def inject_and_observe(self, cluster: Cluster, checker: Checker, runner):
        o, k, fault = self.o, self.k, self.fault
        progress = Progress(self.out, k)
        window = o.bound / k * 1.1 + 5.0  # longer than the bound: late phones are seen as late
        for step in fault.inject:
            self.say(f"fault: {step.describe()}")
            self.facts.update(faults.apply(cluster, step))
        t0, t0_wall = time.monotonic(), time.time()
        restore_after = o.failback_after if o.failback_after is not None else fault.scaled_period(k)
        restore_at = None if restore_after is None else t0 + restore_after
        schedule = [(t0 + at, step) for at, step in fault.scaled_schedule(k)]
        t1 = t1_wall = None
        # Hard limit on the whole observation (every loop here is bounded by it).
        hard_end = t0 + (restore_after or 0.0) + 2 * window + 60.0
        phones = len(runner.fleet.phones)
        while True:
            now = time.monotonic()
            if now > hard_end:
                self.say("observation time is up")
                break
            while schedule and t1 is None and schedule[0][0] <= now and (restore_at is None or schedule[0][0] < restore_at):
                _, step = schedule.pop(0)
                progress.done()
                self.say(f"fault: {step.describe()}")
                self.facts.update(faults.apply(cluster, step))
            if t1 is None and restore_at is not None and now >= restore_at:
                progress.done()
                t1, t1_wall = time.monotonic(), time.time()
                for step in fault.restore:
                    self.say(f"restore: {step.describe()}")
                    self.facts.update(faults.apply(cluster, step))
                if fault.expect == faults.SERVED:
                    # The master served throughout: nothing to fail back, the
                    # observation ends with the fault.
                    return t0, t0_wall, None, None, t1, runner.counts()
            counts = runner.counts()
            phase = "fault" if t1 is None else "failback"
            progress.show(now - t0, phase, counts, checker.mode)
            if t1 is not None:
                if self._all_registered_since(runner, t1, MASTER) or now > t1 + window:
                    break
            elif restore_at is None:
                if fault.expect == faults.OUTAGE and self._all_registered_since(runner, t0, None):
                    break
                if now > t0 + window:
                    break
            time.sleep(0.5)
        progress.done()
        counts = runner.counts()
        self.say(f"end of observation: master {counts.get(MASTER, 0)}, slave {counts.get(SLAVE, 0)}, "
                 f"none {counts.get('none', 0)} of {phones} phones")
        return t0, t0_wall, t1, t1_wall, t1, counts

    @staticmethod
    def _all_registered_since(runner, since: float, node: str | None) -> bool:
        from .report import first_registration

        # Reading the phones' event lists from this thread: each list only grows,
        # and a stale read only delays the end by one tick.
        for phone in runner.fleet.phones:
            if first_registration(list(phone.events), since, node) is None:
                return False
        return True

    def verdict(self, report, checker: Checker, lost: int) -> tuple[str, list]:
        reasons = list(report.reasons)
        if self.fault.expect == faults.SERVED:
            registered = report.phones - report.registered_at_fault.get("none", 0)
            ok = (registered == report.phones and report.failovers_seen == 0 and checker.failovers() == 0
                  and lost == 0)
            reasons = [reasons[0],
                       f"expected no failover: {report.failovers_seen} phones moved to the slave, the slave "
                       f"started its services {_times(checker.failovers())}, {lost} phones lost their "
                       f"registration"]
            return ("PASS" if ok else "FAIL"), reasons
        reasons.append(f"the slave started its services {_times(checker.failovers())} and stopped them "
                       f"{_times(checker.failbacks())}")
        return report.verdict, reasons

    # ---------------------------------------------------------------- files and table

    def write(self, outcome: Outcome, events, checker: Checker, info: BringUp, settings: dict) -> dict:
        from . import report as rep

        directory = Path(self.o.report_dir)
        files = {key: str(path) for key, path in rep.write_all(outcome.report, events, directory).items()}
        simulation = {
            "scenario": self.fault.name,
            "summary": self.fault.summary,
            "expect": self.fault.expect,
            "verdict": outcome.verdict,
            "reasons": outcome.reasons,
            "sip_probe": self.o.sip_probe,
            "failback_after": self.o.failback_after,
            "failback_policy": self.o.failback_policy,
            "slave_settings": settings,
            "slave_failovers": outcome.slave_failovers,
            "slave_failbacks": outcome.slave_failbacks,
            "slave_checks": checker.checks,
            "slave_checks_during_fault": self.checker_checks,
            "slave_checks_master_down": self.checker_down,
            **self.facts,
            "slave_events": [e.to_dict() for e in checker.events],
            "lost_registration": outcome.lost_registration,
            "counts_at_end": outcome.counts_at_end,
            "cluster": {"master": info.master, "slave": info.slave, "users": info.users,
                        "sip_expiry": info.expiry, "granted_expiry_scaled": info.granted,
                        "bring_up_steps": info.steps},
            "timings": outcome.timings,
        }
        path = directory / "report.json"
        data = json.loads(path.read_text())
        data["simulation"] = simulation
        data["verdict"] = outcome.verdict
        _atomic(path, json.dumps(data, indent=1) + "\n")
        if self.fault.expect == faults.SERVED:
            self._junit_no_failover(directory / "junit.xml", outcome)
        return files

    @staticmethod
    def _junit_no_failover(path: Path, outcome: Outcome) -> None:
        tree = ET.parse(path)
        root = tree.getroot()
        case = ET.SubElement(root, "testcase", classname=root.get("name", "failover-simulation"),
                             name="no failover while the master serves", time="0")
        text = outcome.reasons[-1]
        if outcome.passed:
            ET.SubElement(case, "system-out").text = text
        else:
            ET.SubElement(case, "failure", message=text, type="AssertionError").text = text
            root.set("failures", str(int(root.get("failures", "0")) + 1))
        root.set("tests", str(int(root.get("tests", "0")) + 1))
        ET.indent(tree)
        _atomic(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")

    def table(self, outcome: Outcome) -> str:
        from .report import format_table

        report = outcome.report
        if self.fault.expect == faults.SERVED:
            at_fault = ", ".join(f"{k} {v}" for k, v in sorted(report.registered_at_fault.items()))
            lines = [
                f"phones {report.phones}, time scale x{report.time_scale:g}; the master kept serving "
                f"({self.fault.summary})",
                f"registered at fault: {at_fault}",
                f"phones that lost their registration: {outcome.lost_registration}",
                f"phones that moved to the slave: {outcome.failovers_seen}",
                f"slave: started its services {_times(outcome.slave_failovers)}, "
                f"saw the master down in {self.checker_down} of its {self.checker_checks} checks during the fault",
            ]
            if "packets_dropped" in self.facts:
                lines.append(f"packets dropped by the fault: {self.facts['packets_dropped']} of "
                             f"{self.facts.get('packets_from_peer', '?')} from the slave")
        else:
            lines = [format_table(report).rsplit("\nverdict:", 1)[0]]
            lines.append(f"slave: started its services {_times(outcome.slave_failovers)}, stopped them "
                         f"{_times(outcome.slave_failbacks)}")
            if self.fault.note and not self.o.sip_probe:
                lines.append(f"note: {self.fault.note}")
        for reason in outcome.reasons:
            lines.append(f"  - {reason}")
        lines.append(f"verdict: {outcome.verdict}")
        return "\n".join(lines)


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _expiry(values: dict) -> str:
    order = [("minexpiry", "min_expires"), ("maxexpiry", "max_expires"), ("defaultexpiry", "default_expires")]
    parts = [str(values.get(a, values.get(b, "?")) or "blank") for a, b in order]
    return "/".join(parts)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- command line


class Simulator(cli.Application):
    """Measure XiVO HA failover with a real two-node cluster in docker and SIP phones."""

    PROGNAME = "xivo-ha-simulator"
    VERSION = __version__
    USAGE = "    xivo-ha-simulator run [SWITCHES] | down\n"

    def main(self, *args):
        if args:
            print(f"xivo-ha-simulator: unknown command {args[0]!r}: expected run or down", file=sys.stderr)
            return EXIT_USAGE
        if not self.nested_command:
            self.help()
            return EXIT_USAGE
        return None


@Simulator.subcommand("run")
class Run(cli.Application):
    """Build the cluster, register the phones, inject the fault, report downtime (exit 0 PASS, 1 FAIL)"""

    phones = cli.SwitchAttr(["--phones"], cli.Range(1, 20000), default=200, argname="N",
                            help="Number of SIP phones (primary = master, backup = slave)")
    scenario = cli.SwitchAttr(["--scenario"], cli.Set(*faults.CATALOG), default=faults.DEFAULT,
                              help="The fault: " + "; ".join(f"{f.name}: {f.summary}"
                                                             for f in faults.CATALOG.values()))
    time_scale = cli.SwitchAttr(["--time-scale"], PositiveFloat(100), default=10.0, argname="K",
                                help="Divide every HA timer by K (1: real time, the nodes' cron runs the checks)")
    failback_after = cli.SwitchAttr(["--failback-after"], NonNegativeFloat(86400), default=None, argname="S",
                                    help="Restore the master S seconds (wall clock, not scaled) after the fault "
                                         "and measure the failback from that moment, the master's start "
                                         "included; for packet-loss and flapping: when the fault ends")
    report_dir = cli.SwitchAttr(["--report-dir"], str, default="simulation-report", argname="D",
                                help="Where report.json, junit.xml and timeline.png go")
    sip_probe = cli.Flag(["--sip-probe"], help="Turn the slave's SIP OPTIONS probe on ([probe] sip_probe)")
    failback_policy = cli.SwitchAttr(["--failback-policy"], cli.Set("next-refresh", "probe"),
                                     default="next-refresh",
                                     help="How phones return to the primary: try it at each refresh, or probe it")
    failures_before_failover = cli.SwitchAttr(["--failures-before-failover"], cli.Range(1, 60), default=None,
                                              argname="N",
                                              help="The slave's [failover] failures_before_failover (default: 1, "
                                                   "XiVO parity, or the scenario's)")
    bound = cli.SwitchAttr(["--bound"], PositiveFloat(86400), default=DEFAULT_BOUND, argname="SECONDS",
                           help="Downtime bound, real-equivalent seconds (XiVO: 5 minutes)")
    reuse = cli.Flag(["--reuse"], help="Reset and reuse a running cluster instead of creating new nodes")
    project = cli.SwitchAttr(["--project"], str, default=PROJECT, argname="NAME",
                             help="docker-compose project name of the cluster")

    def main(self):
        options = Options(
            phones=self.phones, scenario=self.scenario, time_scale=self.time_scale,
            failback_after=self.failback_after, report_dir=self.report_dir, sip_probe=self.sip_probe,
            failback_policy=self.failback_policy, failures_before_failover=self.failures_before_failover,
            bound=self.bound, reuse=self.reuse, project=self.project,
        )
        simulation = Simulation(options)
        try:
            outcome = simulation.run()
        except ClusterError as exc:
            print(f"xivo-ha-simulator: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print()
        print(simulation.table(outcome))
        print(f"report: {', '.join(outcome.files.values())}")
        print(f"the cluster is still up for inspection (docker-compose -p {options.project} ps); "
              f"`xivo-ha-simulator down` removes it")
        return EXIT_PASS if outcome.passed else EXIT_FAIL


@Simulator.subcommand("down")
class Down(cli.Application):
    """Remove the simulator's cluster (containers and network)"""

    project = cli.SwitchAttr(["--project"], str, default=PROJECT, argname="NAME",
                             help="docker-compose project name of the cluster")

    def main(self):
        try:
            Cluster(self.project).down()
        except ClusterError as exc:
            print(f"xivo-ha-simulator: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print(f"xivo-ha-simulator: cluster {self.project} removed")
        return EXIT_PASS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; ``argv`` without the program name (default: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _, code = Simulator.run(["xivo-ha-simulator", *args], exit=False)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
