"""`xivo-ha doctor`: check the HA prerequisites and the health of both nodes.

Two layers, as everywhere in xivo-ha:

* **observe** (:func:`observe`): read this node's facts into one JSON-able dictionary --
  role files, cron, sentinels, PostgreSQL access, database values, provd plugins, HA key,
  last jobs, failover state, services, maintenance, addresses and the route to the peer,
  and this node's role-specific probes of its peer (the slave pings the master; the
  master connects to the slave's ssh and PostgreSQL ports).  The peer's facts are the
  same dictionary, printed by ``xivo-ha doctor --facts`` on the peer and fetched over
  ssh with the HA key (:func:`fetch_peer_facts`).
* **decide** (:func:`run_checks` and the ``check_*`` functions): pure functions over the
  facts that return :class:`Check` results -- ``OK``, ``WARN`` or ``FAIL``, one sentence
  of finding and, when not OK, one sentence of remedy (the command or file to fix).

Checks that only make sense for one role are only run on the facts of a node with that
role: e.g. "no provisioning plugins" on the slave, "HA key", "last replication/sync" on
the master; the peer's per-node checks are reported with ``node = "peer"``.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import stat
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional

from . import __version__, apply, cron, database, maintenance, paths, pgaccess, role, runstate, sync, system
from .errors import OperationFailed, XivoHaError
from .role import Role
from .settings import Settings

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"

LOCAL = "local"
PEER = "peer"
PAIR = "pair"

FACTS_FORMAT = 1
TRUNK_EXPIRY_LIMIT = 300
# chan_sip's defaultexpiry when sip.conf does not set one (or sets it below 1).
ASTERISK_DEFAULT_EXPIRY = 120
# The SIP trunks that register: their usersip account, their staticsip `register`
# line (trunkfeatures.registerid, 0 = none) when neither is commented out.
TRUNK_REGISTRATIONS_SQL = (
    "SELECT u.name, s.var_val FROM trunkfeatures t"
    " JOIN usersip u ON u.id = t.protocolid AND u.category = 'trunk'"
    " JOIN staticsip s ON s.id = t.registerid"
    " WHERE t.protocol = 'sip' AND t.registerid <> 0 AND t.registercommented = 0"
    " AND s.commented = 0 AND s.var_name = 'register' ORDER BY u.name"
)
GENERAL_DEFAULT_EXPIRY_SQL = (
    "SELECT var_val FROM staticsip WHERE filename = 'sip.conf' AND category = 'general'"
    " AND var_name = 'defaultexpiry' AND commented = 0 ORDER BY var_metric, id"
)
SSH_FAILED = 255

Facts = Mapping[str, Any]


@dataclass(frozen=True)
class Check:
    id: str
    status: str
    finding: str
    remedy: str = ""
    node: str = LOCAL

    def to_dict(self) -> dict:
        return {"id": self.id, "status": self.status, "finding": self.finding,
                "remedy": self.remedy, "node": self.node}


@dataclass(frozen=True)
class Limits:
    """The thresholds and ports the checks compare against ([doctor], [sync], [replication])."""

    subnet_prefix: int = 24
    job_warn_age: float = 7200
    job_fail_age: float = 86400
    maintenance_warn_age: float = 86400
    ssh_port: int = 22
    postgresql_port: int = 5432
    slave_dbname: str = "asterisk"

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            subnet_prefix=settings.doctor.subnet_prefix,
            job_warn_age=float(settings.doctor.job_warn_age),
            job_fail_age=float(settings.doctor.job_fail_age),
            maintenance_warn_age=float(settings.doctor.maintenance_warn_age),
            ssh_port=settings.sync.ssh_port,
            postgresql_port=settings.replication.slave_port,
            slave_dbname=settings.replication.slave_dbname,
        )


def one_line(text: str) -> str:
    """Program output folded into one line: ssh's banners dropped, lines joined."""
    lines = [re.sub(r"@{3,}", "", line).strip() for line in (text or "").splitlines()]
    kept = [line for line in lines if line.strip("@ ")]
    if any("UNPROTECTED PRIVATE KEY FILE" in line for line in kept):
        kept = [line for line in kept if "UNPROTECTED" not in line and not line.startswith(("It is required",
                                                                                           "This private key"))]
    folded = ""
    for line in kept:
        folded += line if not folded else (" " if folded.endswith(":") else "; ") + line
    return folded


def ok(check_id: str, finding: str, node: str = LOCAL) -> Check:
    return Check(check_id, OK, one_line(finding), "", node)


def warn(check_id: str, finding: str, remedy: str, node: str = LOCAL) -> Check:
    return Check(check_id, WARN, one_line(finding), one_line(remedy), node)


def fail(check_id: str, finding: str, remedy: str, node: str = LOCAL) -> Check:
    return Check(check_id, FAIL, one_line(finding), one_line(remedy), node)


# --- small readers of the facts ------------------------------------------------------


def role_of(facts: Facts) -> str | None:
    ha = facts.get("ha") or {}
    return None if ha.get("error") else ha.get("role")


def peer_address(facts: Facts) -> str:
    return (facts.get("ha") or {}).get("remote_address") or ""


def own_addresses(facts: Facts) -> set[str]:
    return {entry["address"] for entry in facts.get("addresses") or []}


def voip_address(facts: Facts) -> str:
    """The address this node uses to reach its peer (its VoIP address)."""
    route = facts.get("route") or {}
    return route.get("source") or ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _age(seconds: float) -> str:
    return maintenance.age_text(seconds)


def _enable_command(facts: Facts) -> str:
    current = role_of(facts)
    if current in (Role.MASTER.value, Role.SLAVE.value):
        return f"xivo-ha enable {current} {peer_address(facts)}"
    return "xivo-ha disable"


