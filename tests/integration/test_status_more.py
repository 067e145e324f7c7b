"""`xivo-ha status`: last jobs with ages, maintenance, the slave's failover state, and --probe."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from netns import REPO
from node import make_node
from pg import free_port

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
STABLE_KEYS = {"role", "remote_address", "cron_files", "sentinels", "sip_expiry", "provisioning_backup", "jobs"}


@pytest.fixture
def node(tmp_path, asterisk_db):
    root = tmp_path / "node"
    root.mkdir()
    return make_node(root, asterisk_db, {"XIVO_HA_ALLOW_LOOPBACK_PEER": "1", "XIVO_HA_DOCTOR_PING_TIMEOUT": "1"})


def ok(result):
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def status(node, *args, env=None) -> dict:
    return json.loads(ok(node.run("status", "--json", *args, env=env)).stdout)


def write_record(node, job: str, result: str, age: float, detail: str) -> None:
    path = node.path(f"/var/lib/xivo-ha/{job}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"job": job, "result": result, "finished_at": time.time() - age,
                                "duration": 1.5, "detail": detail}))


def test_new_keys_beside_the_stable_ones(node):
    ok(node.run("enable", "master", LOOPBACK))
    report = status(node)
    assert STABLE_KEYS <= set(report)
    assert report["maintenance"] == {"on": False}
    assert report["failover"] is None
    assert report["peer"] is None


def test_last_replication_and_sync_with_results_and_ages(node):
    ok(node.run("enable", "master", LOOPBACK))
    write_record(node, "replication", "failed", 3 * 3600, "slave unreachable")
    write_record(node, "sync", "success", 600, "synchronized 7 directories")
    report = status(node)
    assert report["jobs"]["replication"]["result"] == "failed"
    assert abs(report["jobs"]["replication"]["age_seconds"] - 3 * 3600) < 60
    assert report["jobs"]["sync"]["result"] == "success"
    text = ok(node.run("status")).stdout
    assert "last replication: failed 3 h ago (slave unreachable)" in text
    assert "last sync: success 10 min ago (synchronized 7 directories)" in text


def test_maintenance_is_shown(node):
    ok(node.run("enable", "master", LOOPBACK))
    ok(node.run("maintenance", "on", "--reason", "upgrade to 2024.05"))
    report = status(node)
    assert report["maintenance"]["on"] is True
    assert report["maintenance"]["reason"] == "upgrade to 2024.05"
    assert report["maintenance"]["cron_file"] == "/etc/cron.d/xivo-ha-master"
    assert report["maintenance"]["overdue"] is False
    text = ok(node.run("status")).stdout
    assert "maintenance: on since" in text and "upgrade to 2024.05" in text and "is paused" in text


def test_failover_state_on_the_slave(node):
    ok(node.run("enable", "slave", LOOPBACK))
    assert status(node)["failover"]["mode"] == "standby"
    state = node.path("/var/lib/xivo-ha/failover.json")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({
        "mode": "serving", "master": LOOPBACK, "condition": "down", "consecutive_failures": 2,
        "consecutive_successes": 0, "last_check": "2024-05-01T12:01:00.000+00:00",
        "last_failover": "2024-05-01T12:00:00.000+00:00", "last_failback": None,
        "reason": "master 127.0.0.1 does not answer ping (0/3 replies) for 2 consecutive checks: failover",
    }))
    report = status(node)
    assert report["failover"]["mode"] == "serving"
    assert report["failover"]["last_failover"] == "2024-05-01T12:00:00.000+00:00"
    text = ok(node.run("status")).stdout
    assert "failover: serving, master down (since 2024-05-01T12:00:00.000+00:00)" in text
    assert "last transition: master 127.0.0.1 does not answer ping" in text


def test_probe_from_the_slave_pings_the_master(node):
    ok(node.run("enable", "slave", LOOPBACK))
    report = status(node, "--probe")
    assert report["peer"]["probe"] == "icmp" and report["peer"]["reachable"] is True
    assert "peer 127.0.0.1: reachable (icmp: 1/1 replies" in ok(node.run("status", "--probe")).stdout


def test_probe_from_the_master_connects_to_the_slaves_ssh_port(node):
    ok(node.run("enable", "master", LOOPBACK))
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        report = status(node, "--probe", env={"XIVO_HA_SYNC_SSH_PORT": str(port)})
    assert report["peer"] == {"address": LOOPBACK, "probe": f"tcp/{port}", "reachable": True,
                              "detail": report["peer"]["detail"]}
    closed = free_port()
    report = status(node, "--probe", env={"XIVO_HA_SYNC_SSH_PORT": str(closed)})
    assert report["peer"]["reachable"] is False and "refused" in report["peer"]["detail"]
    text = ok(node.run("status", "--probe", env={"XIVO_HA_SYNC_SSH_PORT": str(closed)})).stdout
    assert f"peer 127.0.0.1: NOT reachable (tcp/{closed}: Connection refused)" in text


def test_probe_of_a_master_that_is_down(lab, tmp_path, asterisk_db):
    root = tmp_path / "ns-slave"
    root.mkdir()
    server = asterisk_db.server
    dsn = f"host={server.dir} port={server.port} user=postgres dbname={asterisk_db.name}"
    node = make_node(root, asterisk_db, {"XIVO_HA_DATABASE_DSN": dsn, "XIVO_HA_DOCTOR_PING_TIMEOUT": "1"})
    ok(node.run("enable", "slave", lab.master_address))
    env = {**os.environ, **node.env}
    argv = [sys.executable, str(REPO / "bin" / "xivo-ha"), "status", "--json", "--probe"]

    up = json.loads(lab.run_in_slave(argv, env=env).stdout)
    assert up["peer"]["reachable"] is True
    lab.master_link(False)
    started = time.monotonic()
    down = lab.run_in_slave(argv, env=env)
    assert down.returncode == 0
    assert json.loads(down.stdout)["peer"]["reachable"] is False
    assert time.monotonic() - started < 10


def test_without_probe_nothing_is_sent(node):
    """Plain status reads local state only (scripts and monitoring call it often)."""
    ok(node.run("enable", "master", LOOPBACK))
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        assert status(node, env={"XIVO_HA_SYNC_SSH_PORT": str(port)})["peer"] is None
        with pytest.raises(socket.timeout):
            listener.accept()


def test_status_help_mentions_probe(node):
    assert "--probe" in ok(node.run("status", "--help")).stdout


def test_status_exit_codes_are_unchanged(node):
    assert node.run("status").returncode == 3
    ok(node.run("enable", "master", LOOPBACK))
    assert node.run("status").returncode == 0
    assert subprocess.run([sys.executable, str(REPO / "bin" / "xivo-ha"), "status", "--bogus"],
                          env={**os.environ, **node.env}, capture_output=True).returncode == 2
