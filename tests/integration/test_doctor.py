"""`xivo-ha doctor` on a real pair: two temp roots, two PostgreSQL clusters, a real sshd.

The master is a temp root whose database lives on ``postgres_server``.  The slave is the
sshd fixture's temp root, with its database on ``second_postgres_server`` and its own
settings file, so that the master's doctor reaches it exactly as on a real pair: ssh
with the HA key, then ``xivo-ha doctor --facts`` on the other side.  Both nodes are on
127.0.0.1 (XIVO_HA_ALLOW_LOOPBACK_PEER); the ports the master probes are the test sshd's
and the slave cluster's.  Services are real daemons behind init scripts.  The
subnet and ICMP checks run in network namespaces made by the test.

Every check is seen passing in the healthy pair and failing in a broken one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import REPO, SlaveServices
from node import Node, make_node
from pg import SCHEMA, free_port

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def services_env(services: SlaveServices, names: list[str]) -> dict[str, str]:
    return services.env(names)


def settings_file(values: dict[str, dict[str, str]]) -> str:
    lines = []
    for section, keys in values.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def quoted_list(text: str) -> str:
    return ", ".join(f'"{part}"' for part in text.split(","))


@dataclass
class Pair:
    master: Node
    slave: Node
    sshd: object
    master_services: SlaveServices
    slave_services: SlaveServices
    tmp: Path

    def doctor(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.master.run("doctor", *args, env=env)

    def checks(self, *args: str, node: Node | None = None, env: dict | None = None) -> dict:
        """doctor --json as {(id, node): check}."""
        result = (node or self.master).run("doctor", "--json", *args, env=env)
        assert result.returncode in (0, 1), result.stderr + result.stdout
        data = json.loads(result.stdout)
        assert all(set(c) == {"id", "status", "finding", "remedy", "node"} for c in data)
        found = {(c["id"], c["node"]): c for c in data}
        assert len(found) == len(data)
        found["exit"] = result.returncode
        return found

    def job_record(self, job: str) -> Path:
        return self.master.path(f"/var/lib/xivo-ha/{job}.json")


@pytest.fixture
def pair(tmp_path, sshd, asterisk_db, second_postgres_server):
    slave_db = second_postgres_server.create_database()
    master_services = SlaveServices(tmp_path / "master-services")
    slave_services = SlaveServices(tmp_path / "slave-services")
    master_services.add_sleeper("asterisk")
    slave_services.add_sleeper("asterisk")
    try:
        yield _build_pair(tmp_path, sshd, asterisk_db, slave_db, master_services, slave_services)
    finally:
        master_services.cleanup()
        slave_services.cleanup()
        second_postgres_server.drop_database(slave_db.name)


def _build_pair(tmp_path, sshd, master_db, slave_db, master_services, slave_services, mode: str = "hourly") -> Pair:
    """Both nodes set up and the first replication and sync done, in [replication] ``mode``."""
    slave_root = sshd.slave_root
    slave_env = {"XIVO_HA_ALLOW_LOOPBACK_PEER": "1", "XIVO_HA_REPLICATION_MODE": mode,
                 **services_env(slave_services, ["asterisk"])}
    slave = make_node(slave_root, slave_db, slave_env)
    # The slave's own settings file: what its xivo-ha reads when the master's doctor calls it.
    services = services_env(slave_services, ["asterisk"])
    conf = slave.path("/etc/xivo-ha/xivo-ha.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text(settings_file({
        "database": {"dsn": f'"{slave_db.dsn}"'},
        "postgresql": {"reload_command": quoted_list(slave.env["XIVO_HA_POSTGRESQL_RELOAD_COMMAND"])},
        "services": {key[len("XIVO_HA_SERVICES_"):].lower(): quoted_list(value)
                     for key, value in services.items() if key != "XIVO_HA_SERVICES_COMMAND_TIMEOUT"},
        "doctor": {"ping_timeout": "1"},
        "replication": {"mode": mode},
    }))

    master_root = tmp_path / "master"
    master_root.mkdir()
    master = make_node(master_root, master_db, {
        "XIVO_HA_ALLOW_LOOPBACK_PEER": "1",
        "XIVO_HA_SYNC_SSH_PORT": str(sshd.port),
        "XIVO_HA_SYNC_REMOTE_ROOT": str(slave_root),
        "XIVO_HA_SYNC_DIRECTORIES": "/etc/asterisk/extensions_extra.d",
        "XIVO_HA_REPLICATION_SLAVE_PORT": str(slave_db.server.port),
        "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave_db.name,
        "XIVO_HA_REPLICATION_MODE": mode,
        **services_env(master_services, ["asterisk"]),
    })
    extra = master.path("/etc/asterisk/extensions_extra.d")
    extra.mkdir(parents=True)
    (extra / "custom.conf").write_text("[custom]\n")

    ok(master.run("enable", "master", LOOPBACK))
    ok(slave.run("enable", "slave", LOOPBACK))
    ok(master.run("start", command="xivo-manage-slave-services"))
    key = master.path("/root/.ssh/xivo_id_rsa")
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "XiVO HA", "-f", str(key)], check=True)
    # As `xivo-sync -i` installs it: behind the slave's forced command, which runs its own xivo-ha.
    sshd.authorize(f'command="{sshd.peer_command}",from="127.0.0.1",restrict '
                   + key.with_name("xivo_id_rsa.pub").read_text())
    sshd.pin_host_key(master.path("/var/lib/xivo-ha/known_hosts"))
    ok(master.run(LOOPBACK, command="xivo-master-slave-db-replication"))
    ok(master.run(command="xivo-sync"))
    assert slave.path("/etc/asterisk/extensions_extra.d/custom.conf").is_file()
    return Pair(master, slave, sshd, master_services, slave_services, tmp_path)


def status_of(checks: dict, check_id: str, node: str = "local") -> str:
    assert (check_id, node) in checks, sorted(k for k in checks if k != "exit")
    return checks[(check_id, node)]["status"]


def failing(checks: dict) -> dict:
    return {key: c["status"] for key, c in checks.items() if key != "exit" and c["status"] != "OK"}


# --- the healthy pair ------------------------------------------------------------------------


EVERY_CHECK = {
    ("role-consistency", "local"), ("maintenance", "local"), ("database", "local"), ("sip-expiry", "local"),
    ("trunk-expiry", "local"), ("ha-key", "local"), ("last-replication", "local"), ("last-sync", "local"),
    ("services", "local"), ("same-subnet", "pair"), ("icmp-slave-to-master", "pair"),
    ("tcp-ssh-master-to-slave", "pair"), ("tcp-postgresql-master-to-slave", "pair"), ("peers-agree", "pair"),
    ("same-version", "pair"), ("same-schema", "pair"), ("database-locale", "pair"), ("peer", "peer"),
    ("role-consistency", "peer"), ("maintenance", "peer"), ("database", "peer"), ("sip-expiry", "peer"),
    ("trunk-expiry", "peer"), ("provd-plugins", "peer"), ("services", "peer"), ("ha-key-restricted", "peer"),
}


def test_healthy_pair_from_the_master_is_all_ok(pair):
    checks = pair.checks()
    assert failing(checks) == {}
    assert checks["exit"] == 0
    assert set(checks) - {"exit"} == EVERY_CHECK

    text = ok(pair.doctor())
    assert "remedy" not in text.stdout
    assert text.stdout.splitlines()[-1] == f"{len(EVERY_CHECK)} checks: all OK"
    assert all(line.startswith("OK    ") for line in text.stdout.splitlines()[:-1])


def test_healthy_pair_from_the_slave_warns_that_the_master_side_was_not_checked(pair):
    checks = pair.checks(node=pair.slave)
    assert failing(checks) == {("peer", "peer"): "WARN"}
    assert "xivo-ha doctor" in checks[("peer", "peer")]["remedy"]
    assert checks["exit"] == 0
    for check_id in ("role-consistency", "provd-plugins", "services", "sip-expiry"):
        assert status_of(checks, check_id) == "OK"
    assert status_of(checks, "icmp-slave-to-master", "pair") == "OK"


@pytest.mark.parametrize("dropped, missing", [
    ('from="127.0.0.1",restrict', 'from="<master>" and restrict'),
    ("command=\"{command}\",", 'command="{command}"'),
])
def test_an_ha_key_without_its_restrictions_on_the_slave_fails(pair, dropped, missing):
    authorized = pair.sshd.authorized_keys
    command = pair.sshd.peer_command
    authorized.write_text(authorized.read_text().replace(dropped.format(command=command), ""))
    # Without the forced command the master's request runs as it is: name the slave's xivo-ha.
    unconfined = {"XIVO_HA_DOCTOR_PEER_COMMAND": f"{sys.executable},{REPO / 'bin' / 'xivo-ha'}"}
    checks = pair.checks(env=unconfined if dropped.startswith("command") else None)
    assert failing(checks) == {("ha-key-restricted", "peer"): "FAIL"}
    check = checks[("ha-key-restricted", "peer")]
    assert f"installed without {missing.format(command=command)}" in check["finding"]
    assert "xivo-sync -i" in check["remedy"] and f'command="{command}"' in check["remedy"]


def test_the_peer_refuses_what_the_master_does_not_run(pair):
    """[doctor] peer_command names another program: the slave's forced command refuses it."""
    checks = pair.checks(env={"XIVO_HA_DOCTOR_PEER_COMMAND": "sh,-c,id"})
    check = checks[("peer", "peer")]
    assert check["status"] == "FAIL"
    assert "xivo-ha peer-command: refused" in check["finding"]


