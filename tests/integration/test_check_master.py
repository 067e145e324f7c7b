"""xivo-check-master-status end to end: a slave and a master in network namespaces, real services.

The command runs inside the slave's namespace (as cron would run it on the slave),
against a temp root; the master is a namespace host whose link goes down and up; the
services are real daemons behind init scripts; syslog is a datagram socket the test
reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kamailio_fixture import LineDatabase
from netns import REPO, Lab, SlaveServices, pid_alive
from syslog_fixture import Syslog

pytestmark = pytest.mark.integration

COMMAND = REPO / "bin" / "xivo-check-master-status"
FAST_PING = {
    "XIVO_HA_PROBE_PING_COUNT": "1",
    "XIVO_HA_PROBE_PING_INTERVAL": "0.2",
    "XIVO_HA_PROBE_PING_TIMEOUT": "1",
}


class Slave:
    """The slave node: a temp root, its settings in the environment, the command run in its namespace."""

    def __init__(self, lab: Lab, root: Path, services: SlaveServices, names: list[str], syslog: Syslog, **env):
        self.lab = lab
        self.root = root
        self.services = services
        self.names = names
        self.syslog = syslog
        self.env = {
            **os.environ,
            "XIVO_HA_ROOT": str(root),
            "XIVO_HA_SYSLOG_SOCKET": str(syslog.path),
            **FAST_PING,
            **services.env(names),
            **env,
        }
        self.set_role("slave", lab.master_address)

    def set_role(self, role: str, remote: str) -> None:
        path = self.root / "etc/xivo/ha.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"node_type": role, "remote_address": remote}) + "\n")

    def argv(self, *args: str) -> list[str]:
        return self.lab.in_slave([sys.executable, str(COMMAND), *args])

    def check(self, *args: str, master: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args, self.lab.master_address if master is None else master),
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def start_check(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args, self.lab.master_address),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def state(self) -> dict | None:
        path = self.root / "var/lib/xivo-ha/failover.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def lock_file(self) -> Path:
        return self.root / "var/lib/xivo-ha/check-master-status.lock"

    def wait_for_lock_holder(self, pid: int, attempts: int = 200) -> None:
        """Until the lock file names `pid` (bounded)."""
        for _ in range(attempts):
            try:
                if self.lock_file.read_text().strip() == str(pid):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise AssertionError("the check never took its lock")

    def running(self) -> list[bool]:
        return [self.services.running(name) for name in self.names]

    def enabled(self) -> list[bool]:
        return [self.services.enabled(name) for name in self.names]


@pytest.fixture
def syslog(tmp_path):
    catcher = Syslog(tmp_path / "log.sock")
    yield catcher
    catcher.close()


@pytest.fixture
def slave(lab, node_root, slave_services, syslog):
    database = LineDatabase(range(1001, 1011), netns=lab.slave_ns)  # the slave's own asterisk database
    try:
        slave_services.add_sleeper("watch")
        slave_services.add_kamailio("kamailio", database)
        yield Slave(lab, node_root, slave_services, ["watch", "kamailio"], syslog)
    finally:
        database.stop()


# --- failover and failback ------------------------------------------------------------


def test_master_alive_nothing_happens(slave):
    result = slave.check()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet when fine
    assert slave.running() == [False, False]
    assert slave.services.journal() == ["watch status", "kamailio status"]
    state = slave.state()
    assert state["mode"] == "standby" and state["condition"] == "up"
    assert state["master"] == slave.lab.master_address
    assert state["consecutive_successes"] == 1
    # The first check records the condition once; the next quiet minute logs nothing.
    assert len(slave.syslog.drain()) == 1
    assert slave.check().returncode == 0
    assert slave.syslog.drain() == []
    assert slave.state()["consecutive_successes"] == 2


def test_link_down_starts_services_link_up_stops_them(slave):
    assert slave.check().returncode == 0
    slave.syslog.drain()

    slave.lab.master_link(False)
    result = slave.check()
    assert result.returncode == 0, result.stderr
    assert slave.running() == [True, True]
    assert slave.enabled() == [True, True]
    assert slave.state()["mode"] == "serving"
    assert slave.state()["last_failover"] is not None
    master = slave.lab.master_address
    assert f"master {master} does not answer ping (0/1 replies" in result.stderr
    assert "failover, starting the services" in result.stderr
    logged = slave.syslog.drain()
    assert len(logged) == 1
    assert logged[0].startswith("<28>xivo-ha[")  # facility daemon, warning
    assert "failover, starting the services [icmp " in logged[0] and "services stopped]" in logged[0]

    # Still down: nothing more is done or logged, the same processes keep running.
    pids = [slave.services.pid(name) for name in slave.names]
    result = slave.check()
    assert result.returncode == 0 and result.stderr == ""
    assert [slave.services.pid(name) for name in slave.names] == pids
    assert slave.syslog.drain() == []

    slave.lab.master_link(True)
    result = slave.check()
    assert result.returncode == 0, result.stderr
    assert "failback, stopping the services" in result.stderr
    assert slave.running() == [False, False]
    assert not any(pid_alive(pid) for pid in pids)
    assert slave.enabled() == [False, False]
    assert slave.state()["mode"] == "standby"
    assert len(slave.syslog.drain()) == 1


def test_master_removed_with_the_link_is_not_a_verdict(slave):
    """The veth pair dies with the master's namespace: the slave has no route left, ping
    cannot even send (exit 2).  That is this slave's network gone, not an answer."""
    assert slave.check().returncode == 0
    before = slave.state()
    slave.lab.remove_master()
    result = slave.check()
    assert result.returncode == 1
    assert "could not run: ping exited with 2" in result.stderr
    assert "nothing decided, the failover state is left as it was" in result.stderr
    assert slave.running() == [False, False]
    assert slave.state() == before


