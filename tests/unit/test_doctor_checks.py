"""The doctor's checks as pure functions over facts: each one passing and failing."""

from __future__ import annotations

import copy

import pytest

from xivo_ha import doctor, maintenance
from xivo_ha.doctor import FAIL, OK, WARN, Limits

MASTER_IP = "10.20.30.1"
SLAVE_IP = "10.20.30.2"
NOW = 1_700_000_000.0
MASTER_CRON = (
    f"# Written by `xivo-ha enable master {SLAVE_IP}` from /etc/xivo/ha.conf: do not edit.\n"
    f"0 * * * * root /usr/sbin/xivo-master-slave-db-replication {SLAVE_IP} >/dev/null\n"
    "0 * * * * root /usr/bin/xivo-sync >/dev/null\n"
)
SLAVE_CRON = (
    f"# Written by `xivo-ha enable slave {MASTER_IP}` from /etc/xivo/ha.conf: do not edit.\n"
    f"* * * * * root /usr/sbin/xivo-check-master-status {MASTER_IP} >/dev/null\n"
)
DB = {
    "name": "asterisk", "encoding": "UTF8", "collate": "C.UTF-8", "ctype": "C.UTF-8",
    "sip_expiry": {"minexpiry": "180", "maxexpiry": "300", "defaultexpiry": "240"},
    "schema_version": "2c1b3ad2b9d7", "trunks": [["provider", 120], ["other", None]],
}
LIMITS = Limits()


def job(result="success", age=600.0, detail="12 tables"):
    return {"job": "x", "result": result, "finished_at": NOW - age, "duration": 1.0, "detail": detail}


def master_facts() -> dict:
    return {
        "format": 1, "version": "0.1.0", "hostname": "master", "now": NOW,
        "ha": {"role": "master", "remote_address": SLAVE_IP},
        "addresses": [{"address": "127.0.0.1", "prefix": 8, "interface": "lo"},
                      {"address": MASTER_IP, "prefix": 24, "interface": "eth0"}],
        "route": {"source": MASTER_IP, "interface": "eth0", "via": None},
        "cron": {"/etc/cron.d/xivo-ha-master": MASTER_CRON, "/etc/cron.d/xivo-ha-slave": None},
        "cron_expected": {"/etc/cron.d/xivo-ha-master": MASTER_CRON, "/etc/cron.d/xivo-ha-slave": None},
        "sentinels": {"is-primary": True, "is-secondary": False},
        "pg_access": {"hba_master": None, "listens_everywhere": False},
        "maintenance": {"on": False, "paused_cron_files": []},
        "database": copy.deepcopy(DB),
        "provd_plugins": ["xivo-aastra-4.0"],
        "ha_key": {"path": "/root/.ssh/xivo_id_rsa", "port": 22, "exists": True, "mode": 0o600,
                   "usable": True, "detail": ""},
        "jobs": {"replication": job(), "sync": job()},
        "services": {"summary": "running", "names": ["monit", "asterisk"], "stopped": [], "lines": []},
        "probes": {"ssh": {"target": f"{SLAVE_IP}:22", "alive": True, "detail": "connected in 1 ms"},
                   "postgresql": {"target": f"{SLAVE_IP}:5432", "alive": True, "detail": "connected in 1 ms"}},
    }


def slave_facts() -> dict:
    return {
        "format": 1, "version": "0.1.0", "hostname": "slave", "now": NOW,
        "ha": {"role": "slave", "remote_address": MASTER_IP},
        "addresses": [{"address": SLAVE_IP, "prefix": 24, "interface": "eth0"}],
        "route": {"source": SLAVE_IP, "interface": "eth0", "via": None},
        "cron": {"/etc/cron.d/xivo-ha-master": None, "/etc/cron.d/xivo-ha-slave": SLAVE_CRON},
        "cron_expected": {"/etc/cron.d/xivo-ha-master": None, "/etc/cron.d/xivo-ha-slave": SLAVE_CRON},
        "sentinels": {"is-primary": False, "is-secondary": True},
        "pg_access": {"hba_master": MASTER_IP, "listens_everywhere": True},
        "maintenance": {"on": False, "paused_cron_files": []},
        "database": copy.deepcopy(DB),
        "provd_plugins": [],
        "ha_key": {"path": "/root/.ssh/xivo_id_rsa", "port": 22, "exists": False},
        "jobs": {"replication": None, "sync": None},
        "failover": {"mode": "standby", "reason": ""},
        "services": {"summary": "stopped", "names": ["monit", "asterisk"], "stopped": ["monit", "asterisk"],
                     "lines": []},
        "probes": {"icmp": {"target": MASTER_IP, "alive": True, "detail": "1/1 replies"}},
    }