def test_local_only_does_not_contact_the_peer(pair):
    pair.sshd.stop()
    checks = pair.checks("--local-only")
    assert not [key for key in checks if key != "exit" and key[1] == "peer"]
    assert status_of(checks, "tcp-ssh-master-to-slave", "pair") == "FAIL"
    assert status_of(checks, "tcp-postgresql-master-to-slave", "pair") == "OK"


def test_facts_are_json_for_the_peer(pair):
    facts = json.loads(ok(pair.slave.run("doctor", "--facts")).stdout)
    assert facts["ha"] == {"role": "slave", "remote_address": LOOPBACK}
    assert facts["database"]["schema_version"] == "2c1b3ad2b9d7"
    assert facts["services"]["summary"] == "stopped"
    assert pair.slave.run("doctor", "--facts", "--json").returncode == 2


def test_help(pair):
    result = ok(pair.master.run("doctor", "--help"))
    for switch in ("--json", "--local-only", "--facts"):
        assert switch in result.stdout
    assert "doctor" in ok(pair.master.run("--help")).stdout


# --- broken pairs: each check failing on real components --------------------------------------


def test_role_consistency_broken_here_and_on_the_peer(pair):
    pair.master.path("/var/lib/xivo/is-primary").unlink()
    hba = pair.slave.path("/etc/postgresql/15/main/pg_hba.conf")
    hba.write_text("\n".join(line for line in hba.read_text().splitlines() if "asterisk postgres" not in line) + "\n")

    result = pair.doctor()
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "FAIL  role-consistency: master node, but /var/lib/xivo/is-primary is missing" in lines
    assert f"      remedy: run `xivo-ha enable master {LOOPBACK}`: it rewrites every HA file and line idempotently" \
        in lines
    assert any(line.startswith(f"FAIL  role-consistency [peer {LOOPBACK}]: slave node, but pg_hba.conf has no")
               for line in lines)

    ok(pair.master.run("enable", "master", LOOPBACK))
    ok(pair.slave.run("enable", "slave", LOOPBACK))
    assert failing(pair.checks()) == {}