def broken_ping(tmp_path: Path, exit_code: int | None = None) -> Path:
    """A ``ping`` first on PATH: the real one, given an option it rejects (exit 2), or a plain exit."""
    bin_dir = tmp_path / "broken-ping"
    bin_dir.mkdir()
    body = f"exit {exit_code}" if exit_code is not None else 'exec /usr/bin/ping -W nan "$@"'
    (bin_dir / "ping").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "ping").chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("exit_code", [None, 3, 127], ids=["bad option", "exit 3", "exit 127"])
def test_ping_that_cannot_run_decides_nothing(slave, tmp_path, exit_code):
    assert slave.check().returncode == 0
    state_file = slave.root / "var/lib/xivo-ha/failover.json"
    before = state_file.read_bytes()
    slave.syslog.drain()
    slave.env["PATH"] = f"{broken_ping(tmp_path, exit_code)}:{slave.env['PATH']}"
    result = slave.check()  # the master's namespace is up and answers
    assert result.returncode == 1
    assert f"icmp probe of {slave.lab.master_address} could not run: ping exited with" in result.stderr
    assert "nothing decided" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert slave.running() == [False, False]
    assert "watch start" not in slave.services.journal()
    assert state_file.read_bytes() == before
    logged = slave.syslog.drain()
    assert len(logged) == 1 and logged[0].startswith("<27>xivo-ha[")  # daemon, error


def test_ping_that_cannot_run_does_not_fail_back_either(slave, tmp_path):
    slave.lab.master_link(False)
    assert slave.check().returncode == 0
    assert slave.running() == [True, True]
    before = slave.state()
    slave.lab.master_link(True)
    slave.env["PATH"] = f"{broken_ping(tmp_path)}:{slave.env['PATH']}"
    assert slave.check().returncode == 1
    assert slave.running() == [True, True]
    assert slave.state() == before


def test_witness_ping_that_cannot_run_decides_nothing(witnessed_slave, tmp_path):
    witnessed_slave.lab.master_link(False)
    bin_dir = tmp_path / "witness-ping"
    bin_dir.mkdir()
    # The real ping for the master; a ping that cannot run for the witness.
    (bin_dir / "ping").write_text(
        f'#!/bin/sh\ncase "$*" in *{witnessed_slave.lab.witness_address}*) exit 2;; esac\nexec /usr/bin/ping "$@"\n'
    )
    (bin_dir / "ping").chmod(0o755)
    witnessed_slave.env["PATH"] = f"{bin_dir}:{witnessed_slave.env['PATH']}"
    result = witnessed_slave.check()
    assert result.returncode == 1
    assert f"witness probe of {witnessed_slave.lab.witness_address} could not run" in result.stderr
    assert witnessed_slave.running() == [False]
    assert witnessed_slave.state() is None


def test_services_that_died_while_serving_are_started_again(slave):
    slave.lab.master_link(False)
    assert slave.check().returncode == 0
    subprocess.run([str(slave.services.base / "etc/init.d/kamailio"), "stop"], check=True, timeout=60)
    result = slave.check()
    assert result.returncode == 0
    assert "not all services run on this slave (mixed): starting them again" in result.stderr
    assert slave.running() == [True, True]


def test_consecutive_failures_setting(slave):
    slave.env["XIVO_HA_FAILOVER_FAILURES_BEFORE_FAILOVER"] = "2"
    slave.lab.master_link(False)
    assert slave.check().returncode == 0
    assert slave.running() == [False, False]
    assert slave.state()["consecutive_failures"] == 1
    assert slave.check().returncode == 0
    assert slave.running() == [True, True]


