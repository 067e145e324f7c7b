"""The node's CTI stand-in (xivo-ctid) as a real process on loopback, against a real node database,
and the simulated XiVO Clients (simulator cti.py) falling back to the backup and coming home.

The stand-in reads the accounts from a throw-away PostgreSQL cluster with the
reference schema (kamailio_fixture.LineDatabase: demo users 1001.., CTI
login user<n> / password cti<n>), as the role ``asterisk`` over TCP, the way
it runs on a node.  A hung main is a stand-in stopped with SIGSTOP: the kernel
still accepts the TCP connection, nothing answers (like a node that froze).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kamailio_fixture import LineDatabase

from xivo_ha_simulator import cti
from xivo_ha_simulator.events import CTI_CONNECT_FAILED, CTI_CONNECTED, CTI_LOST

REPO = Path(__file__).resolve().parents[2]
STAND_IN = REPO / "simulator" / "node" / "ctid-stand-in"
K = 10.0  # clients' timers divided by 10: connect timeout 0.3 s, keepalive and retry 2 s
CONFIG = cti.ClientConfig(time_scale=K)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandIn:
    """One xivo-ha-sim-ctid process on 127.0.0.1."""

    def __init__(self, tmp_path: Path, database: LineDatabase):
        self.port = free_tcp_port()
        self.pidfile = tmp_path / f"ctid-{self.port}.pid"
        self.log = tmp_path / f"ctid-{self.port}.log"
        env = dict(os.environ, XIVO_HA_SIM_CTID_DSN=database.url)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["/usr/bin/python3", str(STAND_IN), "--listen", "127.0.0.1", "--port", str(self.port),
                 "--pidfile", str(self.pidfile)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while not self.pidfile.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the CTI stand-in did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def server(self, name: str) -> cti.Server:
        return cti.Server(name, "127.0.0.1", self.port)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> int:
        self.thaw()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@pytest.fixture(scope="module")
def node_db():
    db = LineDatabase(range(1001, 1006))
    yield db
    db.stop()


@pytest.fixture
def stand_in(tmp_path, node_db):
    started = []

    def start() -> StandIn:
        handle = StandIn(tmp_path, node_db)
        started.append(handle)
        return handle
    yield start
    for handle in started:
        handle.stop()


def run(coro):
    return asyncio.run(coro)


def kinds(client: cti.Client) -> list[tuple[str, str | None]]:
    return [(e.kind, e.node) for e in client.events]


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def test_login_with_the_users_cti_account(stand_in, node_db):
    server = stand_in().server("master")
    expected_id = node_db.sql("SELECT id FROM userfeatures WHERE loginclient = 'user3'").strip()

    async def go():
        connection = await cti.login(server, cti.Account("user3", "cti3"), 5)
        await connection.keepalive(5)
        connection.close()
        return connection.user_id
    assert run(go()) == expected_id


def test_wrong_password_is_refused(stand_in):
    server = stand_in().server("master")
    with pytest.raises(cti.LoginRefused, match="login_password"):
        run(cti.login(server, cti.Account("user3", "cti4"), 5))


def test_a_user_missing_from_the_nodes_database_cannot_log_in(stand_in):
    server = stand_in().server("slave")
    with pytest.raises(cti.LoginRefused, match="user_not_found"):
        run(cti.login(server, cti.Account("user99", "cti99"), 5))


def test_a_disabled_cti_account_cannot_log_in(stand_in, node_db):
    server = stand_in().server("master")
    node_db.sql("UPDATE userfeatures SET enableclient = 0 WHERE loginclient = 'user5'")
    try:
        with pytest.raises(cti.LoginRefused, match="user_not_found"):
            run(cti.login(server, cti.Account("user5", "cti5"), 5))
    finally:
        node_db.sql("UPDATE userfeatures SET enableclient = 1 WHERE loginclient = 'user5'")


def test_stopping_the_server_closes_its_clients_connections(stand_in):
    main, backup = stand_in(), stand_in()

    async def go():
        client = cti.Client("1001", cti.Account("user1", "cti1"), main.server("master"), backup.server("slave"),
                            CONFIG)
        client.start()
        assert await wait_for(lambda: client.connection is not None, 5)
        assert main.stop() == 0  # SIGTERM: it closes the connection, the client sees it at once
        t_stop = time.monotonic()
        assert await wait_for(lambda: client.connection is not None
                              and client.connection.server.name == "slave", 5)
        await client.stop()
        return client, t_stop
    client, t_stop = run(go())
    lost = next(e for e in client.events if e.kind == CTI_LOST)
    assert lost.node == "master" and lost.info["reason"] == "connection closed by the server"
    assert lost.t - t_stop < CONFIG.scaled(cti.KEEPALIVE) / 2  # not found by a keepalive: the server closed it
    assert kinds(client)[-2:] == [(CTI_CONNECT_FAILED, "master"), (CTI_CONNECTED, "slave")]


def test_a_hung_main_sends_the_client_to_the_backup_after_the_timeout_and_it_comes_back(stand_in):
    main, backup = stand_in(), stand_in()
    timeout = CONFIG.scaled(cti.CONNECT_TIMEOUT)

    async def go():
        client = cti.Client("1002", cti.Account("user2", "cti2"), main.server("master"), backup.server("slave"),
                            CONFIG)
        client.start()
        assert await wait_for(lambda: client.connection is not None, 5)
        main.freeze()
        # the next keepalive goes unanswered, the main does not answer again: backup
        limit = CONFIG.scaled(cti.KEEPALIVE) + 3 * timeout + 2
        assert await wait_for(lambda: client.connection is not None
                              and client.connection.server.name == "slave", limit)
        main.thaw()
        assert await wait_for(lambda: client.connection is not None
                              and client.connection.server.name == "master", CONFIG.scaled(cti.RETRY) + 2)
        await client.stop()
        return client
    client = run(go())
    events = client.events
    lost = next(e for e in events if e.kind == CTI_LOST)
    assert (lost.node, lost.info["reason"]) == ("master", "no keepalive reply")
    failed = next(e for e in events if e.kind == CTI_CONNECT_FAILED and e.t >= lost.t)
    assert (failed.node, failed.info["reason"]) == ("master", "no answer")
    on_backup = next(e for e in events if e.kind == CTI_CONNECTED and e.node == "slave")
    # the backup only after the main's whole timeout, and soon after it
    assert timeout <= on_backup.t - lost.t < timeout + 1.0
    back = [e for e in events if e.kind == CTI_CONNECTED and e.t > on_backup.t]
    assert [e.node for e in back] == ["master"]
    # and the report's figure: from the freeze to logged in again (on the backup)
    assert cti.reconnection_time(events, lost.t) == pytest.approx(on_backup.t - lost.t)


def test_the_stand_in_refuses_bad_arguments_in_one_line():
    result = subprocess.run(["/usr/bin/python3", str(STAND_IN), "--listen", "not-an-address"],
                            capture_output=True, text=True, timeout=30, env={"XIVO_HA_SIM_CTID_DSN": "x"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not an IPv4 address" in result.stderr


def test_the_accounts_of_the_phones_users_come_from_the_nodes_database(node_db):
    found = cti.accounts(node_db.sql(cti.ACCOUNTS_QUERY))
    assert found == {str(1000 + n): cti.Account(f"user{n}", f"cti{n}") for n in range(1, 6)}
