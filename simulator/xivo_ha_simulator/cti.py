"""Simulated XiVO Clients: one CTI client per phone's user, with a main and a backup server.

Each :class:`Client` logs in to a node's CTI server (``xivo-ctid``, TCP 5003;
the node image's stand-in speaks its login: ``login_id`` -> session id,
``login_pass`` with sha1("<session id>:<password>"), ``login_capas``) with its
user's CTI account (``userfeatures.loginclient`` / ``passwdclient``), and
behaves as the XiVO Client configured with a main and a backup server:

* on start, and whenever its connection is lost, it connects to the **main**;
* when the main does not answer within **3 s** (the XiVO Client's
  documented wait before it tries the backup), or refuses the login, it
  connects to the **backup**; when both fail it waits one retry period and
  starts again with the main;
* while logged in it sends a keepalive every keepalive period; a keepalive
  unanswered within the connect timeout (a powered-off or cut-off node sends
  no FIN) or a connection the server closed (``service xivo-ctid stop``) is
  a lost connection;
* while on the backup it tries the main again every retry period and moves
  back as soon as the main logs it in (then it closes the backup connection).
  The real client returns to the main when its backup connection drops --
  at failback the slave stops xivo-ctid, which closes it -- or when it
  reconnects; its "try to reconnect" interval (20 s by default) is the
  retry period used here, so a client also comes home if the slave kept
  serving.

**Time scale.**  These are client timers, like the phones' SIP timers: all
three (connect timeout 3 s, keepalive 20 s, retry 20 s, real seconds) are
divided by K, so the measured reconnection times x K are real-equivalent.

Every attempt and transition is an :class:`events.Event` (``CTI_CONNECTED``,
``CTI_LOST``, ``CTI_CONNECT_FAILED``) in the client's list, keyed by its
user's phone id, for the report (:func:`reconnection_times`).  Every loop is
bounded by :meth:`Client.stop` and by each step's timeout; clients only ever
connect to the two servers they are given.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from .events import CTI_CONNECT_FAILED, CTI_CONNECTED, CTI_LOST, Event
from .loop import LoopThread

PORT = 5003  # xivo-ctid's client port
CONNECT_TIMEOUT = 3.0  # real seconds: the XiVO Client tries the backup when the main is silent this long
KEEPALIVE = 20.0  # real seconds between keepalives of a logged-in client
RETRY = 20.0  # real seconds: "try to reconnect" interval, also the retry of the main while on the backup
MAX_LINE = 4096
START_RATE = 50.0  # clients started per second at the beginning of a run

# Each user's CTI account by the number of its main line, as one JSON object
# (number -> [login, password]), from a node's asterisk database.
ACCOUNTS_QUERY = (
    "SELECT coalesce(json_object_agg(e.exten, json_build_array(u.loginclient, u.passwdclient)), '{}') "
    "FROM userfeatures u JOIN user_line ul ON ul.user_id = u.id AND ul.main_line "
    "JOIN extensions e ON e.id = ul.extension_id "
    "WHERE u.enableclient = 1 AND u.loginclient <> '' AND u.commented = 0"
)


@dataclass(frozen=True)
class Server:
    name: str  # the node's label in the events ("master", "slave")
    host: str
    port: int = PORT


@dataclass(frozen=True)
class Account:
    login: str
    password: str


@dataclass(frozen=True)
class ClientConfig:
    time_scale: float = 1.0
    connect_timeout: float = CONNECT_TIMEOUT  # real seconds, divided by time_scale
    keepalive: float = KEEPALIVE
    retry: float = RETRY

    def __post_init__(self):
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        for name in ("connect_timeout", "keepalive", "retry"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def scaled(self, real_seconds: float) -> float:
        return real_seconds / self.time_scale


class LoginRefused(Exception):
    """The server answered, and refused the login (its ``error_string``)."""


def accounts(text: str) -> dict[str, Account]:
    """The accounts in :data:`ACCOUNTS_QUERY`'s output, by phone number; ValueError if it is not that."""
    data = json.loads(text or "{}")
    if not isinstance(data, dict):
        raise ValueError("the CTI accounts are not a JSON object")
    out = {}
    for number, pair in data.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"the CTI account of {number} is not [login, password]")
        out[str(number)] = Account(pair[0], pair[1])
    return out


