"""Which OS user a local connection is opened as (database.peer_os_user)."""

import pytest

from xivo_ha import database


@pytest.mark.parametrize("dsn, euid, expected", [
    ("dbname=asterisk user=postgres", 0, "postgres"),
    ("host=/var/run/postgresql dbname=asterisk user=postgres", 0, "postgres"),
    ("host=/run/a,/run/b user=postgres", 0, "postgres"),
    ("host=127.0.0.1 dbname=asterisk user=postgres", 0, None),
    ("host=db.example.org user=postgres", 0, None),
    ("host=/tmp,127.0.0.1 user=postgres", 0, None),
    ("dbname=asterisk user=postgres", 1000, None),
    ("dbname=asterisk user=root", 0, None),
    ("dbname=asterisk user=asterisk", 0, "asterisk"),
    ("not a = valid = dsn '", 0, None),
])
def test_peer_os_user(monkeypatch, dsn, euid, expected):
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGUSER", raising=False)
    assert database.peer_os_user(dsn, euid) == expected


def test_without_user_libpq_uses_the_environment_then_the_os_user(monkeypatch):
    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.setenv("PGUSER", "postgres")
    assert database.peer_os_user("dbname=asterisk", 0) == "postgres"
    monkeypatch.delenv("PGUSER")
    assert database.peer_os_user("dbname=asterisk", 0) is None


def test_pghost_over_tcp_keeps_root(monkeypatch):
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    assert database.peer_os_user("dbname=asterisk user=postgres", 0) is None