def test_a_failed_start_exits_1_and_is_retried(slave):
    slave.names.append("broken")
    slave.services.add_broken("broken")
    slave.env.update(slave.services.env(slave.names))
    slave.lab.master_link(False)
    result = slave.check()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "failover, starting the services [icmp " in result.stderr
    assert "], but it failed: could not start broken: " in result.stderr
    logged = slave.syslog.drain()
    assert len(logged) == 1 and logged[0].startswith("<27>xivo-ha[")  # daemon, error
    assert slave.running() == [True, True, False]
    assert slave.state()["mode"] == "serving"
    slave.services.clear_journal()
    result = slave.check()
    assert result.returncode == 1
    assert "starting them again" in result.stderr
    assert "broken start" in slave.services.journal()


def test_a_failover_waits_for_a_manual_start_or_stop_in_progress(slave):
    """xivo-manage-slave-services holds the services lock: the check starts nothing and retries."""
    lock_path = slave.root / "var/lib/xivo-ha/services.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        slave.lab.master_link(False)
        result = slave.check()
        assert result.returncode == 1
        assert "another start or stop of the services is running" in result.stderr
        assert slave.running() == [False, False]
        assert "watch start" not in slave.services.journal()
    finally:
        os.close(fd)
    result = slave.check()
    assert result.returncode == 0, result.stderr
    assert slave.running() == [True, True]


# --- input and guards ---------------------------------------------------------------


@pytest.mark.parametrize("address", ["10.0.0", "master.example", "127.0.0.1", "::1", ""])
def test_bad_address_exits_2_and_changes_nothing(slave, address):
    result = slave.check(master=address)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("xivo-check-master-status: ")
    assert slave.state() is None
    assert slave.services.journal() == []


def test_another_master_than_ha_conf_exits_2(slave):
    slave.set_role("slave", "10.231.255.2")
    result = slave.check()
    assert result.returncode == 2
    assert "names the master 10.231.255.2" in result.stderr
    assert slave.state() is None


@pytest.mark.parametrize("role", ["master", "disabled"])
def test_not_a_slave_does_nothing(slave, role):
    slave.set_role(role, slave.lab.slave_address)
    slave.lab.master_link(False)
    result = slave.check("-v")
    assert result.returncode == 0
    assert f"this node is not a slave (its role is {role} in " in result.stderr
    assert slave.state() is None
    assert slave.services.journal() == []


def test_role_changed_while_probing_does_nothing(slave):
    """ha.conf is rewritten while a slow probe runs: the check must not act on a stale role."""
    slave.env.update({"XIVO_HA_PROBE_PING_COUNT": "5", "XIVO_HA_PROBE_PING_INTERVAL": "1"})
    slave.lab.master_link(False)
    process = slave.start_check("-v")
    slave.wait_for_lock_holder(process.pid)  # `ip netns exec` execs: same pid
    slave.set_role("master", slave.lab.slave_address)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "this node is no longer a slave (its role became master" in err
    assert "nothing done" in err
    assert slave.running() == [False, False]
    assert slave.services.journal() == []
    assert slave.state() is None


def test_master_changed_while_probing_does_nothing(slave):
    slave.env.update({"XIVO_HA_PROBE_PING_COUNT": "5", "XIVO_HA_PROBE_PING_INTERVAL": "1"})
    slave.lab.master_link(False)
    process = slave.start_check("-v")
    slave.wait_for_lock_holder(process.pid)
    slave.set_role("slave", "10.231.255.2")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"the master changed from {slave.lab.master_address} to 10.231.255.2" in err
    assert slave.running() == [False, False]


def test_overlapping_runs_act_once(slave):
    slave.env.update({"XIVO_HA_PROBE_PING_COUNT": "4", "XIVO_HA_PROBE_PING_INTERVAL": "0.5"})
    slave.lab.master_link(False)
    first = slave.start_check("-v")
    slave.wait_for_lock_holder(first.pid)
    second = slave.check("-v")
    assert second.returncode == 0
    assert "another xivo-check-master-status is running" in second.stderr
    assert "nothing done" in second.stderr
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert slave.services.journal().count("watch start") == 1
    assert slave.running() == [True, True]


