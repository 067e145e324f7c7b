"""The phone's configuration: SIP timers and expiry divided by the time scale.

The state machine itself, which needs a registrar on a UDP socket, is tested
in tests/integration/test_phone_udp.py.
"""

from __future__ import annotations

import pytest

from xivo_ha_simulator.phone import PhoneConfig


def test_config_scales_expiry_and_timers():
    cfg = PhoneConfig(expires=3600, time_scale=10)
    assert cfg.requested_expires == 360
    assert cfg.timer_t1 == pytest.approx(0.05)
    assert cfg.timer_t2 == pytest.approx(0.4)
    assert cfg.timer_f == pytest.approx(3.2)
    assert PhoneConfig(expires=5, time_scale=100).requested_expires == 1
    with pytest.raises(ValueError):
        PhoneConfig(failback="never")
    with pytest.raises(ValueError):
        PhoneConfig(time_scale=0)
