"""Report maths on crafted event lists, and the files it writes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import pytest

from xivo_ha_simulator import report
from xivo_ha_simulator.constants import SERVED
from xivo_ha_simulator.events import Event

FAULT = 100.0
FAILBACK = 200.0


def ev(t, kind, node=None, **info):
    return Event(t, 1_700_000_000.0 + t, kind, node, info or None)


def fleet():
    """Four phones, times in measured seconds."""
    return {
        # fails over after 15 s, fails back 10 s after the failback
        "a": [ev(0, "started"), ev(1, "registered", "master", granted=60), ev(91, "registered", "master"),
              ev(115, "register_failed", "master", reason="timeout"), ev(115, "registered", "slave"),
              ev(115, "switched", "slave", **{"from": "master", "to": "slave"}),
              ev(210, "registered", "master"), ev(210, "switched", "master", **{"from": "slave", "to": "master"})],
        # fails over after 40 s, fails back after 25 s
        "b": [ev(0, "started"), ev(2, "registered", "master"),
              ev(132, "expired", "master"), ev(140, "registered", "slave"),
              ev(140, "switched", "slave", **{"from": "master", "to": "slave"}),
              ev(225, "registered", "master"), ev(225, "switched", "master", **{"from": "slave", "to": "master"})],
        # never comes back
        "c": [ev(0, "started"), ev(3, "registered", "master"), ev(120, "register_failed", "master", reason="timeout"),
              ev(150, "register_failed", "slave", reason="503 Service Unavailable")],
        # comes back on the master itself after 5 s (a restart, not a failover); no failback needed
        "d": [ev(0, "started"), ev(4, "registered", "master"), ev(105, "registered", "master")],
    }


def test_downtime_is_fault_to_first_registration_on_any_node():
    events = fleet()
    assert report.downtime(events["a"], FAULT) == 15
    assert report.downtime(events["b"], FAULT) == 40
    assert report.downtime(events["c"], FAULT) is None
    assert report.downtime(events["d"], FAULT) == 5
    assert report.downtime(events["a"], FAILBACK, "master") == 10
    assert report.downtime(events["d"], FAILBACK, "master") is None


def test_percentiles_are_nearest_rank_with_never_as_infinite():
    assert report.percentile([5, 15, 40, None], 50) == 15
    assert report.percentile([5, 15, 40, None], 75) == 40
    assert report.percentile([5, 15, 40, None], 95) == math.inf
    assert report.percentile([5, 15, 40, None], 100) == math.inf
    assert report.percentile(list(range(1, 101)), 95) == 95
    assert report.percentile([3.0], 50) == 3.0
    assert report.percentile([], 50) is None


def test_compute_counts_real_equivalent_seconds_against_the_bound():
    events = fleet()
    r = report.compute(events, FAULT, FAILBACK, time_scale=10, bound=300)
    assert r.downtimes == {"a": 15, "b": 40, "c": None, "d": 5}
    f = r.failover
    # real-equivalent: 50, 150, 400, inf
    assert (f.p50, f.p95, f.max) == (150, math.inf, math.inf)
    assert f.over_bound == 2  # b at 400 s and c never
    assert f.never == 1
    assert r.failback_downtimes == {"a": 10, "b": 25, "c": None, "d": None}
    assert (r.failback.p50, r.failback.over_bound) == (250, 2)
    assert r.failovers_seen == 2  # a and b switched to the backup after the fault
    assert r.registered_at_fault == {"master": 4}
    assert r.passed is False and r.verdict == "FAIL"


def test_pass_when_every_phone_is_back_within_the_bound():
    events = {k: v for k, v in fleet().items() if k in ("a", "b")}
    r = report.compute(events, FAULT, FAILBACK, time_scale=10, bound=300)
    assert r.failover.max == 400 and not r.passed  # b: 40 s x 10
    r = report.compute(events, FAULT, FAILBACK, time_scale=5, bound=300)
    assert (r.failover.p50, r.failover.max) == (75, 200)
    assert (r.failback.p50, r.failback.max) == (50, 125)
    assert r.passed and r.verdict == "PASS"
    assert len(r.reasons) == 3


def test_a_phone_unregistered_at_the_fault_fails_the_run():
    events = {"a": fleet()["a"], "late": [ev(0, "started"), ev(101, "registered", "master")]}
    r = report.compute(events, FAULT, time_scale=1)
    assert r.failover.ok  # 15 s and 1 s
    assert r.registered_at_fault == {"master": 1, "none": 1}
    assert not r.passed
    assert r.reasons[0].startswith("1 of 2")


def test_no_phones_is_not_a_pass():
    r = report.compute({}, FAULT)
    assert not r.passed
    assert r.failover.p50 is None


def test_node_at_follows_registrations_failures_and_lapses():
    a = fleet()["a"]
    assert report.node_at(a, 0.5) is None
    assert report.node_at(a, 50) == "master"
    assert report.node_at(a, 114) == "master"
    assert report.node_at(a, 115) == "slave"
    assert report.node_at(a, 220) == "master"
    b = fleet()["b"]
    assert report.node_at(b, 135) is None  # lapsed
    # A failed try on another node does not take the phone down.
    events = [ev(0, "registered", "slave"), ev(5, "register_failed", "master", reason="timeout")]
    assert report.node_at(events, 6) == "slave"


def test_occupancy_steps():
    events = fleet()
    times, series = report.occupancy(events, ["master", "slave"])
    at = dict(zip(times, zip(series["master"], series["slave"], series["none"])))
    assert at[4] == (4, 0, 0)
    assert at[115] == (3, 1, 0)  # a: failed on the master and registered on the slave, same instant
    assert at[120] == (2, 1, 1)  # c down
    assert at[132] == (1, 1, 2)  # b lapsed
    assert at[140] == (1, 2, 1)
    assert at[210] == (2, 1, 1)
    assert at[225] == (3, 0, 1)
    assert 150 not in at  # c failing on the slave changes nothing: it was down already
    assert times == sorted(times)
    assert all(m + s + n == 4 for m, s, n in zip(series["master"], series["slave"], series["none"]))


def test_event_dict_round_trip():
    e = ev(12.5, "switched", "slave", **{"from": "master", "to": "slave"})
    d = e.to_dict()
    assert d == {"t": 12.5, "wall": 1_700_000_012.5, "event": "switched", "node": "slave",
                 "from": "master", "to": "slave"}
    assert Event.from_dict(d) == e
    assert Event.from_dict(ev(1, "started").to_dict()) == ev(1, "started")


def test_writers(tmp_path):
    events = fleet()
    r = report.compute(events, FAULT, FAILBACK, time_scale=10, bound=300)
    paths = report.write_all(r, events, tmp_path / "out")

    data = json.loads(paths["json"].read_text())
    assert data["verdict"] == "FAIL"
    assert data["failover_downtime"]["p50"] == 150
    assert data["failover_downtime"]["max"] is None  # infinite
    assert data["per_phone"]["a"]["downtime"] == 15
    assert data["per_phone"]["c"]["downtime"] is None
    assert data["per_phone"]["a"]["failback_downtime"] == 10
    assert [e["event"] for e in data["per_phone"]["a"]["events"]][:2] == ["started", "registered"]
    assert data["fault"]["t"] == FAULT

    suite = ET.parse(paths["junit"]).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 3
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["failover downtime within 300s", "failback downtime within 300s"]
    assert int(suite.get("failures")) == 2
    message = cases[1].find("failure").get("message")
    assert "2 of 4 phones" in message and "c=never" in message

    png = paths["timeline"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_table_shows_figures_and_verdict():
    r = report.compute(fleet(), FAULT, FAILBACK, time_scale=10, bound=300)
    table = report.format_table(r)
    lines = table.splitlines()
    assert lines[0].split() == ["p50", "p95", "max", "over", "300s", "never"]
    assert lines[2].split() == ["failover", "150.0s", "never", "never", "2/4", "1"]
    assert lines[3].split() == ["failback", "250.0s", "never", "never", "2/4", "2"]
    assert lines[-1] == "verdict: FAIL"


@pytest.mark.parametrize("scale,expected", [(1, True), (7.5, True), (8, False)])
def test_bound_edge_uses_scaled_seconds(scale, expected):
    # 40 measured seconds: 300 s real-equivalent at x7.5 is within, 320 s at x8 is over.
    events = {"b": fleet()["b"]}
    assert report.compute(events, FAULT, time_scale=scale).failover.ok is expected


def served_fleet():
    """Two phones the master keeps serving: they refresh on it before and after the fault."""
    return {
        "a": [ev(0, "started"), ev(1, "registered", "master"), ev(110, "registered", "master")],
        "b": [ev(0, "started"), ev(2, "registered", "master"), ev(120, "registered", "master")],
    }


def test_a_fault_the_master_serves_through_passes_only_without_failover():
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    r = report.compute(served_fleet(), FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.passed and r.verdict == "PASS"
    assert r.reasons == ["2 of 2 phones were registered when the fault hit",
                         "expected no failover: 0 phones moved to the slave, the slave started its services "
                         "0 times, 0 phones lost their registration"]
    assert [c.name for c in r.criteria] == ["phones registered before the fault", "failover downtime within 300s",
                                            "no failover while the master serves"]
    started = report.compute(served_fleet(), FAULT, time_scale=10, expect=SERVED,
                             slave=report.SlaveActivity(failovers=1, failbacks=1), restored=130)
    assert not started.passed
    assert "the slave started its services once" in started.reasons[-1]
    with pytest.raises(ValueError):
        report.compute(served_fleet(), FAULT, expect=SERVED)


def test_a_served_fault_fails_on_a_lost_registration_but_not_on_a_slow_refresh():
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    events = served_fleet()
    events["b"] = [ev(0, "started"), ev(2, "registered", "master"), ev(125, "expired", "master"),
                   ev(126, "registered", "master")]
    r = report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.lost_registration == 1 and not r.passed
    # A registration lost after the restore is not the fault's doing.
    assert report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=124).passed
    # No phone lost its registration, one refreshed late: reported in junit.xml, not decisive.
    slow = served_fleet()
    slow["b"] = [ev(0, "started"), ev(2, "registered", "master"), ev(140, "registered", "master")]
    r = report.compute(slow, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.passed
    assert [c.name for c in r.criteria if not c.ok] == ["failover downtime within 300s"]


def test_an_outage_verdict_names_what_the_slave_did():
    events = {k: v for k, v in fleet().items() if k in ("a", "b")}
    r = report.compute(events, FAULT, FAILBACK, time_scale=5, slave=report.SlaveActivity(1, 2))
    assert r.passed
    assert r.reasons[-1] == "the slave started its services once and stopped them 2 times"
    assert len(r.reasons) == 4


def test_lost_registration_counts_phones_down_between_fault_and_restore():
    events = fleet()
    assert report.lost_registration(events, FAULT) == 3  # a failed, b lapsed, c failed; d refreshed
    assert report.lost_registration(events, FAULT, until=118) == 1  # only a so far
    late = {"late": [ev(0, "started"), ev(101, "registered", "master")]}
    assert report.lost_registration(late, FAULT) == 1  # not registered at the fault


def test_write_all_writes_the_simulation_and_every_criterion_once(tmp_path):
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    r = report.compute(served_fleet(), FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    out = tmp_path / "out"
    report.write_all(r, served_fleet(), out, simulation={"scenario": "packet-loss", "verdict": r.verdict})
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.json", "timeline.png"]
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in ("junit.xml", "report.json"))
    data = json.loads((out / "report.json").read_text())
    assert list(data)[-1] == "simulation" and data["simulation"]["scenario"] == "packet-loss"
    assert (data["verdict"], data["reasons"]) == ("PASS", r.reasons)
    suite = ET.parse(out / "junit.xml").getroot()
    assert [c.get("name") for c in suite.findall("testcase")] == [c.name for c in r.criteria]
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")


def test_write_atomic_keeps_what_was_there_when_the_rename_fails(tmp_path):
    target = tmp_path / "report.json"
    target.mkdir()
    (target / "kept").write_text("x")
    with pytest.raises(OSError):
        report.write_atomic(target, b"{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (target / "kept").read_text() == "x"