def hashed_password(session_id: str, password: str) -> str:
    """What ``login_pass`` carries: the password never travels in clear."""
    return hashlib.sha1(f"{session_id}:{password}".encode()).hexdigest()


# --------------------------------------------------------------------------- pure: what the report reads


def reconnection_time(events: Sequence[Event], since: float) -> float | None:
    """Seconds from ``since`` until the client was logged in again, or None if it never was.

    A client still holding, at ``since``, a connection it did not lose
    afterwards has 0: it never noticed the fault.  Otherwise the time runs
    from ``since`` to the first ``CTI_CONNECTED`` after the client knew its
    connection was gone (its first ``CTI_LOST`` or failed attempt after
    ``since``), on any server.
    """
    connected = False
    for event in events:
        if event.t > since:
            break
        if event.kind == CTI_CONNECTED:
            connected = True
        elif event.kind == CTI_LOST:
            connected = False
    lost = not connected
    for event in events:
        if event.t < since:
            continue
        if event.kind in (CTI_LOST, CTI_CONNECT_FAILED):
            lost = True
        elif event.kind == CTI_CONNECTED and lost:
            return event.t - since
    return None if lost else 0.0


def reconnection_times(events: Mapping[str, Sequence[Event]], since: float) -> dict[str, float | None]:
    """Per phone id, :func:`reconnection_time` (measured seconds)."""
    return {pid: reconnection_time(evs, since) for pid, evs in events.items()}


# --------------------------------------------------------------------------- the client