def test_peers_must_mirror_each_other(pair):
    ok(pair.slave.run("enable", "master", LOOPBACK))
    checks = pair.checks()
    assert status_of(checks, "peers-agree", "pair") == "FAIL"
    assert "this node is master and the peer is master" in checks[("peers-agree", "pair")]["finding"]
    assert checks[("peers-agree", "pair")]["remedy"] == f"on {LOOPBACK}: `xivo-ha enable slave {LOOPBACK}`"
    assert checks["exit"] == 1


def test_maintenance_for_more_than_a_day_warns(pair):
    ok(pair.master.run("maintenance", "on", "--reason", "upgrade to 2024.05"))
    checks = pair.checks()
    assert status_of(checks, "maintenance") == "OK"
    assert "upgrade to 2024.05" in checks[("maintenance", "local")]["finding"]
    assert status_of(checks, "role-consistency") == "OK"

    record = pair.master.path("/var/lib/xivo-ha/maintenance.json")
    data = json.loads(record.read_text())
    data["since"] = "2020-01-01T00:00:00+00:00"
    record.write_text(json.dumps(data))
    checks = pair.checks()
    assert failing(checks) == {("maintenance", "local"): "WARN"}
    assert checks["exit"] == 0


def test_database_unreachable(pair):
    checks = pair.checks(env={"XIVO_HA_DATABASE_DSN": f"host=127.0.0.1 port={free_port()} user=postgres"})
    assert status_of(checks, "database") == "FAIL"
    assert ("sip-expiry", "local") not in checks and ("same-schema", "pair") not in checks