def by_id(checks, check_id, node=None):
    found = [c for c in checks if c.id == check_id and (node is None or c.node == node)]
    assert len(found) == 1, [c.to_dict() for c in checks]
    return found[0]


def assert_status(check, status):
    assert check is not None
    assert check.status == status, check.to_dict()
    if status != OK:
        assert check.remedy, check.to_dict()
    assert "\n" not in check.finding and "\n" not in check.remedy
    return check


# --- the whole run ------------------------------------------------------------------------


def test_healthy_pair_is_all_ok_from_both_sides():
    for local, peer in ((master_facts(), slave_facts()), (slave_facts(), master_facts())):
        checks = doctor.run_checks(local, peer, LIMITS)
        assert [c for c in checks if c.status != OK] == []
        assert doctor.exit_code(checks) == 0
        ids = {(c.id, c.node) for c in checks}
        for expected in ("role-consistency", "maintenance", "database", "sip-expiry", "trunk-expiry",
                         "services"):
            assert (expected, "local") in ids and (expected, "peer") in ids
        for expected in ("same-subnet", "icmp-slave-to-master", "tcp-ssh-master-to-slave",
                         "tcp-postgresql-master-to-slave", "peers-agree", "same-version", "same-schema",
                         "database-locale"):
            assert (expected, "pair") in ids
        assert ("provd-plugins", "local" if local["ha"]["role"] == "slave" else "peer") in ids
        assert ("ha-key", "local" if local["ha"]["role"] == "master" else "peer") in ids


def test_every_check_id_is_unique_per_node():
    checks = doctor.run_checks(master_facts(), slave_facts(), LIMITS)
    keys = [(c.id, c.node) for c in checks]
    assert len(keys) == len(set(keys))


def test_disabled_node_only_checks_that_nothing_is_left():
    facts = {"format": 1, "version": "0.1.0", "now": NOW, "ha": {"role": "disabled", "remote_address": ""},
             "cron": {"/etc/cron.d/xivo-ha-master": None, "/etc/cron.d/xivo-ha-slave": None},
             "cron_expected": {"/etc/cron.d/xivo-ha-master": None, "/etc/cron.d/xivo-ha-slave": None},
             "sentinels": {"is-primary": False, "is-secondary": False},
             "pg_access": {"hba_master": None, "listens_everywhere": False},
             "maintenance": {"on": False, "paused_cron_files": []}}
    checks = doctor.run_checks(facts, None, LIMITS)
    assert [c.id for c in checks] == ["role-consistency", "maintenance"]
    assert all(c.status == OK for c in checks)
    facts["sentinels"]["is-primary"] = True
    assert_status(doctor.check_role_consistency(facts), FAIL)


def test_local_only_skips_the_peer_but_keeps_this_nodes_probes():
    checks = doctor.run_checks(master_facts(), None, LIMITS, local_only=True)
    ids = {c.id for c in checks}
    assert "tcp-ssh-master-to-slave" in ids and "same-subnet" in ids
    assert not ids & {"peer", "peers-agree", "same-version", "same-schema", "database-locale"}
    assert doctor.exit_code(checks) == 0


def test_unreachable_peer_fails_on_the_master_and_warns_on_the_slave():
    on_master = doctor.run_checks(master_facts(), None, LIMITS, "ssh to 10.20.30.2 failed")
    assert_status(by_id(on_master, "peer"), FAIL)
    assert "ssh to 10.20.30.2 failed" in by_id(on_master, "peer").finding
    on_slave = doctor.run_checks(slave_facts(), None, LIMITS, "no HA key on this slave")
    assert_status(by_id(on_slave, "peer"), WARN)
    assert "xivo-ha doctor" in by_id(on_slave, "peer").remedy
    assert doctor.exit_code(on_slave) == 0


def test_peer_too_old_for_facts_still_gets_the_version_compared():
    checks = doctor.run_checks(master_facts(), {"version": "0.0.9", "partial": True}, LIMITS, "exit 2")
    assert_status(by_id(checks, "same-version"), FAIL)
    assert_status(by_id(checks, "peer"), FAIL)


