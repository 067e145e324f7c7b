"""A real Kamailio registrar on a loopback UDP port, for tests and benchmarks.

    from kamailio_fixture import start_kamailio, line_credentials   # tests/integration is on sys.path
    handle = start_kamailio(tmp_path, 0, min_expires=2, max_expires=60, default_expires=10)
    ... phones with line_credentials(number) register to ("127.0.0.1", handle.port) ...
    handle.kill()   # crash it (SIGKILL), or handle.stop() to end it cleanly

It renders ``simulator/node/kamailio.cfg.j2`` (the node's template) into a
directory of its own, runs ``kamailio -DD -E`` in the foreground of a new
process group with its own pid file and runtime directory, and returns once
the registrar answers OPTIONS.  The registrar authenticates against a real
node database (:class:`LineDatabase`): a throw-away PostgreSQL cluster with
the reference schema, the demo lines for the given numbers, Debian's stock
authentication, and the role ``asterisk`` with a password that Kamailio logs
in as over TCP, as XiVO's Asterisk does.  ``start_kamailio`` makes one of its
own unless it is given one (``database=``, e.g. to restart a registrar on the
same data); it stops the one it made.  The ``kamailio`` fixture gives one with small
expiry bounds, stopped at teardown; tests/integration/conftest.py offers it to
every integration test.  A script adds ``tests/integration`` to ``sys.path`` itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pg import DEMO_USERS, PgServer, _as_postgres  # noqa: E402

from xivo_ha_simulator.phone import Credentials  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "simulator" / "node" / "kamailio.cfg.j2"
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
# The role XiVO's Asterisk reads its database as (wazo-manage-db creates it
# WITH PASSWORD 'superpass'); the node's entrypoint creates the same one.
ASTERISK_ROLE = "asterisk"
ASTERISK_PASSWORD = "superpass"
DEFAULT_LINES = range(1001, 1101)
# The registrar writes its bindings (usrloc db_mode 1), as the node's entrypoint allows it to.
LOCATION_GRANTS = (f"GRANT INSERT, UPDATE, DELETE ON location TO {ASTERISK_ROLE}; "
                   f"GRANT USAGE ON SEQUENCE location_id_seq TO {ASTERISK_ROLE}")


def line_credentials(number: int) -> Credentials:
    """The credentials of demo line ``number`` (demo-users.sql: user<n>, md5('secret<n>'), n = number - 1000)."""
    n = number - 1000
    return Credentials(f"user{n}", hashlib.md5(f"secret{n}".encode()).hexdigest())


class LineDatabase:
    """A node's ``asterisk`` database on a throw-away cluster, read by Kamailio with a password."""

    def __init__(self, lines: range = DEFAULT_LINES, netns: str | None = None):
        self.server = PgServer(netns=netns).start()
        self.name = "asterisk"
        try:
            self.server.create_database(self.name)
            self.sql(f"CREATE ROLE {ASTERISK_ROLE} LOGIN PASSWORD '{ASTERISK_PASSWORD}'; "
                     f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ASTERISK_ROLE}; {LOCATION_GRANTS}")
            self.server.stock_auth()  # from now on: peer for postgres, scram over TCP
            self.add_lines(lines)
        except BaseException:
            self.server.stop()
            raise

    @property
    def url(self) -> str:
        return f"postgres://{ASTERISK_ROLE}:{ASTERISK_PASSWORD}@127.0.0.1:{self.server.port}/{self.name}"

    def sql(self, statement: str) -> str:
        """Run SQL as the postgres OS user on the Unix socket, as an administrator would."""
        return self.server.psql_as_postgres(self.name, statement)

    def add_lines(self, lines: range) -> None:
        """The demo users of extensions ``lines`` (1000 + n each): see :func:`line_credentials`."""
        if len(lines):
            _as_postgres(["psql", "-q", "-X", "-v", f"first={lines.start - 1000}", "-v", f"count={len(lines)}",
                          "-d", self.server.socket_dsn(self.name), "-f", str(DEMO_USERS)])

    def stop(self) -> None:
        self.server.stop()


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio") if os.access(p, os.X_OK)), None)