def test_sip_expiry_changed_on_the_slave(pair):
    pair.slave.db.execute("UPDATE staticsip SET var_val = '3600' WHERE var_name = 'maxexpiry'")
    checks = pair.checks()
    assert failing(checks) == {("sip-expiry", "peer"): "FAIL"}
    assert "maxexpiry=3600 (HA needs 300)" in checks[("sip-expiry", "peer")]["finding"]


def add_sip_trunk(db, name: str, register: str | None, *, commented: int = 0, registercommented: int = 0) -> None:
    """A SIP trunk as XiVO's web interface stores it: usersip (category trunk), its
    staticsip `register` line and the trunkfeatures row tying them."""
    db.execute(f"INSERT INTO usersip (name, type, secret, host, category) "
               f"VALUES ('{name}', 'peer', 'pw:{name}@x', 'sip.example.net', 'trunk')")
    registerid = "0"
    if register is not None:
        db.execute(f"INSERT INTO staticsip (commented, filename, category, var_name, var_val) "
                   f"VALUES ({commented}, 'sip.conf', 'general', 'register', '{register}')")
        registerid = "(SELECT max(id) FROM staticsip)"
    db.execute(f"INSERT INTO trunkfeatures (protocol, protocolid, registerid, registercommented, description) "
               f"SELECT 'sip', id, {registerid}, {registercommented}, 'trunk {name}' FROM usersip WHERE name = '{name}'")


def test_trunk_registration_expiry_of_300_s_or_more(pair):
    add_sip_trunk(pair.master.db, "provider", "provider:pw:provider@x@sip.example.net/1000~3600")
    add_sip_trunk(pair.master.db, "fine", "fine:secret@sip.example.net:5060/1001~120")
    add_sip_trunk(pair.master.db, "none", None)
    add_sip_trunk(pair.master.db, "off", "off:secret@sip.example.net~3600", commented=1)
    add_sip_trunk(pair.master.db, "paused", "paused:secret@sip.example.net~3600", registercommented=1)
    checks = pair.checks()
    assert failing(checks) == {("trunk-expiry", "local"): "FAIL"}
    finding = checks[("trunk-expiry", "local")]["finding"]
    assert "provider (3600 s)" in finding
    assert not [word for word in ("fine", "none", "off", "paused", "pw:", "secret") if word in finding]


