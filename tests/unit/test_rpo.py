"""The configuration RPO figure: which new users could register and call on the slave, and why not."""

from __future__ import annotations

import time

from xivo_ha_simulator import rpo
from xivo_ha_simulator.events import CALL_CONNECTED, REGISTER_FAILED, REGISTERED, Event

FAULT = 100.0
WALL = 1_800_000_000.0  # wall clock of t = 0


def ev(t, kind, node, **info):
    return Event(t, WALL + t, kind, node, info or None)


def stale_phone():
    return [ev(50, REGISTERED, "master"), ev(110, REGISTER_FAILED, "slave", reason="403 Forbidden"),
            ev(140, REGISTER_FAILED, "slave", reason="403 Forbidden")]


def replicated_phone():
    return [ev(50, REGISTERED, "master"), ev(110, REGISTERED, "slave"), ev(120, CALL_CONNECTED, "slave")]


def test_users_created_after_the_last_replication_are_not_on_the_slave_and_the_sentence_says_so():
    result = rpo.compute({"1201": stale_phone(), "1202": stale_phone()}, FAULT, created_wall=WALL + 40,
                         last_replication_wall=WALL + 10)
    assert (result.users, result.registered, result.called, result.replicated) == (2, 0, 0, False)
    assert result.sentence.startswith("0 of 2 users created at ")
    assert "not replicated yet: created after the last replication (" in result.sentence
    assert "403 Forbidden x4" in result.sentence
    assert result.to_dict()["per_user"]["1201"] == {"registered": False, "called": False}


def test_users_created_before_a_replication_register_and_call_on_the_slave():
    result = rpo.compute({"1201": replicated_phone()}, FAULT, created_wall=WALL + 40,
                         last_replication_wall=WALL + 60)
    assert (result.registered, result.called, result.replicated) == (1, 1, True)
    assert "the others" not in result.sentence


def test_registrations_on_the_master_or_before_the_fault_do_not_count():
    phone = [ev(50, REGISTERED, "slave"), ev(110, REGISTERED, "master")]
    result = rpo.compute({"1201": phone}, FAULT, created_wall=WALL + 40, last_replication_wall=None)
    assert result.registered == 0
    assert "(never)" in result.sentence and result.to_dict()["last_replication_wall"] is None


def test_the_replicator_runs_on_its_period_only_with_a_compressed_time():
    runs = []
    replicator = rpo.Replicator(lambda: runs.append(1) or True, time_scale=3600 / 0.05, log=lambda _: None)
    replicator.start()
    time.sleep(0.3)
    replicator.stop()
    assert 2 <= len(runs) <= 7 and all(ok for _, ok in replicator.runs)
    idle = rpo.Replicator(lambda: runs.append(1) or True, time_scale=1, log=lambda _: None)
    idle.start()
    idle.stop()
    assert not idle.drives and idle.runs == []


def test_in_continuous_mode_the_users_the_stream_brought_count_as_replicated_whatever_the_hourly_copy():
    result = rpo.compute({"1201": replicated_phone(), "1202": replicated_phone()}, FAULT, created_wall=WALL + 40,
                         last_replication_wall=WALL + 10, on_slave_at_fault=2, mode="continuous")
    assert (result.registered, result.called, result.replicated) == (2, 2, True)
    data = result.to_dict()
    assert (data["mode"], data["on_slave_at_fault"], data["replicated_before_fault"]) == ("continuous", 2, True)
    assert result.sentence.endswith("; 2 of 2 were in the slave's database at the fault (continuous replication)")


def test_in_continuous_mode_users_missing_on_the_slave_at_the_fault_are_blamed_on_the_stream():
    result = rpo.compute({"1201": stale_phone(), "1202": replicated_phone()}, FAULT, created_wall=WALL + 40,
                         last_replication_wall=WALL + 10, on_slave_at_fault=1, mode="continuous")
    assert (result.registered, result.replicated) == (1, False)
    assert "the others: not in the slave's database at the fault: the stream had not brought them" in result.sentence
    assert "403 Forbidden x2" in result.sentence