def test_text_rendering_gives_remedies_only_when_not_ok():
    facts = master_facts()
    facts["ha_key"]["mode"] = 0o644
    lines = doctor.render_text(doctor.run_checks(facts, slave_facts(), LIMITS), SLAVE_IP)
    key = [i for i, line in enumerate(lines) if line.startswith("FAIL  ha-key:")]
    assert key and lines[key[0] + 1] == "      remedy: chmod 600 /root/.ssh/xivo_id_rsa"
    assert any(line.startswith(f"OK    sip-expiry [peer {SLAVE_IP}]: ") for line in lines)
    assert not any("remedy" in line for line in lines[:key[0]])


# --- role consistency ---------------------------------------------------------------------


@pytest.mark.parametrize("breakage, words", [
    (lambda f: f["cron"].update({"/etc/cron.d/xivo-ha-master": None}), "xivo-ha-master is missing"),
    (lambda f: f["cron"].update({"/etc/cron.d/xivo-ha-slave": "x"}), "xivo-ha-slave exists"),
    (lambda f: f["cron"].update({"/etc/cron.d/xivo-ha-master": MASTER_CRON.replace("xivo-sync", "true")}),
     "does not hold the jobs"),
    (lambda f: f["sentinels"].update({"is-secondary": True}), "is-secondary is present"),
    (lambda f: f["sentinels"].update({"is-primary": False}), "is-primary is missing"),
    (lambda f: f["pg_access"].update({"hba_master": "10.9.9.9"}), "still lets 10.9.9.9"),
    (lambda f: f["cron"].update({"/etc/cron.d/xivo-ha-master": maintenance.pause_text(MASTER_CRON)}),
     "paused jobs but maintenance is off"),
    (lambda f: f.update(ha={"error": "/etc/xivo/ha.conf line 1: not valid JSON"}), "not valid JSON"),
])
def test_role_consistency_failures_on_the_master(breakage, words):
    facts = master_facts()
    assert_status(doctor.check_role_consistency(facts), OK)
    breakage(facts)
    check = assert_status(doctor.check_role_consistency(facts), FAIL)
    assert words in check.finding


@pytest.mark.parametrize("access, words", [
    ({"hba_master": None, "listens_everywhere": True}, "no `host asterisk postgres 10.20.30.1/32 trust` line"),
    ({"hba_master": "10.20.30.9", "listens_everywhere": True}, "lets 10.20.30.9 in"),
    ({"hba_master": MASTER_IP, "listens_everywhere": False}, "lacks `listen_addresses = '*'`"),
    ({"error": "/etc/postgresql/15/main/pg_hba.conf not found"}, "pg_hba.conf not found"),
])
def test_role_consistency_checks_the_slaves_postgresql_access(access, words):
    facts = slave_facts()
    facts["pg_access"] = access
    check = assert_status(doctor.check_role_consistency(facts), FAIL)
    assert words in check.finding
    assert check.remedy.startswith(f"run `xivo-ha enable slave {MASTER_IP}`")


def test_paused_cron_is_consistent_while_maintenance_is_on():
    facts = master_facts()
    facts["cron"]["/etc/cron.d/xivo-ha-master"] = maintenance.pause_text(MASTER_CRON)
    facts["maintenance"] = {"on": True, "since": NOW - 60, "reason": "upgrade",
                            "paused_cron_files": ["/etc/cron.d/xivo-ha-master"]}
    assert_status(doctor.check_role_consistency(facts), OK)
    facts["sentinels"]["is-primary"] = False
    check = assert_status(doctor.check_role_consistency(facts), FAIL)
    assert check.remedy.startswith("run `xivo-ha maintenance off`, then")


# --- maintenance ---------------------------------------------------------------------------


def test_maintenance_is_ok_for_a_day_then_warns():
    facts = master_facts()
    facts["maintenance"] = {"on": True, "since": NOW - 3600, "reason": "upgrade to 2024.05",
                            "paused_cron_files": ["/etc/cron.d/xivo-ha-master"]}
    check = assert_status(doctor.check_maintenance(facts, LIMITS), OK)
    assert "upgrade to 2024.05" in check.finding and "paused" in check.finding
    facts["maintenance"]["since"] = NOW - 25 * 3600
    check = assert_status(doctor.check_maintenance(facts, LIMITS), WARN)
    assert "xivo-ha maintenance off" in check.remedy


