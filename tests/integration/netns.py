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

import pytest

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

    def witness_link(self, up: bool) -> None:
        ip("-n", self.witness_ns, "link", "set", self._ifname("ws"), "up" if up else "down")

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


@pytest.fixture
def lab():
    """A slave and a master in their own namespaces, linked by a veth pair."""
    _require_root()
    made = Lab().setup()
    yield made
    made.cleanup()


@pytest.fixture
def witness_lab():
    """The same, plus a witness host linked to the slave."""
    _require_root()
    made = Lab(witness=True).setup()
    yield made
    made.cleanup()
