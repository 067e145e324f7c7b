"""What a run writes and prints, from a crafted outcome: no cluster is started.

The cluster, checker and bring-up objects are the real ones, built but never
started (they run nothing until asked to); the docker runs are tests/e2e.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from xivo_ha import failover
from xivo_ha_simulator import constants, report
from xivo_ha_simulator.cluster import BringUp, Checker, Cluster
from xivo_ha_simulator.events import Event
from xivo_ha_simulator.simulation import Observation, Options, Outcome, SlaveChecks, Simulation

FAULT = 100.0


def ev(t, kind, node=None, **info):
    return Event(t, 1_700_000_000.0 + t, kind, node, info or None)


def phones():
    """Two phones the master keeps serving, calling each other during the fault."""
    return {
        "1001": [ev(0, "started"), ev(1, "registered", "master"), ev(105, "call_placed", "master", to="1002"),
                 ev(105.1, "call_connected", "master", to="1002", setup=0.1), ev(110, "registered", "master"),
                 ev(131, "stopped")],
        "1002": [ev(0, "started"), ev(2, "registered", "master"), ev(112, "call_placed", "master", to="1001"),
                 ev(112.1, "call_connected", "master", to="1001", setup=0.1), ev(120, "registered", "master"),
                 ev(131, "stopped")],
    }


def run_outcome(tmp_path, scenario: str, slave: report.SlaveActivity, restored: float | None, failback=None):
    simulation = Simulation(Options(phones=2, scenario=scenario, report_dir=str(tmp_path / "report")))
    simulation.facts = {"packets_from_peer": 40, "packets_dropped": 12}
    events = phones()
    judged = report.compute(events, FAULT, failback, time_scale=10, expect=simulation.fault.expect,
                            slave=slave, restored=restored)
    observation = Observation(FAULT, 1_700_000_100.0, failback, None, restored, {"master": 2})
    outcome = Outcome(judged, observation, SlaveChecks(during_fault=3, master_down=1), timings={"total": 1.0})
    checker = Checker(Cluster("xivo-ha-sim-unit"))
    info = BringUp(master="10.0.0.10", slave="10.0.0.11", gateway="10.0.0.1", primary="10.0.0.10",
                   backup="10.0.0.11", users=2, expiry={}, granted={})
    outcome.files = simulation.write(outcome, events, checker, info, {"probe.sip_probe": "off"})
    return simulation, outcome


def test_a_served_run_writes_one_verdict_everywhere(tmp_path):
    simulation, outcome = run_outcome(tmp_path, "packet-loss", report.SlaveActivity(0, 0), restored=130)
    assert simulation.fault.expect == constants.SERVED and outcome.passed
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    sim = data["simulation"]
    assert data["verdict"] == sim["verdict"] == "PASS"
    assert data["reasons"] == sim["reasons"] == outcome.report.reasons
    assert sim["reasons"][-2].startswith("expected no failover: 0 phones moved to the slave")
    assert sim["reasons"][-1].startswith("calls while the master served: 2 placed during the fault, 0 failed")
    assert (sim["slave_checks_during_fault"], sim["slave_checks_master_down"]) == (3, 1)
    assert (sim["packets_dropped"], sim["lost_registration"], sim["counts_at_end"]) == (12, 0, {"master": 2})
    suite = ET.parse(outcome.files["junit"]).getroot()
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names[-2:] == ["no failover while the master serves", "calls kept working while the master serves"]
    assert suite.get("tests") == str(len(names))
    table = simulation.table(outcome)
    assert "saw the master down in 1 of its 3 checks during the fault" in table
    assert "packets dropped by the fault: 12 of 40 from the slave" in table
    assert "internal calls placed (failed): before 0 (0), during 2 (0), after 0 (0)" in table
    assert table.splitlines()[2].split()[:2] == ["outgoing", "calls"]
    assert table.splitlines()[-1] == "verdict: PASS"


def test_a_served_run_fails_when_the_slave_took_over(tmp_path):
    _, outcome = run_outcome(tmp_path, "packet-loss", report.SlaveActivity(1, 0), restored=130)
    assert not outcome.passed
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["verdict"] == data["simulation"]["verdict"] == "FAIL"
    suite = ET.parse(outcome.files["junit"]).getroot()
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == ["no failover while the master serves"] and suite.get("failures") == "1"


def test_an_outage_run_reports_the_slave_in_its_reasons_and_table(tmp_path):
    simulation, outcome = run_outcome(tmp_path, "power-off", report.SlaveActivity(1, 1), restored=None)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["reasons"][-1] == "the slave started its services once and stopped them once"
    assert data["simulation"]["slave_failovers"] == data["simulation"]["slave_failbacks"] == 1
    table = simulation.table(outcome)
    assert "slave: started its services once, stopped them once" in table
    assert [line.split()[:2] for line in table.splitlines()[2:4]] == [["outgoing", "calls"], ["incoming", "calls"]]
    assert table.splitlines()[-1] == f"verdict: {outcome.verdict}"


def test_the_failover_strings_mirror_the_node_package():
    # The simulator reads the node's failover.json without importing xivo_ha.
    assert (constants.STANDBY, constants.SERVING) == (failover.STANDBY, failover.SERVING)
    assert constants.MASTER_UP == failover.UP
