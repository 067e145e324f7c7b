"""xivo-check-master-status <master_ip>: failover and failback, run by cron on the slave."""

from __future__ import annotations

import time
from typing import Optional

from plumbum import cli

from . import Command, run
from .. import events, failover, metrics, paths, probes, role, services, settings, system
from ..errors import EXIT_FAILED, OperationFailed, UsageError

LOCK_FILE = "check-master-status.lock"
MAX_LOOP = 3600.0

# Outcomes of one check.
AGAIN = "again"
ENOUGH = "enough"
FAILED = "failed"


class Seconds:
    """A switch type: a number of seconds within bounds."""

    def __init__(self, minimum: float, maximum: float):
        self.minimum = minimum
        self.maximum = maximum

    def __call__(self, text: str) -> float:
        value = float(text)
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{text} is not between {self.minimum:g} and {self.maximum:g}")
        return value

    def __str__(self) -> str:
        return f"{self.minimum:g}..{self.maximum:g}"

    __repr__ = __str__


class CheckMasterStatus(Command):
    """Check the master; start this slave's services when it is down, stop them when it is back.

    Run by cron every minute on the slave with the master's VoIP address.  The master
    is pinged (and, with [probe] sip_probe = on, its registrar is asked with SIP
    OPTIONS); the decision follows the [failover] settings and the state kept in
    /var/lib/xivo-ha/failover.json.  Services are started and stopped only when
    needed, with the same code as xivo-manage-slave-services.  Transitions are
    logged to syslog.  Only a definite answer counts: a probe that could not run
    (ping exiting with anything but 0 or 1, a socket error) decides nothing and
    leaves the state as it was.  Exit 0 when the check ran (whatever it decided),
    1 when a probe could not run or a service step failed, 2 on bad input.
    """

    PROGNAME = "xivo-check-master-status"

    loop = cli.SwitchAttr(
        ["--loop"],
        Seconds(0, MAX_LOOP),
        default=None,
        argname="SECONDS",
        help="Fast mode: repeat the check for this many seconds (default: [failover] loop; 0 = one check)",
    )
    interval = cli.SwitchAttr(
        ["--interval"],
        Seconds(0.5, MAX_LOOP),
        default=None,
        argname="SECONDS",
        help="Fast mode: start a check every SECONDS (default: [failover] interval)",
    )

    def main(self, master_ip: str):
        logger = self.log()
        master = role.validate_peer(master_ip)
        config = settings.load()
        policy = failover.Policy.from_settings(config)
        if policy.witness:
            try:
                role.validate_peer(policy.witness, frozenset({master}))
            except UsageError as exc:
                raise UsageError(f"[probe] witness: {exc}") from None
        manager = services.Manager.from_settings(config)
        loop = config.failover.loop if self.loop is None else self.loop
        interval = config.failover.interval if self.interval is None else self.interval

        if not self._still_slave_of(master, logger, before=True):
            return 0
        try:
            with system.exclusive_lock(paths.state(LOCK_FILE), self.PROGNAME):
                return self._checks(master, config, policy, manager, float(loop), float(interval), logger)
        except system.LockBusy as exc:
            logger.info("%s: nothing done", exc)
            return 0

    def _still_slave_of(self, master: str, logger, before: bool) -> bool:
        current = role.read()
        if current.role is role.Role.SLAVE and current.remote_address == master:
            return True
        if current.role is not role.Role.SLAVE:
            if before:
                logger.info(
                    "this node is not a slave (its role is %s in %s): nothing to do",
                    current.role.value, paths.node(paths.HA_CONF),
                )
            else:
                logger.info(
                    "this node is no longer a slave (its role became %s in %s while the master "
                    "was being checked): nothing done",
                    current.role.value, paths.node(paths.HA_CONF),
                )
            return False
        if before:
            raise UsageError(
                f"{paths.node(paths.HA_CONF)} names the master {current.remote_address}, not {master}: "
                f"check the address given"
            )
        logger.info(
            "the master changed from %s to %s in %s while it was being checked: nothing done",
            master, current.remote_address, paths.node(paths.HA_CONF),
        )
        return False

    def _checks(self, master, config, policy, manager, loop, interval, logger) -> int:
        started = time.monotonic()
        deadline = started + loop
        iterations = 1 + int(loop // interval)
        for _ in range(iterations):
            began = time.monotonic()
            outcome = self._check_once(master, config, policy, manager, logger)
            if outcome == FAILED:
                return EXIT_FAILED
            if outcome == ENOUGH:
                break
            next_at = began + interval
            if next_at >= deadline:
                break
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return 0

    def _check_once(self, master, config, policy, manager, logger) -> str:
        """One observe-decide-act round: AGAIN, ENOUGH (the role changed) or FAILED."""
        try:
            observed = observe(
                master, config, policy, manager, lambda: self._still_slave_of(master, logger, before=False)
            )
        except probes.ProbeError as exc:
            logger.error("%s: nothing decided, the failover state is left as it was", exc)
            return FAILED
        if observed is None:
            return ENOUGH
        decision = failover.decide(observed, failover.load_state(), policy, time.time())
        if not decision.transition:
            logger.debug("%s [%s]", decision.reason, observed.describe())
        try:
            if decision.action is failover.Action.START:
                with services.lock():
                    manager.start(progress=logger.debug)
            elif decision.action is failover.Action.STOP:
                with services.lock():
                    manager.stop(progress=logger.debug)
        except OperationFailed as exc:
            # Remember the intent anyway: the next check sees the services' actual state
            # and tries again.  One line, to syslog and stderr.
            failover.save_state(decision.state)
            logger.error("%s [%s], but it failed: %s", decision.reason, observed.describe(), exc)
            events.after_check(config, decision, exc)
            return FAILED
        failover.save_state(decision.state)
        events.after_check(config, decision)
        if decision.transition:
            level = logger.warning if decision.action is not failover.Action.NOTHING else logger.info
            level("%s [%s]", decision.reason, observed.describe())
        return AGAIN


def observe(master, config, policy, manager, still_slave) -> Optional[failover.Observations]:
    """Probe the master: ping; then its registrar when it pings and sip_probe is on;
    then the witness when it does not ping and a witness is set.

    ``still_slave`` is asked after probing, before anything is decided: when the
    node's role changed meanwhile, None is returned and nothing is done.  A probe
    that could not run raises :class:`probes.ProbeError`.
    """
    probe = config.probe
    icmp = probes.ping(master, probe.ping_count, probe.ping_interval, probe.ping_timeout)
    sip = None
    if policy.sip_probe and icmp.alive:
        sip = probes.sip_options(master, probe.sip_port, probe.sip_timeout)
    witness = None
    if policy.witness and not icmp.alive:
        witness = probes.ping(
            policy.witness, probe.ping_count, probe.ping_interval, probe.ping_timeout, what=probes.WITNESS
        )
    if not still_slave():
        return None
    status = manager.status()
    return failover.Observations(master=master, icmp=icmp, sip=sip, witness=witness, services=status.summary)


def main(argv=None) -> int:
    return metrics.after(run(CheckMasterStatus, argv))
