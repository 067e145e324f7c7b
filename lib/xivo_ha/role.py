"""The node's HA role: XiVO's ``/etc/xivo/ha.conf`` and address validation."""

from __future__ import annotations

import enum
import ipaddress
import json
import os
from dataclasses import dataclass

from . import paths, system
from .errors import UsageError


class Role(str, enum.Enum):
    DISABLED = "disabled"
    MASTER = "master"
    SLAVE = "slave"


@dataclass(frozen=True)
class HaConfig:
    role: Role
    remote_address: str

    def to_json(self) -> str:
        return json.dumps({"node_type": self.role.value, "remote_address": self.remote_address}) + "\n"


DISABLED = HaConfig(Role.DISABLED, "")

# Single-host test benches run both "nodes" on 127.0.0.1; production never sets this.
ALLOW_LOOPBACK_ENV = "XIVO_HA_ALLOW_LOOPBACK_PEER"


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise UsageError(f"unknown role {text!r}: expected master, slave or disabled") from None


def validate_peer(text: str, own_addresses: frozenset[str] = frozenset()) -> str:
    """A peer VoIP address as a canonical IPv4 string, or UsageError saying why not."""
    candidate = text.strip() if isinstance(text, str) else ""
    if not candidate:
        raise UsageError("missing peer address: give the peer's VoIP IPv4 address")
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise UsageError(
            f"invalid peer address {text!r}: expected an IPv4 address such as 10.0.0.2 (host names are not accepted)"
        ) from None
    if address.version == 6:
        raise UsageError(f"IPv6 peer address {text!r} is not supported: XiVO HA works over IPv4")
    if str(address) != candidate:
        raise UsageError(f"invalid peer address {text!r}: write it as {address}")
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        raise UsageError(f"invalid peer address {text!r}: not a unicast host address")
    if address.is_loopback and os.environ.get(ALLOW_LOOPBACK_ENV) != "1":
        raise UsageError(f"peer address {text!r} is a loopback address of this node: give the other node's address")
    if str(address) in own_addresses:
        raise UsageError(f"peer address {text!r} is this node's own address: give the other node's address")
    return str(address)


def read() -> HaConfig:
    """Current role; a missing file means disabled; a corrupt one is a UsageError."""
    path = paths.node(paths.HA_CONF)
    try:
        text = system.read_text(path)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if text is None:
        return DISABLED
    return parse(text, str(path))


def parse(text: str, where: str) -> HaConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise UsageError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where} line 1: expected a JSON object")
    role_text = data.get("node_type", "disabled")
    if not isinstance(role_text, str) or role_text not in {r.value for r in Role}:
        raise UsageError(f"{where}: node_type {role_text!r} is not master, slave or disabled")
    role = Role(role_text)
    remote = data.get("remote_address") or ""
    if not isinstance(remote, str):
        raise UsageError(f"{where}: remote_address must be a string")
    if role is not Role.DISABLED:
        try:
            remote = validate_peer(remote)
        except UsageError as exc:
            raise UsageError(f"{where}: remote_address: {exc}") from None
    return HaConfig(role, remote)


ROLE_CHANGE_LOCK = "role-change.lock"


def change_lock():
    """The lock held by role changes and maintenance on/off (one at a time)."""
    return system.exclusive_lock(paths.state(ROLE_CHANGE_LOCK), "role change or maintenance switch")


def write(config: HaConfig) -> None:
    system.write_atomic(paths.node(paths.HA_CONF), config.to_json(), 0o644)
