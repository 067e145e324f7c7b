"""The simulated XiVO Clients' pure parts: timers scaled like the phones', the reconnection figure."""

from __future__ import annotations

import hashlib

import pytest

from xivo_ha_simulator import cti
from xivo_ha_simulator.events import CTI_CONNECT_FAILED, CTI_CONNECTED, CTI_LOST, Event


def ev(t: float, kind: str, node: str | None = "master") -> Event:
    return Event(t, 1000.0 + t, kind, node)


def test_client_timers_are_divided_by_the_time_scale():
    config = cti.ClientConfig(time_scale=10)
    assert config.scaled(config.connect_timeout) == pytest.approx(0.3)
    assert config.scaled(config.retry) == pytest.approx(2.0)


@pytest.mark.parametrize("field", ["time_scale", "connect_timeout", "keepalive", "retry"])
def test_non_positive_timers_are_refused(field):
    with pytest.raises(ValueError, match=field):
        cti.ClientConfig(**{field: 0})


def test_the_password_travels_hashed_with_the_session_id():
    assert cti.hashed_password("abc", "cti1") == hashlib.sha1(b"abc:cti1").hexdigest()


def test_a_client_that_never_lost_its_connection_reconnected_in_zero():
    assert cti.reconnection_time([ev(1, CTI_CONNECTED)], since=5) == 0.0


def test_reconnection_runs_from_the_fault_to_the_next_login_anywhere():
    events = [ev(1, CTI_CONNECTED), ev(12, CTI_LOST), ev(12.3, CTI_CONNECT_FAILED),
              ev(12.4, CTI_CONNECTED, "slave"), ev(40, CTI_CONNECTED)]
    assert cti.reconnection_time(events, since=10) == pytest.approx(2.4)


def test_a_client_logged_in_nowhere_at_the_fault_counts_from_the_fault():
    events = [ev(1, CTI_CONNECT_FAILED), ev(11, CTI_CONNECT_FAILED, "slave"), ev(14, CTI_CONNECTED, "slave")]
    assert cti.reconnection_time(events, since=10) == pytest.approx(4.0)


def test_a_client_that_never_logs_in_again_has_none():
    events = [ev(1, CTI_CONNECTED), ev(12, CTI_LOST), ev(13, CTI_CONNECT_FAILED, "slave")]
    assert cti.reconnection_time(events, since=10) is None
    assert cti.reconnection_times({"1001": events, "1002": [ev(1, CTI_CONNECTED)]}, 10) == {"1001": None,
                                                                                            "1002": 0.0}


def test_the_report_gives_cti_reconnection_figures_that_do_not_decide_the_verdict():
    from xivo_ha_simulator import report as rep
    from xivo_ha_simulator.events import REGISTERED

    phones = {pid: [Event(1, 1001, REGISTERED, "master", {"granted": 30}),
                    Event(12, 1012, REGISTERED, "slave", {"granted": 30})] for pid in ("1001", "1002")}
    clients = {"1001": [ev(1, CTI_CONNECTED), ev(11, CTI_LOST), ev(11.5, CTI_CONNECTED, "slave")],
               "1002": [ev(1, CTI_CONNECTED), ev(11, CTI_LOST), ev(11.3, CTI_CONNECT_FAILED, "slave")]}
    report = rep.compute(phones, 10.0, time_scale=10, bound=300, cti=clients)
    assert report.cti_reconnection == {"1001": pytest.approx(1.5), "1002": None}
    assert (report.cti.phones, report.cti.never, report.cti.over_bound) == (2, 1, 1)
    assert report.passed  # the phones decide
    criterion = next(c for c in report.criteria if c.name.startswith("CTI reconnection"))
    assert not criterion.decisive and "1002=never" in criterion.failure
    data = rep.to_dict(report)
    assert data["cti_reconnection"]["max"] is None and data["per_phone"]["1001"]["cti_reconnection"] == 1.5
    assert "\ncti " in rep.format_table(report)


def test_accounts_that_are_not_login_password_pairs_are_refused():
    assert cti.accounts('{"1001": ["user1", "cti1"]}') == {"1001": cti.Account("user1", "cti1")}
    with pytest.raises(ValueError, match="1002"):
        cti.accounts('{"1002": ["user2"]}')
    with pytest.raises(ValueError):
        cti.accounts("[]")
