"""The PSTN caller's settings and the summary of its calls in report.json."""

from __future__ import annotations

import pytest

from xivo_ha_simulator.events import CALL_CONNECTED, CALL_FAILED, CALL_PLACED, Event
from xivo_ha_simulator.pstn import PstnConfig, did_of, summary


def ev(t: float, kind: str, **info) -> Event:
    return Event(t, 1000.0 + t, kind, "carrier", {"to": did_of("1001"), **info})


def test_a_did_is_the_prefix_and_the_extension():
    assert did_of("1001") == "01001001"


@pytest.mark.parametrize("field, value", [("rate", -1), ("time_scale", 0), ("hold_time", 0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError):
        PstnConfig(**{field: value})


def test_calls_count_in_the_phase_of_their_outcome_and_times_are_real_equivalent():
    events = {
        "1001": [ev(5, CALL_PLACED), ev(5.1, CALL_CONNECTED, setup=0.1),
                 ev(10.5, CALL_PLACED), ev(12, CALL_FAILED, reason="408 Request Timeout"),
                 ev(20, CALL_PLACED), ev(21, CALL_CONNECTED, setup=1)],
        "1002": [ev(31, CALL_PLACED), ev(31.5, CALL_FAILED, reason="480 Temporarily Unavailable"),
                 ev(40, CALL_PLACED), ev(40.2, CALL_CONNECTED, setup=0.2)],
    }
    out = summary(events, fault_time=10, restored=30, time_scale=10, rate=60, trunk_expiry=120)
    assert out["calls"] == {"before": {"connected": 1, "failed": 0}, "during": {"connected": 1, "failed": 1},
                            "after": {"connected": 1, "failed": 1}}
    assert out["failures_after_fault"] == {"408 Request Timeout": 1, "480 Temporarily Unavailable": 1}
    assert out["failures_after_restore"] == {"480 Temporarily Unavailable": 1}
    assert out["first_connected_after_fault"] == 110.0
    assert out["last_connected_after_fault"] == 302.0
    assert out["last_failed_after_fault"] == 215.0
    assert out["restored_after_fault"] == 200.0
    assert (out["rate"], out["trunk_expiry"]) == (60, 120)


def test_without_a_restore_everything_after_the_fault_is_during_it():
    events = {"1001": [ev(12, CALL_PLACED), ev(13, CALL_FAILED, reason="timeout")]}
    out = summary(events, fault_time=10, restored=None, time_scale=1)
    assert out["calls"]["during"] == {"connected": 0, "failed": 1}
    assert out["first_connected_after_fault"] is None and out["restored_after_fault"] is None


@pytest.mark.parametrize("patience, limit, concurrency", [(0, 10, 1), (-1, 10, 1), (5, 4, 1), (5, float("inf"), 1),
                                                       (float("nan"), 10, 1), (5, 10, 0)])
def test_a_sweep_needs_a_positive_patience_within_a_finite_limit_and_a_call_at_least(patience, limit, concurrency):
    from xivo_ha_simulator.pstn import PstnCaller

    caller = PstnCaller(("127.0.0.1", 5060), {did_of("1001"): "1001"})
    with pytest.raises(ValueError):
        caller.sweep(patience, limit, concurrency)
