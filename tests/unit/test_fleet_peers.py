"""Whom a fleet's phones call: every other phone of the fleet, from one shared list."""

from __future__ import annotations

import random

import pytest

from xivo_ha_simulator.phone import Fleet, Registrar


def test_each_phone_calls_every_other_phone_and_only_them():
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 5, first_user=1001)
    for phone in fleet.phones:
        others = [p.user for p in fleet.phones if p is not phone]
        assert list(phone.peers) == others
        assert len(phone.peers) == 4
        assert {random.choice(phone.peers) for _ in range(200)} == set(others)
        with pytest.raises(IndexError):
            phone.peers[4]


def test_a_large_fleet_shares_one_list_of_numbers():
    # One copy of the numbers, not one per phone: 20000 phones would need 4e8 entries.
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 20000, first_user=100000)
    first, last = fleet.phones[0].peers, fleet.phones[-1].peers
    assert first.numbers is last.numbers
    assert first[0] == "100001" and last[-1] == "119998"


def test_a_lone_phone_calls_nobody():
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 1)
    assert len(fleet.phones[0].peers) == 0