# --- per-node checks (pure) -----------------------------------------------------------


def check_role_consistency(facts: Facts, node: str = LOCAL) -> Check:
    """ha.conf, cron file, sentinels and slave PostgreSQL access tell the same story."""
    check_id = "role-consistency"
    ha = facts.get("ha") or {}
    if ha.get("error"):
        return fail(check_id, ha["error"],
                    f"fix or remove {paths.HA_CONF}, then run `xivo-ha enable master|slave <peer_ip>` "
                    "or `xivo-ha disable`", node)
    current = ha.get("role")
    peer = ha.get("remote_address") or ""
    problems = [facts["interrupted_change"]] if facts.get("interrupted_change") else []
    maintenance_on = bool((facts.get("maintenance") or {}).get("on"))
    problems += _cron_problems(facts, current, maintenance_on)
    sentinels = facts.get("sentinels") or {}
    want_primary = current == Role.MASTER.value
    want_secondary = current == Role.SLAVE.value
    for name, wanted_present in (("is-primary", want_primary), ("is-secondary", want_secondary)):
        present = bool(sentinels.get(name))
        if present != wanted_present:
            problems.append(f"/var/lib/xivo/{name} is {'present' if present else 'missing'}")
    problems += _pg_access_problems(facts.get("pg_access") or {}, current, peer)
    if problems:
        remedy = f"run `{_enable_command(facts)}`: it rewrites every HA file and line idempotently"
        if maintenance_on:
            remedy = "run `xivo-ha maintenance off`, then " + remedy[4:]
        return fail(check_id, f"{current} node, but " + "; ".join(problems), remedy, node)
    if current == Role.DISABLED.value:
        return ok(check_id, "HA is disabled: no HA cron file, sentinel or slave PostgreSQL access", node)
    what = "cron, sentinel" + (" and PostgreSQL access for the master" if want_secondary else "")
    return ok(check_id, f"{current} of {peer}: ha.conf, {what} agree", node)


def _cron_problems(facts: Facts, current: str | None, maintenance_on: bool) -> list[str]:
    """How the HA cron files differ from those of the node's role."""
    problems = []
    expected = facts.get("cron_expected") or {}
    for name, actual in sorted((facts.get("cron") or {}).items()):
        wanted = expected.get(name)
        if wanted is None:
            if actual is not None:
                problems.append(f"{name} exists but this node is {current}")
            continue
        if actual is None:
            problems.append(f"{name} is missing")
            continue
        paused = maintenance.is_paused(actual)
        effective = maintenance.resume_text(actual) if paused else actual
        if maintenance.active_jobs(effective) != maintenance.active_jobs(wanted):
            problems.append(f"{name} does not hold the jobs of `{_enable_command(facts)}`")
        if paused and not maintenance_on:
            problems.append(f"{name} has paused jobs but maintenance is off")
    return problems


def _pg_access_problems(access: dict, current: str | None, peer: str) -> list[str]:
    """How the slave PostgreSQL access differs from the node's role (master ``peer`` on a slave)."""
    problems = []
    if current == Role.SLAVE.value:
        if access.get("error"):
            return [access["error"]]
        if access.get("hba_master") != peer:
            allowed = access.get("hba_master")
            problems.append(
                f"pg_hba.conf lets {allowed} in, not the master {peer}" if allowed
                else f"pg_hba.conf has no `{pgaccess.hba_rule(peer)}` line"
            )
        elif access.get("hba_applies", pgaccess.hba_rule(peer)) != pgaccess.hba_rule(peer):
            problems.append(f"pg_hba.conf: `{access['hba_applies']}` comes first and applies to the "
                            f"master {peer}, not our `{pgaccess.hba_rule(peer)}`")
        if not access.get("listens_everywhere"):
            problems.append(f"postgresql.conf lacks `{pgaccess.LISTEN_LINE}`")
    elif not access.get("error"):
        if access.get("hba_master"):
            problems.append(f"pg_hba.conf still lets {access['hba_master']} replicate into this {current} node")
        if access.get("listens_everywhere") and not access.get("streams"):
            problems.append(f"postgresql.conf still has our `{pgaccess.LISTEN_LINE}`")
    return problems


def check_maintenance(facts: Facts, limits: Limits, node: str = LOCAL) -> Check:
    check_id = "maintenance"
    state = facts.get("maintenance") or {}
    if state.get("error"):
        return warn(check_id, state["error"], "remove the file and run `xivo-ha maintenance off`", node)
    paused = state.get("paused_cron_files") or []
    if not state.get("on"):
        if paused:
            return warn(check_id, f"maintenance is off but {', '.join(paused)} has paused jobs",
                        "run `xivo-ha maintenance off` to resume them", node)
        return ok(check_id, "maintenance is off", node)
    age = float(facts.get("now", 0)) - float(state.get("since", 0))
    reason = f" ({state['reason']})" if state.get("reason") else ""
    finding = f"maintenance is on for {_age(age)}{reason}: the HA cron jobs are paused"
    if age > limits.maintenance_warn_age:
        return warn(check_id, finding + f", longer than {_age(limits.maintenance_warn_age)}",
                    "finish the upgrade on both nodes, then run `xivo-ha maintenance off`", node)
    if not paused:
        return warn(check_id, f"maintenance is on{reason} but the HA cron file has active jobs",
                    "run `xivo-ha maintenance on` again to pause them, or `xivo-ha maintenance off`", node)
    return ok(check_id, finding, node)


