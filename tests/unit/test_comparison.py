"""Hourly against continuous replication: two report.json side by side, the table, and the two runs."""

from __future__ import annotations

import io
import json

import pytest

from xivo_ha_simulator import cli, comparison, report
from xivo_ha_simulator.cluster import BringUp, Checker, Cluster, ClusterError, SlaveEvent
from xivo_ha_simulator.events import Event
from xivo_ha_simulator.simulation import Observation, Options, Outcome, SlaveChecks, Simulation

WALL = 1_800_000_000.0  # wall clock of the fault


def outage(p50, p95, largest, never=0, over=()):
    return {"p50": p50, "p95": p95, "max": largest, "max_total": largest, "phones": 200, "never": never,
            "over_bound": list(over), "unmeasured": [], "decisive": True}


def serving(wall, mode="serving"):
    return {"t": 0.0, "wall": wall, "mode": mode, "condition": "down", "reason": "master down"}


def rpo(users, registered, called):
    return {"users": users, "registered_on_slave": registered, "called_on_slave": called,
            "sentence": f"{registered} of {users} users ...", "per_user": {}}


def hourly():
    return {
        "verdict": "FAIL", "reasons": ["3 phones never received a PSTN call again"],
        "phones": 200, "time_scale": 10.0, "bound_seconds": 300.0, "fault": {"t": 100.0, "wall": WALL},
        "outages": {"incoming": outage(40, 120, 150), "pstn": outage(60, None, None, never=3, over=["1001"]),
                    "outgoing": outage(30, 90, 100), "registration": outage(20, 50, 60),
                    "cti": outage(None, None, None) | {"phones": 0}},
        "rpo": rpo(5, 0, 0),
        "simulation": {"scenario": "power-off", "replication_mode": "hourly", "fast": True,
                       "slave_events": [serving(WALL - 100), serving(WALL + 3, "standby"), serving(WALL + 6.2),
                                        serving(WALL + 9)]},
    }


def continuous():
    return {
        "verdict": "PASS", "reasons": [],
        "phones": 200, "time_scale": 10.0, "bound_seconds": 300.0, "fault": {"t": 100.0, "wall": WALL},
        "outages": {"incoming": outage(10, 30, 45), "pstn": outage(12, 40, 50), "outgoing": outage(0, 0, 0),
                    "registration": outage(20, 50, None, never=1),
                    "cti": outage(None, None, None) | {"phones": 0}},
        "rpo": rpo(5, 5, 5),
        "simulation": {"scenario": "power-off", "replication_mode": "continuous", "fast": True,
                       "slave_events": [serving(WALL - 100)]},
    }


def test_each_direction_sets_the_two_modes_side_by_side_with_the_ratio_of_their_p95():
    result = comparison.compare({"hourly": hourly(), "continuous": continuous()},
                                report_dirs={"hourly": "r/hourly", "continuous": "r/continuous"})
    assert list(result["directions"]) == ["incoming", "pstn", "outgoing", "registration", "cti"]
    incoming = result["directions"]["incoming"]
    assert incoming["hourly"] == {"p50": 40, "p95": 120, "max": 150, "phones": 200, "never": 0, "over_bound": 0,
                                  "back_p50": None, "back_p95": None, "back_max": None}  # not in these reports
    assert incoming["continuous"]["p95"] == 30 and incoming["ratio_p95"] == 4.0
    pstn = result["directions"]["pstn"]
    assert (pstn["hourly"]["never"], pstn["hourly"]["over_bound"], pstn["ratio_p95"]) == (3, 1, None)
    assert result["directions"]["outgoing"]["ratio_p95"] is None  # continuous p95 0
    assert result["directions"]["registration"]["ratio_p95"] == 1.0
    assert result["directions"]["cti"]["ratio_p95"] is None
    assert (result["phones"], result["scenario"], result["time_scale"]) == (200, "power-off", 10.0)
    assert result["report_dirs"] == {"hourly": "r/hourly", "continuous": "r/continuous"}


def test_each_run_gives_its_verdict_the_slave_serving_after_the_fault_and_its_rpo():
    result = comparison.compare({"hourly": hourly(), "continuous": continuous()})
    assert result["runs"]["hourly"] == {
        "verdict": "FAIL", "reasons": ["3 phones never received a PSTN call again"],
        "slave_serving_after_fault": pytest.approx(62.0),  # the first serving at or after the fault, x10
        "rpo": {"users": 5, "registered_on_slave": 0, "called_on_slave": 0}}
    assert result["runs"]["continuous"]["slave_serving_after_fault"] is None  # it served before the fault only
    assert result["runs"]["continuous"]["rpo"] == {"users": 5, "registered_on_slave": 5, "called_on_slave": 5}
    assert result["verdict"] == "FAIL"


