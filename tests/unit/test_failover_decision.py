"""failover.decide() over sequences of observations: plain data in, decision and sentence out."""

from __future__ import annotations

import json

import pytest

from xivo_ha import failover
from xivo_ha.failover import Action, Observations, Policy, State
from xivo_ha.probes import Observation

MASTER = "10.0.0.1"
WITNESS = "10.0.0.254"
MINUTE = 60.0
T0 = 1_700_000_000.0

UP = "up"  # master answers ping (and SIP when asked)
DOWN = "down"  # no ping reply
CRASHED = "crashed"  # ping answers, registrar does not
ISOLATED = "isolated"  # no ping reply from the master nor from the witness


def observations(kind: str, services: str = failover.STOPPED, master: str = MASTER) -> Observations:
    icmp_alive = kind in (UP, CRASHED)
    icmp = Observation("icmp", master, icmp_alive, "3/3 replies" if icmp_alive else "0/3 replies", 20.0)
    sip = None
    if icmp_alive:
        sip = Observation(
            "sip", f"{master}:5060", kind == UP, "200 OK" if kind == UP else "no final response", 0.1
        )
    witness = None
    if kind in (DOWN, ISOLATED):
        alive = kind != ISOLATED
        witness = Observation("witness", WITNESS, alive, "1/3 replies" if alive else "0/3 replies", 20.0)
    return Observations(master=master, icmp=icmp, sip=sip, witness=witness, services=services)


def simulate(kinds, policy: Policy, state: State = State(), services: str = failover.STOPPED, step: float = MINUTE):
    """Feed one observation per `step` seconds; the services follow the actions, as they would for real.

    Returns the decisions and the final state.
    """
    decisions = []
    now = T0
    for kind in kinds:
        decision = failover.decide(observations(kind, services), state, policy, now)
        if decision.action is Action.START:
            services = failover.RUNNING
        elif decision.action is Action.STOP:
            services = failover.STOPPED
        decisions.append(decision)
        state = decision.state
        now += step
    return decisions, state


def actions(decisions) -> list[str]:
    return [d.action.value for d in decisions]


PARITY = Policy()


# --- the table ----------------------------------------------------------------------

CASES = [
    # id, policy, observations, expected actions
    ("parity: down once fails over, up once fails back", PARITY,
     [UP, DOWN, DOWN, UP, UP],
     ["nothing", "start", "nothing", "stop", "nothing"]),
    ("parity: a crashed registrar is not seen without sip_probe (XiVO's limitation)", PARITY,
     [UP, CRASHED, CRASHED],
     ["nothing", "nothing", "nothing"]),
    ("sip_probe: a crashed registrar on a pinging host fails over", Policy(sip_probe=True),
     [UP, CRASHED, UP],
     ["nothing", "start", "stop"]),
    ("3 consecutive failures needed: interrupted streaks do not count", Policy(failures_before_failover=3),
     [DOWN, DOWN, UP, DOWN, DOWN, DOWN, DOWN],
     ["nothing", "nothing", "nothing", "nothing", "nothing", "start", "nothing"]),
    ("2 consecutive successes needed before failback", Policy(successes_before_failback=2),
     [DOWN, UP, DOWN, UP, UP, UP],
     ["start", "nothing", "nothing", "nothing", "stop", "nothing"]),
    ("hold-down: no failback within 5 minutes of the failover", Policy(failback_hold_down=300),
     [DOWN, UP, UP, UP, UP, UP, UP],
     ["start", "nothing", "nothing", "nothing", "nothing", "stop", "nothing"]),
    ("hold-down and 2 successes: both must hold", Policy(failback_hold_down=120, successes_before_failback=2),
     [DOWN, UP, DOWN, UP, UP],
     ["start", "nothing", "nothing", "nothing", "stop"]),
    ("witness: an isolated slave never starts", Policy(witness=WITNESS),
     [UP, ISOLATED, ISOLATED, ISOLATED, UP],
     ["nothing", "nothing", "nothing", "nothing", "nothing"]),
    ("witness reachable: the master really is down", Policy(witness=WITNESS),
     [UP, DOWN, UP],
     ["nothing", "start", "stop"]),
    ("witness: isolation breaks a failure streak", Policy(witness=WITNESS, failures_before_failover=2),
     [DOWN, ISOLATED, DOWN, DOWN],
     ["nothing", "nothing", "nothing", "start"]),
    ("witness: an isolated serving slave leaves its services alone", Policy(witness=WITNESS),
     [DOWN, ISOLATED, ISOLATED, DOWN, UP],
     ["start", "nothing", "nothing", "nothing", "stop"]),
]


