"""Conventions every command shares: logging once per state change, -v, groups, usage errors."""

from __future__ import annotations

import subprocess

import pytest

from node import make_node

pytestmark = pytest.mark.integration

SLAVE = "10.20.30.2"
MASTER = "10.20.30.1"
DAEMON_INFO = "<30>"  # facility daemon (3) * 8 + severity info (6)


@pytest.fixture
def node(tmp_path, asterisk_db, syslog_socket):
    root = tmp_path / "node"
    root.mkdir()
    return make_node(root, asterisk_db, {"XIVO_HA_SYSLOG_SOCKET": str(syslog_socket.path)})


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def test_each_role_change_is_one_syslog_line_with_what_it_changed(node, syslog_socket):
    ok(node.run("enable", "master", SLAVE))
    [line] = syslog_socket.drain()
    assert line.startswith(f"{DAEMON_INFO}xivo-ha[")
    assert f"role change: disabled -> master (slave {SLAVE}): " in line
    assert "wrote /etc/xivo/ha.conf" in line and "wrote /etc/cron.d/xivo-ha-master" in line

    ok(node.run("enable", "slave", MASTER))
    [line] = syslog_socket.drain()
    assert f"role change: master (slave {SLAVE}) -> slave (master {MASTER}): " in line
    assert "removed /etc/cron.d/xivo-ha-master" in line and "wrote /etc/cron.d/xivo-ha-slave" in line

    ok(node.run("disable"))
    [line] = syslog_socket.drain()
    assert f"role change: slave (master {MASTER}) -> disabled: " in line
    assert "removed /etc/cron.d/xivo-ha-slave" in line


def test_a_refused_role_change_logs_nothing(node, syslog_socket):
    assert node.run("enable", "master", "not-an-ip").returncode == 2
    assert syslog_socket.drain() == []


def test_maintenance_on_and_off_are_one_syslog_line_each(node, syslog_socket):
    ok(node.run("enable", "master", SLAVE))
    syslog_socket.drain()
    ok(node.run("maintenance", "on", "--reason", "upgrade"))
    [line] = syslog_socket.drain()
    assert "maintenance on (master)" in line and "upgrade" in line
    ok(node.run("maintenance", "off", "--no-replication"))
    [line] = syslog_socket.drain()
    assert "maintenance off: resumed /etc/cron.d/xivo-ha-master" in line


def test_the_log_file_gets_the_lines_once_the_package_created_it(node, syslog_socket):
    ok(node.run("enable", "master", SLAVE))
    log_file = node.path("/var/log/xivo-ha.log")
    assert not log_file.exists()  # never created by the commands themselves
    syslog_socket.drain()

    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    ok(node.run("disable"))
    [line] = log_file.read_text().splitlines()
    assert " INFO xivo-ha[" in line
    assert f"role change: master (slave {SLAVE}) -> disabled: " in line
    assert len(syslog_socket.drain()) == 1  # and syslog still gets it


@pytest.mark.parametrize("args,command", [
    ((), "xivo-ha"), (("cron",), "xivo-ha"), (("maintenance",), "xivo-ha"), (("cc",), "xivo-ha"),
    ((), "xivo-manage-slave-services"),
])
def test_a_group_without_sub_command_prints_help_on_stderr_and_exits_2(node, args, command):
    result = node.run(*args, command=command)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Usage:" in result.stderr


@pytest.mark.parametrize("args,command,message", [
    (("bogus",), "xivo-ha", "xivo-ha: unknown command 'bogus': see xivo-ha --help"),
    (("cron", "bogus"), "xivo-ha", "xivo-ha: unknown cron command 'bogus': expected `regenerate`"),
    (("maintenance", "pause"), "xivo-ha", "xivo-ha: unknown maintenance command 'pause': "
                                               "expected on, off, status or remind"),
    (("cc", "start"), "xivo-ha", "xivo-ha: unknown cc command 'start': expected enable or disable"),
    (("restart",), "xivo-manage-slave-services",
     "xivo-manage-slave-services: unknown action 'restart': expected start, stop or status"),
])
def test_an_unknown_sub_command_is_one_line_on_stderr_and_exit_2(node, args, command, message):
    result = node.run(*args, command=command)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == message


@pytest.mark.parametrize("command", ["xivo-ha", "xivo-sync", "xivo-check-master-status",
                                     "xivo-master-slave-db-replication", "xivo-manage-slave-services"])
def test_v_is_verbose_and_version_is_long_only(node, command):
    help_text = ok(node.run("--help", command=command)).stdout
    assert "-v, --verbose" in help_text
    assert "-V" not in help_text
    assert ok(node.run("--version", command=command)).stdout.startswith(f"{command} ")


def test_v_shows_debug_lines_on_stderr(node):
    ok(node.run("enable", "slave", MASTER))
    quiet = ok(node.run("start", command="xivo-manage-slave-services"))
    assert quiet.stderr == ""
    verbose = ok(node.run("-v", "stop", command="xivo-manage-slave-services"))
    assert "stopped and disabled at boot" in verbose.stderr
    assert ok(node.run("stop", "--verbose", command="xivo-manage-slave-services")).stderr != ""


@pytest.mark.parametrize("args,command,message", [
    (("status", "--bogus"), "xivo-ha", "xivo-ha: unknown switch --bogus: see `xivo-ha status --help`"),
    (("--bogus",), "xivo-manage-slave-services",
     "xivo-manage-slave-services: unknown switch --bogus: see `xivo-manage-slave-services --help`"),
    ((), "xivo-check-master-status", "xivo-check-master-status: expected at least 1 positional argument, got []: "
                                     "see `xivo-check-master-status --help`"),
    (("--loop", "x", "10.0.0.1"), "xivo-check-master-status", "xivo-check-master-status: argument of loop "
                                                             "expected to be 0..3600, not 'x': see"),
])
def test_a_wrong_command_line_is_one_line_on_stderr_and_exit_2(node, args, command, message):
    result = node.run(*args, command=command)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
