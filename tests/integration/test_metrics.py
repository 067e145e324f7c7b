"""The node_exporter textfile written by the HA jobs, read by a strict parser of the
Prometheus text exposition format (and by `promtool check metrics` when it is installed).

The master's file comes from real replication and sync runs (test_doctor's pair); the
slave's from real xivo-check-master-status runs in network namespaces (test_check_master's
slave), through a failover and a failback.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest

from pg import free_port
from test_doctor import LOOPBACK

pytestmark = pytest.mark.integration

TEXTFILE = "/var/lib/prometheus/node-exporter/xivo_ha.prom"
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
LABELS = rf"\{{(?:{LABEL_NAME}={LABEL_VALUE}(?:,{LABEL_NAME}={LABEL_VALUE})*,?)?\}}"
SAMPLE = re.compile(rf"(?P<name>{NAME})(?P<labels>{LABELS})?"
                    rf" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))(?: -?[0-9]+)?")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse(text: str) -> dict[str, dict]:
    """{name: {"help", "type", "samples": {frozenset(labels): value}}}, asserting every rule."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        assert line.strip(), "blank line"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and help_text and name not in families, line
            families[name] = {"help": help_text, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in TYPES and families[name]["type"] is None, line
            assert not families[name]["samples"], "TYPE after samples"
            families[name]["type"] = kind
        else:
            assert not line.startswith("#"), line
            m = SAMPLE.fullmatch(line)
            assert m, f"bad sample line {line!r}"
            assert m["name"] == current, f"{m['name']} outside its family"
            assert families[current]["type"], "sample before TYPE"
            if families[current]["type"] == "counter":
                assert current.endswith("_total")
            labels = frozenset(re.findall(rf"({LABEL_NAME})=({LABEL_VALUE})", m["labels"] or ""))
            assert len({k for k, _ in labels}) == len(labels), "duplicate label"
            assert labels not in families[current]["samples"], f"duplicate sample {line}"
            value = float(m["value"])
            assert not math.isnan(value)
            families[current]["samples"][labels] = value
    return families


def value(families: dict, name: str, **labels: str) -> float:
    wanted = {(k, f'"{v}"') for k, v in labels.items()}
    found = [v for key, v in families[name]["samples"].items() if wanted <= key]
    assert len(found) == 1, (name, labels, families[name])
    return found[0]


def read(root) -> dict:
    path = root / TEXTFILE.lstrip("/")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    text = path.read_text()
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    return parse(text)


def test_master_textfile_after_replication_and_sync(pair):
    families = read(pair.master.root)
    assert value(families, "xivo_ha_info", role="master", peer=LOOPBACK) == 1
    assert value(families, "xivo_ha_serving") == 1
    assert value(families, "xivo_ha_maintenance") == 0
    for job in ("replication", "sync"):
        assert value(families, "xivo_ha_job_success", job=job, result="success") == 1
        assert value(families, "xivo_ha_job_duration_seconds", job=job) > 0
    finished = value(families, "xivo_ha_job_last_run_timestamp_seconds", job="replication")
    assert 0 <= value(families, "xivo_ha_metrics_timestamp_seconds") - finished < 600
    assert value(families, "xivo_ha_replication_rows") > 0
    assert "xivo_ha_failovers_total" not in families

    result = pair.master.run(LOOPBACK, command="xivo-master-slave-db-replication",
                             env={"XIVO_HA_REPLICATION_SLAVE_PORT": str(free_port())})
    assert result.returncode == 1
    families = read(pair.master.root)
    assert value(families, "xivo_ha_job_success", job="replication", result="failed") == 0
    assert "xivo_ha_replication_rows" not in families
    assert value(families, "xivo_ha_job_success", job="sync", result="success") == 1


def test_slave_textfile_counts_one_failover_and_one_failback(slave):
    assert slave.check().returncode == 0
    families = read(slave.root)
    assert value(families, "xivo_ha_info", role="slave") == 1
    assert value(families, "xivo_ha_serving") == 0
    assert value(families, "xivo_ha_master_condition", condition="up") == 1
    assert value(families, "xivo_ha_master_condition", condition="down") == 0
    assert value(families, "xivo_ha_failovers_total") == 0
    assert "xivo_ha_job_success" not in families

    slave.lab.master_link(False)
    for _ in range(2):
        assert slave.check().returncode == 0
        families = read(slave.root)
        assert value(families, "xivo_ha_serving") == 1
        assert value(families, "xivo_ha_failovers_total") == 1
        assert value(families, "xivo_ha_master_condition", condition="down") == 1
        assert value(families, "xivo_ha_probe_consecutive_failures") >= 1
        assert value(families, "xivo_ha_last_failover_timestamp_seconds") > 0

    slave.lab.master_link(True)
    assert slave.check().returncode == 0
    families = read(slave.root)
    assert value(families, "xivo_ha_serving") == 0
    assert value(families, "xivo_ha_failovers_total") == 1
    assert value(families, "xivo_ha_failbacks_total") == 1
    assert value(families, "xivo_ha_probe_consecutive_failures") == 0


def test_slave_textfile_has_the_result_and_timing_of_each_probe(slave):
    master = slave.lab.master_address
    slave.env.update({"XIVO_HA_PROBE_SIP_PROBE": "on", "XIVO_HA_PROBE_SIP_TIMEOUT": "2"})
    assert slave.check().returncode == 0  # the master pings, nothing listens on its port 5060
    families = read(slave.root)
    assert families["xivo_ha_probe_up"]["type"] == families["xivo_ha_probe_seconds"]["type"] == "gauge"
    assert value(families, "xivo_ha_probe_up", probe="icmp", target=master) == 1
    assert value(families, "xivo_ha_probe_up", probe="sip", target=f"{master}:5060") == 0
    assert 0 < value(families, "xivo_ha_probe_seconds", probe="icmp") < 10
    assert 0 <= value(families, "xivo_ha_probe_seconds", probe="sip") < 2

    slave.lab.master_link(False)
    assert slave.check().returncode == 0
    families = read(slave.root)
    assert value(families, "xivo_ha_probe_up", probe="icmp") == 0
    assert value(families, "xivo_ha_probe_seconds", probe="icmp") >= 0.5  # ping waited for its 1 s timeout
    assert len(families["xivo_ha_probe_up"]["samples"]) == 1  # the registrar is not asked without ping


def test_probe_entries_that_are_not_probes_are_left_out():
    from xivo_ha import metrics

    families = parse(metrics.render({"role": "slave", "now": 1.0, "probes": {
        "icmp": {"up": "yes", "seconds": 1.0}, "sip": {"up": True, "seconds": "1"},
        "witness": {"up": False, "seconds": float("nan"), "target": "10.0.0.9"}, "other": [],
        "next": {"up": True, "seconds": 0.25, "target": 'a "quoted"\nname'},
    }}))
    assert families["xivo_ha_probe_up"]["samples"] == {
        frozenset({("probe", '"next"'), ("target", r'"a \"quoted\"\nname"')}): 1.0}
    assert value(families, "xivo_ha_probe_seconds", probe="next") == 0.25
