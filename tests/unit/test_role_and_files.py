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


def test_hba_edit_replaces_and_removes():
    text = "local all all peer\nhost asterisk postgres 10.9.9.9/32 trust\n"
    edited = pgaccess.edit_hba(text, "10.0.0.1")
    assert edited.splitlines() == ["local all all peer", pgaccess.HBA_MARKER, "host asterisk postgres 10.0.0.1/32 trust"]
    assert pgaccess.hba_master(edited) == "10.0.0.1"
    assert pgaccess.edit_hba(edited, None) == "local all all peer\n"


def test_conf_edit_adds_and_removes_listen_all():
    text = "#listen_addresses = 'localhost'\nport = 5432\n"
    edited = pgaccess.edit_conf(text, True)
    assert pgaccess.listens_everywhere(edited)
    assert pgaccess.edit_conf(edited, False) == text


def test_cron_files_follow_cron_d_rules():
    files = cron.desired_files(HaConfig(Role.SLAVE, "10.0.0.1"))
    for path, content in files.items():
        assert "." not in path.name
        if content is not None:
            assert content.endswith("\n")
            assert "* * * * * root /usr/sbin/xivo-check-master-status 10.0.0.1 >/dev/null\n" in content
    assert cron.render(role.DISABLED) is None