def test_maintenance_warns_when_its_cron_is_active_again_or_left_paused():
    facts = master_facts()
    facts["maintenance"] = {"on": True, "since": NOW - 60, "reason": "", "paused_cron_files": []}
    assert_status(doctor.check_maintenance(facts, LIMITS), WARN)
    facts["maintenance"] = {"on": False, "paused_cron_files": ["/etc/cron.d/xivo-ha-master"]}
    assert_status(doctor.check_maintenance(facts, LIMITS), WARN)


# --- database values -----------------------------------------------------------------------


def test_database_unreachable_fails_and_hides_the_checks_that_need_it():
    facts = master_facts()
    facts["database"] = {"error": "cannot connect to the database (dbname=asterisk): refused"}
    checks = doctor.run_checks(facts, slave_facts(), LIMITS)
    assert_status(by_id(checks, "database", "local"), FAIL)
    assert not [c for c in checks if c.node == "local" and c.id in ("sip-expiry", "trunk-expiry")]
    assert not [c for c in checks if c.id in ("same-schema", "database-locale")]


def test_sip_expiry_must_be_the_ha_values():
    facts = slave_facts()
    assert_status(doctor.check_sip_expiry(facts), OK)
    facts["database"]["sip_expiry"]["minexpiry"] = None
    check = assert_status(doctor.check_sip_expiry(facts), FAIL)
    assert "minexpiry=blank (HA needs 180)" in check.finding
    assert f"xivo-ha enable slave {MASTER_IP}" in check.remedy


def test_trunk_expiry_must_be_under_300_seconds():
    facts = master_facts()
    assert_status(doctor.check_trunk_expiry(facts), OK)
    facts["database"]["trunks"].append(["operator", 300])
    facts["database"]["trunks"].append(["carrier", 3600])
    check = assert_status(doctor.check_trunk_expiry(facts), FAIL)
    assert "operator (300 s)" in check.finding and "carrier (3600 s)" in check.finding
    assert "provider" not in check.finding


def test_trunk_table_unreadable_is_a_warning():
    facts = master_facts()
    facts["database"]["trunks_error"] = 'relation "trunkfeatures" does not exist'
    assert_status(doctor.check_trunk_expiry(facts), WARN)


def test_schema_and_locale_must_match():
    master, slave = master_facts(), slave_facts()
    assert_status(doctor.check_same_schema(master, slave), OK)
    slave["database"]["schema_version"] = "000000000000"
    assert_status(doctor.check_same_schema(master, slave), FAIL)
    slave["database"]["collate"] = "fr_FR.UTF-8"
    check = assert_status(doctor.check_db_locale(master, slave, LIMITS), FAIL)
    assert "C.UTF-8" in check.finding and "fr_FR.UTF-8" in check.finding
    assert "--lc-collate=C.UTF-8" in check.remedy and "createdb" in check.remedy
    assert SLAVE_IP in check.remedy
    from_slave = assert_status(doctor.check_db_locale(slave, master, LIMITS), FAIL)
    assert "--lc-collate=C.UTF-8" in from_slave.remedy


# --- provisioning, key, jobs, services ------------------------------------------------------


def test_slave_must_have_no_provisioning_plugins():
    facts = slave_facts()
    assert_status(doctor.check_provd_plugins(facts), OK)
    facts["provd_plugins"] = ["xivo-aastra-4.0", "xivo-snom-8.7"]
    check = assert_status(doctor.check_provd_plugins(facts), FAIL)
    assert "xivo-aastra-4.0" in check.finding
    assert doctor.check_provd_plugins(master_facts()) is None


@pytest.mark.parametrize("key, words, remedy", [
    ({"exists": False}, "missing", "xivo-sync -i"),
    ({"exists": True, "mode": 0o644}, "mode 0644", "chmod 600"),
    ({"exists": True, "mode": 0o600, "usable": False, "detail": "Permission denied (publickey)."},
     "Permission denied", "xivo-sync -i"),
])
def test_ha_key_present_private_and_usable(key, words, remedy):
    facts = master_facts()
    assert_status(doctor.check_ha_key(facts), OK)
    facts["ha_key"] = {"path": "/root/.ssh/xivo_id_rsa", **key}
    check = assert_status(doctor.check_ha_key(facts), FAIL)
    assert words in check.finding and remedy in check.remedy


FORCED = 'command="/usr/lib/xivo-ha/peer-command"'