def check_database(facts: Facts, node: str = LOCAL) -> Check:
    check_id = "database"
    db = facts.get("database") or {}
    if db.get("error"):
        return fail(check_id, db["error"],
                    "check that PostgreSQL runs (`systemctl status postgresql`) and [database] dsn in "
                    f"{paths.SETTINGS}", node)
    return ok(check_id, f"asterisk database: schema {db.get('schema_version') or 'unknown'}, "
                        f"{db.get('encoding')}, collation {db.get('collate')}", node)


def check_sip_expiry(facts: Facts, node: str = LOCAL) -> Check | None:
    check_id = "sip-expiry"
    db = facts.get("database") or {}
    if db.get("error") or role_of(facts) not in (Role.MASTER.value, Role.SLAVE.value):
        return None
    values = db.get("sip_expiry") or {}
    wrong = [f"{name}={values.get(name) if values.get(name) is not None else 'blank'} (HA needs {wanted})"
             for name, wanted in database.HA_SIP_EXPIRY.items() if values.get(name) != wanted]
    if wrong:
        return fail(check_id, "SIP expiry differs from what HA requires: " + ", ".join(wrong),
                    f"run `{_enable_command(facts)}` (it sets 180/300/240), then `xivo-service restart`", node)
    return ok(check_id, "SIP expiry min/max/default = 180/300/240 s as HA requires", node)


@dataclass(frozen=True)
class Registration:
    """A sip.conf ``register =>`` line, without its secret."""

    user: str
    host: str
    port: int | None
    extension: str
    expiry: int | None  # the line's own ``~expiry``, None when it has none


