"""The simulator's replication mode and fast checks: switches, settings, report, no cluster started."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from xivo_ha import settings
from xivo_ha_simulator import cli, report
from xivo_ha_simulator.cluster import (_MODES_SCRIPT, REPLICATION_MODES, BringUp, Checker, Cluster,
                                       fast_check_switches, fast_settings, transition_time)
from xivo_ha_simulator.events import Event
from xivo_ha_simulator.simulation import Observation, Options, Outcome, SlaveChecks, Simulation

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("k, switches", [
    (1, ["--loop", "55", "--interval", "5"]),
    (10, ["--loop", "5.5", "--interval", "0.5"]),
    (20, ["--loop", "2.75", "--interval", "0.5"]),  # the interval's lower bound
])
def test_fast_checks_divide_loop_and_interval_by_the_time_scale(k, switches):
    assert fast_check_switches(k, True) == switches
    assert fast_check_switches(k, False) == []


@pytest.mark.parametrize("fast", [True, False])
def test_fast_settings_are_valid_settings_of_the_toolkit(tmp_path, fast):
    wanted = fast_settings(fast)
    sections: dict[str, list[str]] = {}
    for (section, key), value in wanted.items():
        sections.setdefault(section, []).append(f"{key} = {value}")
    conf = tmp_path / "xivo-ha.conf"
    conf.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    loaded = settings.load(conf, environ={})
    assert (loaded.failover.loop, loaded.failover.interval, loaded.probe.ping_count) == (
        (55, 5.0, 1) if fast else (0, 10.0, 3))
    if not fast:  # the packaged defaults: a reused cluster goes back to XiVO's behaviour
        defaults = settings.load(tmp_path / "absent.conf", environ={})
        assert (defaults.failover.loop, defaults.failover.interval, defaults.probe.ping_count) == (0, 10.0, 3)


def test_the_slave_change_is_dated_by_the_time_the_slave_wrote():
    now, wall = 5000.0, 1_800_000_000.0
    stamp = wall - 3.5
    serving = {"mode": "serving", "last_failover": _iso(stamp)}
    assert transition_time(serving, now, wall) == pytest.approx((now - 3.5, stamp))
    standby = {"mode": "standby", "last_failover": _iso(stamp - 60), "last_failback": _iso(stamp)}
    assert transition_time(standby, now, wall) == pytest.approx((now - 3.5, stamp))
    # No time, an unreadable one, or one from another hour: when it was seen.
    for state in ({"mode": "serving"}, {"mode": "serving", "last_failover": "soon"},
                  {"mode": "serving", "last_failover": _iso(wall - 7200)},
                  {"mode": "serving", "last_failover": _iso(wall + 10)}):
        assert transition_time(state, now, wall) == (now, wall)


def _iso(stamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="milliseconds")


def test_the_toolkit_names_the_replication_modes_the_simulator_offers():
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"))
    out = subprocess.run(["/usr/bin/python3", "-c", _MODES_SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert tuple(out.split()) == REPLICATION_MODES


def test_an_unknown_replication_mode_is_a_usage_error(capsys):
    assert cli.main(["run", "--replication", "hourlyish"]) == cli.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == "" and "expected to be {hourly, continuous}, not 'hourlyish'" in err
    assert len(err.splitlines()) == 1


def test_the_report_states_the_replication_and_check_modes(tmp_path):
    simulation = Simulation(Options(phones=1, scenario="power-off", report_dir=str(tmp_path / "report"),
                                    replication="continuous", fast=True))
    events = {"1001": [Event(0, 1_700_000_000.0, "started", None, None),
                       Event(1, 1_700_000_001.0, "registered", "master", None),
                       Event(105, 1_700_000_105.0, "registered", "slave", None)]}
    judged = report.compute(events, 100.0, None, time_scale=10, slave=report.SlaveActivity(1, 0))
    outcome = Outcome(judged, Observation(100.0, 1_700_000_100.0, None, None, None, {"slave": 1}),
                      SlaveChecks(during_fault=2, master_down=2))
    info = BringUp(master="10.0.0.10", slave="10.0.0.11", gateway="10.0.0.1", primary="10.0.0.10",
                   backup="10.0.0.11", users=1, expiry={}, granted={})
    simulation.write(outcome, events, Checker(Cluster("xivo-ha-sim-unit")), info, {})
    sim = json.loads((tmp_path / "report" / "report.json").read_text())["simulation"]
    assert (sim["replication_mode"], sim["fast"]) == ("continuous", True)
    assert sim["check_switches"] == ["--loop", "5.5", "--interval", "0.5"]
    assert ("replication continuous, slave checks: fast mode (--loop 5.5 --interval 0.5, one ping per round)"
            in simulation.table(outcome).splitlines())
    hourly = Simulation(Options(phones=1, scenario="power-off"))
    assert hourly.modes() == "replication hourly, slave checks: one check a minute (XiVO)"
