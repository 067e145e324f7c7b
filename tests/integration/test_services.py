"""xivo-manage-slave-services start|stop|status driving real daemons through init scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kamailio_fixture import LineDatabase
from netns import REPO, SlaveServices, pid_alive
from xivo_ha import probes

pytestmark = pytest.mark.integration

COMMAND = REPO / "bin" / "xivo-manage-slave-services"


def manage(node_root, services: SlaveServices, names: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XIVO_HA_ROOT": str(node_root), **services.env(names)}
    return subprocess.run(
        [sys.executable, str(COMMAND), *args], env=env, capture_output=True, text=True, timeout=300
    )


def answers_sip(port: int, attempts: int = 50) -> bool:
    """Kamailio binds its port shortly after start: ask a bounded number of times."""
    for _ in range(attempts):
        if probes.sip_options("127.0.0.1", port, timeout=1).alive:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def two_services(slave_services):
    database = LineDatabase(range(1001, 1011))  # the node's own asterisk database
    try:
        slave_services.add_sleeper("watch")
        port = slave_services.add_kamailio("kamailio", database)
        yield slave_services, ["watch", "kamailio"], port
    finally:
        database.stop()


def test_start_enables_then_starts_in_order(node_root, two_services):
    services, names, port = two_services
    result = manage(node_root, services, names, "start")
    assert result.returncode == 0, result.stderr
    assert services.journal() == ["watch enable", "watch start", "kamailio enable", "kamailio start"]
    assert services.running("watch") and services.running("kamailio")
    assert services.enabled("watch") and services.enabled("kamailio")
    assert answers_sip(port)

    status = manage(node_root, services, names, "status")
    assert status.returncode == 0
    assert status.stdout.splitlines() == ["watch: running", "kamailio: running"]


def test_stop_stops_then_disables_in_reverse_order(node_root, two_services):
    services, names, port = two_services
    assert manage(node_root, services, names, "start").returncode == 0
    pids = [services.pid(name) for name in names]
    services.clear_journal()

    result = manage(node_root, services, names, "stop")
    assert result.returncode == 0, result.stderr
    assert services.journal() == ["kamailio stop", "kamailio disable", "watch stop", "watch disable"]
    assert not services.enabled("watch") and not services.enabled("kamailio")
    assert not any(pid_alive(pid) for pid in pids)
    assert probes.sip_options("127.0.0.1", port, timeout=1).alive is False

    status = manage(node_root, services, names, "status")
    assert status.returncode == 3
    assert status.stdout.splitlines() == ["watch: stopped", "kamailio: stopped"]


def test_start_twice_keeps_the_same_processes(node_root, two_services):
    services, names, _ = two_services
    assert manage(node_root, services, names, "start").returncode == 0
    pids = [services.pid(name) for name in names]
    assert manage(node_root, services, names, "start").returncode == 0
    assert [services.pid(name) for name in names] == pids


def test_status_mixed_exits_1(node_root, two_services):
    services, names, _ = two_services
    assert manage(node_root, services, names, "start").returncode == 0
    subprocess.run([str(services.base / "etc/init.d/watch"), "stop"], check=True, timeout=60)
    status = manage(node_root, services, names, "status")
    assert status.returncode == 1
    assert status.stdout.splitlines() == ["watch: stopped", "kamailio: running"]


def test_a_failing_service_is_named_and_the_others_still_start(node_root, slave_services):
    slave_services.add_sleeper("watch")
    slave_services.add_broken("broken")
    slave_services.add_sleeper("after")
    names = ["watch", "broken", "after"]
    result = manage(node_root, slave_services, names, "start")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("xivo-manage-slave-services: could not start broken: ")
    assert "etc/init.d/broken start` exited with " in lines[0]
    assert "missing-daemon" in lines[0]  # start-stop-daemon's own words
    assert slave_services.running("watch") and slave_services.running("after")
    assert slave_services.enabled("broken")


def test_a_service_without_init_script_fails_stop_by_name(node_root, slave_services):
    slave_services.add_sleeper("watch")
    result = manage(node_root, slave_services, ["ghost", "watch"], "stop")
    assert result.returncode == 1
    assert "could not stop ghost: cannot run " in result.stderr
    assert "could not disable ghost: " in result.stderr
    assert "watch stop" in slave_services.journal()  # the others are still stopped


@pytest.mark.parametrize("args", [["--help"], ["start", "--help"], ["stop", "--help"], ["status", "--help"]])
def test_help(node_root, slave_services, args):
    result = manage(node_root, slave_services, ["watch"], *args)
    assert result.returncode == 0
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("args", [[], ["restart"]])
def test_usage_errors_exit_2(node_root, slave_services, args):
    result = manage(node_root, slave_services, ["watch"], *args)
    assert result.returncode == 2
    assert slave_services.journal() == []


def test_bad_service_name_exits_2_and_runs_nothing(node_root, slave_services):
    result = manage(node_root, slave_services, ["watch", "../etc/passwd"], "start")
    assert result.returncode == 2
    assert "is not a service name" in result.stderr
    assert slave_services.journal() == []


def test_a_busy_services_lock_is_exit_1_and_nothing_runs(node_root, two_services):
    import fcntl

    services, names, _ = two_services
    lock = node_root / "var/lib/xivo-ha/services.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for action in ("start", "stop"):
            result = manage(node_root, services, names, action)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1] == (
                f"xivo-manage-slave-services: another start or stop of the services is running ({lock} is locked)")
    assert services.journal() == []


@pytest.mark.parametrize("args", [(), ("restart",)])
def test_usage_errors_go_to_stderr_with_exit_2(node_root, two_services, args):
    services, names, _ = two_services
    result = manage(node_root, services, names, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip()