def _leading_int(text: str) -> int:
    """C's atoi: the leading decimal digits (after blanks and a sign), 0 without any."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def parse_register(value: str) -> Registration | None:
    """Parse ``[peer?][transport://]user[@domain][:secret[:authuser]]@host[:port][/exten][~expiry]``
    as chan_sip does: the last ``@`` ends the credentials (a secret may hold ``@``), then
    ``~``, ``/`` and ``:`` split the host part.  None when chan_sip would reject the line."""
    credentials, at, hostpart = (value or "").strip().rpartition("@")
    if not at or not credentials or not hostpart:
        return None
    account = credentials.partition("?")[2] or credentials
    if "/" in account:
        transport, _, account = account.partition("/")
        blank, _, account = account.partition("/")
        if blank or not transport.endswith(":"):
            return None
    user = account.partition(":")[0]
    rest, _, expiry_text = hostpart.partition("~")
    rest, _, extension = rest.partition("/")
    host, _, port_text = rest.partition(":")
    if not user or not host:
        return None
    expiry = _leading_int(expiry_text)
    port = _leading_int(port_text)
    return Registration(user=user, host=host, port=port if port > 0 else None, extension=extension,
                        expiry=expiry if expiry > 0 else None)


def general_default_expiry(value: str | None) -> int:
    """sip.conf [general] defaultexpiry as chan_sip reads it (unset or below 1: 120 s)."""
    seconds = _leading_int(value or "")
    return seconds if seconds > 0 else ASTERISK_DEFAULT_EXPIRY


def registration_expiry(value: str, default_expiry: int) -> int | None:
    """Seconds a trunk's register line asks for: its ``~expiry``, else the general default;
    None when the line is not one chan_sip accepts (the trunk then does not register)."""
    registration = parse_register(value)
    if registration is None:
        return None
    return registration.expiry or default_expiry


def check_trunk_expiry(facts: Facts, node: str = LOCAL) -> Check | None:
    check_id = "trunk-expiry"
    db = facts.get("database") or {}
    if db.get("error") or role_of(facts) not in (Role.MASTER.value, Role.SLAVE.value):
        return None
    if db.get("trunks_error"):
        return warn(check_id, f"could not read the trunks: {db['trunks_error']}",
                    "check the trunks' registration expiry by hand: it must be under 300 s", node)
    trunks = db.get("trunks") or []
    if not trunks:
        return ok(check_id, "no SIP trunk registers", node)
    too_long = [(name, expiry) for name, expiry in trunks if expiry is not None and expiry >= TRUNK_EXPIRY_LIMIT]
    if too_long:
        shown = ", ".join(f"{name} ({expiry} s)" for name, expiry in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        return fail(check_id, f"trunk registration expiry must be under {TRUNK_EXPIRY_LIMIT} s: {shown}{more}",
                    "lower the registration expiry of these trunks (web interface, trunk > Register: "
                    f"`~expiry` under {TRUNK_EXPIRY_LIMIT}, or the SIP general default expiry) "
                    "so that the provider follows a failover within 5 minutes", node)
    return ok(check_id, f"{_plural(len(trunks), 'trunk')}, every registration expiry under "
                        f"{TRUNK_EXPIRY_LIMIT} s", node)


def check_provd_plugins(facts: Facts, node: str = LOCAL) -> Check | None:
    check_id = "provd-plugins"
    if role_of(facts) != Role.SLAVE.value:
        return None
    plugins = facts.get("provd_plugins")
    if isinstance(plugins, dict) and plugins.get("error"):
        return warn(check_id, plugins["error"], f"check {paths.PROVD_PLUGINS} by hand: it must be empty", node)
    if plugins:
        shown = ", ".join(plugins[:5]) + (f" and {len(plugins) - 5} more" if len(plugins) > 5 else "")
        return fail(check_id, f"the slave has provisioning plugins installed: {shown}",
                    f"uninstall them on the slave (web interface: Configuration > Provisioning > Plugins) "
                    f"so that {paths.PROVD_PLUGINS} is empty", node)
    return ok(check_id, "no provisioning plugin on the slave", node)


def check_ha_key(facts: Facts, node: str = LOCAL) -> Check | None:
    check_id = "ha-key"
    if role_of(facts) != Role.MASTER.value:
        return None
    key = facts.get("ha_key") or {}
    path = key.get("path", "/root/.ssh/xivo_id_rsa")
    if not key.get("exists"):
        return fail(check_id, f"the HA key {path} is missing: no file sync, no peer checks",
                    "run `xivo-sync -i` on the master", node)
    if key.get("mode") != 0o600:
        mode = key.get("mode")
        return fail(check_id, f"the HA key {path} has mode {mode:04o}, ssh refuses keys others can read"
                    if isinstance(mode, int) else f"the HA key {path} is not a regular file",
                    f"chmod 600 {path}", node)
    if key.get("usable") is False:
        return fail(check_id, f"the HA key {path} does not log in to the slave: {key.get('detail') or 'ssh failed'}",
                    "run `xivo-sync -i` on the master to install the key on the slave (and check port "
                    f"{key.get('port', 22)} is open)", node)
    if "usable" not in key:
        return ok(check_id, f"HA key {path} is 0600 (login to the slave not tried)", node)
    return ok(check_id, f"HA key {path} is 0600 and logs in to the slave", node)


def check_ha_key_restricted(facts: Facts, node: str = LOCAL) -> Check | None:
    """On the slave: the master's key is installed as ``command="<forced command>",from="<master>",restrict``."""
    options = facts.get("ha_authorized")
    if role_of(facts) != Role.SLAVE.value or not options:
        return None  # not installed yet: the master's ha-key check says so
    command = facts.get("peer_command", paths.PEER_COMMAND)
    for line in options:
        missing = sync.missing_restrictions(line, command)
        if missing:
            return fail("ha-key-restricted", f"the master's HA key is installed without {' and '.join(missing)}: "
                        f"{line or '(no options)'}",
                        f"run `xivo-sync -i` on the master: it installs the key as command=\"{command}\","
                        "from=\"<master>\",restrict", node)
    return ok("ha-key-restricted", f"the master's HA key is installed as command=\"{command}\",from=<master>,restrict",
              node)


def check_job(facts: Facts, job: str, limits: Limits, node: str = LOCAL) -> Check | None:
    check_id = f"last-{job}"
    if role_of(facts) != Role.MASTER.value:
        return None
    command = f"xivo-master-slave-db-replication {peer_address(facts)}" if job == "replication" else "xivo-sync"
    entry = (facts.get("jobs") or {}).get(job)
    if entry is None:
        return warn(check_id, f"no {job} has run yet on this master", f"run `{command}`", node)
    age = float(facts.get("now", 0)) - float(entry.get("finished_at", 0))
    detail = entry.get("detail") or ""
    if entry.get("result") == "failed":
        return fail(check_id, f"the last {job} failed {_age(age)} ago: {detail}",
                    f"fix the cause, then run `{command}`", node)
    if entry.get("result") == "busy":
        return warn(check_id, f"the last {job} was postponed {_age(age)} ago: {detail}",
                    f"it is retried every hour; if it stays busy, find what holds the lock (pg_locks), "
                    f"then run `{command}`", node)
    verb = {"success": "succeeded", "skipped": "was skipped"}.get(entry.get("result"), entry.get("result"))
    finding = f"last {job} {verb} {_age(age)} ago" + (f" ({detail})" if detail else "")
    paused = " (maintenance is on: the HA cron jobs are paused)" if (facts.get("maintenance") or {}).get("on") else ""
    if age > limits.job_fail_age:
        return fail(check_id, finding + f": older than {_age(limits.job_fail_age)}{paused}",
                    f"check /etc/cron.d/xivo-ha-master and cron, then run `{command}`", node)
    if age > limits.job_warn_age:
        return warn(check_id, finding + f": older than {_age(limits.job_warn_age)}"
                    + (paused or " (it runs hourly)"),
                    f"check /etc/cron.d/xivo-ha-master and cron, or run `{command}`", node)
    return ok(check_id, finding, node)


def check_services(facts: Facts, node: str = LOCAL) -> Check | None:
    check_id = "services"
    current = role_of(facts)
    if current not in (Role.MASTER.value, Role.SLAVE.value):
        return None
    services = facts.get("services") or {}
    if services.get("error"):
        return warn(check_id, f"could not read the services' state: {services['error']}",
                    "check [services] in /etc/xivo-ha/xivo-ha.conf and `xivo-manage-slave-services status`", node)
    summary = services.get("summary")
    names = ", ".join(services.get("names") or [])
    if current == Role.MASTER.value:
        if summary == "running":
            return ok(check_id, f"the master runs its services ({names})", node)
        stopped = ", ".join(services.get("stopped") or [])
        return fail(check_id, f"the master does not run {stopped}: phones lose their primary server",
                    "start them: `xivo-service start` (see `xivo-manage-slave-services status` for details)", node)
    state = facts.get("failover") or {}
    mode = state.get("mode") or "standby"
    expected = "running" if mode == "serving" else "stopped"
    if summary == expected:
        doing = "serving (failover)" if mode == "serving" else "standing by"
        return ok(check_id, f"the slave is {doing} and its services ({names}) are {summary}", node)
    action = "start" if mode == "serving" else "stop"
    return fail(check_id,
                f"the failover state says {mode} but the slave's services are {summary}"
                + (f" ({state.get('reason')})" if state.get("reason") else ""),
                f"run `xivo-manage-slave-services {action}`; xivo-check-master-status does it on its next run "
                "when its cron job is active", node)


def check_replication_stream(facts: Facts, node: str = LOCAL) -> Check | None:
    """[replication] mode = continuous: the stream runs, its lag is under a minute."""
    from .replication import stream

    state = facts.get("stream")
    if state is None or role_of(facts) not in (Role.MASTER.value, Role.SLAVE.value):
        return None
    serving = (facts.get("failover") or {}).get("mode") == "serving"
    found = stream.verdict(facts.get("replication_mode") or stream.HOURLY, role_of(facts), state, serving)
    if found is None:
        return None
    if found.level == OK:
        return ok("replication-stream", found.sentence, node)
    return (warn if found.level == WARN else fail)("replication-stream", found.sentence, found.remedy, node)


# --- checks between the two nodes (pure) --------------------------------------------


def check_same_subnet(facts: Facts, limits: Limits) -> Check | None:
    import ipaddress

    check_id = "same-subnet"
    peer = peer_address(facts)
    if not peer:
        return None
    route = facts.get("route") or {}
    if route.get("error"):
        return fail(check_id, f"no route to the peer {peer}: {route['error']}",
                    "configure the VoIP interface so that both nodes are in the same subnet", PAIR)
    source = route.get("source") or ""
    network = ipaddress.ip_network(f"{source}/{limits.subnet_prefix}", strict=False) if source else None
    if route.get("via"):
        return fail(check_id, f"the peer {peer} is reached through the gateway {route['via']}, not on the "
                              f"VoIP link ({route.get('interface')})",
                    "put both nodes' VoIP interfaces in the same subnet (DHCP settings are replicated)", PAIR)
    if network is None or ipaddress.ip_address(peer) not in network:
        return fail(check_id, f"this node's VoIP address {source or '?'} ({route.get('interface')}) and the "
                              f"peer {peer} are not in the same /{limits.subnet_prefix}",
                    f"put both nodes' VoIP interfaces in one subnet, or set [doctor] subnet_prefix in "
                    f"{paths.SETTINGS} if yours is larger", PAIR)
    return ok(check_id, f"{source} and {peer} share {network} on {route.get('interface')}", PAIR)


def _probe(facts: Facts, name: str) -> dict | None:
    return (facts.get("probes") or {}).get(name)


def check_icmp(slave: Facts) -> Check | None:
    check_id = "icmp-slave-to-master"
    probe = _probe(slave, "icmp")
    if probe is None:
        return None
    if probe.get("alive"):
        return ok(check_id, f"the slave pings the master {probe['target']} ({probe.get('detail')})", PAIR)
    return fail(check_id, f"the slave cannot ping the master {probe['target']} ({probe.get('detail')}): "
                          "it would start its services while the master works",
                "allow ICMP echo from the slave to the master (firewall), and check the VoIP link", PAIR)


def check_tcp(master: Facts, name: str) -> Check | None:
    check_id = f"tcp-{name}-master-to-slave"
    probe = _probe(master, name)
    if probe is None:
        return None
    used_by = "file sync (xivo-sync)" if name == "ssh" else "database replication"
    if probe.get("alive"):
        return ok(check_id, f"the master connects to the slave's {name} port {probe['target']}", PAIR)
    return fail(check_id, f"the master cannot connect to the slave's {name} port {probe['target']} "
                          f"({probe.get('detail')}): {used_by} fails",
                f"allow TCP from the master to the slave on port {probe['target'].rsplit(':', 1)[-1]} "
                f"and check that {'sshd' if name == 'ssh' else 'PostgreSQL'} listens there", PAIR)


def check_peers_agree(local: Facts, peer: Facts) -> Check:
    check_id = "peers-agree"
    mine, theirs = role_of(local), role_of(peer)
    my_peer, their_peer = peer_address(local), peer_address(peer)
    me = voip_address(local) or "<this node's VoIP address>"
    opposite = {Role.MASTER.value: Role.SLAVE.value, Role.SLAVE.value: Role.MASTER.value}
    if theirs is None:
        return fail(check_id, f"the peer's role is unreadable: {(peer.get('ha') or {}).get('error')}",
                    f"on {my_peer}: fix {paths.HA_CONF}, then `xivo-ha enable {opposite.get(mine, 'slave')} {me}`",
                    PAIR)
    problems = []
    if opposite.get(mine) != theirs:
        problems.append(f"this node is {mine} and the peer is {theirs}")
    if their_peer not in own_addresses(local):
        problems.append(f"the peer points to {their_peer or 'nobody'}, not to this node ({me})")
    if my_peer not in own_addresses(peer):
        problems.append(f"this node points to {my_peer}, which is not an address of the peer")
    if problems:
        return fail(check_id, "; ".join(problems),
                    f"on {my_peer}: `xivo-ha enable {opposite.get(mine, 'slave')} {me}`", PAIR)
    return ok(check_id, f"this node is {mine} of {my_peer}; the peer is {theirs} of {their_peer}", PAIR)


def check_same_version(local: Facts, peer: Facts) -> Check:
    check_id = "same-version"
    mine, theirs = local.get("version"), peer.get("version")
    if mine == theirs:
        return ok(check_id, f"both nodes run xivo-ha {mine}", PAIR)
    return fail(check_id, f"xivo-ha {mine} here, {theirs or 'unknown'} on the peer",
                "upgrade both nodes to the same version (xivo-upgrade, or apt-get install xivo-ha on both)", PAIR)


def check_same_schema(local: Facts, peer: Facts) -> Check | None:
    check_id = "same-schema"
    mine, theirs = local.get("database") or {}, peer.get("database") or {}
    if mine.get("error") or theirs.get("error"):
        return None
    if mine.get("schema_version") == theirs.get("schema_version"):
        return ok(check_id, f"both databases are at schema {mine.get('schema_version') or 'none'}", PAIR)
    return fail(check_id, f"schema {mine.get('schema_version') or 'none'} here, "
                          f"{theirs.get('schema_version') or 'none'} on the peer: replication refuses to run",
                "upgrade both nodes to the same XiVO version (xivo-upgrade), then replicate", PAIR)


def check_db_locale(local: Facts, peer: Facts, limits: Limits) -> Check | None:
    from .replication import DatabaseInfo, locale_remedy

    check_id = "database-locale"
    mine, theirs = local.get("database") or {}, peer.get("database") or {}
    if mine.get("error") or theirs.get("error"):
        return None
    keys = ("encoding", "collate", "ctype")
    if all(mine.get(k) == theirs.get(k) for k in keys):
        return ok(check_id, f"both databases use {mine.get('encoding')}, collation {mine.get('collate')}, "
                            f"ctype {mine.get('ctype')}", PAIR)
    if role_of(local) == Role.MASTER.value:
        master, slave_ip = mine, peer_address(local)
    else:
        master, slave_ip = theirs, voip_address(local) or "<slave_ip>"
    info = DatabaseInfo(master.get("name") or "asterisk", master.get("encoding"), master.get("collate"),
                        master.get("ctype"), None, {})
    return fail(check_id,
                f"encoding/collation/ctype {mine.get('encoding')}/{mine.get('collate')}/{mine.get('ctype')} here, "
                f"{theirs.get('encoding')}/{theirs.get('collate')}/{theirs.get('ctype')} on the peer: "
                "replication fails with locale errors",
                locale_remedy(info, limits.slave_dbname, slave_ip), PAIR)


# --- the whole run (pure) ----------------------------------------------------------------


def node_checks(facts: Facts, limits: Limits, node: str) -> list[Check]:
    """Every check of one node's own state, in reading order."""
    checks: list[Optional[Check]] = [check_role_consistency(facts, node), check_maintenance(facts, limits, node)]
    if role_of(facts) in (Role.MASTER.value, Role.SLAVE.value):
        checks += [
            check_database(facts, node),
            check_sip_expiry(facts, node),
            check_trunk_expiry(facts, node),
            check_provd_plugins(facts, node),
            check_ha_key(facts, node),
            check_ha_key_restricted(facts, node),
            check_job(facts, "replication", limits, node),
            check_job(facts, "sync", limits, node),
            check_services(facts, node),
            check_replication_stream(facts, node),
        ]
    return [c for c in checks if c is not None]


def pair_checks(local: Facts, peer: Facts | None, limits: Limits) -> list[Check]:
    """Checks between the nodes: the network ones need only the facts of the node that probes."""
    current = role_of(local)
    master = local if current == Role.MASTER.value else peer
    slave = local if current == Role.SLAVE.value else peer
    checks: list[Optional[Check]] = [check_same_subnet(local, limits)]
    if slave is not None:
        checks.append(check_icmp(slave))
    if master is not None:
        checks += [check_tcp(master, "ssh"), check_tcp(master, "postgresql")]
    if peer is not None:
        checks += [
            check_peers_agree(local, peer),
            check_same_version(local, peer),
            check_same_schema(local, peer),
            check_db_locale(local, peer, limits),
        ]
    return [c for c in checks if c is not None]


def run_checks(local: Facts, peer: Facts | None, limits: Limits, peer_problem: str | None = None,
               local_only: bool = False) -> list[Check]:
    checks = node_checks(local, limits, LOCAL)
    current = role_of(local)
    if current not in (Role.MASTER.value, Role.SLAVE.value):
        return checks
    if peer is not None and not peer.get("partial"):
        checks += pair_checks(local, peer, limits)
        checks.append(ok("peer", f"facts of {peer_address(local)} gathered over ssh "
                                 f"({peer.get('hostname') or 'peer'})", PEER))
        checks += node_checks(peer, limits, PEER)
        return checks
    checks += pair_checks(local, None, limits)
    if local_only:
        return checks
    other = "master" if current == Role.SLAVE.value else "slave"
    if peer is not None:
        checks.append(check_same_version(local, peer))
    problem = peer_problem or "not gathered"
    if current == Role.SLAVE.value:
        checks.append(warn("peer", f"the master's facts were not gathered ({problem}): the master-side checks "
                                   "(ports 22/5432, HA key, last replication and sync) did not run here",
                           "run `xivo-ha doctor` on the master", PEER))
    else:
        checks.append(fail("peer", f"the {other}'s facts were not gathered ({problem})",
                           f"fix the HA key (see ha-key) and make sure xivo-ha {__version__} is installed on "
                           f"the {other}; or run `xivo-ha doctor --local-only` on each node", PEER))
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def render_text(checks: Iterable[Check], peer: str = "") -> list[str]:
    lines = []
    for c in checks:
        where = f" [peer {peer}]".replace("  ", " ") if c.node == PEER and c.id != "peer" else ""
        lines.append(f"{c.status:<4}  {c.id}{where}: {c.finding}")
        if c.status != OK and c.remedy:
            lines.append(f"      remedy: {c.remedy}")
    return lines


# --- observe: this node's facts --------------------------------------------------------


def observe(settings: Settings, contact_peer: bool = True) -> dict:
    """This node's facts, as a JSON-able dictionary (what `xivo-ha doctor --facts` prints).

    ``contact_peer=False`` skips the ssh login with the HA key (`xivo-ha check` without --peer).
    """
    facts: dict[str, Any] = {"format": FACTS_FORMAT, "version": __version__,
                             "hostname": socket.gethostname(), "now": time.time()}
    config = None
    try:
        config = role.read()
        facts["ha"] = {"role": config.role.value, "remote_address": config.remote_address}
    except XivoHaError as exc:
        facts["ha"] = {"error": str(exc)}
    facts["addresses"] = _addresses()
    peer = config.remote_address if config is not None else ""
    if peer:
        facts["route"] = _route(peer)
    facts["cron"] = {name: _read(paths.node(name)) for name in cron.CRON_FILES.values()}
    if config is not None:
        desired = cron.desired_files(config, settings.replication.mode)
        facts["cron_expected"] = {name: desired[paths.node(name)] for name in cron.CRON_FILES.values()}
    facts["sentinels"] = {
        "is-primary": paths.node(paths.SENTINEL_PRIMARY).exists(),
        "is-secondary": paths.node(paths.SENTINEL_SECONDARY).exists(),
    }
    facts["pg_access"] = _pg_access(settings)
    facts["interrupted_change"] = apply.interrupted_change()
    facts["maintenance"] = _maintenance()
    if config is None or config.role is Role.DISABLED:
        return facts
    facts["database"] = _database(settings)
    facts["provd_plugins"] = _provd_plugins()
    facts["ha_key"] = _ha_key(settings, config, contact_peer)
    facts["jobs"] = {}
    for job in ("replication", "sync"):
        entry = runstate.read(job)
        facts["jobs"][job] = None if entry is None else asdict(entry)
    if config.role is Role.SLAVE:
        from . import failover

        facts["ha_authorized"] = sync.authorized_options(system.read_text(paths.node("/root/.ssh/authorized_keys")))
        facts["peer_command"] = str(paths.node(paths.PEER_COMMAND))
        facts["failover"] = asdict(failover.load_state())
    facts["services"] = _services(settings)
    facts["probes"] = _probes(settings, config)
    from .replication import stream

    facts["replication_mode"] = settings.replication.mode
    facts["stream"] = stream.observe_local(settings.database.dsn, config.role.value)
    return facts


def _read(path) -> str | None:
    try:
        return system.read_text(path)
    except OSError as exc:
        return f"# unreadable: {exc.strerror}"


def _addresses() -> list[dict]:
    try:
        return [asdict(entry) for entry in system.ipv4_addresses()]
    except OperationFailed:
        return []


def parse_route(text: str) -> dict:
    """``ip -4 -o route get ADDR`` output → source, interface, gateway."""
    fields = text.split()
    route: dict[str, Any] = {"source": None, "interface": None, "via": None}
    for key, name in (("src", "source"), ("dev", "interface"), ("via", "via")):
        if key in fields and fields.index(key) + 1 < len(fields):
            route[name] = fields[fields.index(key) + 1]
    return route


def _route(peer: str) -> dict:
    try:
        result = system.run(["ip", "-4", "-o", "route", "get", peer], timeout=10)
    except OperationFailed as exc:
        return {"error": str(exc)}
    if not result.ok:
        return {"error": result.output() or f"ip route get exited with {result.returncode}"}
    return parse_route(result.stdout)


def _pg_access(settings: Settings) -> dict:
    try:
        hba = _read_bytes(paths.node(settings.postgresql.hba_file))
        conf = _read_bytes(paths.node(settings.postgresql.conf_file))
    except OSError as exc:
        return {"error": f"cannot read the PostgreSQL configuration: {exc}"}
    if hba is None or conf is None:
        missing = settings.postgresql.hba_file if hba is None else settings.postgresql.conf_file
        return {"error": f"{missing} not found ([postgresql] in {paths.SETTINGS})"}
    master = pgaccess.hba_master(hba)
    applies = pgaccess.first_match(hba, master) if master else None
    return {"hba_master": master, "listens_everywhere": pgaccess.listens_everywhere(conf),
            "hba_applies": applies, "streams": pgaccess.streams(conf)}


def _read_bytes(path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _maintenance() -> dict:
    try:
        entry = maintenance.read()
        paused = [maintenance.shown(p) for p in maintenance.paused_cron_files()]
    except (XivoHaError, OSError) as exc:
        return {"error": str(exc)}
    if entry is None:
        return {"on": False, "paused_cron_files": paused}
    return {"on": True, "since": entry.since, "reason": entry.reason, "paused_cron_files": paused}


def _database(settings: Settings) -> dict:
    try:
        conn = database.connect(settings.database.dsn, timeout=5, autocommit=True)
    except XivoHaError as exc:
        return {"error": str(exc)}
    import psycopg

    facts: dict[str, Any] = {}
    try:
        name, encoding, collate, ctype = conn.execute(
            "SELECT current_database(), pg_encoding_to_char(encoding), datcollate, datctype "
            "FROM pg_database WHERE datname = current_database()").fetchone()
        facts.update(name=name, encoding=encoding, collate=collate, ctype=ctype)
        facts["sip_expiry"] = database.read_sip_expiry(conn)
        facts["schema_version"] = database.schema_version(conn)
        try:
            defaults = conn.execute(GENERAL_DEFAULT_EXPIRY_SQL).fetchall()
            default_expiry = general_default_expiry(defaults[-1][0] if defaults else None)
            rows = conn.execute(TRUNK_REGISTRATIONS_SQL).fetchall()
            facts["trunks"] = [[name, registration_expiry(value, default_expiry)] for name, value in rows]
        except psycopg.Error as exc:
            facts["trunks_error"] = database.first_line(exc)
    except psycopg.Error as exc:
        return {"error": f"cannot read the database: {database.first_line(exc)}"}
    finally:
        conn.close()
    return facts


def _provd_plugins() -> list[str] | dict:
    directory = paths.node(paths.PROVD_PLUGINS)
    try:
        return sorted(entry.name for entry in directory.iterdir() if not entry.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        return {"error": f"cannot list {paths.PROVD_PLUGINS}: {exc.strerror}"}


def ssh_command(settings: Settings, peer: str, remote: list[str]) -> list[str]:
    """ssh to ``peer`` with the HA key and xivo-sync's options, running ``remote``.

    ssh hands the command to the peer's shell as one string: every argument is quoted.
    """
    return sync.Remote.from_settings(settings, peer).ssh("--", shlex.join(remote))


def _ha_key(settings: Settings, config: role.HaConfig, contact_peer: bool = True) -> dict:
    path = paths.node(settings.sync.key)
    facts: dict[str, Any] = {"path": settings.sync.key, "port": settings.sync.ssh_port}
    try:
        info = path.stat()
    except FileNotFoundError:
        facts["exists"] = False
        return facts
    facts["exists"] = True
    facts["mode"] = stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else None
    if config.role is Role.MASTER and contact_peer:
        try:
            argv = ssh_command(settings, config.remote_address, ["true"])
            result = system.run(argv, timeout=settings.sync.connect_timeout + 10)
            facts["usable"] = result.ok
            facts["detail"] = "" if result.ok else (result.output() or f"ssh exited with {result.returncode}")
        except XivoHaError as exc:
            facts["usable"] = False
            facts["detail"] = str(exc)
    return facts


def _services(settings: Settings) -> dict:
    from . import services

    try:
        status = services.Manager.from_settings(settings).status()
    except XivoHaError as exc:
        return {"error": str(exc)}
    return {
        "summary": status.summary,
        "names": [s.name for s in status.services],
        "stopped": [s.name for s in status.services if not s.running],
        "lines": status.lines(),
    }


def tcp_connect(host: str, port: int, timeout: float) -> dict:
    started = time.monotonic()
    target = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        return {"target": target, "alive": False, "detail": f"no answer within {timeout:g} s"}
    except OSError as exc:
        return {"target": target, "alive": False, "detail": exc.strerror or str(exc)}
    return {"target": target, "alive": True, "detail": f"connected in {1000 * (time.monotonic() - started):.0f} ms"}


def _probes(settings: Settings, config: role.HaConfig) -> dict:
    peer = config.remote_address
    if config.role is Role.MASTER:
        timeout = settings.doctor.connect_timeout
        return {"ssh": tcp_connect(peer, settings.sync.ssh_port, timeout),
                "postgresql": tcp_connect(peer, settings.replication.slave_port, timeout)}
    from . import probes

    try:
        obs = probes.ping(peer, count=1, interval=1.0, timeout=settings.doctor.ping_timeout)
    except OperationFailed as exc:
        return {"icmp": {"target": peer, "alive": False, "detail": str(exc)}}
    return {"icmp": {"target": peer, "alive": obs.alive, "detail": obs.detail}}


# --- the peer's facts over ssh ------------------------------------------------------------


def fetch_peer_facts(settings: Settings, local: Facts) -> tuple[dict | None, str | None]:
    """The peer's facts (``xivo-ha doctor --facts`` over ssh), or None and why not."""
    peer = peer_address(local)
    key = local.get("ha_key") or {}
    if not key.get("exists"):
        if role_of(local) == Role.SLAVE.value:
            return None, "no HA key on this slave: the key lives on the master"
        return None, f"the HA key {key.get('path', settings.sync.key)} is missing"
    if key.get("usable") is False:
        return None, f"ssh with the HA key failed: {key.get('detail')}"
    remote = list(settings.doctor.peer_command) + ["doctor", "--facts"]
    try:
        argv = ssh_command(settings, peer, remote)
        result = system.run(argv, timeout=settings.doctor.peer_timeout)
    except XivoHaError as exc:
        return None, str(exc)
    if result.returncode == SSH_FAILED:
        return None, f"ssh to {peer} failed: {result.output() or 'no output'}"
    if not result.ok:
        version = _peer_version(settings, peer)
        why = f"`{shlex.join(remote)}` exited with {result.returncode} on {peer}: {_first(result.output())}"
        if version is not None:
            return {"version": version, "partial": True}, why
        return None, why
    try:
        facts = json.loads(result.stdout)
    except ValueError:
        return None, f"the peer's xivo-ha printed no facts: {_first(result.stdout or result.stderr)}"
    if not isinstance(facts, dict) or facts.get("format") != FACTS_FORMAT:
        return None, "the peer's xivo-ha speaks another facts format"
    return facts, None


def _peer_version(settings: Settings, peer: str) -> str | None:
    """The peer's xivo-ha version from ``xivo-ha --version`` (older peers lack --facts)."""
    try:
        argv = ssh_command(settings, peer, list(settings.doctor.peer_command) + ["--version"])
        result = system.run(argv, timeout=settings.doctor.peer_timeout)
    except XivoHaError:
        return None
    words = result.stdout.split()
    return words[-1] if result.ok and words else None


def _first(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:300] if text else "no output"


def diagnose(settings: Settings, local_only: bool = False) -> tuple[list[Check], dict, dict | None]:
    """Observe this node (and the peer unless ``local_only``) and run every check."""
    local = observe(settings)
    peer, problem = None, None
    if not local_only and role_of(local) in (Role.MASTER.value, Role.SLAVE.value):
        peer, problem = fetch_peer_facts(settings, local)
    checks = run_checks(local, peer, Limits.from_settings(settings), problem, local_only)
    return checks, local, peer


def dumps_facts(facts: Facts) -> str:
    return json.dumps(facts, indent=2, sort_keys=True, default=str)
