"""Where a phone sends a call whose INVITE went unanswered, and how long it waits first.

The phone's side on the wire (two real Kamailio registrars, the primary
killed or frozen) is in tests/integration/test_calls_kamailio.py.
"""

from __future__ import annotations

import pytest

from xivo_ha_simulator import cli
from xivo_ha_simulator.phone import PhoneConfig, Registrar, invite_retry

MASTER = Registrar("master", "10.0.0.1")
SLAVE = Registrar("slave", "10.0.0.2")


def test_the_invite_timeout_defaults_to_timer_b_and_is_scaled():
    assert PhoneConfig().timer_b == pytest.approx(32.0)  # 64 x T1
    assert PhoneConfig(time_scale=10).timer_b == pytest.approx(3.2)
    assert PhoneConfig(t1=0.25, time_scale=2).timer_b == pytest.approx(8.0)
    assert PhoneConfig(invite_timeout=4, time_scale=10).timer_b == pytest.approx(0.4)


@pytest.mark.parametrize("value", [0, -1.0])
def test_the_invite_timeout_must_be_positive(value):
    with pytest.raises(ValueError, match="invite_timeout"):
        PhoneConfig(invite_timeout=value)


def test_a_timeout_on_the_primary_retries_through_the_backup():
    node, why = invite_retry(MASTER, [MASTER], MASTER, SLAVE, proceeding=False)
    assert node is SLAVE
    assert why == "no answer from master to the INVITE: retrying the call through slave"


def test_a_timeout_on_the_backup_retries_through_the_primary():
    node, why = invite_retry(SLAVE, [SLAVE], MASTER, SLAVE, proceeding=False)
    assert node is MASTER
    assert why == "no answer from slave to the INVITE: retrying the call through master"


def test_no_retry_once_both_registrars_were_tried():
    node, why = invite_retry(SLAVE, [MASTER, SLAVE], MASTER, SLAVE, proceeding=False)
    assert node is None
    assert why == "no answer from slave to the INVITE, and master was tried already: the call failed"


def test_no_retry_without_a_backup():
    node, why = invite_retry(MASTER, [MASTER], MASTER, None, proceeding=False)
    assert node is None
    assert why == "no answer from master to the INVITE and no other registrar: the call failed"


def test_no_retry_when_the_registrar_answered_but_the_call_never_did():
    # A provisional answer shows the registrar alive: the callee, not the
    # registrar, let the call run out; another registrar would not help.
    node, why = invite_retry(MASTER, [MASTER], MASTER, SLAVE, proceeding=True)
    assert node is None
    assert why == "master answered the INVITE provisionally but no final answer came: the call failed"


@pytest.mark.parametrize("value", ["0", "-2", "soon", "3601"])
def test_the_simulator_refuses_a_bad_invite_timeout(value, capsys):
    assert cli.main(["run", "--invite-timeout", value]) == cli.EXIT_USAGE
    out = capsys.readouterr()
    assert "invite-timeout" in out.out + out.err
    assert "Traceback" not in out.out + out.err
