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



def call(t, end, to, ok=True, node="master", reason="timeout"):
    """One outgoing call: placed at ``t``, connected (or failed) at ``end``."""
    result = ev(end, "call_connected", node, to=to, setup=end - t) if ok else \
        ev(end, "call_failed", node, to=to, reason=reason)
    return [ev(t, "call_placed", node, to=to), result]


def with_calls(events, **calls):
    """``events`` with each phone's calls (``a=[call(...), ...]``) merged in, in time order."""
    out = {pid: list(evs) for pid, evs in events.items()}
    for pid, made in calls.items():
        out[pid] = sorted(out[pid] + [e for pair in made for e in pair], key=lambda e: e.t)
    return out


def calling_fleet():
    """a and b of fleet(), calling each other: calls fail until both are on the slave (b at 140)."""
    events = {k: v for k, v in fleet().items() if k in ("a", "b")}
    return with_calls(
        events,
        a=[call(50, 50.1, "b"), call(103, 106.2, "b", ok=False),
           call(116, 116.1, "b", ok=False, node="slave", reason="480 Temporarily Unavailable"),
           call(141, 141.1, "b", node="slave"), call(230, 230.1, "b")],
        b=[call(60, 60.1, "a"), call(135, 138.2, "a", ok=False), call(141, 141.2, "a", node="slave"),
           call(231, 231.1, "a")],
    )


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


def test_pass_when_every_phone_can_call_and_be_called_within_the_bound():
    events = calling_fleet()
    r = report.compute(events, FAULT, FAILBACK, time_scale=10, bound=300)
    # a: from the fault to its call connected at 141.1; b: to 141.2.  x10: 411 and 412 s.
    out, inc = r.outages["outgoing"], r.outages["incoming"]
    assert (out.p50, out.max, out.over_bound) == (pytest.approx(411), pytest.approx(412), ("a", "b"))
    assert inc.over_bound == ("a", "b") and not r.passed
    r = report.compute(events, FAULT, FAILBACK, time_scale=5, bound=300)
    assert (r.outages["outgoing"].max, r.outages["incoming"].max) == (pytest.approx(206), pytest.approx(206))
    assert (r.failover.p50, r.failover.max) == (75, 200)
    assert (r.failback.p50, r.failback.max) == (50, 125)
    assert r.passed and r.verdict == "PASS"
    # registered, outgoing, incoming: registration and failback are reported, not decisive.
    assert len(r.reasons) == 3
    assert [c.name for c in r.criteria if not c.decisive] == ["failover downtime within 300s",
                                                              "failback downtime within 300s"]


