"""`xivo-ha`: change and show this node's HA role."""

from __future__ import annotations

import json
import sys

from plumbum import cli

from . import Command, Group, run
from .. import apply, cron, log, maintenance, provisioning, role, services, settings, status, system
from ..errors import EXIT_NOT_RUNNING, OperationFailed, UsageError
from ..role import HaConfig, Role
from .bundle import SupportBundle
from .cc import Cc
from .check import Check
from .doctor import Doctor
from .maintenance import Maintenance


class XivoHa(Group):
    """High availability of a XiVO cluster: a master serving phones and a slave standing by."""

    PROGNAME = "xivo-ha"
    USAGE = ("    xivo-ha [SWITCHES] enable master|slave <peer_ip> | disable | status | cron regenerate\n"
             "    xivo-ha [SWITCHES] doctor | check | support-bundle | maintenance on|off|status|remind | cc enable|disable\n")
    UNKNOWN = "unknown command {!r}: see xivo-ha --help"


# The support tools live in their own modules, which do not know this group.
XivoHa.subcommand("doctor", Doctor)
XivoHa.subcommand("check", Check)
XivoHa.subcommand("support-bundle", SupportBundle)
XivoHa.subcommand("maintenance", Maintenance)
XivoHa.subcommand("cc", Cc)


class _RoleChange(Command):
    restart = cli.Flag(["--restart"], help="Restart the services afterwards with [services] restart_command")
    resync = cli.Flag(["--resync"], help="Ask provd to synchronize the phones whose config changed, "
                                         "so that they learn their backup registrar now")

    def change(self, target: HaConfig) -> int:
        config = settings.load()
        with role.change_lock():
            return self._change(target, config)

    def _change(self, target: HaConfig, config: settings.Settings) -> int:
        maintenance.refuse_role_change()
        before = role.read()
        if target.role is Role.DISABLED:
            print("xivo-ha: disabling HA on this node")
        else:
            print(f"xivo-ha: making this node {_describe(target)}")
        outcome = apply.change_role(target, config, print, start=self.restart)
        if target.role is Role.DISABLED:
            print("xivo-ha: HA is now disabled on this node")
        else:
            print(f"xivo-ha: this node is now {_describe(target)}")
        log.LOGGER.info("role change: %s -> %s: %s", _describe(before), _describe(target),
                        "; ".join(outcome.changed) or "nothing to change")
        if self.restart:
            command = list(config.services.restart_command)
            with services.lock():
                result = system.run(command, timeout=config.services.command_timeout)
            if not result.ok:
                raise OperationFailed(
                    f"the role change is applied but `{' '.join(command)}` failed: {result.output() or 'no output'}"
                )
            print(f"xivo-ha: restarted services ({' '.join(command)})")
        else:
            print("Restart the services for the change to take effect: xivo-service restart "
                  "(or run this command again with --restart).")
        return self.resynchronize(outcome, config)

    def resynchronize(self, outcome: apply.Outcome, config: settings.Settings) -> int:
        devices = outcome.devices
        if not devices:
            return 0
        if not self.resync:
            print(f"{len(devices)} phone(s) must be synchronized to learn their new registrar pair: run this "
                  "command again with --resync, or synchronize them from the web interface.")
            return 0
        if outcome.provd_url is None:
            raise OperationFailed(
                f"the role change is applied but provd is not running: start it, then synchronize the "
                f"{len(devices)} phone(s) ({', '.join(devices)}) from the web interface"
            )
        failures = provisioning.synchronize(outcome.provd_url, devices, config.provisioning.timeout)
        if failures:
            raise OperationFailed(f"the role change is applied but provd could not synchronize "
                                  f"{len(failures)} phone(s): {'; '.join(failures)}")
        print(f"xivo-ha: asked provd to synchronize {len(devices)} phone(s)")
        return 0


@XivoHa.subcommand("enable")
class Enable(_RoleChange):
    """Make this node the master (give the slave's VoIP IPv4) or the slave (give the master's)"""

    USAGE = "    xivo-ha enable master <slave_ip>\n    xivo-ha enable slave <master_ip>\n"

    def main(self, node_role: str = "", peer_ip: str = ""):
        if not node_role:
            raise UsageError("missing role: xivo-ha enable master <slave_ip> | xivo-ha enable slave <master_ip>")
        wanted = role.parse_role(node_role)
        if wanted is Role.DISABLED:
            raise UsageError("use `xivo-ha disable` to disable HA on this node")
        if not peer_ip:
            other = "slave" if wanted is Role.MASTER else "master"
            raise UsageError(f"missing address: xivo-ha enable {wanted.value} <{other}_ip>")
        return self.change(HaConfig(wanted, role.validate_peer(peer_ip)))


@XivoHa.subcommand("disable")
class Disable(_RoleChange):
    """Disable HA on this node: remove cron, sentinels and slave access, blank the SIP expiry"""

    def main(self):
        return self.change(role.DISABLED)


@XivoHa.subcommand("status")
class Status(Command):
    """Show the role, the peer, cron files, sentinels, SIP expiry, provisioning, last jobs, maintenance, failover"""

    DESCRIPTION_MORE = "Exit status: 0 when HA is enabled (master or slave), 3 when it is disabled."

    as_json = cli.Flag(["--json"], help="Print one JSON object with stable keys")
    probe = cli.Flag(["--probe"], help="Also probe the peer once (the slave pings the master, "
                                       "the master connects to the slave's ssh port)")

    def main(self):
        report = status.collect(settings.load(), probe_peer=self.probe)
        if self.as_json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print("\n".join(status.render_text(report)))
        return EXIT_NOT_RUNNING if report["role"] == Role.DISABLED.value else 0


@XivoHa.subcommand("cron")
class Cron(Group):
    """Maintain the HA cron file"""

    UNKNOWN = "unknown cron command {!r}: expected `regenerate`"


@Cron.subcommand("regenerate")
class CronRegenerate(Command):
    """Rewrite /etc/cron.d/xivo-ha-master or -slave from ha.conf and [replication] mode (used by the package)"""

    DESCRIPTION_MORE = "While maintenance is on, the file is written with its jobs still paused."

    def main(self):
        config = role.read()
        for path, content in cron.desired_files(config, settings.load().replication.mode).items():
            content = maintenance.regenerate_content(content)
            if content is None:
                if system.remove(path):
                    print(f"removed {path}")
            elif system.read_text(path) != content:
                system.write_atomic(path, content, 0o644)
                print(f"wrote {path}")
        return 0


def _describe(config: HaConfig) -> str:
    if config.role is Role.DISABLED:
        return "disabled"
    if config.role is Role.MASTER:
        return f"master (slave {config.remote_address})"
    return f"slave (master {config.remote_address})"


def main(argv: list[str] | None = None) -> int:
    return run(XivoHa, argv)


if __name__ == "__main__":
    sys.exit(main())
