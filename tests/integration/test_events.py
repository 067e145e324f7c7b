"""Every event is mailed once per change, across repeated cron runs: failover, failback and
failed starts of xivo-check-master-status (a real slave in network namespaces, real
services), failures and recoveries of the replication (two real PostgreSQL clusters) and
of xivo-sync (a real sshd and rsync), and maintenance left on too long.  An MTA stand-in
on PATH files every message it is given; the hook is a real program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pg import free_port
from test_replication import Syslog, replicate
from test_sync import make_key, write, xivo_sync
from xivo_ha import role

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def mail_programs(tmp_path: Path):
    """sendmail in a bin directory: each message in its own file under outbox/; the hook logs
    its argv.  (bin directory, hook argv template, mails(), hooks())"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    sendmail = bin_dir / "sendmail"
    sendmail.write_text(f'#!/bin/sh\ncat > "$(mktemp {outbox}/mail.XXXXXX)"\n')
    sendmail.chmod(0o755)
    hook = bin_dir / "page"
    hook_log = tmp_path / "hook.log"
    hook.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {hook_log}\necho >> {hook_log}\n')
    hook.chmod(0o755)

    def mails() -> list[str]:
        return sorted((p.read_text() for p in outbox.iterdir()), key=lambda text: text)

    def hooks() -> list[list[str]]:
        if not hook_log.exists():
            return []
        return [line.rstrip("|").split("|") for line in hook_log.read_text().splitlines()]

    return bin_dir, f"{hook},{{event}},{{node}},{{detail}}", mails, hooks


@pytest.fixture
def mta(slave, tmp_path):
    bin_dir, hook, mails, hooks = mail_programs(tmp_path)
    slave.env.update({"PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin", "XIVO_HA_NOTIFY_HOOK": hook})
    return mails, hooks


@pytest.fixture
def mta_env(tmp_path, monkeypatch):
    """The same programs for the commands run with this process's environment."""
    bin_dir, hook, mails, hooks = mail_programs(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("XIVO_HA_NOTIFY_HOOK", hook)
    return mails, hooks


def subjects(mails: list[str]) -> list[str]:
    return sorted(next(line for line in m.splitlines() if line.startswith("Subject: ")) for m in mails)


def test_one_mail_per_failover_and_failback(slave, mta):
    mails, hooks = mta
    for _ in range(2):
        assert slave.check().returncode == 0
    assert mails() == [] and hooks() == []
    slave.syslog.drain()

    slave.lab.master_link(False)
    for _ in range(3):
        assert slave.check().returncode == 0
    assert slave.state()["mode"] == "serving"
    assert len(slave.syslog.drain()) == 1
    assert [s.endswith(": failover") for s in subjects(mails())] == [True]
    body = mails()[0]
    assert body.startswith("To: root\n") and "does not answer ping" in body and "xivo-ha check" in body
    assert [h[0] for h in hooks()] == ["failover"]
    assert "does not answer ping" in hooks()[0][2]

    slave.lab.master_link(True)
    for _ in range(3):
        assert slave.check().returncode == 0
    assert slave.state()["mode"] == "standby"
    assert len(slave.syslog.drain()) == 1
    assert sorted(s.rsplit(": ", 1)[1] for s in subjects(mails())) == ["failback", "failover"]
    assert [h[0] for h in hooks()] == ["failover", "failback"]


def test_a_failed_start_is_mailed_once(slave, mta):
    mails, hooks = mta
    slave.names.append("broken")
    slave.services.add_broken("broken")
    slave.env.update(slave.services.env(slave.names))
    slave.lab.master_link(False)
    for _ in range(3):
        assert slave.check().returncode == 1
    assert sorted(s.rsplit(": ", 1)[1] for s in subjects(mails())) == ["failover", "start-failed"]
    failed = next(m for m in mails() if "start-failed" in m)
    assert "could not start broken" in failed and "xivo-manage-slave-services" in failed
    assert sorted(h[0] for h in hooks()) == ["failover", "start-failed"]


@pytest.fixture
def journal(tmp_path, monkeypatch):
    """syslog for the commands run by this process, drained continuously (a socket left
    undrained would block the sender after max_dgram_qlen messages).  journal(text): the
    lines received that contain text."""
    catcher = Syslog(tmp_path / "journal.sock")
    monkeypatch.setenv("XIVO_HA_SYSLOG_SOCKET", str(catcher.path))

    def lines(text: str) -> list[str]:
        time.sleep(0.3)  # what the last command sent is queued; let the reader take it
        return [m for m in catcher.messages() if text in m]

    yield lines
    catcher.close()


def test_replication_failure_and_recovery_are_mailed_once(master_node, slave_db, journal, mta_env,
                                                          monkeypatch):
    mails, hooks = mta_env
    lines = journal
    monkeypatch.setenv("XIVO_HA_REPLICATION_CONNECT_TIMEOUT", "2")
    slave_port = os.environ["XIVO_HA_REPLICATION_SLAVE_PORT"]
    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_PORT", str(free_port()))
    for _ in range(3):
        result = replicate("127.0.0.1")
        assert result.returncode == 1
        # whoever runs it sees the reason every time
        assert result.stderr.startswith("Slave replication failed: cannot reach the slave database")
    assert [s.split(": ", 2)[2] for s in subjects(mails())] == ["slave replication failed"]
    assert "Slave replication failed: cannot reach the slave database" in mails()[0]
    assert "xivo-master-slave-db-replication --verbose 127.0.0.1" in mails()[0]
    assert len(lines("Slave replication failed")) == 1
    assert [h[0] for h in hooks()] == ["replication-failed"]

    monkeypatch.setenv("XIVO_HA_REPLICATION_SLAVE_PORT", slave_port)
    for _ in range(2):
        result = replicate("127.0.0.1")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    assert sorted(s.split(": ", 2)[2] for s in subjects(mails())) == [
        "slave replication failed", "slave replication works again"]
    recovered = next(m for m in mails() if "works again" in m)
    assert "slave replication works again: replicated 13 tables" in recovered
    assert len(lines("slave replication works again")) == 1
    assert [h[0] for h in hooks()] == ["replication-failed", "replication-ok"]
    assert len(lines("Slave replication failed")) == 1


def test_a_replication_that_always_worked_is_not_mailed(master_node, mta_env):
    mails, hooks = mta_env
    for _ in range(2):
        assert replicate("127.0.0.1").returncode == 0
    assert mails() == [] and hooks() == []


def test_sync_failure_and_recovery_are_mailed_once(master, sshd, journal, mta_env):
    mails, hooks = mta_env
    lines = journal
    key = make_key(master)
    sshd.pin_host_key(master / "var/lib/xivo-ha/known_hosts")
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "x\n")
    for _ in range(3):
        result = xivo_sync()
        assert result.returncode == 1
        assert result.stderr.startswith("File synchronization failed: rsync to root@127.0.0.1 failed")
    assert [s.split(": ", 2)[2] for s in subjects(mails())] == ["file synchronization failed"]
    assert "Permission denied" in mails()[0] and "xivo-sync --verbose" in mails()[0]
    assert len(lines("File synchronization failed")) == 1

    sshd.authorize(key.with_name("xivo_id_rsa.pub").read_text())
    for _ in range(2):
        assert xivo_sync().returncode == 0
    assert sorted(s.split(": ", 2)[2] for s in subjects(mails())) == [
        "file synchronization failed", "file synchronization works again"]
    assert len(lines("file synchronization works again: synchronized")) == 1
    assert [h[0] for h in hooks()] == ["sync-failed", "sync-ok"]
    assert (sshd.slave_root / "etc/asterisk/extensions_extra.d/custom.conf").read_text() == "x\n"


