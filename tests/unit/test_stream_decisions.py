"""The continuous stream's pure decisions: what a node's view of it means, what a role
change removes, and the PostgreSQL file edits a continuous master needs."""

from __future__ import annotations

import dataclasses

import pytest

from xivo_ha import apply, paths, pgaccess, settings
from xivo_ha.replication import stream
from xivo_ha.role import HaConfig, Role

SLAVE = "10.20.30.2"
HBA = b"local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 reject\n"
CONF = b"#listen_addresses = 'localhost'\nport = 5432\n"

STREAMING = {"side": "slave", "exists": True, "enabled": True, "streaming": True, "lag_seconds": 0.4,
             "lag_bytes": 0, "errors": 0}


@pytest.mark.parametrize("mode, role, state, serving, level, words", [
    ("hourly", "slave", {"side": "slave", "exists": False}, False, None, ""),
    ("hourly", "master", {"side": "master", "exists": True, "streaming": False}, False, "WARN", "hourly"),
    ("continuous", "slave", {"side": "slave", "exists": False}, False, "FAIL", "no subscription"),
    ("continuous", "master", {"side": "master", "exists": False}, False, "FAIL", "no replication slot"),
    ("continuous", "slave", STREAMING, False, "OK", "lag 0.4 s / 0 bytes"),
    ("continuous", "slave", {**STREAMING, "lag_seconds": 61.0}, False, "WARN", "over 60 s"),
    ("continuous", "slave", {**STREAMING, "silence_seconds": 29.0}, False, "OK", "lag 0.4 s"),  # an idle master
    ("continuous", "slave", {**STREAMING, "silence_seconds": 75.0}, False, "WARN", "for 75 s"),
    ("continuous", "slave", {**STREAMING, "enabled": False, "streaming": False, "errors": 2}, False, "FAIL",
     "2 apply error(s)"),
    ("continuous", "slave", {**STREAMING, "enabled": False, "streaming": False}, True, "OK", "while the slave serves"),
    ("continuous", "slave", {**STREAMING, "streaming": False}, False, "FAIL", "not running"),
    ("continuous", "master", {"side": "master", "error": "connection refused"}, False, "FAIL", "connection refused"),
])
def test_verdict(mode, role, state, serving, level, words):
    found = stream.verdict(mode, role, state, serving)
    if level is None:
        assert found is None
        return
    assert found.level == level and words in found.sentence
    assert found.level == "OK" or found.remedy


def test_a_stopped_stream_says_the_next_verified_copy_repairs_it():
    found = stream.verdict("continuous", "slave", {**STREAMING, "enabled": False, "streaming": False})
    assert "xivo-master-slave-db-replication" in found.remedy


SLOT = {"side": "master", "exists": True, "enabled": True, "streaming": True, "publication": True,
        "lag_seconds": 0.0, "lag_bytes": 0, "errors": 0}
DISABLED = {**STREAMING, "enabled": False, "streaming": False, "lag_seconds": None, "lag_bytes": None}


def slave_report(stream_state, mode="standby", role="slave"):
    """What `xivo-ha status --json` on the slave says, the parts the repair reads."""
    return {"role": role, "failover": {"mode": mode, "reason": "master 10.20.30.1 answers"},
            "replication": {"mode": "continuous", "stream": stream_state}}


@pytest.mark.parametrize("master, report, problem, needed, words", [
    # The slave stands by and its stream is off: repaired.
    (SLOT, slave_report(DISABLED), "", True, "subscription is disabled"),
    (SLOT, slave_report({**DISABLED, "errors": 3}), "", True, "3 apply error(s)"),
    (SLOT, slave_report({"side": "slave", "exists": False}), "", True, "no subscription"),
    ({"side": "master", "exists": False, "publication": True}, slave_report(STREAMING), "", True,
     "this master has no replication slot"),
    # Not repaired: it flows, or PostgreSQL reconnects by itself.
    (SLOT, slave_report(STREAMING), "", False, "streaming"),
    ({**SLOT, "streaming": False}, slave_report({**STREAMING, "streaming": False}), "", False,
     "PostgreSQL reconnects by itself"),
    # Not repaired: the slave serves, or cannot tell, or says it is a master.
    (SLOT, slave_report(DISABLED, mode="serving"), "", False, "expected while it serves"),
    (SLOT, slave_report(DISABLED, mode="unknown"), "", False, "cannot tell whether it serves"),
    (SLOT, {**slave_report(DISABLED), "failover": None}, "", False, "cannot tell whether it serves"),
    (SLOT, slave_report(DISABLED, role="master"), "", False, "says it is a master"),
    # Not repaired: someone cannot be asked or read.
    (SLOT, None, "ssh to 10.20.30.2 failed: Connection refused", False, "ssh to 10.20.30.2 failed"),
    (SLOT, slave_report({"side": "slave", "error": "connection refused"}), "", False,
     "the slave cannot read its stream: connection refused"),
    (SLOT, {"role": "slave", "failover": {"mode": "standby"}}, "", False, "does not report its stream"),
    ({"side": "master", "error": "no such database"}, slave_report(DISABLED), "", False,
     "cannot read this master's stream: no such database"),
])
def test_repair_needed(master, report, problem, needed, words):
    decided, sentence = stream.repair_needed(master, report, problem)
    assert decided is needed
    assert words in sentence, sentence


def test_a_repair_says_what_it_repairs_and_what_it_waits_for():
    needed, sentence = stream.repair_needed(SLOT, slave_report(DISABLED))
    assert needed and "stands by" in sentence
    _, sentence = stream.repair_needed(SLOT, slave_report(DISABLED, mode="serving"))
    assert "after failback" in sentence


