"""`xivo-ha doctor`: check the HA prerequisites and health of this node and its peer."""

from __future__ import annotations

import json

from plumbum import cli

from . import Command
from .. import doctor, settings


class Doctor(Command):
    """Check the HA prerequisites and health of this node and, over ssh, of its peer"""

    DESCRIPTION_MORE = (
        "Each check prints OK, WARN or FAIL with one line of finding and, when not OK, one line of "
        "remedy.  Checks: role consistency (ha.conf, cron, sentinels, slave PostgreSQL access), "
        "maintenance, database, SIP expiry, trunk registration expiry under 300 s, no provisioning "
        "plugins on the slave, HA key, last replication and sync, services against the failover "
        "state, same subnet, ICMP slave -> master, TCP 22 and 5432 master -> slave, and with the "
        "peer's facts: mirror roles, same xivo-ha version, schema version and database locale.  The "
        "peer's facts come from `xivo-ha doctor --facts` run on it with the HA key ([sync] key, "
        "ssh_port, ssh_user; [doctor] peer_command); the slave has no key to the master, so run "
        "doctor on the master for the complete picture.\n\n"
        "Exit status: 0 when no check FAILs, 1 otherwise, 2 on bad settings."
    )


    as_json = cli.Flag(["--json"], help="Print a JSON list of {id, status, finding, remedy, node}")
    local_only = cli.Flag(["--local-only"], help="Do not contact the peer (its facts and the checks that need them)")
    facts = cli.Flag(["--facts"], excludes=["--json", "--local-only"],
                     help="Print this node's observed facts as JSON (what the peer's doctor reads)")

    def main(self):
        config = settings.load()
        if self.facts:
            print(doctor.dumps_facts(doctor.observe(config)))
            return 0
        checks, local, _ = doctor.diagnose(config, self.local_only)
        if self.as_json:
            print(json.dumps([c.to_dict() for c in checks], indent=2))
        else:
            print("\n".join(doctor.render_text(checks, doctor.peer_address(local))))
            fails = sum(c.status == doctor.FAIL for c in checks)
            warns = sum(c.status == doctor.WARN for c in checks)
            print(f"{len(checks)} checks: {fails} FAIL, {warns} WARN" if fails or warns
                  else f"{len(checks)} checks: all OK")
        return doctor.exit_code(checks)