@pytest.mark.parametrize("options, status, words", [
    ([f'{FORCED},from="{MASTER_IP}",restrict'], OK, "installed as command="),
    ([f'from="{MASTER_IP}",restrict'], FAIL, f"installed without {FORCED}"),
    ([f'command="/bin/sh",from="{MASTER_IP}",restrict'], FAIL, f"installed without {FORCED}"),
    ([f"{FORCED},restrict"], FAIL, 'installed without from="<master>"'),
    ([""], FAIL, f'without {FORCED} and from="<master>" and restrict: (no options)'),
    ([f'{FORCED},from="{MASTER_IP}",restrict', ""], FAIL, "(no options)"),
])
def test_ha_key_on_the_slave_is_behind_the_forced_command(options, status, words):
    facts = slave_facts()
    assert doctor.check_ha_key_restricted(facts) is None  # not installed yet: ha-key on the master says so
    facts["ha_authorized"] = options
    check = assert_status(doctor.check_ha_key_restricted(facts), status)
    assert words in check.finding
    if status == FAIL:
        assert "xivo-sync -i" in check.remedy and FORCED in check.remedy
    assert doctor.check_ha_key_restricted({**master_facts(), "ha_authorized": options}) is None


@pytest.mark.parametrize("entry, status", [
    (job(age=600), OK),
    (job(result="skipped", age=600, detail="unchanged"), OK),
    (job(age=3 * 3600), WARN),
    (job(age=25 * 3600), FAIL),
    (job(result="failed", age=60, detail="slave unreachable"), FAIL),
    (None, WARN),
])
def test_last_jobs_by_result_and_age(entry, status):
    facts = master_facts()
    facts["jobs"]["replication"] = entry
    check = assert_status(doctor.check_job(facts, "replication", LIMITS), status)
    if status != OK:
        assert check.remedy.endswith(f"`xivo-master-slave-db-replication {SLAVE_IP}`") or "cron" in check.remedy
    assert doctor.check_job(slave_facts(), "replication", LIMITS) is None


def test_master_services_must_run():
    facts = master_facts()
    facts["services"] = {"summary": "mixed", "names": ["monit", "asterisk"], "stopped": ["asterisk"]}
    check = assert_status(doctor.check_services(facts), FAIL)
    assert "asterisk" in check.finding


@pytest.mark.parametrize("mode, summary, status", [
    ("standby", "stopped", OK), ("serving", "running", OK),
    ("standby", "running", FAIL), ("standby", "mixed", FAIL), ("serving", "stopped", FAIL),
])
def test_slave_services_follow_the_failover_state(mode, summary, status):
    facts = slave_facts()
    facts["failover"] = {"mode": mode, "reason": "master 10.20.30.1 does not answer ping"}
    facts["services"]["summary"] = summary
    check = assert_status(doctor.check_services(facts), status)
    if status == FAIL:
        assert ("start" if mode == "serving" else "stop") in check.remedy


# --- network and the pair ------------------------------------------------------------------


def test_same_subnet_with_the_configured_prefix():
    facts = master_facts()
    assert_status(doctor.check_same_subnet(facts, LIMITS), OK)
    assert_status(doctor.check_same_subnet(facts, Limits(subnet_prefix=31)), FAIL)
    facts["route"]["via"] = "10.20.30.254"
    assert "gateway" in assert_status(doctor.check_same_subnet(facts, LIMITS), FAIL).finding
    facts["route"] = {"error": "RTNETLINK answers: Network is unreachable"}
    assert_status(doctor.check_same_subnet(facts, LIMITS), FAIL)


def test_route_parsing():
    route = doctor.parse_route("10.20.30.2 dev eth0 src 10.20.30.1 uid 0 \\    cache ")
    assert route == {"source": "10.20.30.1", "interface": "eth0", "via": None}
    route = doctor.parse_route("8.8.8.8 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0")
    assert route["via"] == "192.0.2.1"


def test_network_probes_come_from_the_node_that_sends_the_traffic():
    master, slave = master_facts(), slave_facts()
    slave["probes"]["icmp"] = {"target": MASTER_IP, "alive": False, "detail": "0/1 replies"}
    master["probes"]["postgresql"] = {"target": f"{SLAVE_IP}:5432", "alive": False, "detail": "Connection refused"}
    for local, peer in ((master, slave), (slave, master)):
        checks = doctor.run_checks(local, peer, LIMITS)
        assert_status(by_id(checks, "icmp-slave-to-master"), FAIL)
        check = assert_status(by_id(checks, "tcp-postgresql-master-to-slave"), FAIL)
        assert "port 5432" in check.remedy
        assert_status(by_id(checks, "tcp-ssh-master-to-slave"), OK)