def test_registration_alone_no_longer_passes():
    events = {k: v for k, v in fleet().items() if k in ("a", "b")}
    r = report.compute(events, FAULT, FAILBACK, time_scale=5, bound=300)
    assert r.failover.ok and r.failback.ok
    assert not r.passed
    assert r.outages["outgoing"].unmeasured == ("a", "b") and r.outages["outgoing"].phones == 0
    assert any("no phone had an attempt since the fault (outgoing calls)" in c.failure for c in r.criteria
               if c.failure)


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
    assert data["outages"]["registration"] == {"p50": 150, "p95": None, "max": None, "phones": 4, "never": 1,
                                               "over_bound": ["b", "c"], "decisive": False}
    assert data["per_phone"]["a"]["downtime"] == 15
    assert data["per_phone"]["c"]["downtime"] is None
    assert data["per_phone"]["a"]["failback_downtime"] == 10
    assert [e["event"] for e in data["per_phone"]["a"]["events"]][:2] == ["started", "registered"]
    assert data["fault"]["t"] == FAULT

    suite = ET.parse(paths["junit"]).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases) == 5
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["outgoing calls back within 300s", "incoming calls back within 300s",
                      "failover downtime within 300s", "failback downtime within 300s"]
    assert int(suite.get("failures")) == 4
    message = cases[3].find("failure").get("message")
    assert "2 of 4 phones" in message and "c=never" in message

    png = paths["timeline"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_table_shows_figures_and_verdict():
    r = report.compute(calling_fleet(), FAULT, FAILBACK, time_scale=10, bound=300, restored=FAILBACK)
    table = report.format_table(r)
    lines = table.splitlines()
    assert lines[0].split() == ["p50", "p95", "max", "max", "total", "over", "300s", "never", "no", "attempt"]
    assert lines[2].split() == ["outgoing", "calls", "411.0s", "412.0s", "412.0s", "412.0s", "2/2", "0", "0"]
    assert lines[3].split() == ["incoming", "calls", "411.0s", "412.0s", "412.0s", "412.0s", "2/2", "0", "0"]
    assert lines[4].split() == ["registration", "150.0s", "400.0s", "400.0s", "-", "1/2", "0", "-"]
    assert lines[5].split() == ["failback", "registration", "100.0s", "250.0s", "250.0s", "-", "0/2", "0", "-"]
    assert "internal calls placed (failed): before 2 (0), during 5 (3), after 2 (0)" in lines
    assert lines[-1] == "verdict: FAIL"


@pytest.mark.parametrize("scale,expected", [(1, True), (7.5, True), (8, False)])
def test_bound_edge_uses_scaled_seconds(scale, expected):
    # 40 measured seconds: 300 s real-equivalent at x7.5 is within, 320 s at x8 is over.
    events = {"b": fleet()["b"]}
    assert report.compute(events, FAULT, time_scale=scale).failover.ok is expected


def served_fleet(**replaced):
    """Two phones the master keeps serving: they refresh on it before and after the fault, and call each other.

    ``replaced``: registration events instead of a phone's own.
    """
    events = {
        "a": [ev(0, "started"), ev(1, "registered", "master"), ev(110, "registered", "master")],
        "b": [ev(0, "started"), ev(2, "registered", "master"), ev(120, "registered", "master")],
    }
    events.update(replaced)
    return with_calls(events, a=[call(50, 50.1, "b"), call(105, 105.1, "b")],
                      b=[call(60, 60.1, "a"), call(115, 115.1, "a"), call(135, 135.1, "a")])


def test_a_fault_the_master_serves_through_passes_only_without_failover():
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    r = report.compute(served_fleet(), FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.passed and r.verdict == "PASS"
    assert r.reasons == ["2 of 2 phones were registered when the fault hit",
                         "expected no failover: 0 phones moved to the slave, the slave started its services "
                         "0 times, 0 phones lost their registration",
                         "calls while the master served: 2 placed during the fault, 0 failed "
                         "(internal 2/0 placed/failed)"]
    assert [c.name for c in r.criteria] == ["phones registered before the fault", "outgoing calls back within 300s",
                                            "incoming calls back within 300s", "failover downtime within 300s",
                                            "no failover while the master serves",
                                            "calls kept working while the master serves"]
    assert [c.name for c in r.criteria if c.decisive] == ["phones registered before the fault",
                                                          "no failover while the master serves",
                                                          "calls kept working while the master serves"]
    started = report.compute(served_fleet(), FAULT, time_scale=10, expect=SERVED,
                             slave=report.SlaveActivity(failovers=1, failbacks=1), restored=130)
    assert not started.passed
    assert "the slave started its services once" in started.reasons[-2]
    with pytest.raises(ValueError):
        report.compute(served_fleet(), FAULT, expect=SERVED)


def test_a_served_fault_fails_when_a_call_fails_or_none_is_placed():
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    events = with_calls(served_fleet(), a=[call(120, 123.2, "b", ok=False)])
    r = report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert not r.passed
    failed = [c for c in r.criteria if c.name == "calls kept working while the master serves"][0]
    assert failed.failure == "1 calls failed during the fault: a->b (master: timeout)"
    # The same failure after the restore is not the fault's doing.
    assert report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=119).passed
    quiet = {pid: [e for e in evs if not e.kind.startswith("call_")] for pid, evs in served_fleet().items()}
    r = report.compute(quiet, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert not r.passed
    assert r.criteria[-1].failure == "no call was placed during the fault: nothing shows that calls kept working"


def test_a_served_fault_fails_on_a_lost_registration_but_not_on_a_slow_refresh():
    calm = report.SlaveActivity(failovers=0, failbacks=0)
    events = served_fleet(b=[ev(0, "started"), ev(2, "registered", "master"), ev(125, "expired", "master"),
                             ev(126, "registered", "master")])
    r = report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.lost_registration == 1 and not r.passed
    # A registration lost after the restore is not the fault's doing.
    assert report.compute(events, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=124).passed
    # No phone lost its registration, one refreshed late: reported in junit.xml, not decisive.
    slow = served_fleet(b=[ev(0, "started"), ev(2, "registered", "master"), ev(140, "registered", "master")])
    r = report.compute(slow, FAULT, time_scale=10, expect=SERVED, slave=calm, restored=130)
    assert r.passed
    assert [c.name for c in r.criteria if not c.ok] == ["failover downtime within 300s"]


def test_an_outage_verdict_names_what_the_slave_did():
    r = report.compute(calling_fleet(), FAULT, FAILBACK, time_scale=5, slave=report.SlaveActivity(1, 2))
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
    assert (suite.get("tests"), suite.get("failures")) == ("6", "0")


def test_write_atomic_keeps_what_was_there_when_the_rename_fails(tmp_path):
    target = tmp_path / "report.json"
    target.mkdir()
    (target / "kept").write_text("x")
    with pytest.raises(OSError):
        report.write_atomic(target, b"{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (target / "kept").read_text() == "x"


# --------------------------------------------------------------------------- calls: outages per phone


def registered(pid_count=3):
    """Phones 1001.. registered on the master before the fault and on the slave 12 s after it."""
    return {str(1001 + i): [ev(0, "started"), ev(1 + i, "registered", "master"), ev(112, "registered", "slave")]
            for i in range(pid_count)}


def test_call_attempts_pair_each_result_with_its_call():
    events = sorted(call(10, 13.2, "1002", ok=False) + call(11, 11.1, "1003") + call(12, 12.5, "1002"),
                    key=lambda e: e.t)
    events.insert(3, ev(13.2, "call_retried", "slave", to="1002", reason="no answer"))
    events += [ev(20, "call_placed", "master", to="1003")]  # no result when the phones stopped
    attempts = report.call_attempts(events)
    assert [(a.placed, a.ended, a.ok, a.peer) for a in attempts] == [
        (10, 13.2, False, "1002"),  # retried, then failed: one attempt
        (11, 11.1, True, "1003"),
        (12, 12.5, True, "1002"),  # connected 0.5 s after it was placed: the later call to 1002
        (20, None, False, "1003"),
    ]
    assert attempts[0].reason == "timeout" and attempts[0].node == "master"
    # Without a setup time, a result goes to the oldest open call to that number.
    plain = [ev(1, "call_placed", "master", to="x"), ev(2, "call_placed", "master", to="x"),
             ev(3, "call_connected", "master", to="x")]
    assert [(a.placed, a.ended) for a in report.call_attempts(plain)] == [(1, 3), (2, None)]


def test_an_outage_runs_from_the_fault_to_the_next_success():
    events = with_calls(registered(), **{
        "1001": [call(90, 90.1, "1002"), call(102, 105.2, "1002", ok=False),
                 call(110, 110.1, "1003", ok=False, reason="480 Temporarily Unavailable"),
                 call(118, 118.1, "1002", node="slave")],
        "1002": [call(101, 101.1, "1001", node="slave")],
        "1003": [call(104, 107.2, "1001", ok=False), call(113, 113.3, "1001", node="slave")],
    })
    r = report.compute(events, FAULT, time_scale=10, restored=None)
    out = r.calls["outgoing"]["1001"]
    assert out.outages == (report.Outage(FAULT, 118.1),)
    assert (out.longest, out.total) == (pytest.approx(18.1), pytest.approx(18.1))
    assert (out.tries, out.failures, out.last_failure) == (3, 2, "master: 480 Temporarily Unavailable")
    assert out.periods == {"before": (1, 0), "during": (3, 2), "after": (0, 0)}
    # 1002 succeeded at once; 1001 was called by 1002 (ok) then by 1003 (failed, then ok at 113.3).
    assert r.calls["outgoing"]["1002"].longest == 0.0
    incoming = r.calls["incoming"]["1001"]
    assert incoming.outages == (report.Outage(104, 113.3),)  # a success at 101.1 came first
    assert r.calls["incoming"]["1003"].outages == (report.Outage(FAULT, None),)
    stats = r.outages["outgoing"]
    # 1002: 0 s, 1003: from the fault to 113.3, 1001: to 118.1 (x10)
    assert (stats.p50, stats.max, stats.over_bound) == (pytest.approx(133), pytest.approx(181), ())
    assert r.outages["incoming"].over_bound == ("1003",) and r.outages["incoming"].never == ("1003",)
    assert not r.passed
    reason = [c.failure for c in r.criteria if c.name == "incoming calls back within 300s"][0]
    assert reason == ("incoming calls: 1 of 3 phones over 300s: 1003 never back "
                      "(last failure master: 480 Temporarily Unavailable)")
    assert r.call_counts == {"internal": {"before": (1, 0), "during": (6, 3), "after": (0, 0)}}


def test_a_failure_placed_before_a_success_after_the_fault_starts_no_outage():
    # 1001's call to 1003 placed just before the fault times out after its next call got through
    # the slave: the phone could call again from 101.2, and it is not "never back".
    late = [call(99.5, 132, "1003", ok=False, reason="408 Request Timeout"), call(101, 101.2, "1002", node="slave"),
            call(120, 121, "1002", ok=False), call(125, 125.1, "1002", node="slave")]
    events = with_calls(registered(3), **{"1001": late, "1002": [call(104, 104.1, "1001", node="slave")],
                                          "1003": [call(104, 104.1, "1001", node="slave")]})
    r = report.compute(events, FAULT, time_scale=10, restored=None)
    phone = r.calls["outgoing"]["1001"]
    assert phone.outages == (report.Outage(120, 125.1),) and not phone.never
    assert phone.failures == 2  # both failures are still counted as failed attempts


def test_flapping_makes_two_outages_longest_and_total():
    flaps = [call(102, 105.2, "1002", ok=False), call(110, 110.1, "1002"),  # 100 -> 110.1
             call(120, 123.2, "1002", ok=False), call(125, 128.2, "1002", ok=False),
             call(131, 131.3, "1002")]  # 120 -> 131.3
    events = with_calls(registered(2), **{"1001": flaps, "1002": [call(140, 140.1, "1001")]})
    r = report.compute(events, FAULT, time_scale=10, restored=130)
    phone = r.calls["outgoing"]["1001"]
    assert phone.outages == (report.Outage(FAULT, 110.1), report.Outage(120, 131.3))
    assert phone.longest == pytest.approx(11.3) and phone.total == pytest.approx(21.4)
    assert r.calls["incoming"]["1002"].total == pytest.approx(21.4)  # the same calls, seen by the callee
    assert r.outages["outgoing"].max == pytest.approx(113) and r.outages["outgoing"].max_total == pytest.approx(214)
    assert phone.periods == {"before": (0, 0), "during": (4, 3), "after": (1, 0)}
    assert r.passed


def test_a_phone_never_called_is_unmeasured_and_fails_the_verdict():
    # 1001 and 1002 call each other; nobody calls 1003, which calls 1001 fine.
    events = with_calls(registered(), **{
        "1001": [call(113, 113.1, "1002", node="slave")],
        "1002": [call(114, 114.1, "1001", node="slave")],
        "1003": [call(115, 115.1, "1001", node="slave"), call(80, 80.1, "1002")],
    })
    r = report.compute(events, FAULT, time_scale=10)
    assert r.calls["incoming"]["1003"].measured is False
    stats = r.outages["incoming"]
    assert (stats.phones, stats.unmeasured, stats.over_bound) == (2, ("1003",), ())
    assert not r.passed
    failure = [c.failure for c in r.criteria if c.name == "incoming calls back within 300s"][0]
    assert failure == "incoming calls: no attempt since the fault for 1003, which cannot be judged"
    assert report.calls_unsettled(events, FAULT) == {"1003"}


def test_a_phone_never_back_fails_with_its_last_failure():
    events = with_calls(registered(2), **{
        "1001": [call(103, 106.2, "1002", ok=False), call(113, 113.1, "1002", ok=False, node="slave",
                                                        reason="401 Unauthorized (credentials refused)")],
        "1002": [call(104, 107.2, "1001", ok=False), call(114, 114.1, "1001", ok=False, node="slave",
                                                        reason="401 Unauthorized (credentials refused)")],
    })
    events["1001"].append(ev(115, "register_failed", "slave", reason="401 Unauthorized (credentials refused)"))
    r = report.compute(events, FAULT, time_scale=10)
    for direction in ("outgoing", "incoming"):
        stats = r.outages[direction]
        assert (stats.p50, stats.max, stats.never, stats.over_bound) == (math.inf, math.inf, ("1001", "1002"),
                                                                         ("1001", "1002"))
    assert r.calls["outgoing"]["1001"].longest is None and r.calls["outgoing"]["1001"].total is None
    assert not r.passed
    assert r.reasons[1].startswith(
        "outgoing calls: 2 of 2 phones over 300s: 1001 never back (last failure slave: 401 Unauthorized "
        "(credentials refused); its last REGISTER failed, slave: 401 Unauthorized (credentials refused)), "
        "1002 never back (last failure slave: 401 Unauthorized (credentials refused)) (outgoing calls: ")
    assert report.calls_unsettled(events, FAULT) == {"1001", "1002"}
    data = report.to_dict(r)
    assert data["outages"]["outgoing"]["max"] is None and data["outages"]["outgoing"]["never"] == 2
    assert data["outages"]["over_bound"] == ["1001", "1002"]
    assert data["per_phone"]["1001"]["outgoing"]["never"] is True
    assert data["per_phone"]["1001"]["outgoing"]["outages"] == [[FAULT, None]]


def test_pstn_calls_decide_when_the_carrier_calls():
    events = with_calls(registered(2), **{"1001": [call(113, 113.1, "1002", node="slave")],
                                          "1002": [call(114, 114.1, "1001", node="slave")]})
    did = {"1001": [e for pair in (call(50, 50.1, "0140001001"), call(105, 108.2, "0140001001", ok=False),
                                   call(150, 150.1, "0140001001", node="slave")) for e in pair],
           "1002": [e for pair in (call(120, 120.1, "0140001002", node="slave"),) for e in pair]}
    r = report.compute(events, FAULT, time_scale=10, pstn=did)
    assert r.calls["pstn"]["1001"].outages == (report.Outage(FAULT, 150.1),)
    assert r.outages["pstn"].over_bound == ("1001",)  # 501 s real-equivalent
    assert not r.passed
    assert [c.name for c in r.criteria if not c.ok] == ["PSTN calls back within 300s"]
    assert r.call_counts["pstn"] == {"before": (1, 0), "during": (3, 1), "after": (0, 0)}
    # Without PSTN events the verdict rests on internal calls.
    assert report.compute(events, FAULT, time_scale=10, pstn={"1001": []}).passed
    assert "pstn" not in report.compute(events, FAULT, time_scale=10).outages
    data = report.to_dict(r, events)
    assert [e["event"] for e in data["per_phone"]["1002"]["pstn_events"]] == ["call_placed", "call_connected"]
    assert data["outages"]["pstn"]["decisive"] is True and data["outages"]["cti"]["phones"] == 0


def test_cti_reconnection_is_reported_not_decisive():
    events = with_calls(registered(2), **{"1001": [call(113, 113.1, "1002", node="slave")],
                                          "1002": [call(114, 114.1, "1001", node="slave")]})
    cti = {
        "1001": [ev(5, "cti_connected", "master"), ev(104, "cti_lost", "master", reason="reset"),
                 ev(104, "cti_connect_failed", "master", reason="refused"), ev(107, "cti_connected", "slave")],
        "1002": [ev(5, "cti_connected", "master"), ev(101, "cti_lost", "master", reason="reset"),
                 ev(140, "cti_connect_failed", "slave", reason="refused")],
        "1003": [],
    }
    r = report.compute(events, FAULT, time_scale=10, cti=cti)
    assert r.calls["cti"]["1001"].outages == (report.Outage(FAULT, 107),)
    assert r.calls["cti"]["1002"].never
    stats = r.outages["cti"]
    assert (stats.max, stats.over_bound, stats.unmeasured) == (math.inf, ("1002",), ("1003",))
    criterion = [c for c in r.criteria if c.direction == "cti"]
    assert [c.name for c in criterion] == ["CTI reconnection within 300s"]
    assert not criterion[0].ok and not criterion[0].decisive
    assert "1002=never" in criterion[0].failure
    assert r.passed
    assert report.to_dict(r)["outages"]["cti"]["over_bound"] == ["1002"]


def test_a_client_logged_in_on_the_backup_retrying_its_main_is_not_out():
    # On the backup the client tries its main now and then (XiVO Client): those failures are
    # not an outage; losing the backup is, until the main takes it back.
    cti = {"1001": [ev(5, "cti_connected", "master"), ev(100, "cti_lost", "master", reason="reset"),
                    ev(100.1, "cti_connect_failed", "master", reason="refused"),
                    ev(107, "cti_connected", "slave"),
                    ev(127, "cti_connect_failed", "master", reason="no answer"),
                    ev(147, "cti_connect_failed", "master", reason="no answer"),
                    ev(160, "cti_lost", "slave", reason="connection closed by the server"),
                    ev(162, "cti_connected", "master")]}
    outages = report.cti_outages(cti["1001"], FAULT)
    assert outages.outages == (report.Outage(FAULT, 107), report.Outage(160, 162))
    assert outages.failures == 3 and outages.last_failure == "slave: connection closed by the server"


def test_what_comes_after_the_end_of_the_observation_is_not_judged():
    # The observation ended at 120, every phone back both ways; a call placed at 119 failed
    # at 121, while the phones were being stopped: it is not a new outage.
    events = with_calls(registered(2), **{"1001": [call(113, 113.1, "1002", node="slave"),
                                                   call(119, 121, "1002", ok=False)],
                                          "1002": [call(114, 114.1, "1001", node="slave")]})
    assert report.compute(events, FAULT, time_scale=10, until=120).passed
    late = report.compute(events, FAULT, time_scale=10)
    assert not late.passed and late.calls["outgoing"]["1001"].never


def test_calls_unsettled_waits_for_a_success_both_ways():
    events = with_calls(registered(2), **{"1001": [call(103, 106.2, "1002", ok=False)]})
    assert report.calls_unsettled(events, FAULT) == {"1001", "1002"}
    events = with_calls(events, **{"1001": [call(113, 113.1, "1002", node="slave")]})
    # 1001 can call and 1002 be called; nobody called 1001 yet, 1002 called nobody.
    assert report.calls_unsettled(events, FAULT) == {"1001", "1002"}
    events = with_calls(events, **{"1002": [call(114, 114.1, "1001", node="slave")]})
    assert report.calls_unsettled(events, FAULT) == set()


def test_success_share_per_bucket_by_the_time_calls_were_placed():
    attempts = report.call_attempts(sorted(
        call(1, 1.1, "x") + call(2, 5.2, "x", ok=False) + call(4, 4.1, "x") + call(7, 7.1, "x")
        + [ev(8, "call_placed", "master", to="x")], key=lambda e: e.t))
    assert report.success_share(attempts, origin=0.0, width=3.0) == ([0.0, 3.0, 6.0], [0.5, 1.0, 1.0])


def test_report_json_carries_outages_calls_and_the_slave_serving(tmp_path):
    events = with_calls(registered(2), **{"1001": [call(103, 106.2, "1002", ok=False),
                                                   call(113, 113.1, "1002", node="slave")],
                                          "1002": [call(114, 114.1, "1001", node="slave")]})
    slave = report.SlaveActivity(1, 0, serving_since=(109.5,))
    r = report.compute(events, FAULT, time_scale=10, slave=slave)
    paths = report.write_all(r, events, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert list(data["outages"]) == ["incoming", "outgoing", "pstn", "registration", "cti", "over_bound"]
    # back: 1001 at 113.1, 1002 at 114.1 (its first call connected: no outage, but back only then)
    assert data["outages"]["outgoing"] == {"p50": 0.0, "p95": pytest.approx(131), "max": pytest.approx(131),
                                           "max_total": pytest.approx(131), "back_p50": pytest.approx(131),
                                           "back_p95": pytest.approx(141), "back_max": pytest.approx(141),
                                           "phones": 2, "never": 0,
                                           "over_bound": [], "unmeasured": [], "decisive": True}
    assert data["outages"]["registration"]["decisive"] is False
    assert data["outages"]["pstn"] == {"p50": None, "p95": None, "max": None, "max_total": None, "back_p50": None,
                                       "back_p95": None, "back_max": None, "phones": 0, "never": 0,
                                       "over_bound": [], "unmeasured": [], "decisive": False}
    assert data["calls"] == {"internal": {"before": {"attempts": 0, "failures": 0},
                                          "during": {"attempts": 3, "failures": 1},
                                          "after": {"attempts": 0, "failures": 0}}}
    assert data["per_phone"]["1001"]["outgoing"]["attempts"]["during"] == {"attempts": 2, "failures": 1}
    assert data["slave_serving_since"] == [109.5]
    assert data["verdict"] == "PASS"
    suite = ET.parse(paths["junit"]).getroot()
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["outgoing_max"] == "13.1" or float(props["outgoing_max"]) == pytest.approx(131)
    assert props["internal_during"] == "3 placed, 1 failed"
    png = paths["timeline"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