def test_started_together_only_one_acts(slave):
    slave.env.update({"XIVO_HA_PROBE_PING_COUNT": "3", "XIVO_HA_PROBE_PING_INTERVAL": "0.5"})
    slave.lab.master_link(False)
    runs = [slave.start_check("-v") for _ in range(3)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    journal = slave.services.journal()
    assert journal.count("watch start") == 1 and journal.count("kamailio start") == 1
    acted = [err for _, err in outputs if "failover, starting the services" in err]
    assert len(acted) == 1


# --- fast mode ----------------------------------------------------------------------


def test_fast_mode_detects_within_one_run(slave):
    process = slave.start_check("--loop", "8", "--interval", "0.5")
    for _ in range(200):  # the first check has been recorded: the master was up
        state = slave.state()
        if state and state["condition"] == "up":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no first check")
    slave.lab.master_link(False)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "failover, starting the services" in err
    assert slave.running() == [True, True]
    assert slave.state()["mode"] == "serving"


def test_fast_mode_settings_and_role_reread_each_iteration(slave):
    slave.env.update({"XIVO_HA_FAILOVER_LOOP": "60", "XIVO_HA_FAILOVER_INTERVAL": "0.5"})
    process = slave.start_check("-v")
    for _ in range(200):
        if slave.state():
            break
        time.sleep(0.05)
    slave.set_role("disabled", "")
    _, err = process.communicate(timeout=120)  # ends early: long before its 60 s
    assert process.returncode == 0
    assert "this node is no longer a slave (its role became disabled" in err


def test_fast_mode_switch_validation(slave):
    result = slave.check("--interval", "0")
    assert result.returncode == 2
    assert slave.state() is None


# --- witness and SIP ------------------------------------------------------------------


@pytest.fixture
def witnessed_slave(witness_lab, node_root, slave_services, syslog):
    slave_services.add_sleeper("watch")
    return Slave(
        witness_lab, node_root, slave_services, ["watch"], syslog,
        XIVO_HA_PROBE_WITNESS=witness_lab.witness_address,
    )


def test_isolated_slave_never_starts(witnessed_slave):
    witnessed_slave.lab.master_link(False)
    witnessed_slave.lab.witness_link(False)
    result = witnessed_slave.check()
    assert result.returncode == 0
    assert witnessed_slave.running() == [False]
    assert witnessed_slave.services.journal() == ["watch status"]
    state = witnessed_slave.state()
    assert state["condition"] == "isolated"
    assert "split-brain guard" in state["reason"]
    logged = witnessed_slave.syslog.drain()
    assert len(logged) == 1 and "this slave is the isolated one" in logged[0]


def test_witness_reachable_master_down_fails_over(witnessed_slave):
    witnessed_slave.lab.master_link(False)
    result = witnessed_slave.check()
    assert result.returncode == 0
    assert witnessed_slave.running() == [True]
    assert f"witness {witnessed_slave.lab.witness_address}: alive" in result.stderr


def test_witness_is_not_pinged_while_the_master_answers(witnessed_slave):
    witnessed_slave.lab.witness_link(False)
    result = witnessed_slave.check("-v")
    assert result.returncode == 0
    assert "witness" not in result.stderr


def test_crashed_registrar_fails_over_with_sip_probe(slave):
    slave.env.update({"XIVO_HA_PROBE_SIP_PROBE": "on", "XIVO_HA_PROBE_SIP_TIMEOUT": "2"})
    result = slave.check()  # the master pings, but nothing listens on its port 5060
    assert result.returncode == 0, result.stderr
    assert "answers ping but its registrar" in result.stderr
    assert "port unreachable" in result.stderr
    assert slave.running() == [True, True]


def wait_for_registrar(lab: Lab, attempts: int = 50) -> None:
    """Until Kamailio in the master's namespace answers OPTIONS from the slave (bounded)."""
    ask = "from xivo_ha import probes; import sys; sys.exit(0 if probes.sip_options(sys.argv[1], 5060, 1).alive else 1)"
    for _ in range(attempts):
        if lab.run_in_slave([sys.executable, "-c", ask, lab.master_address]).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the registrar never answered")


def test_registrar_answering_keeps_the_slave_standby(slave, tmp_path):
    master_services = SlaveServices(tmp_path / "master-services")
    database = LineDatabase(range(1001, 1011), netns=slave.lab.master_ns)
    master_services.add_kamailio("registrar", database, listen_address=slave.lab.master_address)
    started = subprocess.run(
        slave.lab.in_master([str(master_services.base / "etc/init.d/registrar"), "start"]),
        capture_output=True, text=True, timeout=60,
    )
    assert started.returncode == 0, started.stderr
    try:
        wait_for_registrar(slave.lab)
        slave.env.update({"XIVO_HA_PROBE_SIP_PROBE": "on", "XIVO_HA_PROBE_SIP_TIMEOUT": "5"})
        result = slave.check("-v")
        assert result.returncode == 0
        assert "and its registrar answers (200 OK)" in result.stderr
        assert slave.running() == [False, False]
    finally:
        master_services.cleanup()
        database.stop()