@pytest.mark.parametrize("policy, kinds, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sequences(policy, kinds, expected):
    decisions, _ = simulate(kinds, policy)
    assert actions(decisions) == expected
    for decision in decisions:
        assert decision.reason and MASTER in decision.reason


# --- sentences ----------------------------------------------------------------------


def test_failover_sentence_says_why():
    decision = failover.decide(observations(DOWN), State(), PARITY, T0)
    assert decision.action is Action.START
    assert decision.reason == (
        "master 10.0.0.1 does not answer ping (0/3 replies) for 1 check: failover, starting the services"
    )


def test_waiting_sentence_counts():
    decision = failover.decide(observations(DOWN), State(), Policy(failures_before_failover=3), T0)
    assert "1 of 3 consecutive failed checks before failover, waiting" in decision.reason


def test_crashed_registrar_sentence():
    decision = failover.decide(observations(CRASHED), State(), Policy(sip_probe=True), T0)
    assert decision.action is Action.START
    assert "answers ping but its registrar 10.0.0.1:5060 does not (no final response)" in decision.reason


def test_isolation_sentence_names_the_split_brain_guard():
    decision = failover.decide(observations(ISOLATED), State(), Policy(witness=WITNESS), T0)
    assert decision.action is Action.NOTHING
    assert "neither does the witness 10.0.0.254" in decision.reason
    assert "isolated" in decision.reason and "split-brain guard" in decision.reason
    assert decision.state.condition == failover.ISOLATED


def test_witness_configured_but_not_checked_counts_as_isolated():
    obs = observations(DOWN)
    obs = Observations(master=obs.master, icmp=obs.icmp, services=obs.services)
    decision = failover.decide(obs, State(), Policy(witness=WITNESS), T0)
    assert decision.action is Action.NOTHING
    assert "not checked" in decision.reason


def test_crashed_registrar_with_the_witness_unreachable_still_fails_over():
    """The master pings: this slave's network works, whatever the witness says."""
    obs = observations(CRASHED)
    obs = Observations(
        master=obs.master, icmp=obs.icmp, sip=obs.sip, services=obs.services,
        witness=Observation("witness", WITNESS, False, "0/3 replies", 20.0),
    )
    decision = failover.decide(obs, State(), Policy(sip_probe=True, witness=WITNESS), T0)
    assert decision.action is Action.START
    assert decision.state.condition == failover.REGISTRAR_DOWN


def test_hold_down_sentence_tells_the_time_left():
    decisions, _ = simulate([DOWN, UP], Policy(failback_hold_down=300))
    assert "last failover was 60 s ago" in decisions[1].reason
    assert "keeps serving 240 s more" in decisions[1].reason


# --- idempotence: act on the observed services, not on memory alone ------------------


def test_no_start_when_services_already_run():
    decision = failover.decide(observations(DOWN, failover.RUNNING), State(), PARITY, T0)
    assert decision.action is Action.NOTHING
    assert decision.state.mode == failover.SERVING
    assert decision.transition


def test_serving_but_services_died_starts_them_again():
    state = State(mode=failover.SERVING, master=MASTER, condition=failover.DOWN, consecutive_failures=4)
    decision = failover.decide(observations(DOWN, failover.MIXED), state, PARITY, T0)
    assert decision.action is Action.START
    assert "starting them again" in decision.reason


KNOWN_STANDBY = State(master=MASTER, condition=failover.UP, consecutive_successes=5, last_check=T0 - MINUTE)


def test_standby_but_services_running_stops_them():
    decision = failover.decide(observations(UP, failover.MIXED), KNOWN_STANDBY, PARITY, T0)
    assert decision.action is Action.STOP
    assert "services run on this slave (mixed)" in decision.reason


def test_serving_with_services_already_stopped_goes_back_to_standby_without_acting():
    state = State(mode=failover.SERVING, master=MASTER, condition=failover.DOWN, last_failover=T0 - 600)
    decision = failover.decide(observations(UP, failover.STOPPED), state, PARITY, T0)
    assert decision.action is Action.NOTHING
    assert decision.state.mode == failover.STANDBY
    assert decision.state.last_failback == T0


def test_a_long_outage_starts_once():
    decisions, state = simulate([DOWN] * 120, PARITY)
    assert actions(decisions).count("start") == 1
    assert [d.transition for d in decisions].count(True) == 1
    assert state.consecutive_failures == 120


def test_quiet_minutes_are_not_transitions():
    decisions, _ = simulate([UP] * 30, PARITY)
    assert [d.transition for d in decisions] == [True] + [False] * 29  # the first check sets the condition
    assert set(actions(decisions)) == {"nothing"}


def test_timestamps_and_mode():
    decisions, state = simulate([DOWN, UP], PARITY)
    assert decisions[0].state.mode == failover.SERVING
    assert decisions[0].state.last_failover == T0
    assert state.mode == failover.STANDBY
    assert state.last_failback == T0 + MINUTE
    assert state.last_check == T0 + MINUTE
    assert state.reason == decisions[1].reason


def test_another_master_resets_the_counters():
    state = State(master="10.0.0.9", consecutive_failures=2, condition=failover.DOWN)
    decision = failover.decide(observations(DOWN), state, Policy(failures_before_failover=3), T0)
    assert decision.action is Action.NOTHING
    assert decision.state.consecutive_failures == 1
    assert decision.state.master == MASTER


# --- flapping -----------------------------------------------------------------------


def flapping_hour():
    return [UP if minute % 2 else DOWN for minute in range(60)]


def test_flapping_in_parity_mode_follows_every_flap():
    decisions, _ = simulate(flapping_hour(), PARITY)
    assert actions(decisions).count("start") == 30
    assert actions(decisions).count("stop") == 30


@pytest.mark.parametrize(
    "policy",
    [Policy(failures_before_failover=2), Policy(failures_before_failover=2, successes_before_failback=2)],
    ids=["2 failures", "2 failures, 2 successes"],
)
def test_flapping_never_fails_over_with_consecutive_failures(policy):
    decisions, _ = simulate(flapping_hour(), policy)
    assert set(actions(decisions)) == {"nothing"}


@pytest.mark.parametrize("hold_down", [300, 600, 1800])
def test_flapping_with_hold_down_is_bounded(hold_down):
    decisions, _ = simulate(flapping_hour(), Policy(failback_hold_down=hold_down))
    starts = actions(decisions).count("start")
    stops = actions(decisions).count("stop")
    # At most one failover per hold-down period (plus the first), never a stop before it ends.
    assert starts <= 3600 // hold_down + 1
    assert stops <= starts
    assert starts < 30
    for decision in decisions:
        if decision.action is Action.STOP:
            assert decision.state.last_failback - state_of_last_failover(decisions, decision) >= hold_down


def state_of_last_failover(decisions, stop_decision):
    last = None
    for decision in decisions:
        if decision is stop_decision:
            return last
        if decision.action is Action.START:
            last = decision.state.last_failover
    raise AssertionError("stop without a preceding start")


def test_flapping_with_hysteresis_bounds_transitions():
    decisions, _ = simulate(flapping_hour(), Policy(failures_before_failover=2, failback_hold_down=600))
    assert [d for d in decisions if d.action is not Action.NOTHING] == []


# --- persistence --------------------------------------------------------------------


def test_state_file_round_trip(tmp_path):
    path = tmp_path / "failover.json"
    _, state = simulate([DOWN, DOWN, UP], PARITY)
    failover.save_state(state, path)
    data = json.loads(path.read_text())
    assert data["mode"] == "standby"
    assert data["master"] == MASTER
    assert data["consecutive_successes"] == 1
    assert data["last_failover"].endswith("+00:00")
    assert failover.load_state(path) == state


def test_missing_state_is_a_fresh_standby(tmp_path):
    assert failover.load_state(tmp_path / "none.json") == State()


GOOD_STATE = {
    "mode": "serving", "master": MASTER, "condition": "down", "consecutive_failures": 2,
    "consecutive_successes": 0, "last_check": "2024-05-01T12:01:00.000+00:00",
    "last_failover": "2024-05-01T12:00:00.000+00:00", "last_failback": None, "reason": "failover",
}


def with_value(key, raw: str) -> str:
    """GOOD_STATE as JSON with ``key``'s value replaced by the raw JSON text ``raw``."""
    text = json.dumps({**GOOD_STATE, key: "@@"})
    return text.replace('"@@"', raw)


def test_state_from_json_reads_what_state_to_json_writes():
    state = failover.state_from_json(json.dumps(GOOD_STATE))
    assert state.mode == failover.SERVING and state.consecutive_failures == 2
    assert state.last_failover == 1714564800.0
    assert failover.state_from_json(failover.state_to_json(state)) == state


UNREADABLE = [
    ("not json", "{not json"),
    ("truncated", json.dumps(GOOD_STATE)[:40]),
    ("a list", "[]"),
    ("unknown mode", with_value("mode", '"active"')),
    ("mode not a string", with_value("mode", '["serving"]')),
    ("negative count", with_value("consecutive_failures", "-1")),
    ("count as a float", with_value("consecutive_failures", "2.0")),
    ("count as a boolean", with_value("consecutive_successes", "true")),
    ("huge count", with_value("consecutive_successes", "1" + "0" * 400)),
    ("time beyond floats", with_value("last_failover", "1e400")),
    ("NaN time", with_value("last_failover", "NaN")),
    ("infinite time", with_value("last_check", "-Infinity")),
    ("time before 1970", with_value("last_failover", "-5")),
    ("time in year 10000", with_value("last_failover", "1e12")),
    ("time as text", with_value("last_check", '"yesterday"')),
    ("time as an object", with_value("last_check", '{"at": 1}')),
    ("time as a boolean", with_value("last_check", "true")),
    ("year 1 with an offset", with_value("last_check", '"0001-01-01T00:00:00+14:00"')),
    ("master not a string", with_value("master", "10")),
    ("reason nested deeply", with_value("reason", "[" * 100000 + "]" * 100000)),
    ("a number anywhere beyond floats", with_value("extra", "1e400")),
]


@pytest.mark.parametrize("text", [c[1] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_state_from_json_refuses_any_unreadable_value(text):
    with pytest.raises(ValueError):
        failover.state_from_json(text)


@pytest.mark.parametrize("text", [c[1] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_unreadable_state_file_is_unknown_and_decides_without_crashing(tmp_path, text):
    path = tmp_path / "failover.json"
    path.write_text(text)
    state = failover.load_state(path)
    assert state.mode == failover.UNKNOWN
    assert str(path) in state.reason
    decision = failover.decide(observations(DOWN), state, PARITY, T0)
    assert decision.action is Action.START
    failover.state_to_json(decision.state)  # and what is saved next is readable again


def test_non_utf8_state_file_is_unknown(tmp_path):
    path = tmp_path / "failover.json"
    path.write_bytes(b'{"mode": "serving", "reason": "\xff\xfe"}')
    assert failover.load_state(path).mode == failover.UNKNOWN


UNKNOWN_STATE = State(mode=failover.UNKNOWN, reason="failover.json is unreadable")


@pytest.mark.parametrize("initial", [UNKNOWN_STATE, State()], ids=["unreadable", "missing"])
def test_unknown_state_with_running_services_waits_for_the_successes(initial):
    """Running services are counted as serving since the first check: N good checks before the stop."""
    policy = Policy(successes_before_failback=3)
    decisions, state = simulate([UP, UP, UP, UP], policy, state=initial, services=failover.RUNNING)
    assert actions(decisions) == ["nothing", "nothing", "stop", "nothing"]
    assert "counted as serving since now" in decisions[0].reason
    assert "1 of 3 consecutive good checks before failback" in decisions[0].reason
    assert decisions[0].state.mode == failover.SERVING and decisions[0].state.last_failover == T0
    assert decisions[0].transition


@pytest.mark.parametrize("initial", [UNKNOWN_STATE, State()], ids=["unreadable", "missing"])
def test_unknown_state_with_running_services_waits_for_the_hold_down(initial):
    decisions, _ = simulate([UP] * 7, Policy(failback_hold_down=300), state=initial, services=failover.MIXED)
    assert actions(decisions) == ["nothing"] * 5 + ["stop", "nothing"]
    assert "failback_hold_down is 300 s: this slave keeps serving 300 s more" in decisions[0].reason


@pytest.mark.parametrize("initial", [UNKNOWN_STATE, State()], ids=["unreadable", "missing"])
def test_unknown_state_with_stopped_services_is_a_standby_slave(initial):
    decisions, state = simulate([UP, DOWN, DOWN], Policy(failures_before_failover=2), state=initial)
    assert actions(decisions) == ["nothing", "nothing", "start"]
    assert decisions[0].reason == "master 10.0.0.1 answers ping (3/3 replies); the services stay stopped"
    assert state.mode == failover.SERVING


def test_unknown_state_with_the_master_down_and_services_running_keeps_serving():
    decision = failover.decide(observations(DOWN, failover.RUNNING), UNKNOWN_STATE, PARITY, T0)
    assert decision.action is Action.NOTHING
    assert decision.state.mode == failover.SERVING


def test_parity_defaults_with_an_unknown_state_still_stop_at_the_first_good_check():
    decision = failover.decide(observations(UP, failover.RUNNING), UNKNOWN_STATE, PARITY, T0)
    assert decision.action is Action.STOP
    assert decision.state.mode == failover.STANDBY and decision.state.last_failback == T0
