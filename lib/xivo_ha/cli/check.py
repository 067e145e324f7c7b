"""`xivo-ha check`: a monitoring plugin over doctor's checks (also /usr/lib/nagios/plugins/check_xivo_ha)."""

from __future__ import annotations

from plumbum import cli
from plumbum.cli.switches import SwitchError

from . import Command
from .. import check, settings
from ..errors import XivoHaError


class Check(Command):
    """Monitoring plugin: one status line with performance data, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"""

    DESCRIPTION_MORE = (
        "Runs doctor's checks of this node (no ssh unless --peer): a FAIL is CRITICAL, a WARN is WARNING, "
        "and a slave that serves the phones (failover) is CRITICAL.  Performance data: replication_age, "
        "replication_duration, sync_age, last_check_age (seconds), consecutive_failures, serving (0/1); "
        "U when unknown on this node.  Settings that cannot be read, and a wrong command line, give "
        "UNKNOWN (3) as the monitoring-plugins conventions want, with one status line.  Installed as "
        "/usr/lib/nagios/plugins/check_xivo_ha."
    )

    usage_error = ""

    peer = cli.Flag(["--peer"], help="Also fetch the peer's facts over ssh with the HA key (slower; "
                                     "from the master)")

    # A wrong command line is UNKNOWN (exit 3, one status line), not exit 2 with a usage error.
    def bad_command_line(self, exc: SwitchError, nothing: tuple):
        self.usage_error = self.usage_error or str(exc)
        return nothing

    def main(self):
        if self.usage_error:
            print(check.unknown(f"usage: {self.usage_error} (see `xivo-ha check --help`)").line())
            return check.UNKNOWN
        try:
            verdict = check.run(settings.load(), with_peer=self.peer)
        except XivoHaError as exc:
            verdict = check.unknown(str(exc))
        except Exception as exc:  # a plugin answers UNKNOWN, never with a traceback
            verdict = check.unknown(f"{type(exc).__name__}: {exc}")
        print(verdict.line())
        return verdict.code
