"""`xivo-ha check`, the monitoring plugin, on the real pair of test_doctor (two roots, two
PostgreSQL clusters, a real sshd, services behind init scripts).

Every answer is read by a strict parser of the monitoring-plugins output format: one line,
``XIVO-HA <STATE> - <text>``, ``|``, then ``'label'=value[UOM];[warn];[crit];[min];[max]``.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from pg import free_port
from test_doctor import LOOPBACK, ok

pytestmark = pytest.mark.integration

CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
LABELS = ["replication_age", "replication_duration", "sync_age", "last_check_age", "consecutive_failures", "serving"]
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
RANGE = rf"@?(?:~|{NUMBER})?(?::(?:{NUMBER})?)?"
UOM = r"(?:s|ms|us|%|B|KB|MB|GB|TB|c)?"
PERF = re.compile(
    rf"(?P<label>'(?:[^'=]|'')+'|[^'= ]+)=(?P<value>{NUMBER}|U)(?P<uom>{UOM})"
    rf"(?:;(?P<warn>{RANGE})?(?:;(?P<crit>{RANGE})?(?:;(?P<min>{NUMBER})?(?:;(?P<max>{NUMBER})?)?)?)?)?"
)


def parse(stdout: str, returncode: int) -> tuple[str, str, dict]:
    """A strict reading of a plugin's output: (state, text, {label: fields})."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    head, bar, perf = lines[0].partition(" | ")
    match = re.fullmatch(r"XIVO-HA (OK|WARNING|CRITICAL|UNKNOWN) - (\S.*)", head)
    assert match, head
    state, text = match.groups()
    assert "|" not in text
    assert CODES[state] == returncode
    found = {}
    if bar:
        for item in perf.split(" "):
            m = PERF.fullmatch(item)
            assert m, f"bad performance data {item!r} in {stdout!r}"
            label = m["label"].strip("'").replace("''", "'")
            assert label not in found
            fields = m.groupdict()
            assert fields["value"] != "U" or not fields["uom"]
            fields["value"] = None if fields["value"] == "U" else float(fields["value"])
            found[label] = fields
    return state, text, found


def check(node, *args, env=None) -> tuple[str, str, dict]:
    result = node.run("check", *args, env=env)
    assert result.stderr == "", result.stderr
    return parse(result.stdout, result.returncode)


def age_record(node, job: str, age: float) -> None:
    path = node.path(f"/var/lib/xivo-ha/{job}.json")
    data = json.loads(path.read_text())
    data["finished_at"] = time.time() - age
    path.write_text(json.dumps(data))


def test_healthy_master_is_ok_with_every_perfdata(pair):
    state, text, perf = check(pair.master)
    assert state == "OK", text
    assert text.startswith(f"master of {LOOPBACK}, ")
    assert list(perf) == LABELS
    assert 0 <= perf["replication_age"]["value"] < 600
    assert perf["replication_age"]["uom"] == "s"
    assert (perf["replication_age"]["warn"], perf["replication_age"]["crit"]) == ("7200", "86400")
    assert perf["replication_duration"]["value"] > 0
    assert 0 <= perf["sync_age"]["value"] < 600
    assert perf["serving"]["value"] == 1
    assert perf["last_check_age"]["value"] is None and perf["consecutive_failures"]["value"] is None

    state, text, _ = check(pair.master, "--peer")
    assert state == "OK", text


def test_no_ssh_without_peer(pair):
    pair.sshd.stop()
    state, text, _ = check(pair.master)
    # the port probe sees sshd gone, but no ssh login is tried: ha-key stays OK
    assert state == "CRITICAL"
    assert "tcp-ssh-master-to-slave" in text and "ha-key" not in text and "peer:" not in text
    state, text, _ = check(pair.master, "--peer")
    assert state == "CRITICAL" and "ha-key" in text


def test_old_replication_warns_then_is_critical(pair):
    age_record(pair.master, "replication", 3 * 3600)
    state, text, perf = check(pair.master)
    assert state == "WARNING" and "last-replication: " in text
    assert abs(perf["replication_age"]["value"] - 3 * 3600) < 60

    age_record(pair.master, "replication", 2 * 86400)
    state, text, perf = check(pair.master)
    assert state == "CRITICAL" and "last-replication: " in text
    assert abs(perf["replication_age"]["value"] - 2 * 86400) < 60


def test_slave_standing_by_is_ok_and_serving_is_critical(pair):
    state, text, perf = check(pair.slave)
    assert state == "OK", text
    assert perf["serving"]["value"] == 0 and perf["serving"]["crit"] == "0"
    assert perf["replication_age"]["value"] is None

    failover = pair.slave.path("/var/lib/xivo-ha/failover.json")
    failover.parent.mkdir(parents=True, exist_ok=True)
    failover.write_text(json.dumps({
        "mode": "serving", "master": LOOPBACK, "condition": "down", "consecutive_failures": 4,
        "consecutive_successes": 0,
        "last_check": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 90)),
        "last_failover": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 300)),
        "last_failback": None, "reason": "master 127.0.0.1 does not answer ping: failover",
    }))
    ok(pair.slave.run("start", command="xivo-manage-slave-services"))
    state, text, perf = check(pair.slave)
    assert state == "CRITICAL"
    assert text.startswith("this slave serves the phones (failover): master 127.0.0.1 does not answer ping")
    assert perf["serving"]["value"] == 1
    assert perf["consecutive_failures"]["value"] == 4
    assert 80 <= perf["last_check_age"]["value"] < 200


def test_stopped_database_is_critical(pair):
    dsn = f"host=127.0.0.1 port={free_port()} dbname=asterisk user=asterisk connect_timeout=2"
    state, text, perf = check(pair.master, env={"XIVO_HA_DATABASE_DSN": dsn})
    assert state == "CRITICAL"
    assert "database: " in text
    assert list(perf) == LABELS


def test_unreadable_settings_are_unknown(pair):
    result = pair.master.run("check", env={"XIVO_HA_DOCTOR_PING_TIMEOUT": "fast"})
    state, text, perf = parse(result.stdout, result.returncode)
    assert state == "UNKNOWN" and "ping_timeout" in text
    assert perf == {}


@pytest.mark.parametrize("args", [("--bogus",), ("extra",), ("--peer", "--peer=x")])
def test_bad_command_line_is_unknown(pair, args):
    # the monitoring-plugins convention: UNKNOWN (3), one status line, no help text
    result = pair.master.run("check", *args)
    state, text, perf = parse(result.stdout, result.returncode)
    assert state == "UNKNOWN" and text.startswith("usage: ") and "xivo-ha check --help" in text
    assert perf == {} and result.stderr == ""


def test_help_is_not_a_status(pair):
    result = pair.master.run("check", "--help")
    assert result.returncode == 0 and "Monitoring plugin" in result.stdout
