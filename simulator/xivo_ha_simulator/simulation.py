"""One simulation run: cluster, phones, fault, measurement, report.

:class:`Simulation` builds (or resets) the cluster, starts the phones from the
master's provisioning, injects the fault from the catalog, watches until every
phone is back or the time is up, then has :func:`report.compute` judge what the
phones and the slave did and writes the report files once.

    outcome = Simulation(Options(scenario="power-off", failback_after=60)).run()
    outcome.verdict -> "PASS" or "FAIL"; outcome.files -> {"json": ..., "junit": ..., "timeline": ...}

Failures to build or drive the cluster raise :class:`cluster.ClusterError`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import cti, faults, pstn, rpo
from . import report as rep
from .cluster import (CARRIER, MASTER, PROJECT, SHARE, SLAVE, BringUp, Checker, Cluster, ClusterError,
                      fast_check_switches, fast_settings)
from .constants import (DEFAULT_BOUND, DEFAULT_CALL_RATE, DEFAULT_PSTN_RATE, DEFAULT_REDIAL_AFTER,
                        DEFAULT_TRUNK_EXPIRY, OUTAGE, SERVED, SERVING)
from .events import CTI_CONNECTED, NONE
from .phone import Credentials, Fleet, FleetThread, PhoneConfig, Registrar, provisioned_line
from .sip import SIP_PORT

FIRST_USER = 1001  # phone i is the line of extension 1001 + i
REAL_EXPIRES = 3600  # what the phones ask for (real seconds); the registrar caps it


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
    call_rate: float = DEFAULT_CALL_RATE
    invite_timeout: float | None = None
    redial_after: float = DEFAULT_REDIAL_AFTER
    pstn_rate: float = DEFAULT_PSTN_RATE
    sweep: float | None = None  # real seconds: the PSTN sweeps every DID at the fault and the restore (pstn.py)
    trunk_expiry: int = DEFAULT_TRUNK_EXPIRY
    bound: float = DEFAULT_BOUND
    reuse: bool = False
    project: str = PROJECT
    net: str | None = None
    replication: str = "hourly"  # [replication] mode of both nodes
    fast: bool = False  # the slave's check in fast mode
    cti: bool = True  # one XiVO Client per phone's user (cti.py)
    new_users: int = 0  # users created on the master shortly before the fault (rpo.py)
    created_before_fault: float = 0.0  # real seconds between their creation and the fault (divided by K)


@dataclass(frozen=True)
class Observation:
    """When the fault hit and was undone, monotonic and wall clock, and where the phones ended."""

    fault_time: float
    fault_wall: float
    failback_time: float | None  # the failback measured; None: no restore, or the master served throughout
    failback_wall: float | None
    restored: float | None  # when the fault was undone; None: it never was
    counts_at_end: dict  # phones per registrar when the observation ended
    ended: float | None = None  # when it ended (what came later is not judged); None: the phones' end


@dataclass(frozen=True)
class SlaveChecks:
    """The slave's checks that ended between the fault and its restore."""

    during_fault: int
    master_down: int  # of those, the ones that found the master down


@dataclass
class Outcome:
    """What a run established; the verdict is the report's."""

    report: rep.Report
    observation: Observation
    checks: SlaveChecks
    files: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.report.verdict

    @property
    def passed(self) -> bool:
        return self.report.passed


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
                f"none {counts.get(NONE, 0):5d}  | slave {slave_mode or '?'}")
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


