"""Test hosts in network namespaces: a slave, a master and optionally a witness.

Everything lives inside namespaces this module creates; the root namespace is not
touched.  The slave namespace has only point-to-point veth links to the master (and
the witness) and no default route, so anything run in it can reach those test hosts
and nothing else: a packet to any other address fails locally with "network
unreachable".

    slave ns  xha<run>s   10.231.X.1/30 ─veth─ 10.231.X.2/30   master ns  xha<run>m
                          10.231.X.5/30 ─veth─ 10.231.X.6/30   witness ns xha<run>w

X is picked per lab so that concurrent labs (and concurrent test runs) do not collide.
"Master down" is its link taken down on the master's side, or its namespace removed.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

try:
    import pytest
except ImportError:  # benchmarks import the helpers without pytest installed
    pytest = None

_counter = itertools.count(1)
_lock = threading.Lock()
NETNS_DIR = Path("/run/netns")
PREFIX = "xha"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _subnets_in_use() -> set[int]:
    """Third octets of 10.231.X.0/24 already used by our namespaces."""
    used = set()
    if not NETNS_DIR.is_dir():
        return used
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        out = ip("-n", entry.name, "-o", "-4", "addr", "show", check=False).stdout
        for line in out.splitlines():
            fields = line.split()
            if "inet" in fields:
                address = fields[fields.index("inet") + 1]
                if address.startswith("10.231."):
                    used.add(int(address.split(".")[2]))
    return used


@dataclass
class Lab:
    """A slave, a master and (optionally) a witness, wired point to point."""

    witness: bool = False
    tag: str = field(default_factory=lambda: f"{secrets.token_hex(2)}{next(_counter)}")
    octet: int = 0
    namespaces: list[str] = field(default_factory=list)

    @property
    def slave_ns(self) -> str:
        return f"{PREFIX}{self.tag}s"

    @property
    def master_ns(self) -> str:
        return f"{PREFIX}{self.tag}m"

    @property
    def witness_ns(self) -> str:
        return f"{PREFIX}{self.tag}w"

    @property
    def slave_address(self) -> str:
        return f"10.231.{self.octet}.1"

    @property
    def master_address(self) -> str:
        return f"10.231.{self.octet}.2"

    @property
    def witness_slave_side(self) -> str:
        return f"10.231.{self.octet}.5"

    @property
    def witness_address(self) -> str:
        return f"10.231.{self.octet}.6"

    def _ifname(self, end: str) -> str:
        return f"xh{self.tag}{end}"[:15]

    def setup(self) -> "Lab":
        with _lock:
            used = _subnets_in_use()
            free = [n for n in range(10, 250) if n not in used]
            self.octet = free[secrets.randbelow(len(free))]
            try:
                self._create_ns(self.slave_ns)
                self._create_ns(self.master_ns)
                self._link(self.slave_ns, "sm", self.slave_address, self.master_ns, "ms", self.master_address)
                if self.witness:
                    self._create_ns(self.witness_ns)
                    self._link(
                        self.slave_ns, "sw", self.witness_slave_side, self.witness_ns, "ws", self.witness_address
                    )
            except BaseException:
                self.cleanup()
                raise
        return self

    def _create_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _link(self, ns_a: str, end_a: str, addr_a: str, ns_b: str, end_b: str, addr_b: str) -> None:
        a, b = self._ifname(end_a), self._ifname(end_b)
        ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
        ip("-n", ns_a, "addr", "add", f"{addr_a}/30", "dev", a)
        ip("-n", ns_b, "addr", "add", f"{addr_b}/30", "dev", b)
        ip("-n", ns_a, "link", "set", a, "up")
        ip("-n", ns_b, "link", "set", b, "up")

    # --- faults -----------------------------------------------------------------

    def master_link(self, up: bool) -> None:
        """Take the master's side of its link down (no more replies) or up again."""
        ip("-n", self.master_ns, "link", "set", self._ifname("ms"), "up" if up else "down")
        if up:
            # Forget the failed ARP resolution so that the very next probe resolves afresh,
            # instead of waiting out the kernel's retransmission timer.
            ip("-n", self.slave_ns, "neigh", "flush", "dev", self._ifname("sm"), check=False)

    def witness_link(self, up: bool) -> None:
        ip("-n", self.witness_ns, "link", "set", self._ifname("ws"), "up" if up else "down")
        if up:
            ip("-n", self.slave_ns, "neigh", "flush", "dev", self._ifname("sw"), check=False)

    def remove_master(self) -> None:
        """The master host is gone: its namespace (and its end of the link) removed."""
        ip("netns", "del", self.master_ns, check=False)
        if self.master_ns in self.namespaces:
            self.namespaces.remove(self.master_ns)

    # --- running things ---------------------------------------------------------

    def in_slave(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.slave_ns, *argv]

    def in_master(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.master_ns, *argv]

    def run_in_slave(self, argv: list[str], timeout: float = 120, env: dict | None = None, **kwargs):
        return subprocess.run(
            self.in_slave(argv), capture_output=True, text=True, timeout=timeout,
            env=env if env is not None else os.environ.copy(), **kwargs,
        )

    def cleanup(self) -> None:
        for name in reversed(self.namespaces):
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            ip("netns", "del", name, check=False)
        self.namespaces.clear()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")


