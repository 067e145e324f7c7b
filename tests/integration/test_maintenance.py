"""`xivo-ha maintenance on|off|status` on a temp root with a real PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from node import REPO, make_node, recorder

pytestmark = pytest.mark.integration

SLAVE = "10.20.30.2"
MASTER = "10.20.30.1"
MASTER_CRON = "/etc/cron.d/xivo-ha-master"
SLAVE_CRON = "/etc/cron.d/xivo-ha-slave"
RECORD = "/var/lib/xivo-ha/maintenance.json"
MARKER = "#xivo-ha-maintenance# "


@pytest.fixture
def node(tmp_path, asterisk_db):
    root = tmp_path / "node"
    root.mkdir()
    log = tmp_path / "ran.log"
    replication = recorder(tmp_path / "replicate", log)
    sync = recorder(tmp_path / "sync", log)
    made = make_node(root, asterisk_db, {
        "XIVO_HA_MAINTENANCE_REPLICATION_COMMAND": f"{replication},{{slave}}",
        "XIVO_HA_MAINTENANCE_SYNC_COMMAND": str(sync),
    })
    made.ran = log
    return made


def ok(result):
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def ran(node) -> list[str]:
    return node.ran.read_text().splitlines() if node.ran.exists() else []


def test_on_comments_out_the_jobs_in_place_and_records_why(node):
    ok(node.run("enable", "master", SLAVE))
    cron = node.path(MASTER_CRON)
    before = cron.read_text()

    result = ok(node.run("maintenance", "on", "--reason", "upgrade to 2024.05"))
    assert "paused 2 jobs in /etc/cron.d/xivo-ha-master" in result.stdout

    paused = cron.read_text()
    assert cron.stat().st_mode & 0o7777 == 0o644
    job_lines = [line for line in paused.splitlines() if line.strip() and not line.startswith("#")]
    assert job_lines == []
    assert [line[len(MARKER):] for line in paused.splitlines() if line.startswith(MARKER)] == \
        [line for line in before.splitlines() if not line.startswith("#")]
    assert "xivo-ha maintenance off" in paused.splitlines()[0]
    record = json.loads(node.path(RECORD).read_text())
    assert record["reason"] == "upgrade to 2024.05"
    assert record["role"] == "master" and record["cron_file"] == MASTER_CRON
    assert abs(time.time() - datetime.fromisoformat(record["since"]).timestamp()) < 60
    assert list(node.root.glob("etc/cron.d/*")) == [cron]


def test_off_restores_the_exact_content_then_replicates_and_syncs_on_the_master(node):
    ok(node.run("enable", "master", SLAVE))
    before = node.path(MASTER_CRON).read_bytes()
    ok(node.run("maintenance", "on"))

    result = ok(node.run("maintenance", "off"))

    assert node.path(MASTER_CRON).read_bytes() == before
    assert not node.path(RECORD).exists()
    assert ran(node) == [f"replicate {SLAVE}", "sync "]
    assert "replicate done" in result.stdout and "maintenance is off" in result.stdout


def test_off_on_the_slave_resumes_without_replicating(node):
    ok(node.run("enable", "slave", MASTER))
    before = node.path(SLAVE_CRON).read_bytes()
    ok(node.run("maintenance", "on", "--reason", "upgrade"))
    assert "xivo-check-master-status" not in [
        line for line in node.path(SLAVE_CRON).read_text().splitlines() if not line.startswith("#")]

    ok(node.run("maintenance", "off"))

    assert node.path(SLAVE_CRON).read_bytes() == before
    assert ran(node) == []


def test_off_without_replication_and_off_twice(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("maintenance", "on"))
    result = ok(node.run("maintenance", "off", "--no-replication"))
    assert "--no-replication" in result.stdout
    assert ran(node) == []
    again = ok(node.run("maintenance", "off"))
    assert "not on" in again.stdout
    assert ran(node) == []


def test_failed_catch_up_exits_1_but_the_jobs_are_resumed(node, tmp_path):
    failing = recorder(tmp_path / "replicate-fails", node.ran, exit_code=3)
    ok(node.run("enable", "master", SLAVE))
    before = node.path(MASTER_CRON).read_bytes()
    ok(node.run("maintenance", "on"))

    result = node.run("maintenance", "off", env={"XIVO_HA_MAINTENANCE_REPLICATION_COMMAND": f"{failing},{{slave}}"})

    assert result.returncode == 1
    assert "resumed" in result.stderr and "exited with 3" in result.stderr
    assert node.path(MASTER_CRON).read_bytes() == before
    assert not node.path(RECORD).exists()
    assert ran(node) == [f"replicate-fails {SLAVE}", "sync "]


def test_on_twice_keeps_the_first_record_and_repauses_a_rewritten_file(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("maintenance", "on", "--reason", "first"))
    record = node.path(RECORD).read_text()
    paused = node.path(MASTER_CRON).read_text()
    again = ok(node.run("maintenance", "on", "--reason", "second"))
    assert "already on" in again.stdout and "first" in again.stdout
    assert node.path(RECORD).read_text() == record
    assert node.path(MASTER_CRON).read_text() == paused


def test_cron_regenerate_keeps_the_jobs_paused(node):
    ok(node.run("enable", "master", SLAVE))
    original = node.path(MASTER_CRON).read_bytes()
    ok(node.run("maintenance", "on"))
    paused = node.path(MASTER_CRON).read_bytes()

    node.path(MASTER_CRON).unlink()
    ok(node.run("cron", "regenerate"))
    assert node.path(MASTER_CRON).read_bytes() == paused
    unchanged = ok(node.run("cron", "regenerate"))
    assert "wrote" not in unchanged.stdout

    ok(node.run("maintenance", "off", "--no-replication"))
    assert node.path(MASTER_CRON).read_bytes() == original
    ok(node.run("cron", "regenerate"))
    assert node.path(MASTER_CRON).read_bytes() == original


def test_on_rolls_the_cron_back_when_the_record_cannot_be_written(node):
    ok(node.run("enable", "master", SLAVE))
    state = node.path("/var/lib/xivo-ha")
    files = node.tree()
    # The record's file system is full: one 4 KiB page, taken by the lock file's pid.
    script = (f"mount -t tmpfs -o size=4k,mode=0750 tmpfs {state} && "
              f"exec {sys.executable} {REPO / 'bin' / 'xivo-ha'} maintenance on --reason upgrade")
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script], env={**os.environ, **node.env},
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 1, result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "No space left on device" in result.stderr and "Rolled back: nothing was changed" in result.stderr
    assert node.tree() == files
    assert MARKER not in node.path(MASTER_CRON).read_text()


@pytest.mark.parametrize("args", [("enable", "slave", MASTER), ("enable", "master", "10.20.30.3"), ("disable",)])
def test_role_changes_are_refused_while_maintenance_is_on(node, args):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("maintenance", "on", "--reason", "upgrade"))
    files, db = node.tree(), node.db.snapshot()

    result = node.run(*args)

    assert result.returncode == 1
    assert "xivo-ha maintenance off" in result.stderr and "Nothing was changed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert node.tree() == files and node.db.snapshot() == db


def test_on_is_refused_when_there_is_nothing_to_pause(node):
    files = node.tree()
    disabled = node.run("maintenance", "on")
    assert disabled.returncode == 1 and "disabled" in disabled.stderr
    assert node.tree() == files

    ok(node.run("enable", "master", SLAVE))
    node.path(MASTER_CRON).unlink()
    files = node.tree()
    missing = node.run("maintenance", "on")
    assert missing.returncode == 1 and "cron regenerate" in missing.stderr
    assert node.tree() == files


@pytest.mark.parametrize("reason", ["two\nlines", "x" * 201, "tab\there"])
def test_bad_reason_exits_2_and_changes_nothing(node, reason):
    ok(node.run("enable", "master", SLAVE))
    files = node.tree()
    result = node.run("maintenance", "on", "--reason", reason)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert node.tree() == files


def test_unknown_subcommand_exits_2(node):
    assert node.run("maintenance", "pause").returncode == 2
    assert node.run("maintenance").returncode == 2


def test_status_text_json_and_exit_codes(node):
    ok(node.run("enable", "master", SLAVE))
    off = node.run("maintenance", "status")
    assert off.returncode == 3 and off.stdout.strip() == "maintenance: off"

    ok(node.run("maintenance", "on", "--reason", "upgrade to 2024.05"))
    on = ok(node.run("maintenance", "status"))
    assert "maintenance: on since" in on.stdout and "upgrade to 2024.05" in on.stdout
    assert "warning" not in on.stdout
    data = json.loads(ok(node.run("maintenance", "status", "--json")).stdout)
    assert data["on"] is True and data["overdue"] is False
    assert data["paused_cron_files"] == [MASTER_CRON]
    assert data["reason"] == "upgrade to 2024.05"


def test_status_warns_after_24_hours(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("maintenance", "on", "--reason", "forgotten"))
    record = json.loads(node.path(RECORD).read_text())
    record["since"] = "2020-01-01T00:00:00.000+00:00"
    node.path(RECORD).write_text(json.dumps(record))

    result = ok(node.run("maintenance", "status"))
    assert "warning: maintenance has been on for more than 24 h" in result.stdout
    assert json.loads(node.run("maintenance", "status", "--json").stdout)["overdue"] is True
    assert "maintenance: on since 2020-01-01" in ok(node.run("status")).stdout
    assert "more than a day" in node.run("status").stdout


def test_corrupt_record_is_named(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("maintenance", "on"))
    node.path(RECORD).write_text("{not json")
    result = node.run("maintenance", "status")
    assert result.returncode == 2 and str(node.path(RECORD)) in result.stderr
    node.path(RECORD).unlink()
    ok(node.run("maintenance", "off", "--no-replication"))
    assert MARKER not in node.path(MASTER_CRON).read_text()


def test_help_on_every_maintenance_command(node):
    for args in (("maintenance", "--help"), ("maintenance", "on", "--help"),
                 ("maintenance", "off", "--help"), ("maintenance", "status", "--help")):
        result = ok(node.run(*args))
        assert "Usage" in result.stdout
    assert "--reason" in node.run("maintenance", "on", "--help").stdout
    assert "maintenance" in node.run("--help").stdout

