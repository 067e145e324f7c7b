"""`xivo-ha maintenance on|off|status`: pause this node's HA cron for an upgrade."""

from __future__ import annotations

import json

from plumbum import cli

from . import Command, Group
from .. import events, maintenance, settings
from ..errors import EXIT_NOT_RUNNING, OperationFailed


class Maintenance(Group):
    """Pause this node's HA cron jobs for a cluster upgrade, and resume them"""

    DESCRIPTION_MORE = (
        "`on` comments out the job lines of /etc/cron.d/xivo-ha-master (or -slave) behind the "
        'marker "#xivo-ha-maintenance# " and records why and when in '
        "/var/lib/xivo-ha/maintenance.json; `off` puts the lines back exactly as they were and, "
        "on the master, replicates the database and syncs the files at once.  For an upgrade: "
        "`on` on both nodes, upgrade both, then `off` on the slave first and on the master last, "
        "so that its catch-up replication meets the upgraded slave.  While maintenance is on, "
        "`xivo-ha enable|disable` refuse and `xivo-ha cron regenerate` (run by the package on "
        "upgrade) keeps the jobs paused."
    )

    USAGE = "    xivo-ha maintenance on [--reason TEXT] | off [--no-replication] | status [--json] | remind\n"
    UNKNOWN = "unknown maintenance command {!r}: expected on, off, status or remind"


@Maintenance.subcommand("on")
class MaintenanceOn(Command):
    """Pause this node's HA cron jobs and record why and when"""

    reason = cli.SwitchAttr(["--reason"], str, default="", argname="TEXT",
                            help="Why (one line, shown by status and doctor), e.g. 'upgrade to 2024.05'")

    def main(self):
        entry = maintenance.turn_on(self.reason, print)
        print(f"maintenance is {entry.describe()}")
        print("Turn it off when the upgrade is done: xivo-ha maintenance off")
        return 0


@Maintenance.subcommand("off")
class MaintenanceOff(Command):
    """Resume this node's HA cron jobs; on the master, replicate and sync right away"""

    DESCRIPTION_MORE = (
        "On the master the [maintenance] replication_command and sync_command run once the jobs "
        "are resumed. Exit 1 when one of them fails (the jobs are resumed all the same)."
    )

    no_replication = cli.Flag(["--no-replication"],
                              help="Do not run the catch-up replication and sync on the master")

    def main(self):
        config = settings.load()
        outcome = maintenance.turn_off(config, print, replicate=not self.no_replication)
        if outcome.failed:
            raise OperationFailed(
                f"maintenance is off and the HA cron jobs are resumed, but the catch-up run failed: "
                f"{outcome.failed}. It runs again at the next hour, or run it by hand."
            )
        if outcome.resumed or outcome.ran:
            print("maintenance is off")
        return 0


@Maintenance.subcommand("status")
class MaintenanceStatus(Command):
    """Show whether maintenance is on, since when and why"""

    DESCRIPTION_MORE = "Exit status: 0 when maintenance is on, 3 when it is off."

    as_json = cli.Flag(["--json"], help="Print one JSON object")

    def main(self):
        config = settings.load()
        entry = maintenance.read()
        paused = [maintenance.shown(p) for p in maintenance.paused_cron_files()]
        limit = config.doctor.maintenance_warn_age
        if self.as_json:
            data = entry.to_dict() if entry is not None else {"on": False}
            data["paused_cron_files"] = paused
            data["overdue"] = entry is not None and entry.age() > limit
            print(json.dumps(data, indent=2, sort_keys=True))
        elif entry is None:
            print("maintenance: off")
            if paused:
                print(f"warning: {', '.join(paused)} still carries paused jobs: run `xivo-ha maintenance off`")
        else:
            print(f"maintenance: {entry.describe()}")
            print(f"paused: {entry.cron_file}")
            if entry.age() > limit:
                print(f"warning: maintenance has been on for more than {maintenance.age_text(limit)}: "
                      "the HA jobs are not running; run `xivo-ha maintenance off` when the upgrade is done")
        return 0 if entry is not None else EXIT_NOT_RUNNING


@Maintenance.subcommand("remind")
class MaintenanceRemind(Command):
    """Mail root once when maintenance has been on longer than [doctor] maintenance_warn_age"""

    DESCRIPTION_MORE = (
        "Run every hour by /etc/cron.d/xivo-ha (the HA cron jobs themselves are paused while "
        "maintenance is on): one syslog line, one mail to root and the [notify] hook per maintenance "
        "period, however often it runs. Prints what it found; exit 0."
    )

    def main(self):
        print(events.maintenance_reminder(settings.load()))
        return 0
