"""Pure pieces of a role change: address validation, ha.conf parsing, PostgreSQL file edits, cron."""

from __future__ import annotations

import pytest

from xivo_ha import cron, pgaccess, role
from xivo_ha.errors import UsageError
from xivo_ha.role import HaConfig, Role


@pytest.mark.parametrize("text", ["10.0.0.2", "192.168.1.20", "172.16.0.9"])
def test_valid_peer_addresses(text):
    assert role.validate_peer(text) == text


@pytest.mark.parametrize("text,reason", [
    ("", "missing"), ("10.0.0", "invalid"), ("xivo-slave", "host names"), ("::1", "IPv6"),
    ("0.0.0.0", "unicast"), ("224.0.0.1", "unicast"), ("10.0.0.1/24", "invalid"), ("10.0.0.01", "invalid"),
    ("127.0.0.1", "loopback"),
])
def test_invalid_peer_addresses(text, reason, monkeypatch):
    monkeypatch.delenv(role.ALLOW_LOOPBACK_ENV, raising=False)
    with pytest.raises(UsageError, match=reason):
        role.validate_peer(text)


def test_ha_conf_round_trip():
    config = HaConfig(Role.SLAVE, "10.0.0.1")
    assert role.parse(config.to_json(), "ha.conf") == config
    assert config.to_json() == '{"node_type": "slave", "remote_address": "10.0.0.1"}\n'


def test_hba_block_is_ours_and_only_it_is_removed():
    text = b"local all all peer\nhost asterisk postgres 10.9.9.9/32 trust\n"
    edited = pgaccess.edit_hba(text, "10.0.0.1")
    assert edited.splitlines() == [b"local all all peer", b"host asterisk postgres 10.9.9.9/32 trust",
                                   pgaccess.BEGIN, b"host asterisk postgres 10.0.0.1/32 trust", pgaccess.END]
    assert pgaccess.hba_master(edited) == "10.0.0.1"
    assert pgaccess.edit_hba(edited, None) == text
    assert pgaccess.edit_hba(pgaccess.edit_hba(edited, "10.0.0.7"), None) == text


def test_hba_rule_from_an_older_version_is_replaced():
    old = b"local all all peer\n" + pgaccess.LEGACY_MARKER + b"\nhost asterisk postgres 10.9.9.9/32 trust\n"
    assert pgaccess.edit_hba(old, None) == b"local all all peer\n"


@pytest.mark.parametrize("line,matches", [
    (b"host all all 0.0.0.0/0 scram-sha-256", True),
    (b"hostssl asterisk all 10.0.0.0 255.0.0.0 md5", True),
    (b"host asterisk,xivo postgres 10.0.0.1/32 md5", True),
    (b"host all +admins samenet md5", True),
    (b"host all all master.example.com md5", True),
    (b"host all all 192.168.0.0/16 md5", False),
    (b"host replication all 0.0.0.0/0 md5", False),
    (b"host all asterisk 0.0.0.0/0 md5", False),
    (b"local all all peer", False),
    (b"# host all all 0.0.0.0/0 md5", False),
])
def test_hba_rules_that_could_match_the_master(line, matches):
    assert pgaccess.could_match(line, "10.0.0.1") is matches


def test_hba_block_goes_before_the_first_rule_that_could_match():
    text = b"host all all 192.168.0.0/16 md5\r\nhost all all 0.0.0.0/0 scram-sha-256\r\n"
    edited = pgaccess.edit_hba(text, "10.0.0.1")
    assert edited.split(b"\r\n")[1:4] == [pgaccess.BEGIN, b"host asterisk postgres 10.0.0.1/32 trust", pgaccess.END]
    assert pgaccess.first_match(edited, "10.0.0.1") == "host asterisk postgres 10.0.0.1/32 trust"
    assert pgaccess.first_match(text, "10.0.0.1") == "host all all 0.0.0.0/0 scram-sha-256"
    assert pgaccess.edit_hba(edited, None) == text


def test_conf_edit_adds_and_removes_listen_all():
    text = "#listen_addresses = 'localhost' # défaut\nport = 5432\n".encode("latin-1")
    edited = pgaccess.edit_conf(text, True)
    assert pgaccess.listens_everywhere(edited)
    assert pgaccess.edit_conf(edited, False) == text


@pytest.mark.parametrize("text", [
    '{"node_type": ["master"]}', '{"node_type": {"x": 1}}', '{"node_type": 1}', "[" * 100000 + "]" * 100000,
])
def test_unusable_ha_conf_values_are_usage_errors(text):
    with pytest.raises(UsageError, match="ha.conf"):
        role.parse(text, "ha.conf")


def test_cron_files_follow_cron_d_rules():
    files = cron.desired_files(HaConfig(Role.SLAVE, "10.0.0.1"), "hourly")
    for path, content in files.items():
        assert "." not in path.name
        if content is not None:
            assert content.endswith("\n")
            assert "* * * * * root /usr/sbin/xivo-check-master-status 10.0.0.1 >/dev/null\n" in content
    assert cron.render(role.DISABLED, "hourly") is None


HOURLY_MASTER_CRON = (
    "# Written by `xivo-ha enable master 10.0.0.2` from /etc/xivo/ha.conf: do not edit.\n"
    "0 * * * * root /usr/sbin/xivo-master-slave-db-replication 10.0.0.2 >/dev/null\n"
    "0 * * * * root /usr/bin/xivo-sync >/dev/null\n"
)
REPAIR_LINE = "* * * * * root /usr/sbin/xivo-master-slave-db-replication --repair-stream 10.0.0.2 >/dev/null 2>&1\n"


def test_the_hourly_master_cron_file_is_xivos():
    assert cron.render(HaConfig(Role.MASTER, "10.0.0.2"), "hourly") == HOURLY_MASTER_CRON


def test_a_continuous_master_repairs_the_stream_every_minute():
    assert cron.render(HaConfig(Role.MASTER, "10.0.0.2"), "continuous") == HOURLY_MASTER_CRON + REPAIR_LINE


def test_the_slave_cron_file_does_not_depend_on_the_mode():
    config = HaConfig(Role.SLAVE, "10.0.0.1")
    assert cron.render(config, "continuous") == cron.render(config, "hourly")
