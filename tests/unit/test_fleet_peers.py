"""Whom a fleet's phones call: every other phone of the fleet that has registered once,
from one shared list."""

from __future__ import annotations

import random

import pytest

from xivo_ha_simulator.phone import Fleet, Registrar


def register(fleet: Fleet, *indexes: int) -> None:
    for i in indexes:
        fleet.phones[i]._set_node(fleet.primary)


def test_a_phone_calls_nobody_before_any_other_phone_registered():
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 5, first_user=1001)
    register(fleet, 0)
    assert [len(phone.peers) for phone in fleet.phones] == [0, 1, 1, 1, 1]


def test_each_phone_calls_every_other_registered_phone_and_only_them():
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 5, first_user=1001)
    register(fleet, 3, 0, 4)
    for phone in fleet.phones:
        others = [user for user in ("1004", "1001", "1005") if user != phone.user]
        assert list(phone.peers) == others
        assert len(phone.peers) == len(others)
        assert {random.choice(phone.peers) for _ in range(200)} == set(others)
        with pytest.raises(IndexError):
            phone.peers[len(others)]


def test_a_phone_that_lost_its_registration_is_still_called():
    # Registered once: it has a user, and a call to it measures whether the cluster reaches it.
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 3, first_user=1001)
    register(fleet, 0, 1)
    fleet.phones[1]._set_node(None)
    register(fleet, 1)
    assert list(fleet.phones[2].peers) == ["1001", "1002"]


def test_a_large_fleet_shares_one_list_of_numbers():
    # One copy of the numbers, not one per phone: 20000 phones would need 4e8 entries.
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 20000, first_user=100000)
    register(fleet, *range(20000))
    first, last = fleet.phones[0].peers, fleet.phones[-1].peers
    assert first.numbers is last.numbers
    assert first[0] == "100001" and last[-1] == "119998"


def test_a_lone_phone_calls_nobody():
    fleet = Fleet(Registrar("master", "127.0.0.1"), None, 1)
    register(fleet, 0)
    assert len(fleet.phones[0].peers) == 0