def test_both_runs_pass_and_without_new_users_there_is_no_rpo():
    passed = hourly() | {"verdict": "PASS", "reasons": [], "rpo": None}
    result = comparison.compare({"hourly": passed, "continuous": continuous() | {"rpo": None}})
    assert result["verdict"] == "PASS"
    assert result["runs"]["hourly"]["rpo"] is None and result["report_dirs"] == {}


def test_a_missing_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="^the comparison needs the hourly and the continuous report: "
                                         "continuous is missing$"):
        comparison.compare({"hourly": hourly()})


@pytest.mark.parametrize("change, what", [
    ({"phones": 100}, "phones"),
    ({"time_scale": 5.0}, "time_scale"),
    ({"simulation": continuous()["simulation"] | {"scenario": "network-cut"}}, "scenario"),
])
def test_runs_that_differ_in_phones_scenario_or_time_scale_are_not_compared(change, what):
    with pytest.raises(ValueError, match=f"^the hourly and continuous runs differ in {what} "):
        comparison.compare({"hourly": hourly(), "continuous": continuous() | change})


def test_the_table_has_one_row_per_direction_then_serving_rpo_and_verdicts():
    table = comparison.format_table(comparison.compare({"hourly": hourly(), "continuous": continuous()}))
    assert table.splitlines() == [
        "direction     hourly p50/p95/max  continuous p50/p95/max  p95 hourly/continuous",
        "------------  ------------------  ----------------------  ---------------------",
        "incoming              40/120/150                10/30/45                   4.00",
        "pstn                       never                12/40/50                      -",
        "outgoing               30/90/100                   0/0/0                      -",
        "registration            20/50/60       20/50/- (1 never)                   1.00",
        "cti                        -/-/-                   -/-/-                      -",
        "slave serving after the fault (real-equivalent): hourly 62 s; continuous -",
        "configuration RPO: hourly 0/5 new users registered, 0/5 called on the slave; "
        "continuous 5/5 new users registered, 5/5 called on the slave",
        "verdicts: hourly FAIL; continuous PASS",
        "verdict: FAIL",
    ]


def test_the_table_says_when_each_phone_was_first_reached_after_the_fault_where_the_reports_have_it():
    slow, fast = hourly(), continuous()
    slow["outages"]["pstn"] |= {"back_p50": 184.2, "back_p95": 295.0, "back_max": 298.6}
    fast["outages"]["pstn"] |= {"back_p50": 8.1, "back_p95": 10.5, "back_max": 10.7}
    result = comparison.compare({"hourly": slow, "continuous": fast})
    assert result["directions"]["pstn"]["ratio_back_p95"] == pytest.approx(28.095)
    lines = comparison.format_table(result).splitlines()
    assert "pstn back after the fault (first call through, p50/p95/max): hourly 184/295/299; continuous 8/10/11" \
        in lines
    assert not any(line.startswith("incoming back") for line in lines)


def test_the_table_without_new_users_says_so():
    table = comparison.format_table(comparison.compare({"hourly": hourly() | {"rpo": None},
                                                        "continuous": continuous() | {"rpo": None}}))
    assert "configuration RPO: hourly -; continuous -" in table.splitlines()


# --------------------------------------------------------------------------- the two runs


def phone(pid, other, back):
    """A phone whose call fails after the fault (at 100), back on the slave at ``back``, then calling the other."""
    def ev(t, kind, node=None, **info):
        return Event(t, WALL + t - 100, kind, node, info or None)
    return [ev(0, "started"), ev(1, "registered", "master"),
            ev(101, "call_placed", "master", to=other), ev(102, "call_failed", "master", to=other, reason="timeout"),
            ev(back, "registered", "slave"),
            ev(back + 1, "call_placed", "slave", to=other),
            ev(back + 1.1, "call_connected", "slave", to=other, setup=0.1)]


