"""The fault catalog: what breaks, how it is undone, and what must happen then.

Faults are data, in the spirit of SIPp scenarios: each :class:`Fault` lists the
:class:`Step` s that inject it and restore it, optional steps at set times while
it lasts (flapping), how long it lasts by itself, settings it needs on the slave,
and what is expected of the cluster:

* ``OUTAGE`` -- the master stops serving the phones; every phone must be
  registered again (on the slave, or on the master once restored) within the
  bound (300 s real-equivalent);
* ``SERVED`` -- the master keeps serving; **no** failover may happen (no phone
  moves to the slave, the slave does not start its services) and no phone may
  lose its registration.

Times in the catalog are real-equivalent seconds (what a real deployment would
see); they are divided by the time scale when the fault runs.  Every step is a
bounded ``docker`` command (see :data:`ACTIONS`), and all of them act only on the
simulator's own containers and network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .cluster import MASTER, SLAVE, Cluster, ClusterError, run
from .constants import OUTAGE, SERVED

NFT_TABLE = "xivo_ha_sim"


@dataclass(frozen=True)
class Step:
    """One action on one node; ``args`` depend on the action."""

    action: str
    node: str = MASTER
    args: tuple = ()

    def describe(self) -> str:
        return ACTION_TEXT[self.action].format(node=self.node, args=self.args)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    inject: tuple[Step, ...]
    restore: tuple[Step, ...]
    expect: str = OUTAGE
    period: float | None = None  # real-equivalent seconds after which it is restored by itself
    schedule: tuple[tuple[float, Step], ...] = ()  # (real-equivalent seconds after injection, step)
    slave_settings: tuple[tuple[str, str, str], ...] = ()  # (section, key, value) on the slave
    note: str = ""

    def scaled_schedule(self, time_scale: float) -> list[tuple[float, Step]]:
        return [(at / time_scale, step) for at, step in self.schedule]

    def scaled_period(self, time_scale: float) -> float | None:
        return None if self.period is None else self.period / time_scale


# --------------------------------------------------------------------------- actions


def _kill(cluster: Cluster, step: Step) -> None:
    # SIGKILL to the container's init: every process dies at once, no goodbye on
    # the wire -- a power cut.
    run(["docker", "kill", "--signal", "KILL", cluster.container(step.node)], timeout=60)


def _start(cluster: Cluster, step: Step) -> None:
    run(["docker", "start", cluster.container(step.node)], timeout=60)
    cluster.wait_ready([step.node], timeout=120)


def _disconnect(cluster: Cluster, step: Step) -> None:
    run(["docker", "network", "disconnect", "--force", cluster.network, cluster.container(step.node)],
        timeout=60)


def _connect(cluster: Cluster, step: Step) -> None:
    if not cluster.connected(step.node):
        run(["docker", "network", "connect", "--ip", cluster.address(step.node), cluster.network,
             cluster.container(step.node)], timeout=60)


def _kill_registrar(cluster: Cluster, step: Step) -> None:
    # Only Kamailio: the node and its other services go on (the host still pings).
    cluster.exec(step.node, ["pkill", "--signal", "KILL", "--euid", "kamailio", "--exact", "kamailio"], timeout=30)


def _start_registrar(cluster: Cluster, step: Step) -> None:
    cluster.exec(step.node, ["service", "kamailio", "start"], timeout=60)


def _loss(cluster: Cluster, step: Step) -> None:
    percent = int(step.args[0])
    peer = cluster.address(step.args[1] if len(step.args) > 1 else SLAVE)
    if not 0 < percent < 100:
        raise ValueError(f"loss percentage {percent}: expected 1..99")
    ruleset = (
        f"table inet {NFT_TABLE} {{\n"
        f"  chain input {{\n"
        f"    type filter hook input priority -10; policy accept;\n"
        f"    ip saddr {peer} counter\n"
        f"    ip saddr {peer} numgen random mod 100 < {percent} counter drop\n"
        f"  }}\n"
        f"}}\n"
    )
    cluster.exec(step.node, ["nft", "delete", "table", "inet", NFT_TABLE], check=False)
    cluster.exec(step.node, ["nft", "-f", "-"], stdin=ruleset)


def _no_loss(cluster: Cluster, step: Step) -> dict:
    listed = cluster.exec(step.node, ["nft", "list", "table", "inet", NFT_TABLE], check=False)
    cluster.exec(step.node, ["nft", "delete", "table", "inet", NFT_TABLE], check=False)
    counters = [int(n) for n in re.findall(r"counter packets (\d+)", listed.stdout)]
    if len(counters) != 2:
        return {}
    return {"packets_from_peer": counters[0], "packets_dropped": counters[1]}


def _link(state: str) -> Callable[[Cluster, Step], None]:
    def action(cluster: Cluster, step: Step) -> None:
        device = cluster.device(step.node)
        if not device:
            raise ClusterError(f"the {step.node} has no interface with {cluster.address(step.node)}")
        cluster.exec(step.node, ["ip", "link", "set", device, state])
    return action


# An action may return facts worth reporting (e.g. how many packets it dropped).
ACTIONS: dict[str, Callable[[Cluster, Step], dict | None]] = {
    "kill": _kill,
    "start": _start,
    "disconnect": _disconnect,
    "connect": _connect,
    "kill-registrar": _kill_registrar,
    "start-registrar": _start_registrar,
    "loss": _loss,
    "no-loss": _no_loss,
    "link-down": _link("down"),
    "link-up": _link("up"),
}

ACTION_TEXT = {
    "kill": "power off the {node} (docker kill)",
    "start": "power on the {node} (docker start)",
    "disconnect": "disconnect the {node} from the network",
    "connect": "reconnect the {node} to the network",
    "kill-registrar": "kill the registrar (Kamailio) on the {node}",
    "start-registrar": "start the registrar (Kamailio) on the {node}",
    "loss": "drop {args[0]}% of the packets from the slave at the {node} (nftables)",
    "no-loss": "stop dropping packets at the {node}",
    "link-down": "link down on the {node}",
    "link-up": "link up on the {node}",
}


def apply(cluster: Cluster, step: Step) -> dict:
    """Run one step; the facts it reports (often none)."""
    return ACTIONS[step.action](cluster, step) or {}


# --------------------------------------------------------------------------- the catalog


def _flaps(down: float, up: float, cycles: int) -> tuple[tuple[float, Step], ...]:
    """Link up after ``down`` s, down again after ``up`` s, ``cycles`` times (the first down is the injection)."""
    schedule = []
    t = 0.0
    for cycle in range(cycles):
        t += down
        schedule.append((t, Step("link-up")))
        if cycle < cycles - 1:
            t += up
            schedule.append((t, Step("link-down")))
    return tuple(schedule)


CATALOG: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault(
            name="power-off",
            summary="the master loses power: its container is killed",
            inject=(Step("kill"),),
            restore=(Step("start"),),
        ),
        Fault(
            name="network-cut",
            summary="the master's network is cut: its container leaves the network",
            inject=(Step("disconnect"),),
            restore=(Step("connect"),),
        ),
        Fault(
            name="registrar-crash",
            summary="Asterisk crashes on the master (here Kamailio is killed); the host still pings",
            inject=(Step("kill-registrar"),),
            restore=(Step("start-registrar"),),
            note="XiVO's known limitation: without the SIP probe ([probe] sip_probe = on) the slave "
                 "sees a master that pings and never takes over.",
        ),
        Fault(
            name="packet-loss",
            summary="30% of the packets from the slave to the master are lost (nftables), for 10 minutes",
            inject=(Step("loss", args=(30,)),),
            restore=(Step("no-loss"),),
            expect=SERVED,
            period=600.0,
            # 3 pings each lost with p = 0.3 make one check fail with p = 0.027: with
            # XiVO's parity (fail over after 1 failed check) a slave would start its
            # services every ~37 checks.  Three failed checks in a row (p ~ 2e-5) is
            # the anti-flap setting this scenario proves; --failures-before-failover 1
            # shows parity.
            slave_settings=(("failover", "failures_before_failover", "3"),),
        ),
        Fault(
            name="flapping",
            summary="the master's link goes down for 90 s and up for 90 s, four times",
            inject=(Step("link-down"),),
            restore=(Step("link-up"),),
            schedule=_flaps(90.0, 90.0, 4),
            period=4 * 90.0 + 3 * 90.0,
        ),
    )
}

DEFAULT = "power-off"


def get(name: str) -> Fault:
    try:
        return CATALOG[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}: expected one of {', '.join(CATALOG)}") from None
