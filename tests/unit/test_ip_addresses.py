"""`system.parse_ipv4_addresses`: the one reading of `ip -o -4 addr show` (doctor and role changes)."""

from __future__ import annotations

import pytest

from xivo_ha.system import Address, parse_ipv4_addresses

IP_OUTPUT = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.20.30.1/24 brd 10.20.30.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.20.30.9/32 scope global secondary eth0:vip\\       valid_lft forever preferred_lft forever
7: veth-ha@if6    inet 192.0.2.4 scope global veth-ha
"""


@pytest.mark.parametrize("text, expected", [
    (IP_OUTPUT, [Address("127.0.0.1", 8, "lo"), Address("10.20.30.1", 24, "eth0"),
                 Address("10.20.30.9", 32, "eth0"), Address("192.0.2.4", 32, "veth-ha@if6")]),
    ("", []),
    ("3: wlan0    link/ether 00:11:22:33:44:55\n", []),
    ("4: eth1    inet\n", []),
])
def test_parse(text, expected):
    assert parse_ipv4_addresses(text) == expected