def test_trunk_without_expiry_follows_the_general_default(pair):
    add_sip_trunk(pair.master.db, "carrier", "carrier:secret@sip.example.net/1000")
    assert pair.checks()[("trunk-expiry", "local")]["status"] == "OK"  # HA's defaultexpiry: 240 s
    pair.master.db.execute("UPDATE staticsip SET var_val = '3600' WHERE var_name = 'defaultexpiry'")
    checks = pair.checks()
    assert checks[("trunk-expiry", "local")]["status"] == "FAIL"
    assert "carrier (3600 s)" in checks[("trunk-expiry", "local")]["finding"]


def test_no_registering_trunk(pair):
    add_sip_trunk(pair.master.db, "silent", None)
    check = pair.checks()[("trunk-expiry", "local")]
    assert (check["status"], check["finding"]) == ("OK", "no SIP trunk registers")


def test_provisioning_plugins_on_the_slave(pair):
    plugins = pair.slave.path("/var/lib/xivo-provd/plugins/xivo-aastra-4.0")
    plugins.mkdir(parents=True)
    (plugins / "entry.py").write_text("")
    checks = pair.checks()
    assert failing(checks) == {("provd-plugins", "peer"): "FAIL"}
    assert "xivo-aastra-4.0" in checks[("provd-plugins", "peer")]["finding"]
    local = pair.checks(node=pair.slave)
    assert status_of(local, "provd-plugins") == "FAIL"


def test_ha_key_readable_by_others(pair):
    pair.master.path("/root/.ssh/xivo_id_rsa").chmod(0o644)
    checks = pair.checks()
    assert status_of(checks, "ha-key") == "FAIL"
    assert checks[("ha-key", "local")]["remedy"] == "chmod 600 /root/.ssh/xivo_id_rsa"


def test_ha_key_not_accepted_by_the_slave(pair):
    pair.sshd.authorized_keys.write_text("")
    checks = pair.checks()
    assert status_of(checks, "ha-key") == "FAIL"
    assert "does not log in" in checks[("ha-key", "local")]["finding"]
    assert status_of(checks, "peer", "peer") == "FAIL"
    assert ("role-consistency", "peer") not in checks


def test_ha_key_missing(pair):
    pair.master.path("/root/.ssh/xivo_id_rsa").unlink()
    checks = pair.checks()
    assert status_of(checks, "ha-key") == "FAIL"
    assert "xivo-sync -i" in checks[("ha-key", "local")]["remedy"]


def test_last_replication_failed(pair):
    closed = str(free_port())
    failed = pair.master.run(LOOPBACK, command="xivo-master-slave-db-replication",
                             env={"XIVO_HA_REPLICATION_SLAVE_PORT": closed})
    assert failed.returncode == 1
    checks = pair.checks()
    assert failing(checks) == {("last-replication", "local"): "FAIL"}
    assert "failed" in checks[("last-replication", "local")]["finding"]


@pytest.mark.parametrize("hours, status", [(3, "WARN"), (25, "FAIL")])
def test_last_sync_too_old(pair, hours, status):
    record = pair.job_record("sync")
    data = json.loads(record.read_text())
    data["finished_at"] -= hours * 3600
    record.write_text(json.dumps(data))
    checks = pair.checks()
    assert failing(checks) == {("last-sync", "local"): status}
    assert checks["exit"] == (1 if status == "FAIL" else 0)


def test_master_services_not_running(pair):
    ok(pair.master.run("stop", command="xivo-manage-slave-services"))
    checks = pair.checks()
    assert failing(checks) == {("services", "local"): "FAIL"}
    assert "asterisk" in checks[("services", "local")]["finding"]