def _fixture(function):
    return pytest.fixture(function) if pytest is not None else function


@_fixture
def lab():
    """A slave and a master in their own namespaces, linked by a veth pair."""
    _require_root()
    made = Lab().setup()
    yield made
    made.cleanup()


@_fixture
def witness_lab():
    """The same, plus a witness host linked to the slave."""
    _require_root()
    made = Lab(witness=True).setup()
    yield made
    made.cleanup()


# --- the slave's services, for real -----------------------------------------------------
#
# A tiny SysV-style world in a temp directory: etc/init.d/<service> scripts that run a
# real daemon with start-stop-daemon and a pid file, and an update-rc.d look-alike that
# flips etc/rc2.d/S01<service> links.  The settings' command templates point at them
# through XIVO_HA_SERVICES_* environment variables.

REPO = Path(__file__).resolve().parents[2]

INIT_SCRIPT = r"""#!/bin/sh
# LSB-style init script for tests: <service> start|stop|status
set -u
svc=$(basename "$0")
base=$(cd "$(dirname "$0")/../.." && pwd)
pidfile="$base/run/$svc.pid"
daemon="$base/daemons/$svc"
echo "$svc ${1:-}" >> "$base/journal"
case "${1:-}" in
start)
    [ -f "$daemon" ] || { echo "$svc: not installed ($daemon missing)" >&2; exit 5; }
    if start-stop-daemon --status --pidfile "$pidfile"; then exit 0; fi
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done < "$daemon"
    program=$1; shift
    exec start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$pidfile" \
        --exec "$program" -- "$@"
    ;;
stop)
    exec start-stop-daemon --stop --quiet --retry TERM/10/KILL/5 --oknodo --remove-pidfile --pidfile "$pidfile"
    ;;
status)
    start-stop-daemon --status --pidfile "$pidfile"
    code=$?
    [ "$code" = 0 ] || [ "$code" = 3 ] || echo "$svc: pid file $pidfile but no process" >&2
    exit $code
    ;;
*)
    echo "usage: $svc start|stop|status" >&2
    exit 2
    ;;
esac
"""