class Runs:
    """A ``simulate`` that writes each run's real report files where it is told to, as a run does.

    ``back``: when the phones are back on the slave in each mode (measured seconds; the fault at 100,
    the bound 300 s real at x10).
    """

    def __init__(self, fail_first: bool = False, back: dict | None = None):
        self.given: list[Options] = []
        self.fail_first = fail_first
        self.back = back or {"hourly": 112.0, "continuous": 103.0}

    def __call__(self, options: Options):
        self.given.append(options)
        if self.fail_first:
            raise ClusterError("the node image xivo-ha/node:latest is missing")
        back = self.back[options.replication]
        events = {"1001": phone("1001", "1002", back), "1002": phone("1002", "1001", back)}
        judged = report.compute(events, 100.0, None, time_scale=10, fault_wall=WALL,
                                slave=report.SlaveActivity(1, 0, serving_since=(106.0,)))
        outcome = Outcome(judged, Observation(100.0, WALL, None, None, None, {"slave": 1}),
                          SlaveChecks(during_fault=2, master_down=2))
        checker = Checker(Cluster("xivo-ha-sim-unit"))
        checker.events.append(SlaveEvent(106.0, WALL + 6, "serving", "down", "master down"))
        simulation = Simulation(options, out=io.StringIO())
        info = BringUp(master="10.0.0.10", slave="10.0.0.11", gateway="10.0.0.1", primary="10.0.0.10",
                       backup="10.0.0.11", users=1, expiry={}, granted={})
        outcome.files = simulation.write(outcome, events, checker, info, {})
        return outcome, f"table of the {options.replication} run"


@pytest.mark.parametrize("reuse", [False, True])
def test_both_runs_go_to_their_own_directory_the_second_on_the_same_cluster(tmp_path, reuse):
    runs, out = Runs(), io.StringIO()
    options = Options(phones=1, report_dir=str(tmp_path / "r"), reuse=reuse, replication="continuous")
    result, outcomes = comparison.run_both(options, runs, out)
    assert [(o.replication, o.report_dir, o.reuse) for o in runs.given] == [
        ("hourly", str(tmp_path / "r" / "hourly"), reuse), ("continuous", str(tmp_path / "r" / "continuous"), True)]
    assert [o.phones for o in runs.given] == [1, 1]
    assert out.getvalue().splitlines() == [
        f"run 1 of 2: replication hourly, report in {tmp_path / 'r' / 'hourly'}",
        f"run 2 of 2: replication continuous, report in {tmp_path / 'r' / 'continuous'}"]
    assert outcomes["continuous"][1] == "table of the continuous run"
    registration = result["directions"]["registration"]
    assert (registration["hourly"]["p95"], registration["continuous"]["p95"]) == (pytest.approx(120),
                                                                                 pytest.approx(30))
    assert registration["ratio_p95"] == pytest.approx(4.0)
    assert result["runs"]["hourly"]["slave_serving_after_fault"] == pytest.approx(60.0)
    assert result["report_dirs"] == {"hourly": str(tmp_path / "r" / "hourly"),
                                     "continuous": str(tmp_path / "r" / "continuous")}
    written = (tmp_path / "r" / "comparison.json").read_text()
    assert written == json.dumps(result, sort_keys=True, indent=2) + "\n"
    assert json.loads(written) == result


def test_a_first_run_that_cannot_build_the_cluster_stops_there(tmp_path):
    runs = Runs(fail_first=True)
    with pytest.raises(ClusterError, match="missing"):
        comparison.run_both(Options(report_dir=str(tmp_path / "r")), runs, io.StringIO())
    assert len(runs.given) == 1 and not (tmp_path / "r" / "comparison.json").exists()


@pytest.mark.parametrize("hourly_back, code", [(112.0, cli.EXIT_PASS), (135.0, cli.EXIT_FAIL)])
def test_the_command_line_prints_both_tables_then_the_comparison_and_passes_when_both_pass(
        tmp_path, monkeypatch, capsys, hourly_back, code):
    monkeypatch.setattr(cli, "simulate", Runs(back={"hourly": hourly_back, "continuous": 103.0}))
    assert cli.main(["run", "--compare-replication", "--phones", "2", "--report-dir", str(tmp_path)]) == code
    lines = capsys.readouterr().out.splitlines()
    verdict = "verdict: PASS" if code == cli.EXIT_PASS else "verdict: FAIL"
    order = [lines.index(line) for line in ("replication hourly:", "table of the hourly run", "replication continuous:",
                                            "table of the continuous run", verdict)]
    assert order == sorted(order) and lines[0].startswith("run 1 of 2: replication hourly")
    assert lines[-2].startswith("report: ") and lines[-2].endswith(f"{tmp_path / 'comparison.json'}")
    assert f"{tmp_path / 'hourly' / 'report.json'}" in lines[-2]
