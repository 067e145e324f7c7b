"""xivo-check-master-status <master_ip>: failover and failback, run by cron on the slave."""

from __future__ import annotations

from plumbum import cli

from . import Command, run
from .. import failover, metrics, role, settings

MAX_LOOP = 3600.0


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
        self.log()
        master = role.validate_peer(master_ip)
        config = settings.load()
        loop = config.failover.loop if self.loop is None else self.loop
        interval = config.failover.interval if self.interval is None else self.interval
        return failover.run_cycle(master, config, float(loop), float(interval), self.PROGNAME)


def main(argv=None) -> int:
    return metrics.after(run(CheckMasterStatus, argv))