class Simulation:
    """One run: cluster, phones, fault, measurement, report."""

    def __init__(self, options: Options, out: TextIO = sys.stdout):
        self.o = options
        self.out = out
        self.fault = faults.get(options.scenario)
        self.k = float(options.time_scale)
        self.started = time.monotonic()
        self.facts: dict = {}  # what the fault's steps reported (e.g. packets dropped)
        self.settings: dict = {}  # the slave settings of this run, "section.key" -> value
        self.clients: cti.Clients | None = None  # the XiVO Clients, also awaited by the observation
        self.caller: pstn.PstnThread | None = None  # the PSTN caller, also awaited by the observation

    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.started:6.1f}s] {text}\n")
        self.out.flush()

    # ---------------------------------------------------------------- phases

    def cluster(self) -> tuple[Cluster, BringUp]:
        cluster = Cluster(self.o.project, self.k, self.o.net, log=self.say, fast=self.o.fast)
        if self.o.reuse and cluster.exists() and cluster.time_scale_of_nodes() == self.k:
            self.say("reusing the running cluster: resetting it")
            info = self.reuse(cluster)
        else:
            if self.o.reuse:
                self.say("no running cluster with this time scale: creating one")
            cluster.up(recreate=True)
            info = cluster.bring_up(self.o.phones, trunk_expiry=self.o.trunk_expiry, replication=self.o.replication)
        return cluster, info

    def reuse(self, cluster: Cluster) -> BringUp:
        cluster.reset(self.o.sip_probe)
        users, _ = cluster.users_digest(MASTER)
        slave_ip = cluster.address(SLAVE)
        if cluster.set_replication_mode(self.o.replication):
            # What the new mode needs (or no longer needs) is set up by the role change.
            self.say(f"replication mode {self.o.replication}: xivo-ha enable again on both nodes")
            cluster.exec(SLAVE, ["xivo-ha", "enable", "slave", cluster.address(MASTER)], timeout=120)
            cluster.exec(MASTER, ["xivo-ha", "enable", "master", slave_ip], timeout=120)
        if users < self.o.phones:
            cluster.add_users(MASTER, self.o.phones)
            cluster.exec(MASTER, ["xivo-ha", "enable", "master", slave_ip], timeout=120)
        new_trunk = cluster.trunk_expiry(MASTER) != self.o.trunk_expiry
        if new_trunk:
            cluster.set_trunk(MASTER, self.o.trunk_expiry)
        cluster.exec(MASTER, ["xivo-master-slave-db-replication", slave_ip], timeout=300)
        if new_trunk:
            # The registrar reads the trunk rows at its start, as Asterisk reads sip.conf.
            self.say(f"the trunk's register expiry is now {self.o.trunk_expiry} s: restarting the master's registrar")
            cluster.exec(MASTER, ["service", "kamailio", "restart"], timeout=60)
        on_master, on_slave = cluster.users_digest(MASTER), cluster.users_digest(SLAVE)
        if on_master != on_slave:
            raise ClusterError(f"after replication the slave has {on_slave[0]} users, the master {on_master[0]}")
        primary, backup = cluster.provisioned_registrars()
        return BringUp(master=cluster.address(MASTER), slave=slave_ip, gateway=cluster.gateway,
                       primary=primary, backup=backup, users=on_master[0], expiry=cluster.sip_expiry(MASTER),
                       granted=cluster.granted(MASTER), steps=[])

    def provisioned(self, info: BringUp, fetch) -> tuple[str, str, dict[int, Credentials | None]]:
        """Each phone fetches its own config from the master's provisioning; they must agree.

        Also each phone's line credentials, which it authenticates with.
        """
        pairs: dict[tuple[str, str | None], list[int]] = {}
        credentials: dict[int, Credentials | None] = {}
        for number in range(FIRST_USER, FIRST_USER + self.o.phones):
            try:
                line = fetch(info.master, number)
                pairs.setdefault((line.registrar, line.backup), []).append(number)
                credentials[number] = line.credentials
            except OSError as exc:
                raise ClusterError(f"phone {number} could not fetch its provisioning file: {exc}") from None
        for (primary, backup), numbers in pairs.items():
            if primary != info.master or backup != info.slave:
                raise ClusterError(f"{len(numbers)} phone(s) (e.g. {numbers[0]}) are provisioned with registrar "
                                   f"{primary} and backup {backup}, not {info.master} and {info.slave}: "
                                   f"`xivo-ha enable master` did not update their device configs")
        self.say(f"{self.o.phones} phones provisioned over HTTP: registrar {info.master}, backup {info.slave}")
        return info.master, info.slave, credentials

    def slave_settings(self, cluster: Cluster) -> dict:
        """Write this run's probe and failover settings on the slave; return them."""
        wanted = {("probe", "sip_probe"): "on" if self.o.sip_probe else "off",
                  ("failover", "failures_before_failover"): "1", **fast_settings(self.o.fast)}
        for section, key, value in self.fault.slave_settings:
            wanted[(section, key)] = value
        if self.o.failures_before_failover is not None:
            wanted[("failover", "failures_before_failover")] = str(self.o.failures_before_failover)
        for (section, key), value in wanted.items():
            cluster.set_setting(SLAVE, section, key, value)
        self.settings = {f"{section}.{key}": value for (section, key), value in wanted.items()}
        return self.settings

    def fleet(self, info: BringUp) -> tuple[FleetThread, PhoneConfig]:
        """The phones, provisioned from the master, on a thread of their own (not started)."""
        config = PhoneConfig(expires=REAL_EXPIRES, time_scale=self.k, failback=self.o.failback_policy,
                             call_rate=self.o.call_rate, invite_timeout=self.o.invite_timeout,
                             redial_after=self.o.redial_after)
        primary, backup, credentials = self.provisioned(info, provisioned_line)
        fleet = Fleet(Registrar(MASTER, primary), Registrar(SLAVE, backup), self.o.phones, config,
                      local_hosts=(info.gateway,), first_user=FIRST_USER, credentials=credentials.get)
        return FleetThread(fleet), config

    def cti_clients(self, cluster: Cluster, info: BringUp, numbers) -> cti.Clients:
        """One XiVO Client per phone's user, main = master, backup = slave, started (not waited for).

        The accounts are the users' CTI accounts in the master's database, as
        an administrator hands them out.
        """
        accounts = cti.accounts(cluster.sql(MASTER, cti.ACCOUNTS_QUERY))
        config = cti.ClientConfig(time_scale=self.k)
        main, backup = cti.Server(MASTER, info.master), cti.Server(SLAVE, info.slave)
        missing = [n for n in numbers if str(n) not in accounts]
        if missing:
            raise ClusterError(f"{len(missing)} phone user(s) (e.g. {missing[0]}) have no enabled CTI account "
                               f"on the master (userfeatures loginclient/passwdclient)")
        clients = cti.Clients([cti.Client(str(n), accounts[str(n)], main, backup, config) for n in numbers])
        clients.start(rate=cti.START_RATE)
        self.clients = clients
        self.say(f"{len(numbers)} XiVO Clients started: main {info.master}, backup {info.slave}, "
                 f"connect timeout {config.scaled(config.connect_timeout):.2f}s "
                 f"({config.connect_timeout:g}s real)")
        return clients

    def replicate(self, cluster: Cluster, slave_ip: str) -> bool:
        """One xivo-master-slave-db-replication on the master, as its cron line runs it."""
        try:
            result = cluster.exec(MASTER, ["xivo-master-slave-db-replication", slave_ip], timeout=300, check=False)
        except ClusterError as exc:
            self.say(f"replication: {exc}")
            return False
        if not result.ok:
            self.say(f"replication exited {result.returncode}: {result.output()}")
        return result.ok

    def last_replication(self, cluster: Cluster) -> float | None:
        """Wall time of the master's last replication that changed the slave (its fingerprint file)."""
        try:
            result = cluster.exec(MASTER, ["date", "-r", rpo.FINGERPRINT, "+%s.%N"], check=False, timeout=30)
        except ClusterError:
            return None
        try:
            return float(result.stdout.strip()) if result.ok else None
        except ValueError:
            return None

    def lines_on(self, cluster: Cluster, node: str, numbers: list[str]) -> int | None:
        """How many of the lines of ``numbers`` (SIP lines with their usersip row) ``node``'s database has."""
        listed = ", ".join(f"'{int(n)}'" for n in numbers)
        try:
            return int(cluster.sql(node, "SELECT count(*) FROM linefeatures l JOIN usersip s ON s.name = l.name "
                                         f"WHERE l.number IN ({listed})"))
        except (ClusterError, ValueError) as exc:
            self.say(f"cannot count the new users' lines on the {node}: {exc}")
            return None

    def new_users(self, cluster: Cluster, info: BringUp, config: PhoneConfig,
                  numbers: list[int]) -> tuple[FleetThread, float]:
        """Create ``new_users`` users on the master, as the web interface would, and start their phones.

        The rows are those XiVO's web interface (confd) writes for a user with
        a SIP line and an extension: usersip, userfeatures, linefeatures,
        extensions, user_line (demo-users.sql), numbered after every user the
        master has, so that they are new even on a reused cluster; then their
        provd devices, with the backup registrar (`xivo-ha enable master` again).
        """
        count = self.o.new_users
        first = int(cluster.sql(MASTER, "SELECT coalesce(max(substring(name from 5)::int), 0) + 1 FROM usersip "
                                        "WHERE name ~ '^user[0-9]+$'"))
        created_wall = time.time()
        cluster.exec(MASTER, ["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-v", "ON_ERROR_STOP=1",
                              "-v", f"first={first}", "-v", f"count={count}", "-d", "asterisk",
                              "-f", f"{SHARE}/demo-users.sql"], timeout=120)
        cluster.exec(MASTER, ["xivo-ha-sim-provd", "devices", info.master], timeout=120)
        cluster.exec(MASTER, ["xivo-ha", "enable", "master", info.slave], timeout=120)
        new_numbers = list(range(1000 + first, 1000 + first + count))
        credentials = {}
        for number in new_numbers:
            try:
                credentials[number] = provisioned_line(info.master, number).credentials
            except OSError as exc:
                raise ClusterError(f"new phone {number} could not fetch its provisioning file: {exc}") from None
        fleet = Fleet(Registrar(MASTER, info.master), Registrar(SLAVE, info.slave), count, config,
                      local_hosts=(info.gateway,), first_user=new_numbers[0], credentials=credentials.get)
        everyone = [str(n) for n in numbers + new_numbers]
        for phone in fleet.phones:
            phone.peers = [n for n in everyone if n != phone.user]
        runner = FleetThread(fleet)
        runner.start(rate=max(1.0, count / 2.0), timeout=count + 60)
        if not runner.wait_registered(timeout=30 + 2 * config.timer_f, node=MASTER):
            self.say(f"not every new user's phone registered on the master: {runner.counts()}")
        self.say(f"{count} users created on the master at {rpo.clock(created_wall)} "
                 f"(extensions {new_numbers[0]}-{new_numbers[-1]}), their phones registered")
        return runner, created_wall

    def start_phones(self, runner: FleetThread, config: PhoneConfig, info: BringUp) -> None:
        granted = info.granted.get("max_expires") or config.requested_expires
        refresh = max(1.0, min(granted, config.requested_expires) * config.refresh_ratio)
        # Phones start spread over one refresh interval, as real phones have
        # every phase: the fault then hits each at a different point of its cycle.
        spread = refresh
        self.say(f"starting {self.o.phones} phones over {spread:.1f}s (registrations refreshed every "
                 f"~{refresh:.1f}s, {refresh * self.k:.0f}s real)")
        runner.start(rate=self.o.phones / spread, timeout=spread + 60)
        if not runner.wait_registered(timeout=30 + 2 * config.timer_f, node=MASTER):
            self.say(f"not every phone registered on the master: {runner.counts()}")

    def pstn_caller(self, cluster: Cluster, runner: FleetThread, info: BringUp) -> pstn.PstnThread:
        """The PSTN's calls to the phones' DIDs through the carrier, started with the phones."""
        dids = {pstn.did_of(phone.user): phone.user for phone in runner.fleet.phones}
        caller = pstn.PstnThread(pstn.PstnCaller((cluster.address(CARRIER), SIP_PORT), dids,
                                                 pstn.PstnConfig(rate=self.o.pstn_rate, time_scale=self.k,
                                                                 redial_after=self.o.redial_after)))
        caller.start(info.gateway)
        self.say(f"PSTN calls through the carrier {cluster.address(CARRIER)} at {self.o.pstn_rate:g} per phone "
                 f"per real hour (trunk register expiry {self.o.trunk_expiry} s)")
        return caller

    # ---------------------------------------------------------------- the run

    def run(self) -> Outcome:
        o, k, fault = self.o, self.k, self.fault
        self.say(f"scenario {fault.name}: {fault.summary}; {o.phones} phones, time scale x{k:g}, "
                 f"SIP probe {'on' if o.sip_probe else 'off'}, {self.modes()}"
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
        replicator = rpo.Replicator(lambda: self.replicate(cluster, info.slave), k, self.say)
        runner = caller = clients = newcomers = None
        created_wall = last_replication = on_slave = None
        try:
            checker.start()
            replicator.start()
            runner, config = self.fleet(info)
            t = time.monotonic()
            self.start_phones(runner, config, info)
            caller = self.caller = self.pstn_caller(cluster, runner, info)
            numbers = [int(p.user) for p in runner.fleet.phones]
            if o.cti:
                clients = self.cti_clients(cluster, info, numbers)
            timings["phones"] = round(time.monotonic() - t, 1)
            if o.new_users:
                newcomers, created_wall = self.new_users(cluster, info, config, numbers)
                fault_at = created_wall + o.created_before_fault / k
                self.say(f"the fault comes {o.created_before_fault:g}s real ({o.created_before_fault / k:.1f}s) "
                         f"after their creation; the master replicates every {replicator.period:.0f}s"
                         + ("" if replicator.drives else " (its cron)"))
                time.sleep(max(0.0, fault_at - time.time()))
                last_replication = self.last_replication(cluster)
                on_slave = self.lines_on(cluster, SLAVE, [p.user for p in newcomers.fleet.phones])
            observation = self.inject_and_observe(cluster, checker, runner)
        finally:
            events = runner.events() if runner is not None else {}
            pstn_events = caller.events() if caller is not None else {}
            cti_events = clients.events() if clients is not None else None
            new_events = newcomers.events() if newcomers is not None else None
            for running in (caller, clients, newcomers, runner):
                if running is not None:
                    running.stop()
            replicator.stop()
            checker.stop()
        rpo_result = None
        if new_events is not None:
            rpo_result = rpo.compute(new_events, observation.fault_time, created_wall, last_replication, SLAVE,
                                     on_slave, o.replication)
        report = rep.compute(events, observation.fault_time, observation.failback_time, time_scale=k,
                             bound=o.bound, primary=MASTER, backup=SLAVE, fault_wall=observation.fault_wall,
                             failback_wall=observation.failback_wall, expect=fault.expect,
                             slave=rep.SlaveActivity(checker.failovers(), checker.failbacks(),
                                                     tuple(e.t for e in checker.events if e.mode == SERVING)),
                             restored=observation.restored, pstn=pstn_events, cti=cti_events, rpo=rpo_result,
                             until=observation.ended)
        checks = SlaveChecks(*checker.checks_between(observation.fault_time, observation.restored))
        timings["observation"] = round(time.monotonic() - observation.fault_time, 1)
        timings["total"] = round(time.monotonic() - self.started, 1)
        outcome = Outcome(report, observation, checks, timings=timings)
        outcome.files = self.write(outcome, events, checker, info, settings, cti_events, new_events,
                                   replicator.runs)
        return outcome

    def apply(self, cluster: Cluster, steps, what: str) -> None:
        for step in steps:
            self.say(f"{what}: {step.describe()}")
            self.facts.update(faults.apply(cluster, step))

    def inject_and_observe(self, cluster: Cluster, checker: Checker, runner: FleetThread) -> Observation:
        o, k, fault = self.o, self.k, self.fault
        progress = Progress(self.out, k)
        window = o.bound / k * 1.1 + 5.0  # longer than the bound: late phones are seen as late
        self.apply(cluster, fault.inject, "fault")
        t0, t0_wall = time.monotonic(), time.time()
        restore_after = o.failback_after if o.failback_after is not None else fault.scaled_period(k)
        restore_at = None if restore_after is None else t0 + restore_after
        schedule = [(t0 + at, step) for at, step in fault.scaled_schedule(k)]
        t1 = t1_wall = None
        # Hard limit on the whole observation (every loop here is bounded by it).
        hard_end = t0 + (restore_after or 0.0) + 2 * window + 60.0
        self.sweep(hard_end)
        while True:
            now = time.monotonic()
            if now > hard_end:
                self.say("observation time is up")
                break
            while (schedule and t1 is None and schedule[0][0] <= now
                   and (restore_at is None or schedule[0][0] < restore_at)):
                _, step = schedule.pop(0)
                progress.done()
                self.apply(cluster, [step], "fault")
            if t1 is None and restore_at is not None and now >= restore_at:
                progress.done()
                t1, t1_wall = time.monotonic(), time.time()
                self.apply(cluster, fault.restore, "restore")
                self.sweep(hard_end)
                if fault.expect == SERVED:
                    # The master served throughout: nothing to fail back, the
                    # observation ends with the fault.
                    return Observation(t0, t0_wall, None, None, t1, runner.counts())
            progress.show(now - t0, "fault" if t1 is None else "failback", runner.counts(), checker.mode)
            if self._observed_enough(runner, now, t0, t1, restore_at, window):
                break
            time.sleep(0.5)
        progress.done()
        counts = runner.counts()
        self.say(f"end of observation: master {counts.get(MASTER, 0)}, slave {counts.get(SLAVE, 0)}, "
                 f"none {counts.get(NONE, 0)} of {len(runner.fleet.phones)} phones")
        return Observation(t0, t0_wall, t1, t1_wall, t1, counts, ended=time.monotonic())

    def sweep(self, until: float) -> None:
        """With ``--sweep``: the PSTN dials every DID from now until each connected, or ``until``."""
        if self.o.sweep is None or self.caller is None:
            return
        limit = max(self.o.sweep, (until - time.monotonic()) * self.k)
        self.caller.sweep(self.o.sweep, limit)
        self.say(f"PSTN sweep: every DID dialled, again after {self.o.sweep:g}s real "
                 f"({self.o.sweep / self.k:.2f}s) without an answer, until it connects")

    def _observed_enough(self, runner: FleetThread, now: float, t0: float, t1: float | None,
                         restore_at: float | None, window: float) -> bool:
        """After a failback: every phone home and calling both ways again, or the window is over; without a
        restore: the same since the fault.  After the window the observation goes on (up to its hard limit)
        while a phone has had no call, in one direction or the other, since the fault, or its last calls
        failed: the verdict needs the call that ends its outage, not the end of the observation.  It never
        ends while a PSTN sweep has DIDs to connect.
        """
        if self.o.sweep is not None and self.caller is not None and self.caller.sweeping():
            return False
        if t1 is not None:
            return ((self._back_since(runner, t1, MASTER) and self._clients_back_since(t1, MASTER))
                    or (now > t1 + window and not self._unsettled(runner, t0)))
        if restore_at is None:
            if (self.fault.expect == OUTAGE and self._back_since(runner, t0, None)
                    and self._clients_back_since(t0, None)):
                return True
            return now > t0 + window and not self._unsettled(runner, t0)
        return False

    def _clients_back_since(self, since: float, node: str | None) -> bool:
        """Every XiVO Client logged in (on ``node`` if given) since ``since``; True without clients."""
        if self.clients is None:
            return True
        for client in self.clients.clients:
            connection = client.connection  # read from this thread: a stale read only delays the end
            if connection is None or (node is not None and connection.server.name != node):
                return False
            if not any(e.kind == CTI_CONNECTED and e.t >= since for e in list(client.events)):
                return False
        return True

    @staticmethod
    def _events(runner: FleetThread) -> dict:
        # Reading the phones' event lists from this thread: each list only grows,
        # and a stale read only delays the end by one tick.
        return {phone.user: list(phone.events) for phone in runner.fleet.phones}

    def _pstn_events(self) -> dict | None:
        return self.caller.events() if self.caller is not None else None

    def _back_since(self, runner: FleetThread, since: float, node: str | None) -> bool:
        """Every phone registered (on ``node`` if given) since ``since``, and calls settled both ways (PSTN too)."""
        events = self._events(runner)
        if any(rep.first_registration(evs, since, node) is None for evs in events.values()):
            return False
        return self.o.call_rate == 0 or not rep.calls_unsettled(events, since, self._pstn_events())

    def _unsettled(self, runner: FleetThread, since: float) -> bool:
        return self.o.call_rate > 0 and bool(rep.calls_unsettled(self._events(runner), since, self._pstn_events()))

    # ---------------------------------------------------------------- files and table

    def write(self, outcome: Outcome, events, checker: Checker, info: BringUp, settings: dict,
              cti_events=None, new_events=None, replications=()) -> dict:
        report = outcome.report
        simulation = {
            "scenario": self.fault.name,
            "summary": self.fault.summary,
            "expect": self.fault.expect,
            "verdict": report.verdict,
            "reasons": report.reasons,
            "sip_probe": self.o.sip_probe,
            "failback_after": self.o.failback_after,
            "failback_policy": self.o.failback_policy,
            "call_rate": self.o.call_rate,
            "fault_steps": [step.describe() for step in self.fault.inject],
            "replication_mode": self.o.replication,
            "fast": self.o.fast,
            "check_switches": fast_check_switches(self.k, self.o.fast),
            "slave_settings": settings,
            "slave_failovers": report.slave.failovers,
            "slave_failbacks": report.slave.failbacks,
            "slave_checks": checker.checks,
            "slave_checks_during_fault": outcome.checks.during_fault,
            "slave_checks_master_down": outcome.checks.master_down,
            **self.facts,
            "slave_events": [e.to_dict() for e in checker.events],
            "lost_registration": report.lost_registration,
            "pstn": pstn.summary(report.pstn, outcome.observation.fault_time, outcome.observation.restored,
                                 self.k, rate=self.o.pstn_rate, trunk_expiry=self.o.trunk_expiry,
                                 sweep=self.o.sweep),
            "counts_at_end": outcome.observation.counts_at_end,
            "cluster": {"master": info.master, "slave": info.slave, "users": info.users,
                        "sip_expiry": info.expiry, "granted_expiry_scaled": info.granted,
                        "bring_up_steps": info.steps},
            "timings": outcome.timings,
        }
        if cti_events is not None:
            simulation["cti_events"] = {pid: [e.to_dict() for e in evs] for pid, evs in cti_events.items()}
        if new_events is not None:
            simulation["new_user_events"] = {pid: [e.to_dict() for e in evs] for pid, evs in new_events.items()}
        simulation["replications"] = [{"wall": round(wall, 3), "ok": ok} for wall, ok in replications]
        files = rep.write_all(report, events, Path(self.o.report_dir), simulation)
        return {key: str(path) for key, path in files.items()}

    def modes(self) -> str:
        """The replication mode and the slave's check mode, as the report states them."""
        check = "one check a minute (XiVO)"
        if self.o.fast:
            check = f"fast mode ({' '.join(fast_check_switches(self.k, True))}, one ping per round)"
        return f"replication {self.o.replication}, slave checks: {check}"

    def table(self, outcome: Outcome) -> str:
        report = outcome.report
        slave = report.slave
        if self.fault.expect == SERVED:
            at_fault = ", ".join(f"{k} {v}" for k, v in sorted(report.registered_at_fault.items()))
            lines = rep.figures(report) + [
                "",
                f"phones {report.phones}, time scale x{report.time_scale:g}; the master kept serving "
                f"({self.fault.summary})",
                f"registered at fault: {at_fault}",
                f"phones that lost their registration: {report.lost_registration}",
                f"phones that moved to the slave: {report.failovers_seen}",
                f"slave: started its services {rep.how_often(slave.failovers)}, saw the master down in "
                f"{outcome.checks.master_down} of its {outcome.checks.during_fault} checks during the fault",
            ]
            if self.settings:
                lines.append("slave settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
            if "packets_dropped" in self.facts:
                lines.append(f"packets dropped by the fault: {self.facts['packets_dropped']} of "
                             f"{self.facts.get('packets_from_peer', '?')} from the slave")
            lines.extend(rep.calls_lines(report))
        else:
            lines = [rep.format_table(report).rsplit("\nverdict:", 1)[0]]
            lines.append(f"slave: started its services {rep.how_often(slave.failovers)}, stopped them "
                         f"{rep.how_often(slave.failbacks)}")
            if self.fault.note and not self.o.sip_probe:
                lines.append(f"note: {self.fault.note}")
        lines.append(self.modes())
        for reason in report.reasons:
            lines.append(f"  - {reason}")
        lines.append(f"verdict: {report.verdict}")
        return "\n".join(lines)


def _expiry(values: dict) -> str:
    order = [("minexpiry", "min_expires"), ("maxexpiry", "max_expires"), ("defaultexpiry", "default_expires")]
    parts = [str(values.get(a, values.get(b, "?")) or "blank") for a, b in order]
    return "/".join(parts)