def render_kamailio_cfg(
    listen_address: str,
    port: int,
    min_expires: int,
    max_expires: int,
    default_expires: int,
    **extra,
) -> str:
    """The node template rendered with the given variables (unknown ones are errors)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    template = env.from_string(TEMPLATE.read_text())
    return template.render(
        listen_address=listen_address,
        port=port,
        min_expires=min_expires,
        max_expires=max_expires,
        default_expires=default_expires,
        **extra,
    )


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _options_ping(host: str, port: int, timeout: float) -> bool:
    """True if something on (host, port) answers OPTIONS with 200 within ``timeout``."""
    from xivo_ha_simulator import sip

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(timeout)
        local_port = sock.getsockname()[1]
        msg = sip.options(target_host=host, target_port=port, user="probe", domain=host,
                          local_host=host, local_port=local_port, call_id=sip.new_call_id(host),
                          cseq=1, from_tag=sip.new_tag())
        try:
            sock.sendto(bytes(msg), (host, port))
            while True:
                reply = sip.parse(sock.recv(65535))
                if reply.cseq == (1, "OPTIONS"):
                    return reply.status_code == 200
        except (OSError, sip.SipParseError):
            return False


class KamailioHandle:
    """A running Kamailio: its address, files, and how to end it."""

    def __init__(self, process: subprocess.Popen, address: str, port: int, directory: Path,
                 database: LineDatabase):
        self.database = database
        self._owns_database = False
        self.process = process
        self.address = address
        self.port = port
        self.directory = directory
        self.cfg_path = directory / "kamailio.cfg"
        self.log_path = directory / "kamailio.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # its own group: main process and children
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Crash it: SIGKILL to its process group, no goodbye on the wire."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10) -> None:
        """End it cleanly (SIGTERM), SIGKILL if it lingers."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # leftover children, if any
        if self.alive:
            self.process.wait(timeout=10)
        log_file = getattr(self, "_log_file", None)
        if log_file is not None:
            log_file.close()
        if self._owns_database:
            self._owns_database = False
            self.database.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_kamailio(
    tmpdir,
    port: int = 0,
    min_expires: int = 1,
    max_expires: int = 3600,
    default_expires: int = 120,
    *,
    address: str = "127.0.0.1",
    children: int = 1,
    shm_mb: int | None = None,
    startup_timeout: float = 15.0,
    database: LineDatabase | None = None,
    lines: range = DEFAULT_LINES,
    **template_vars,
) -> KamailioHandle:
    """Start a Kamailio registrar on ``address:port`` (``port`` 0: a free one).

    It authenticates against ``database``, or against a database of its own
    holding the demo ``lines`` (stopped with it).
    """
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError("kamailio is not installed (Debian package kamailio)")
    owned = database is None
    if owned:
        database = LineDatabase(lines)
    try:
        handle = _start(binary, tmpdir, port, min_expires, max_expires, default_expires, address, children,
                        shm_mb, startup_timeout, database, template_vars)
    except BaseException:
        if owned:
            database.stop()
        raise
    handle._owns_database = owned
    return handle


def _start(binary, tmpdir, port, min_expires, max_expires, default_expires, address, children, shm_mb,
           startup_timeout, database, template_vars) -> KamailioHandle:
    port = port or free_udp_port(address)
    directory = Path(tmpdir) / f"kamailio-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "kamailio.cfg"
    cfg.write_text(render_kamailio_cfg(address, port, min_expires, max_expires, default_expires,
                                       children=children, module_path=MODULE_PATH, db_url=database.url,
                                       **template_vars))
    log_file = open(directory / "kamailio.log", "ab")
    process = subprocess.Popen(
        [binary, "-f", str(cfg), "-DD", "-E", "-n", str(children),
         "-P", str(directory / "kamailio.pid"), "-Y", str(directory)]
        + (["-m", str(shm_mb)] if shm_mb else []),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle = KamailioHandle(process, address, port, directory, database)
    handle._log_file = log_file
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not handle.alive:
            break
        if _options_ping(address, port, 0.3):
            return handle
    handle.stop()
    raise RuntimeError(f"kamailio did not answer on {address}:{port}; its log:\n{handle.log()[-3000:]}")


@pytest.fixture
def kamailio(tmp_path):
    """A Kamailio registrar on a free loopback port: min 1 s, max 60 s, default 10 s."""
    if kamailio_binary() is None:
        pytest.skip("kamailio is not installed")
    handle = start_kamailio(tmp_path, 0, min_expires=1, max_expires=60, default_expires=10)
    try:
        yield handle
    finally:
        handle.stop()
