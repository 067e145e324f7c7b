"""`xivo-ha cc enable|disable`: XiVO CC DB Replic in HA mode on the slave."""

from __future__ import annotations

from plumbum import cli

from . import Command, Group
from .. import cc, settings


class Cc(Group):
    """Run XiVO CC's DB Replic on the slave in HA mode (queue logs and CELs only)"""

    DESCRIPTION_MORE = (
        "Queue logs and CELs are not replicated between the nodes: each keeps its own, and DB "
        "Replic on the slave sends the slave's to XiVO CC.  `enable` sets REPORTING_DB_HOST, "
        "ELASTICSEARCH and IS_HA_SLAVE=true in /etc/docker/xivo/custom.env (every other line is "
        "kept), creates /var/log/xivo-db-replication owned daemon:daemon and touches "
        "/var/lib/xivo/xc_enabled; `disable` removes the three keys and the sentinel."
    )

    USAGE = ("    xivo-ha cc enable --reporting-db-host HOST --elasticsearch HOST[:PORT] [--apply]\n"
             "    xivo-ha cc disable [--apply]\n")
    UNKNOWN = "unknown cc command {!r}: expected enable or disable"


@Cc.subcommand("enable")
class CcEnable(Command):
    """Configure DB Replic's HA mode on this slave (refused on a master or a disabled node)"""

    DESCRIPTION_MORE = (
        "Values: an IPv4 address or a DNS host name; --elasticsearch also accepts :PORT. "
        "The file changes are all or nothing. Then the remaining steps are printed "
        "(apt-get install xivocc-docker-components, xivo-service start, /usr/sbin/xivo-monitoring-update), "
        "or run with --apply when their programs exist ([cc] settings). "
        "Exit 0 done, 1 refused or failed, 2 bad value (nothing changed)."
    )

    reporting_db_host = cli.SwitchAttr(["--reporting-db-host"], str, argname="HOST", mandatory=True,
                                       help="XiVO CC's reporting database host (IPv4 or host name)")
    elasticsearch = cli.SwitchAttr(["--elasticsearch"], str, argname="HOST[:PORT]", mandatory=True,
                                   help="XiVO CC's Elasticsearch host, optionally with :port")
    apply = cli.Flag(["--apply"], help="Run the remaining steps instead of printing them")

    def main(self):
        left = cc.enable(settings.load(), self.reporting_db_host, self.elasticsearch, self.apply, print)
        _print_left(left, "DB Replic")
        return 0


@Cc.subcommand("disable")
class CcDisable(Command):
    """Remove DB Replic's HA mode: the custom.env keys and /var/lib/xivo/xc_enabled"""

    DESCRIPTION_MORE = "Allowed on any role. The log directory is kept. Exit 0 done (or nothing to undo), 1 failed."

    apply = cli.Flag(["--apply"], help="Also run the monitoring refresh ([cc] monitoring_command)")

    def main(self):
        left = cc.disable(settings.load(), self.apply, print)
        _print_left(left, "the removal")
        return 0


def _print_left(left: list[str], what: str) -> None:
    if left:
        print("To finish, run on this node (or use --apply):")
        for line in left:
            print(f"  {line}")
    print(f"xivo-ha: done; {what} takes effect once the steps above have run" if left else "xivo-ha: done")
