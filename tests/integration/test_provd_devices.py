"""`xivo-ha enable|disable` and provd's device configs: files when provd is down, REST when it runs."""

from __future__ import annotations

import copy
import json

import pytest

from node import REGISTRAR, make_node, service_journal
from provd_fixture import FakeProvd

pytestmark = pytest.mark.integration

SLAVE = "10.20.30.2"
MASTER = "10.20.30.1"
OTHER_SLAVE = "10.20.30.3"


def device_config(config_id: str, lines: dict) -> dict:
    return {"X_type": "device", "id": config_id, "deletable": True, "parent_ids": ["base", "defaultconfigdevice"],
            "raw_config": {"sip_lines": lines}, "configdevice": "defaultconfigdevice"}


def line(registrar: str, **extra) -> dict:
    return {"registrar_ip": registrar, "proxy_ip": registrar, "username": "u", "auth_username": "u",
            "password": "p", "display_name": "U", "number": "1000", **extra}


CONFIGS = [
    device_config("c1", {"1": line("10.0.0.1"), "2": line("10.0.0.1", backup_registrar_ip="10.9.9.9",
                                                          backup_proxy_ip="10.9.9.9")}),
    device_config("c2", {"1": line("10.0.0.1")}),
    device_config("c3", {"1": line("192.0.2.50")}),
]
DEVICES = [
    {"id": "d1", "mac": "00:11:22:33:44:01", "config": "c1", "ip": "10.0.0.101", "configured": True},
    {"id": "d2", "mac": "00:11:22:33:44:02", "config": "c2", "ip": "10.0.0.102", "configured": True},
    {"id": "d3", "mac": "00:11:22:33:44:03", "config": "c3", "ip": "10.0.0.103", "configured": True},
]


@pytest.fixture
def node(tmp_path, asterisk_db):
    root = tmp_path / "node"
    root.mkdir()
    node = make_node(root, asterisk_db)
    devices = node.path("/var/lib/xivo-provd/jsondb/devices")
    devices.mkdir(parents=True)
    for document in CONFIGS:
        node.path(f"/var/lib/xivo-provd/jsondb/configs/{document['id']}").write_text(json.dumps(document))
    for document in DEVICES:
        (devices / document["id"]).write_text(json.dumps(document))
    return node


def ok(result):
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def lines_of(config: dict) -> dict:
    return config["raw_config"]["sip_lines"]


def test_enable_master_gives_the_slave_to_every_line_on_this_registrar(node):
    result = ok(node.run("enable", "master", SLAVE))
    c1, c2, c3 = (node.provd(c) for c in ("c1", "c2", "c3"))
    for config_line in (*lines_of(c1).values(), *lines_of(c2).values()):
        assert config_line["backup_registrar_ip"] == SLAVE and config_line["backup_proxy_ip"] == SLAVE
        assert config_line["registrar_ip"] == "10.0.0.1"
    assert c3 == CONFIGS[2]        # another registrar's phone is left alone
    assert "2 phone(s) must be synchronized" in result.stdout and "--resync" in result.stdout


def test_second_enable_writes_nothing(node):
    ok(node.run("enable", "master", SLAVE))
    before = node.tree()
    result = ok(node.run("enable", "master", SLAVE))
    assert node.tree() == before
    assert "wrote" not in result.stdout and "must be synchronized" not in result.stdout


def test_disable_gives_back_exactly_what_was_there(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("enable", "master", OTHER_SLAVE))
    assert lines_of(node.provd("c1"))["2"]["backup_registrar_ip"] == OTHER_SLAVE
    result = ok(node.run("disable"))
    assert [node.provd(c["id"]) for c in CONFIGS] == CONFIGS
    assert "2 phone(s) must be synchronized" in result.stdout


def test_enable_slave_removes_what_the_master_role_wrote(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("enable", "slave", MASTER))
    assert [node.provd(c["id"]) for c in CONFIGS] == CONFIGS
    assert node.provd("default")["registrar_backup"] == SLAVE


def test_resync_without_provd_says_what_to_do_and_keeps_the_change(node):
    result = node.run("enable", "master", SLAVE, "--resync")
    assert result.returncode == 1
    assert "provd is not running" in result.stderr and "d1, d2" in result.stderr
    assert lines_of(node.provd("c2"))["1"]["backup_registrar_ip"] == SLAVE


