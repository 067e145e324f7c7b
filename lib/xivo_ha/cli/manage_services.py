"""xivo-manage-slave-services start|stop|status"""

from __future__ import annotations

from . import Command, Group, run
from .. import services, settings


class ManageSlaveServices(Group):
    """Start, stop or report the slave's telephony services.

    The services and the commands that drive them come from the [services] section
    of /etc/xivo-ha/xivo-ha.conf (default: monit, then asterisk, through systemctl).
    xivo-check-master-status runs the same code on failover and failback.
    """

    PROGNAME = "xivo-manage-slave-services"
    USAGE = "    {progname} [-v] start|stop|status\n"
    UNKNOWN = "unknown action {!r}: expected start, stop or status"


class _Action(Command):
    def manager(self) -> services.Manager:
        return services.Manager.from_settings(settings.load())


@ManageSlaveServices.subcommand("start")
class Start(_Action):
    DESCRIPTION = "Enable each service at boot, then start it, in order (failover)"
    DESCRIPTION_MORE = (
        "Exit 0 when every step worked; 1 naming each service that failed and the "
        "command's output (the other services are still started)."
    )

    def main(self):
        logger = self.log()
        manager = self.manager()
        with services.lock():
            manager.start(progress=logger.debug)
        logger.info("started and enabled at boot: %s", ", ".join(manager.services))
        return 0


@ManageSlaveServices.subcommand("stop")
class Stop(_Action):
    DESCRIPTION = "Stop each service, then disable it at boot, in reverse order (failback)"
    DESCRIPTION_MORE = (
        "Disabled services stay stopped after a reboot or an upgrade of the slave. "
        "Exit 0 when every step worked; 1 naming each service that failed (the other "
        "services are still stopped)."
    )

    def main(self):
        logger = self.log()
        manager = self.manager()
        with services.lock():
            manager.stop(progress=logger.debug)
        logger.info("stopped and disabled at boot: %s", ", ".join(reversed(manager.services)))
        return 0


@ManageSlaveServices.subcommand("status")
class Status(_Action):
    DESCRIPTION = "Print each service's state"
    DESCRIPTION_MORE = "Exit 0 when all run, 3 when none runs, 1 when some run and some do not."

    def main(self):
        status = self.manager().status()
        for line in status.lines():
            print(line)
        return status.exit_code


def main(argv=None) -> int:
    return run(ManageSlaveServices, argv)

