"""A real Kamailio registrar on a loopback UDP port, for tests and benchmarks.

    from kamailio_fixture import start_kamailio   # tests/integration is on sys.path
    handle = start_kamailio(tmp_path, 0, min_expires=2, max_expires=60, default_expires=10)
    ... phones register to ("127.0.0.1", handle.port) ...
    handle.kill()   # crash it (SIGKILL), or handle.stop() to end it cleanly

It renders ``simulator/node/kamailio.cfg.j2`` (the node's template) into a
directory of its own, runs ``kamailio -DD -E`` in the foreground of a new
process group with its own pid file and runtime directory, and returns once
the registrar answers OPTIONS.  The ``kamailio`` fixture gives one with small
expiry bounds, stopped at teardown; tests/integration/conftest.py offers it to
every integration test.  A script adds ``tests/integration`` to ``sys.path`` itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import jinja2
import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "simulator" / "node" / "kamailio.cfg.j2"
MODULE_PATH = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


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

    def __init__(self, process: subprocess.Popen, address: str, port: int, directory: Path):
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
    **template_vars,
) -> KamailioHandle:
    """Start a Kamailio registrar on ``address:port`` (``port`` 0: a free one)."""
    binary = kamailio_binary()
    if binary is None:
        raise FileNotFoundError("kamailio is not installed (Debian package kamailio)")
    port = port or free_udp_port(address)
    directory = Path(tmpdir) / f"kamailio-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "kamailio.cfg"
    cfg.write_text(render_kamailio_cfg(address, port, min_expires, max_expires, default_expires,
                                       children=children, module_path=MODULE_PATH, **template_vars))
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
    handle = KamailioHandle(process, address, port, directory)
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
