"""Fixtures shared by every layer: throw-away PostgreSQL and a node root prefix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import PgServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server():
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def second_postgres_server():
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def asterisk_db(postgres_server):
    """A fresh `asterisk` database loaded with the reference schema."""
    db = postgres_server.create_database()
    yield db
    postgres_server.drop_database(db.name)


@pytest.fixture
def node_root(tmp_path, monkeypatch):
    """An empty node filesystem: every path the toolkit touches resolves under it."""
    root = tmp_path / "node"
    root.mkdir()
    monkeypatch.setenv("XIVO_HA_ROOT", str(root))
    for name in list(__import__("os").environ):
        if name.startswith("XIVO_HA_") and name not in ("XIVO_HA_ROOT", "XIVO_HA_SHARE_DIR"):
            monkeypatch.delenv(name)
    return root