class Connection:
    """One logged-in CTI session."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 user_id: str):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.user_id = user_id

    async def keepalive(self, timeout: float) -> None:
        """One keepalive answered within ``timeout``; raises OSError (or a timeout) otherwise."""
        await _send(self.writer, {"class": "keepalive"})
        while True:
            message = await _receive(self.reader, timeout)
            if message.get("class") == "keepalive":
                return

    def close(self) -> None:
        self.writer.close()


async def _send(writer: asyncio.StreamWriter, message: dict) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def _receive(reader: asyncio.StreamReader, timeout: float) -> dict:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        raise ConnectionResetError("connection closed by the server")
    try:
        message = json.loads(line)
    except ValueError:
        raise ConnectionError("the server sent something that is not JSON") from None
    if not isinstance(message, dict):
        raise ConnectionError("the server sent something that is not a JSON object")
    return message


async def login(server: Server, account: Account, timeout: float) -> Connection:
    """Connect and log in within ``timeout`` seconds in all.

    Raises :class:`LoginRefused` when the server refuses, OSError or
    ``asyncio.TimeoutError`` when it cannot be reached or does not answer.
    """
    async def attempt() -> Connection:
        reader, writer = await asyncio.open_connection(server.host, server.port, limit=MAX_LINE)
        try:
            await _send(writer, {"class": "login_id", "userlogin": account.login, "ident": "xivo-ha-simulator"})
            reply = await _receive(reader, timeout)
            if "error_string" in reply or "sessionid" not in reply:
                raise LoginRefused(str(reply.get("error_string", "no session id")))
            await _send(writer, {"class": "login_pass",
                                 "hashedpassword": hashed_password(str(reply["sessionid"]), account.password)})
            reply = await _receive(reader, timeout)
            if reply.get("class") != "login_capas":
                raise LoginRefused(str(reply.get("error_string", f"unexpected {reply.get('class')!r}")))
            return Connection(server, reader, writer, str(reply.get("userid", "")))
        except BaseException:
            writer.close()
            raise

    return await asyncio.wait_for(attempt(), timeout)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer"
    if isinstance(exc, LoginRefused):
        return f"refused: {exc}"
    return str(exc) or type(exc).__name__


class Client:
    """One user's XiVO Client (see the module doc); its events are in :attr:`events`."""

    def __init__(self, phone_id: str, account: Account, main: Server, backup: Server | None,
                 config: ClientConfig = ClientConfig()):
        self.phone_id = phone_id
        self.account = account
        self.main = main
        self.backup = backup
        self.config = config
        self.events: list[Event] = []
        self.connection: Connection | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def log(self, kind: str, node: str | None, **info) -> None:
        self.events.append(Event(time.monotonic(), time.time(), kind, node, info or None))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"cti-{self.phone_id}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    async def _try(self, server: Server) -> Connection | None:
        try:
            connection = await login(server, self.account, self.config.scaled(self.config.connect_timeout))
        except (OSError, asyncio.TimeoutError, LoginRefused, ConnectionError) as exc:
            self.log(CTI_CONNECT_FAILED, server.name, reason=_reason(exc))
            return None
        self.log(CTI_CONNECTED, server.name, user_id=connection.user_id)
        return connection

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False if the client was stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def run(self) -> None:
        # Bounded: each pass takes at least one connect timeout or one retry
        # period, and the loop ends when the client is stopped.
        while not self._stopping.is_set():
            for server in (self.main, self.backup):
                if server is None:
                    continue
                self.connection = await self._try(server)
                if self.connection is not None:
                    break
            if self.connection is None:
                if not await self._pause(self.config.scaled(self.config.retry)):
                    return
                continue
            await self._hold()

    async def _hold(self) -> None:
        """Stay logged in until the connection is lost (or, on the backup, the main takes us back)."""
        config = self.config
        keepalive, retry = config.scaled(config.keepalive), config.scaled(config.retry)
        loop = asyncio.get_running_loop()
        next_keepalive = loop.time() + keepalive
        next_main = loop.time() + retry
        while self.connection is not None and not self._stopping.is_set():
            on_backup = self.connection.server is not self.main
            wake = min(next_keepalive, next_main) if on_backup else next_keepalive
            if await self._lost_before(wake - loop.time()):
                return
            if on_backup and loop.time() >= next_main:
                next_main = loop.time() + retry
                home = await self._try(self.main)
                if home is not None:
                    self.connection.close()
                    self.connection = home
                    next_keepalive = loop.time() + keepalive
                    continue
            if loop.time() >= next_keepalive:
                next_keepalive = loop.time() + keepalive
                try:
                    await self.connection.keepalive(config.scaled(config.connect_timeout))
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    self._lose(_reason(exc) if not isinstance(exc, asyncio.TimeoutError)
                               else "no keepalive reply")
                    return

    async def _lost_before(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the server to close the connection; True if it did (logged)."""
        if seconds <= 0:
            return False
        reader = self.connection.reader
        try:
            data = await asyncio.wait_for(reader.read(MAX_LINE), seconds)
        except asyncio.TimeoutError:
            return False
        except OSError as exc:
            self._lose(_reason(exc))
            return True
        if not data:
            self._lose("connection closed by the server")
            return True
        return False  # an unsolicited line (the stand-in sends none): ignored

    def _lose(self, reason: str) -> None:
        self.log(CTI_LOST, self.connection.server.name, reason=reason)
        self.connection.close()
        self.connection = None


class Clients:
    """The clients of a run on their own event loop in a background thread.

        clients = Clients([Client("1001", Account("user1", "cti1"), main, backup, config), ...])
        clients.start(rate=50)        # clients per second
        ...
        events = clients.events(); clients.stop()
    """

    def __init__(self, clients: Sequence[Client]):
        self.clients = list(clients)
        self._loop = LoopThread("cti-clients")

    def start(self, rate: float | None = None) -> None:
        async def start_all():
            for i, client in enumerate(self.clients):
                client.start()
                if rate and i + 1 < len(self.clients):
                    await asyncio.sleep(1.0 / rate)
        self._loop.call(start_all(), None if not rate else len(self.clients) / rate + 60)

    def events(self) -> dict[str, list[Event]]:
        return self._loop.read(lambda: {client.phone_id: list(client.events) for client in self.clients})

    def stop(self, timeout: float = 60) -> None:
        async def stop_all():
            await asyncio.gather(*(client.stop() for client in self.clients))
        self._loop.close(stop_all, timeout)