def test_slave_services_running_while_standing_by(pair):
    ok(pair.slave.run("start", command="xivo-manage-slave-services"))
    checks = pair.checks()
    assert failing(checks) == {("services", "peer"): "FAIL"}
    assert "xivo-manage-slave-services stop" in checks[("services", "peer")]["remedy"]


def test_slave_serving_after_a_real_failover_is_consistent(pair):
    """The slave took over (failover.json says serving, as xivo-check-master-status writes it)
    but its services do not run: FAIL until they are started."""
    state = pair.slave.path("/var/lib/xivo-ha/failover.json")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"mode": "serving", "master": LOOPBACK, "condition": "down",
                                 "consecutive_failures": 1, "consecutive_successes": 0,
                                 "reason": "master 127.0.0.1 does not answer ping"}))
    checks = pair.checks()
    assert failing(checks) == {("services", "peer"): "FAIL"}
    assert "xivo-manage-slave-services start" in checks[("services", "peer")]["remedy"]
    ok(pair.slave.run("start", command="xivo-manage-slave-services"))
    assert failing(pair.checks()) == {}


@pytest.mark.parametrize("which", ["ssh", "postgresql"])
def test_master_cannot_reach_a_slave_port(pair, which):
    closed = str(free_port())
    key = "XIVO_HA_SYNC_SSH_PORT" if which == "ssh" else "XIVO_HA_REPLICATION_SLAVE_PORT"
    checks = pair.checks(env={key: closed})
    check = checks[(f"tcp-{which}-master-to-slave", "pair")]
    assert check["status"] == "FAIL"
    assert "Connection refused" in check["finding"] and f"port {closed}" in check["remedy"]
    other = "postgresql" if which == "ssh" else "ssh"
    assert status_of(checks, f"tcp-{other}-master-to-slave", "pair") == "OK"


def test_peer_unreachable(pair):
    pair.sshd.stop()
    checks = pair.checks()
    assert status_of(checks, "peer", "peer") == "FAIL"
    assert status_of(checks, "tcp-ssh-master-to-slave", "pair") == "FAIL"
    assert status_of(checks, "tcp-postgresql-master-to-slave", "pair") == "OK"


def test_different_xivo_ha_version_on_the_peer(pair):
    """The slave runs another release of the package: a copy of it with another version."""
    other = pair.tmp / "other-release"
    shutil.copytree(REPO / "lib" / "xivo_ha", other / "xivo_ha")
    init = other / "xivo_ha" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.'))
    pair.sshd.install_peer_command({"PYTHONPATH": str(other), "XIVO_HA_SHARE_DIR": str(REPO / "conf")})
    checks = pair.checks()
    assert failing(checks) == {("same-version", "pair"): "FAIL"}
    assert "on the peer" in checks[("same-version", "pair")]["finding"]
    assert "9.9." in checks[("same-version", "pair")]["finding"]


def test_different_schema_version_on_the_peer(pair):
    pair.slave.db.execute("UPDATE alembic_version SET version_num = '0123456789ab'")
    checks = pair.checks()
    assert failing(checks) == {("same-schema", "pair"): "FAIL"}
    assert "0123456789ab" in checks[("same-schema", "pair")]["finding"]


def test_two_schema_version_rows_doctor_and_replication_agree(pair):
    # alembic keeps one row per head: both read every row, so same-schema fails where the replication refuses.
    pair.slave.db.execute("INSERT INTO alembic_version (version_num) VALUES ('0123456789ab')")
    checks = pair.checks()
    assert failing(checks) == {("same-schema", "pair"): "FAIL"}
    finding = checks[("same-schema", "pair")]["finding"]
    assert "schema 2c1b3ad2b9d7 here, 0123456789ab,2c1b3ad2b9d7 on the peer" in finding
    refused = pair.master.run(LOOPBACK, command="xivo-master-slave-db-replication")
    assert refused.returncode == 1
    assert "(alembic_version: master 2c1b3ad2b9d7, slave 0123456789ab,2c1b3ad2b9d7)" in refused.stderr


