"""xivo-ha-simulator: measure what a XiVO HA failover costs the phones.

``xivo-ha-simulator run`` builds a master/slave cluster from the node image (our
.deb inside), configures HA with the real toolkit, registers N SIP phones
(primary = master, backup = slave, from the master's provisioning), injects a
fault from the catalog, optionally restores the master, and reports every
phone's downtime against the 5-minute bound.  ``xivo-ha-simulator down`` removes
the cluster.

    main(["run", "--scenario", "power-off", "--failback-after", "60"]) -> 0 (PASS) or 1 (FAIL)

``argv`` excludes the program name.  Exit codes: 0 PASS, 1 FAIL (or the cluster
could not be built: the message says why), 2 bad usage.  This module only parses
the switches: the run itself is :class:`simulation.Simulation`, and the two
runs of ``--compare-replication`` (hourly, then continuous) are
:func:`comparison.run_both`'s; that exits 0 only when both pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from plumbum import cli
from plumbum.cli.application import ShowHelp, ShowHelpAll, ShowVersion
from plumbum.cli.switches import SwitchError

from . import __version__, comparison, faults
from .cluster import PROJECT, REPLICATION_MODES, Cluster, ClusterError
from .constants import (DEFAULT_BOUND, DEFAULT_CALL_RATE, DEFAULT_PSTN_RATE, DEFAULT_REDIAL_AFTER,
                        DEFAULT_TRUNK_EXPIRY)
from .simulation import Options, Outcome, Simulation

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


class BadCommandLine(Exception):
    """A wrong command line, said in one line by :func:`main`."""


class Application(cli.Application):
    """plumbum prints a wrong command line on stdout with the whole help: here it is one
    line on stderr and exit 2, like every other bad input."""

    def _parse_args(self, argv):
        try:
            return super()._parse_args(argv)
        except (ShowHelp, ShowHelpAll, ShowVersion):
            raise
        except SwitchError as exc:
            raise BadCommandLine(_first_line(exc)) from None

    def _validate_args(self, swfuncs, tailargs):
        try:
            return super()._validate_args(swfuncs, tailargs)
        except (ShowHelp, ShowHelpAll, ShowVersion):
            raise
        except SwitchError as exc:
            raise BadCommandLine(_first_line(exc)) from None


def _first_line(exc: Exception) -> str:
    first = (str(exc).splitlines() or [""])[0].rstrip(":") or "wrong command line"
    return first[0].lower() + first[1:]


class Simulator(Application):
    """Measure XiVO HA failover with a real two-node cluster in docker and SIP phones."""

    PROGNAME = "xivo-ha-simulator"
    VERSION = __version__
    USAGE = "    xivo-ha-simulator run [SWITCHES] | down\n"

    def main(self, *args):
        if args:
            print(f"xivo-ha-simulator: unknown command {args[0]!r}: expected run or down", file=sys.stderr)
            return EXIT_USAGE
        if not self.nested_command:
            with contextlib.redirect_stdout(sys.stderr):
                self.help()
            return EXIT_USAGE
        return None


@Simulator.subcommand("run")
class Run(Application):
    """Build the cluster, start the phones and their calls, inject the fault, report what users lost
    (exit 0 PASS, 1 FAIL)"""

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
    call_rate = cli.SwitchAttr(["--call-rate"], NonNegativeFloat(3600), default=DEFAULT_CALL_RATE, argname="N",
                               help="Calls each phone places per real hour, to random other phones that have registered once (0: none)")
    invite_timeout = cli.SwitchAttr(["--invite-timeout"], PositiveFloat(3600), default=None, argname="SECONDS",
                                    help="How long a phone waits for an answer to an INVITE before it retries the "
                                         "call through its other registrar and re-registers there (real seconds, "
                                         "scaled like every SIP timer; default: Timer B, 64 x T1 = 32 s)")
    redial_after = cli.SwitchAttr(["--redial-after"], NonNegativeFloat(3600), default=DEFAULT_REDIAL_AFTER,
                                  argname="SECONDS",
                                  help="A user whose call failed dials it again after SECONDS (real, scaled; at "
                                       "most 10 times in a row; 0: never)")
    pstn_rate = cli.SwitchAttr(["--pstn-rate"], NonNegativeFloat(3600), default=DEFAULT_PSTN_RATE, argname="N",
                               help="Calls from the PSTN per phone per real hour, to random users' DIDs through "
                                    "the trunk carrier (0: none)")
    sweep = cli.SwitchAttr(["--sweep"], PositiveFloat(3600), default=None, argname="SECONDS",
                           help="At the fault and at the restore the PSTN dials every user's DID, and again as "
                                "soon as a call got no answer within SECONDS (real, scaled), until each "
                                "connected: every phone's incoming outage measured to within SECONDS")
    trunk_expiry = cli.SwitchAttr(["--trunk-expiry"], cli.Range(1, 86400), default=DEFAULT_TRUNK_EXPIRY,
                                  argname="SECONDS",
                                  help="The trunk's registration expiry (real seconds): the master's staticsip "
                                       "register row ~expiry, replicated to the slave")
    bound = cli.SwitchAttr(["--bound"], PositiveFloat(86400), default=DEFAULT_BOUND, argname="SECONDS",
                           help="Downtime bound, real-equivalent seconds (XiVO: 5 minutes)")
    replication = cli.SwitchAttr(["--replication"], cli.Set(*REPLICATION_MODES), default="hourly",
                                 help="[replication] mode of both nodes: the hourly verified copy (XiVO), or "
                                      "continuous (a stream between the copies)")
    compare_replication = cli.Flag(["--compare-replication"], excludes=["--replication"],
                                   help="Run the scenario twice on one cluster, hourly then continuous "
                                        "replication, and report both side by side (<report-dir>/hourly, "
                                        "/continuous, comparison.json)")
    fast = cli.Flag(["--fast"], help="The slave's check in fast mode: --loop 55 --interval 5 (divided by K), "
                                     "one ping per round")
    new_users = cli.SwitchAttr(["--new-users"], cli.Range(1, 1000), default=0, argname="N",
                               help="Create N users on the master shortly before the fault (their phones start "
                                    "then) and report how many can register and call on the slave after it")
    created_before_fault = cli.SwitchAttr(["--created-before-fault"], NonNegativeFloat(86400), default=300.0,
                                          argname="S", requires=["--new-users"],
                                          help="Real seconds (divided by K) between the new users' creation and "
                                               "the fault; the master replicates hourly (3600/K s)")
    no_cti = cli.Flag(["--no-cti"], help="No XiVO Clients (by default one per phone's user logs in to the "
                                         "master's CTI server, backup the slave's)")
    reuse = cli.Flag(["--reuse"], help="Reset and reuse a running cluster instead of creating new nodes")
    project = cli.SwitchAttr(["--project"], str, default=PROJECT, argname="NAME",
                             help="docker-compose project name of the cluster")

    def main(self):
        options = Options(
            phones=self.phones, scenario=self.scenario, time_scale=self.time_scale,
            failback_after=self.failback_after, report_dir=self.report_dir, sip_probe=self.sip_probe,
            failback_policy=self.failback_policy, failures_before_failover=self.failures_before_failover,
            call_rate=self.call_rate, bound=self.bound, reuse=self.reuse, project=self.project,
            replication=self.replication, fast=self.fast,
            invite_timeout=self.invite_timeout, redial_after=self.redial_after,
            pstn_rate=self.pstn_rate, sweep=self.sweep, trunk_expiry=self.trunk_expiry,
            cti=not self.no_cti, new_users=self.new_users, created_before_fault=self.created_before_fault,
        )
        try:
            return self.compare(options) if self.compare_replication else self.single(options)
        except ClusterError as exc:
            print(f"xivo-ha-simulator: {exc}", file=sys.stderr)
            return EXIT_FAIL

    @staticmethod
    def single(options: Options) -> int:
        outcome, table = simulate(options)
        print()
        print(table)
        _files_and_cluster(options, outcome.files.values())
        return EXIT_PASS if outcome.passed else EXIT_FAIL

    @staticmethod
    def compare(options: Options) -> int:
        result, outcomes = comparison.run_both(options, simulate, sys.stdout)
        for mode, (_, table) in outcomes.items():
            print()
            print(f"replication {mode}:")
            print(table)
        print()
        print(comparison.format_table(result))
        files = [path for outcome, _ in outcomes.values() for path in outcome.files.values()]
        _files_and_cluster(options, [*files, str(Path(options.report_dir) / comparison.COMPARISON)])
        return EXIT_PASS if all(outcome.passed for outcome, _ in outcomes.values()) else EXIT_FAIL


def simulate(options: Options) -> tuple[Outcome, str]:
    """One run: its outcome and its table."""
    simulation = Simulation(options)
    outcome = simulation.run()
    return outcome, simulation.table(outcome)


def _files_and_cluster(options: Options, files: Iterable[str]) -> None:
    print(f"report: {', '.join(files)}")
    print(f"the cluster is still up for inspection (docker-compose -p {options.project} ps); "
          f"`xivo-ha-simulator down` removes it")


@Simulator.subcommand("down")
class Down(Application):
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
    except BadCommandLine as exc:
        print(f"xivo-ha-simulator: {exc}: see `xivo-ha-simulator --help`", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`xivo-ha-simulator run --help | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0 if code is None else int(code)
