"""`failover.state_from_json`: the values it reads from the state file (table of real outputs)."""

from __future__ import annotations

import pytest

from xivo_ha import failover
from xivo_ha.failover import State


@pytest.mark.parametrize("text, expected", [
    ("{}", State()),
    ('{"mode": "serving", "master": "10.0.0.1"}', State(mode="serving", master="10.0.0.1")),
    ('{"consecutive_failures": 3, "consecutive_successes": 0, "condition": "down"}',
     State(condition="down", consecutive_failures=3)),
    ('{"last_check": "2024-05-01T12:00:00.000+00:00"}', State(last_check=1714564800.0)),
    ('{"last_check": "2024-05-01T14:00:00+02:00"}', State(last_check=1714564800.0)),
    ('{"last_failover": 1714564800}', State(last_failover=1714564800.0)),
    ('{"last_failover": 1714564800.5}', State(last_failover=1714564800.5)),
    ('{"last_failback": ""}', State(last_failback=None)),
    ('{"last_failback": null, "reason": "failback"}', State(reason="failback")),
    ('{"mode": "standby", "unknown_key": [1, 2], "extra": {"a": 1}}', State()),
    ('{"consecutive_successes": 1000000000}', State(consecutive_successes=10**9)),
])
def test_state_from_json(text, expected):
    assert failover.state_from_json(text) == expected


@pytest.mark.parametrize("text, message", [
    ('{"mode": "unknown"}', "mode must be one of standby, serving"),
    ('{"consecutive_failures": 1000000001}', "between 0 and 1000000000"),
    ('{"reason": 5}', "reason must be a string"),
    ('"serving"', "expected a JSON object"),
    ('{"last_check": "2024-13-01"}', "month must be in 1..12"),
])
def test_state_from_json_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        failover.state_from_json(text)