def start_maintenance(node_root: Path, since: float) -> None:
    state = node_root / "var/lib/xivo-ha"
    state.mkdir(parents=True, exist_ok=True)
    (state / "maintenance.json").write_text(json.dumps({
        "since": datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="milliseconds"),
        "reason": "upgrade to 2024.05", "role": "slave", "cron_file": "/etc/cron.d/xivo-ha-slave"}))


def remind() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bin" / "xivo-ha"), "maintenance", "remind"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))


def test_maintenance_left_on_is_mailed_once_per_period(node_root, journal, mta_env, monkeypatch):
    mails, hooks = mta_env
    lines = journal
    role.write(role.HaConfig(role.Role.SLAVE, "10.0.0.1"))
    assert remind().stdout == "maintenance is off\n"
    start_maintenance(node_root, time.time() - 3600)
    result = remind()
    assert result.returncode == 0 and "not longer than 24 h yet" in result.stdout
    assert mails() == []

    start_maintenance(node_root, time.time() - 2 * 86400)
    results = [remind() for _ in range(3)]
    assert [r.returncode for r in results] == [0, 0, 0]
    assert results[0].stderr.startswith("maintenance has been on since ")
    assert [r.stderr for r in results[1:]] == ["", ""]
    result = results[-1]
    assert [s.split(": ", 2)[2] for s in subjects(mails())] == ["maintenance mode left on"]
    assert "upgrade to 2024.05" in mails()[0] and "xivo-ha maintenance off" in mails()[0]
    assert len(lines("maintenance has been on since")) == 1
    assert [h[0] for h in hooks()] == ["maintenance-overdue"]
    assert result.stdout.endswith("(root was told already)\n")

    # the next maintenance left on is told again; a shorter warn_age tells sooner
    monkeypatch.setenv("XIVO_HA_DOCTOR_MAINTENANCE_WARN_AGE", "600")
    start_maintenance(node_root, time.time() - 1200)
    for _ in range(2):
        assert remind().returncode == 0
    assert len(mails()) == 2 and len(lines("maintenance has been on since")) == 2


def test_the_package_runs_the_reminder_every_hour():
    jobs = [line for line in (REPO / "debian/xivo-ha.cron.d").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(jobs) == 1
    minute, hour, *_, user = jobs[0].split(" ", 6)[:6]
    assert (hour, user) == ("*", "root") and 0 <= int(minute) < 60
    assert jobs[0].endswith("/usr/bin/xivo-ha maintenance remind >/dev/null 2>&1")


EMIT = """
import sys, time
from xivo_ha import events, settings
config = settings.load()
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
events.emit(config, sys.argv[1], "told by a test")
"""


def test_jobs_told_at_the_same_time_keep_each_other_s_state(node_root):
    # replication and sync both run at :00 on the master: neither may lose the other's state
    events = ["replication-failed", "sync-failed", "failback-copy-failed", "start-failed"]
    state = node_root / "var/lib/xivo-ha/events.json"
    env = dict(os.environ, PATH="/usr/bin:/bin")
    for _ in range(8):
        state.unlink(missing_ok=True)
        start = f"{time.time() + 1.5:.3f}"
        runs = [subprocess.Popen([sys.executable, "-c", EMIT, event, start], env=env) for event in events]
        assert [run.wait(timeout=60) for run in runs] == [0] * len(events)
        assert sorted(json.loads(state.read_text()).values()) == sorted(events)
