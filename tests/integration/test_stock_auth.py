"""Every database step against Debian's stock PostgreSQL authentication.

The cluster's pg_hba.conf is exactly Debian's (`local all postgres peer`, scram on
TCP, no ident map, no password).  The commands run as root, as cron runs them, with
the default kind of DSN (the Unix socket, `user=postgres`).  Root itself is refused by
that server; the commands get in because they open their local connections as the
`postgres` OS user, as XiVO's scripts did with `sudo -u postgres`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from node import make_node
from pg import PgServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLAVE = "10.20.31.2"


@pytest.fixture(scope="module")
def stock_server():
    if os.geteuid() != 0:
        pytest.fail("the stock-authentication tests run as root, as the commands do on a node")
    server = PgServer().start()
    database = server.create_database("asterisk_stock")
    server.stock_auth()
    yield server, database.name
    server.stop()


@pytest.fixture
def stock_node(tmp_path, stock_server):
    server, name = stock_server
    root = tmp_path / "node"
    root.mkdir()
    database = type("StockDatabase", (), {"dsn": server.socket_dsn(name)})()
    yield make_node(root, database), server, name
    server.psql_as_postgres(name, "DELETE FROM staticsip WHERE var_name IN ('minexpiry', 'maxexpiry', 'defaultexpiry')")


def expiry(server, name) -> dict[str, str]:
    rows = server.psql_as_postgres(
        name, "SELECT var_name || '=' || var_val FROM staticsip WHERE var_name IN "
              "('minexpiry', 'maxexpiry', 'defaultexpiry') ORDER BY var_name")
    return dict(line.split("=", 1) for line in rows.split())


def test_root_itself_is_refused_by_the_stock_server(stock_server):
    server, name = stock_server
    with pytest.raises(psycopg.OperationalError, match="Peer authentication failed"):
        psycopg.connect(server.socket_dsn(name), connect_timeout=5).close()


def test_enable_master_and_disable_write_the_expiry_rows_with_stock_auth(stock_node):
    node, server, name = stock_node
    result = node.run("enable", "master", SLAVE)
    assert result.returncode == 0, result.stderr
    assert expiry(server, name) == {"defaultexpiry": "240", "maxexpiry": "300", "minexpiry": "180"}
    result = node.run("disable")
    assert result.returncode == 0, result.stderr
    assert expiry(server, name) == {}


def test_status_reads_the_database_with_stock_auth(stock_node):
    node, server, name = stock_node
    assert node.run("enable", "master", SLAVE).returncode == 0
    result = node.run("status", "--json")
    status = json.loads(result.stdout)
    assert status["role"] == "master", result.stdout
    assert "Peer authentication failed" not in result.stdout + result.stderr
    assert "cannot connect" not in result.stdout + result.stderr


def test_replication_reads_the_master_with_stock_auth(stock_node, second_postgres_server):
    node, server, name = stock_node
    slave = second_postgres_server.create_database()
    try:
        server.psql_as_postgres(name, "INSERT INTO staticsip (filename, category, var_name, var_val) "
                                      "VALUES ('sip.conf', 'general', 'language', 'fr_FR')")
        env = {**node.env, "XIVO_HA_ALLOW_LOOPBACK_PEER": "1",
               "XIVO_HA_REPLICATION_SLAVE_PORT": str(second_postgres_server.port),
               "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave.name, "PATH": "/usr/bin:/bin"}
        node.path("/etc/xivo").mkdir(parents=True)
        node.path("/etc/xivo/ha.conf").write_text('{"node_type": "master", "remote_address": "127.0.0.1"}')
        result = subprocess.run([sys.executable, str(REPO / "bin" / "xivo-master-slave-db-replication"),
                                 "127.0.0.1"], env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        assert slave.query("SELECT var_val FROM staticsip WHERE var_name = 'language'") == [("fr_FR",)]
    finally:
        server.psql_as_postgres(name, "DELETE FROM staticsip WHERE var_name = 'language'")
        second_postgres_server.drop_database(slave.name)
