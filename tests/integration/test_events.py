"""Failover, failback and failed starts are mailed once per change, across repeated cron runs
of xivo-check-master-status (a real slave in network namespaces, real services, an MTA
stand-in on PATH that files every message it is given, and a real hook program)."""

from __future__ import annotations

import pytest


pytestmark = pytest.mark.integration


@pytest.fixture
def mta(slave, tmp_path):
    """sendmail on PATH: each message in its own file under outbox/; the hook logs its argv."""
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
    slave.env.update({"PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin",
                      "XIVO_HA_NOTIFY_HOOK": f"{hook},{{event}},{{node}},{{detail}}"})

    def mails() -> list[str]:
        return sorted((p.read_text() for p in outbox.iterdir()), key=lambda text: text)

    def hooks() -> list[list[str]]:
        if not hook_log.exists():
            return []
        return [line.rstrip("|").split("|") for line in hook_log.read_text().splitlines()]

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
