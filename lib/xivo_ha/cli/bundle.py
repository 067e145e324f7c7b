"""`xivo-ha support-bundle`: one tar.gz for support, secrets redacted."""

from __future__ import annotations

from pathlib import Path

from plumbum import cli

from . import Command
from .. import bundle, settings
from ..errors import UsageError


class SupportBundle(Command):
    """Write one tar.gz (mode 0600) with what support needs from this node and its peer, secrets redacted"""

    DESCRIPTION_MORE = (
        "Holds doctor's facts and checks of this node and, when it answers over the HA key, of the peer; "
        "status --json; /etc/xivo/ha.conf; /etc/xivo-ha/xivo-ha.conf; the HA cron files; the failover "
        "state, maintenance and job records under /var/lib/xivo-ha; our journal or syslog lines of the "
        "last --days days; package versions; and manifest.json, which lists what was collected and what "
        "was not, and why.  Passwords in DSNs and URIs, values of password/secret keys and private keys "
        "are replaced by REDACTED; nothing is read from /root/.ssh.\n\n"
        "Exit status: 0 when written, 1 when it cannot be written, 2 on bad input."
    )

    output = cli.SwitchAttr(["-o", "--output"], str, argname="FILE",
                            help="Where to write the archive (default: ./xivo-ha-support-<host>-<time>.tar.gz)")
    days = cli.SwitchAttr(["--days"], cli.Range(1, 366), default=7, help="How many days of log lines to include")

    def main(self):
        target = Path(self.output) if self.output else None
        if target is not None and (target.is_dir() or not target.parent.is_dir()):
            raise UsageError(f"cannot write {self.output}: give a file in an existing directory")
        path, contents = bundle.write(settings.load(), target, self.days)
        print(f"wrote {path}: {len(contents.collected)} items collected, {len(contents.missing)} not "
              "(see manifest.json)")
        return 0