@pytest.mark.parametrize("role, mode, objects, subscription, master", [
    ("master", "continuous", ["publication xivo_ha", "role xivo_ha_replication"], False, False),
    ("master", "continuous", ["subscription xivo_ha"], True, False),  # an ex-slave promoted
    ("slave", "continuous", ["subscription xivo_ha"], False, False),
    ("slave", "continuous", ["subscription xivo_ha", "publication xivo_ha"], False, True),  # an ex-master
    ("master", "hourly", ["publication xivo_ha", "replication slot xivo_ha_1"], False, True),
    ("disabled", "continuous", ["subscription xivo_ha", "role xivo_ha_replication"], True, True),
    ("disabled", "hourly", [], False, False),
])
def test_teardown(role, mode, objects, subscription, master):
    plan = stream.teardown(role, mode, objects)
    assert (plan.subscription, plan.master) == (subscription, master)
    assert plan.needed is (subscription or master) and plan.reason


def test_slot_names_are_new_each_time_and_valid():
    first, second = stream.slot_name(1000.0), stream.slot_name(1000.001)
    assert first != second and first.startswith(stream.SLOT_PREFIX)
    assert all(c.islower() or c.isdigit() or c == "_" for c in first) and len(first) <= 63


def test_master_hba_gets_the_slaves_stream_line_before_the_rule_that_would_reject_it():
    edited = pgaccess.edit_hba(HBA, None, SLAVE)
    lines = edited.splitlines()
    rule = f"host asterisk {stream.ROLE} {SLAVE}/32 scram-sha-256".encode()
    assert lines.index(rule) < lines.index(b"host all all 0.0.0.0/0 reject")
    assert pgaccess.hba_stream_peer(edited) == SLAVE and pgaccess.hba_master(edited) is None
    assert pgaccess.edit_hba(edited, None) == HBA


def test_master_conf_gets_wal_level_logical_and_gives_it_back():
    edited = pgaccess.edit_conf(CONF, True, logical=True)
    assert pgaccess.streams(edited) and pgaccess.listens_everywhere(edited)
    assert pgaccess.edit_conf(edited, False) == CONF
    # An administrator's own wal_level = logical (not after our marker) stays.
    own = CONF + b"wal_level = logical\n"
    assert pgaccess.edit_conf(pgaccess.edit_conf(own, True, logical=True), False) == own
    assert not pgaccess.streams(own)


@pytest.fixture
def continuous(node_root):
    loaded = settings.load(node_root / "absent.conf", environ={"XIVO_HA_REPLICATION_MODE": "continuous"})
    assert loaded.replication.mode == "continuous"
    return loaded


def _observed(config, stream_objects=()) -> apply.Observed:
    files = {path: apply.FileState(path, None, 0o644) for path in apply.role_files().values()}
    for key, content in (("hba_file", HBA), ("conf_file", CONF)):
        path = paths.node(getattr(config.postgresql, key))
        files[path] = apply.FileState(path, content, 0o640, (0, 0))
    base = apply.Observed(HaConfig(Role.DISABLED, ""), files, {})
    return dataclasses.replace(base, stream=tuple(stream_objects))


def test_a_continuous_master_plans_the_stream_access_and_a_restart(continuous):
    steps = apply.plan(HaConfig(Role.MASTER, SLAVE), continuous, _observed(continuous))
    pg = next(step for step in steps if step.name.startswith("c. "))
    hba = pg.writes[paths.node(continuous.postgresql.hba_file)][0]
    conf = pg.writes[paths.node(continuous.postgresql.conf_file)][0]
    assert pgaccess.hba_stream_peer(hba) == SLAVE and pgaccess.streams(conf)
    assert pg.commands == [list(continuous.postgresql.reload_command)]
    assert next(step for step in steps if step.name.startswith("b. ")).is_noop()
    cron_file = next(step for step in steps if step.name.startswith("d. ")).writes[paths.node(paths.CRON_MASTER)][0]
    assert f"--repair-stream {SLAVE} " in cron_file


def test_an_hourly_master_plans_nothing_for_a_stream(node_root):
    hourly = settings.load(node_root / "absent.conf", environ={})
    assert hourly.replication.mode == "hourly"
    steps = apply.plan(HaConfig(Role.MASTER, SLAVE), hourly, _observed(hourly))
    assert next(step for step in steps if step.name.startswith("c. ")).is_noop()
    cron_file = next(step for step in steps if step.name.startswith("d. ")).writes[paths.node(paths.CRON_MASTER)][0]
    assert "--repair-stream" not in cron_file


def test_disable_plans_the_removal_of_the_streams_objects(continuous):
    objects = ["replication slot xivo_ha_1", "publication xivo_ha", "role xivo_ha_replication"]
    steps = apply.plan(HaConfig(Role.DISABLED, ""), continuous, _observed(continuous, objects))
    names = [step.name for step in steps]
    # before PostgreSQL restarts without wal_level = logical, which a logical slot forbids
    assert names.index("b. replication stream") < names.index("c. slave PostgreSQL access")
    teardown = steps[names.index("b. replication stream")]
    assert teardown.database_change is not None
    assert teardown.said == ["removed replication slot xivo_ha_1, publication xivo_ha, role xivo_ha_replication "
                         "(a disabled node has no stream)"]


def test_settings_refuse_an_unknown_mode(node_root):
    with pytest.raises(Exception, match=r"\[replication\] mode"):
        settings.load(node_root / "absent.conf", environ={"XIVO_HA_REPLICATION_MODE": "hot"})