UPDATE_RC_D = r"""#!/bin/sh
# update-rc.d look-alike for tests: <service> enable|disable
set -u
base=$(cd "$(dirname "$0")/.." && pwd)
svc=$1
echo "$svc $2" >> "$base/journal"
[ -x "$base/etc/init.d/$svc" ] || { echo "update-rc.d: $base/etc/init.d/$svc: file does not exist" >&2; exit 1; }
case "$2" in
enable) ln -sfn "../init.d/$svc" "$base/etc/rc2.d/S01$svc" ;;
disable) rm -f "$base/etc/rc2.d/S01$svc" ;;
*) echo "usage: update-rc.d <service> enable|disable" >&2; exit 1 ;;
esac
"""


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class SlaveServices:
    """Init scripts, an update-rc.d and real daemons under ``base``."""

    base: Path
    kamailio_ports: dict = field(default_factory=dict)

    def __post_init__(self):
        for sub in ("etc/init.d", "etc/rc2.d", "sbin", "run", "daemons", "kamailio"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "journal").touch()
        script = self.base / "lib-init-script"
        script.write_text(INIT_SCRIPT)
        script.chmod(0o755)
        rcd = self.base / "sbin" / "update-rc.d"
        rcd.write_text(UPDATE_RC_D)
        rcd.chmod(0o755)

    def _install(self, name: str, argv: list[str]) -> None:
        (self.base / "daemons" / name).write_text("".join(f"{arg}\n" for arg in argv))
        (self.base / "etc" / "init.d" / name).symlink_to(self.base / "lib-init-script")

    def add_sleeper(self, name: str) -> None:
        """A service whose daemon is a long sleep: a real process with a pid file."""
        self._install(name, ["/bin/sleep", "3600"])

    def add_kamailio(self, name: str, database, port: int | None = None, listen_address: str = "127.0.0.1") -> int:
        """A service running a real Kamailio (the simulator's registrar), by default on a loopback port.

        ``database``: the node's asterisk database it reads lines from (a
        ``kamailio_fixture.LineDatabase``, in the namespace the service runs in).
        """
        from kamailio_fixture import render_kamailio_cfg

        port = port or (free_udp_port() if listen_address == "127.0.0.1" else 5060)
        workdir = self.base / "kamailio" / name
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "kamailio.cfg"
        config.write_text(render_kamailio_cfg(listen_address, port, min_expires=180, max_expires=300,
                                              default_expires=240, children=1, db_url=database.url))
        self._install(name, ["/usr/sbin/kamailio", "-f", str(config), "-DD", "-E", "-Y", str(workdir),
                             "-w", str(workdir), "-m", "16", "-M", "4"])
        self.kamailio_ports[name] = port
        return port

    def add_broken(self, name: str) -> None:
        """A service whose program does not exist: start fails with the tool's message."""
        self._install(name, [str(self.base / "missing-daemon")])

    def env(self, names: list[str]) -> dict[str, str]:
        init = self.base / "etc" / "init.d"
        rcd = self.base / "sbin" / "update-rc.d"
        return {
            "XIVO_HA_SERVICES_SLAVE_SERVICES": ",".join(names),
            "XIVO_HA_SERVICES_START_COMMAND": f"{init}/{{service}},start",
            "XIVO_HA_SERVICES_STOP_COMMAND": f"{init}/{{service}},stop",
            "XIVO_HA_SERVICES_STATUS_COMMAND": f"{init}/{{service}},status",
            "XIVO_HA_SERVICES_ENABLE_COMMAND": f"{rcd},{{service}},enable",
            "XIVO_HA_SERVICES_DISABLE_COMMAND": f"{rcd},{{service}},disable",
            "XIVO_HA_SERVICES_COMMAND_TIMEOUT": "30",
        }

    def pid(self, name: str) -> int | None:
        try:
            return int((self.base / "run" / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and pid_alive(pid)

    def enabled(self, name: str) -> bool:
        return (self.base / "etc" / "rc2.d" / f"S01{name}").is_symlink()

    def journal(self) -> list[str]:
        return (self.base / "journal").read_text().splitlines()

    def clear_journal(self) -> None:
        (self.base / "journal").write_text("")

    def cleanup(self) -> None:
        """Stop whatever still runs (a failed test must not leave daemons behind)."""
        for script in (self.base / "etc" / "init.d").iterdir():
            subprocess.run([str(script), "stop"], capture_output=True, timeout=60)


@_fixture
def slave_services(tmp_path):
    made = SlaveServices(tmp_path / "services")
    yield made
    made.cleanup()