def test_peers_must_be_mirror_images():
    master, slave = master_facts(), slave_facts()
    assert_status(doctor.check_peers_agree(master, slave), OK)
    slave["ha"] = {"role": "master", "remote_address": MASTER_IP}
    check = assert_status(doctor.check_peers_agree(master, slave), FAIL)
    assert "this node is master and the peer is master" in check.finding
    assert check.remedy == f"on {SLAVE_IP}: `xivo-ha enable slave {MASTER_IP}`"
    slave = slave_facts()
    slave["ha"]["remote_address"] = "10.20.30.7"
    assert "points to 10.20.30.7" in assert_status(doctor.check_peers_agree(master, slave), FAIL).finding


def test_versions_must_match():
    master, slave = master_facts(), slave_facts()
    slave["version"] = "0.2.0"
    check = assert_status(doctor.check_same_version(master, slave), FAIL)
    assert "0.1.0 here, 0.2.0 on the peer" in check.finding


def test_program_output_is_folded_into_one_line():
    ssh = ("@@@@@@@@@@@@\n@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\n@@@@@@@@@@@@\n"
           "Permissions 0640 for '/root/.ssh/xivo_id_rsa' are too open.\n"
           "It is required that your private key files are NOT accessible by others.\n"
           "This private key will be ignored.\n"
           'Load key "/root/.ssh/xivo_id_rsa": bad permissions\n'
           "root@10.20.30.2: Permission denied (publickey,password).\n")
    check = doctor.fail("peer", f"ssh failed: {ssh}", "fix\nit")
    assert check.finding == ("ssh failed: Permissions 0640 for '/root/.ssh/xivo_id_rsa' are too open.; "
                             'Load key "/root/.ssh/xivo_id_rsa": bad permissions; '
                             "root@10.20.30.2: Permission denied (publickey,password).")
    assert check.remedy == "fix; it"


def test_old_jobs_during_maintenance_say_why():
    facts = master_facts()
    facts["jobs"]["sync"] = job(age=3 * 3600)
    facts["maintenance"] = {"on": True, "since": NOW - 4 * 3600, "reason": "upgrade",
                            "paused_cron_files": ["/etc/cron.d/xivo-ha-master"]}
    check = assert_status(doctor.check_job(facts, "sync", LIMITS), WARN)
    assert "maintenance is on" in check.finding


def test_no_registering_trunk_is_ok():
    facts = master_facts()
    facts["database"]["trunks"] = []
    check = assert_status(doctor.check_trunk_expiry(facts), OK)
    assert check.finding == "no SIP trunk registers"


@pytest.mark.parametrize("value, expected", [
    ("provider:s3cret@sip.example.net", ("provider", "sip.example.net", None, "", None)),
    ("provider:s3cret@sip.example.net/1000~3600", ("provider", "sip.example.net", None, "1000", 3600)),
    ("provider:s3cret@10.0.0.9:5080~120", ("provider", "10.0.0.9", 5080, "", 120)),
    ("acme?tcp://alice@acme.example:pa:ss:auth@acme.example:5061/42~90",
     ("alice@acme.example", "acme.example", 5061, "42", 90)),
    ("bob:p@ss@word@carrier.example~600", ("bob", "carrier.example", None, "", 600)),
    ("bob:secret@carrier.example~0", ("bob", "carrier.example", None, "", None)),
    ("bob:secret@carrier.example~60s", ("bob", "carrier.example", None, "", 60)),
])
def test_register_lines_parse_as_chan_sip_does(value, expected):
    parsed = doctor.parse_register(value)
    assert (parsed.user, parsed.host, parsed.port, parsed.extension, parsed.expiry) == expected
    assert not [secret for secret in ("s3cret", "secret", "p@ss", "pa:ss") if secret in repr(parsed)]


@pytest.mark.parametrize("value", ["", "no-at-sign", "@host", "user:secret@", "user:pa/ss@host", ":secret@host"])
def test_register_lines_chan_sip_rejects(value):
    assert doctor.parse_register(value) is None
    assert doctor.registration_expiry(value, 120) is None


def test_registration_expiry_falls_back_to_the_general_default():
    assert doctor.registration_expiry("u:s@h/1000~3600", 240) == 3600
    assert doctor.registration_expiry("u:s@h/1000", 240) == 240
    assert doctor.general_default_expiry("3600") == 3600
    assert doctor.general_default_expiry(None) == doctor.general_default_expiry("") == 120
    assert doctor.general_default_expiry("0") == doctor.general_default_expiry("never") == 120