def test_rest_api_updates_configs_and_synchronizes_the_phones(node):
    registrar = {**REGISTRAR}
    with FakeProvd([registrar, *CONFIGS], DEVICES) as provd:
        files = node.tree()
        result = ok(node.run("enable", "master", SLAVE, "--resync", env={"XIVO_HA_PROVISIONING_URL": provd.url}))
        assert sorted(provd.puts) == ["c1", "c2", "default"]
        assert provd.configs["default"]["registrar_backup"] == SLAVE
        assert lines_of(provd.configs["c2"])["1"]["backup_proxy_ip"] == SLAVE
        assert provd.configs["c3"] == CONFIGS[2]
        assert sorted(provd.synchronized) == ["d1", "d2"]
        assert "asked provd to synchronize 2 phone(s)" in result.stdout
        changed = node.tree()
        # provd holds the documents while it runs: its files are not touched behind its back
        assert {k: v for k, v in changed.items() if "xivo-provd" in k} == \
               {k: v for k, v in files.items() if "xivo-provd" in k}

        provd.puts.clear()
        ok(node.run("enable", "master", SLAVE, env={"XIVO_HA_PROVISIONING_URL": provd.url}))
        assert provd.puts == []

        ok(node.run("disable", env={"XIVO_HA_PROVISIONING_URL": provd.url}))
        assert [provd.configs[c["id"]] for c in CONFIGS] == CONFIGS
        assert provd.configs["default"]["registrar_backup"] is None


def test_a_refused_put_puts_every_config_back(node):
    with FakeProvd([{**REGISTRAR}, *CONFIGS], DEVICES) as provd:
        before_configs = copy.deepcopy(provd.configs)
        before_files, before_db = node.tree(), node.db.snapshot()
        provd.refuse_put.add("c2")
        result = node.run("enable", "master", SLAVE, env={"XIVO_HA_PROVISIONING_URL": provd.url})
        assert result.returncode == 1
        assert "g. provisioning backup registrar failed" in result.stderr and "disk full" in result.stderr
        assert "nothing was changed" in result.stderr
        assert provd.configs == before_configs
        assert node.tree() == before_files and node.db.snapshot() == before_db


def test_ex_slave_services_back_on_at_boot_and_started_with_restart(node, tmp_path):
    ok(node.run("enable", "slave", MASTER))
    assert service_journal(node) == []
    marker = tmp_path / "restarted"
    ok(node.run("enable", "master", SLAVE, "--restart", env={"XIVO_HA_SERVICES_RESTART_COMMAND": f"touch,{marker}"}))
    assert service_journal(node) == ["service monit enable", "service monit start",
                                     "service asterisk enable", "service asterisk start"]
    assert marker.exists()


def test_disable_on_an_ex_slave_enables_the_services_at_boot(node):
    ok(node.run("enable", "slave", MASTER))
    ok(node.run("disable"))
    assert service_journal(node) == ["service monit enable", "service asterisk enable"]
    ok(node.run("disable"))
    assert len(service_journal(node)) == 2      # no longer an ex-slave: nothing more


def test_failing_service_enable_rolls_back_everything(node, tmp_path):
    ok(node.run("enable", "slave", MASTER))
    before_files, before_db = node.tree(), node.db.snapshot()
    failing = tmp_path / "failing-service"
    failing.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/services.log\n[ "$1" != asterisk ] || '
                       '[ "$2" != enable ] || { echo "unit asterisk is masked"; exit 1; }\n')
    failing.chmod(0o755)
    env = {f"XIVO_HA_SERVICES_{verb.upper()}_COMMAND": f"{failing},{{service}},{verb}"
           for verb in ("enable", "disable")}
    result = node.run("enable", "master", SLAVE, env=env)
    assert result.returncode == 1
    assert "h. slave services at boot failed" in result.stderr and "nothing was changed" in result.stderr
    after = node.tree()
    after.pop("postgresql-reloaded")
    before_files.pop("postgresql-reloaded")
    assert after == before_files and node.db.snapshot() == before_db
    assert service_journal(node) == ["monit enable", "asterisk enable", "asterisk disable", "monit disable"]


def test_a_bad_provisioning_url_exits_2_and_changes_nothing(node):
    before = node.tree()
    result = node.run("enable", "master", SLAVE, env={"XIVO_HA_PROVISIONING_URL": "ftp:/provd"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "xivo-ha: [provisioning] url: 'ftp:/provd' is not an http:// or https:// URL"]
    assert node.tree() == before