def test_different_database_locale_on_the_peer(pair, second_postgres_server):
    other = second_postgres_server.create_database(template="template0", lc_collate="C", lc_ctype="C")
    try:
        subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", other.dsn, "-f", str(SCHEMA)],
                       check=True, capture_output=True, text=True)
        other.execute("UPDATE staticsip SET var_val = CASE var_name WHEN 'minexpiry' THEN '180' "
                      "WHEN 'maxexpiry' THEN '300' WHEN 'defaultexpiry' THEN '240' END "
                      "WHERE var_name IN ('minexpiry', 'maxexpiry', 'defaultexpiry')")
        conf = pair.slave.path("/etc/xivo-ha/xivo-ha.conf")
        conf.write_text(conf.read_text().replace(pair.slave.db.dsn, other.dsn))
        checks = pair.checks()
        assert failing(checks) == {("database-locale", "pair"): "FAIL"}
        check = checks[("database-locale", "pair")]
        assert "C.UTF-8" in check["finding"] and "/C/C on the peer" in check["finding"]
        assert "createdb -E UTF8 -T template0 --lc-collate=C.UTF-8 --lc-ctype=C.UTF-8" in check["remedy"]
    finally:
        second_postgres_server.drop_database(other.name)


# --- subnet and ICMP, between network namespaces ---------------------------------------------------


@pytest.fixture
def ns_slave(lab, tmp_path, asterisk_db):
    """A slave node whose network is the lab's slave namespace; its master is the lab's master."""
    root = tmp_path / "ns-slave"
    root.mkdir()
    services = SlaveServices(tmp_path / "ns-services")
    services.add_sleeper("asterisk")
    server = asterisk_db.server
    # A unix-socket DSN: the database is reachable from inside the namespace.
    dsn = f"host={server.dir} port={server.port} user=postgres dbname={asterisk_db.name}"
    node = make_node(root, asterisk_db, {"XIVO_HA_DATABASE_DSN": dsn, "XIVO_HA_DOCTOR_PING_TIMEOUT": "1",
                                         **services.env(["asterisk"])})
    ok(node.run("enable", "slave", lab.master_address))
    try:
        yield node
    finally:
        services.cleanup()


def ns_checks(lab, node, *extra_env: tuple[str, str]) -> dict:
    env = {**os.environ, **node.env, **dict(extra_env)}
    result = lab.run_in_slave([sys.executable, str(REPO / "bin" / "xivo-ha"), "doctor", "--json", "--local-only"],
                              env=env)
    assert result.returncode in (0, 1), result.stderr
    return {(c["id"], c["node"]): c for c in json.loads(result.stdout)}


def test_subnet_and_icmp_between_namespaces(lab, ns_slave):
    checks = ns_checks(lab, ns_slave)
    assert checks[("same-subnet", "pair")]["status"] == "OK"
    assert f"10.231.{lab.octet}.0/24" in checks[("same-subnet", "pair")]["finding"]
    assert checks[("icmp-slave-to-master", "pair")]["status"] == "OK"
    assert [key for key, c in checks.items() if c["status"] != "OK"] == []


def test_subnet_smaller_than_configured_fails(lab, ns_slave):
    checks = ns_checks(lab, ns_slave, ("XIVO_HA_DOCTOR_SUBNET_PREFIX", "31"))
    check = checks[("same-subnet", "pair")]
    assert check["status"] == "FAIL"
    assert f"{lab.slave_address}" in check["finding"] and "/31" in check["finding"]


def test_master_not_answering_ping_fails(lab, ns_slave):
    lab.master_link(False)
    checks = ns_checks(lab, ns_slave)
    check = checks[("icmp-slave-to-master", "pair")]
    assert check["status"] == "FAIL"
    assert "0/1 replies" in check["finding"] and "ICMP" in check["remedy"]
