"""The failover simulator end to end: a real two-node cluster built from our .deb,
SIP phones on the host, faults from the catalog, the report and the verdict.

One cluster (docker-compose project xivo-ha-sim-e2e, brought up once with the
real toolkit) serves every test; each run resets it.  Time scale 10, 50 phones:

* power-off, then failback: every phone moves to the slave and back within the
  bound -- PASS; the slave mails root once for the failover and once for the
  failback, `xivo-ha check` is CRITICAL while it serves and OK after, and its
  metrics textfile counts the failover;
* registrar-crash without the SIP probe: the master still pings, the slave never
  starts its services, the phones stay down -- FAIL, every phone over the bound
  (XiVO's documented limitation, measured);
* registrar-crash with the SIP probe: the slave takes over -- PASS;
* packet-loss (30 % from slave to master): zero failovers -- PASS;
* network-cut with a 3600 s trunk expiry: PSTN calls keep failing after the
  master is back (the carrier keeps the slave's registration);
* power-off with 3 users created after the last replication: they cannot register on
  the slave (the report says why), the others and their XiVO Clients move to it -- PASS.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from simulator_fixtures import (  # noqa: F401  (fixtures)
    NET,
    PHONES,
    PROJECT,
    TIME_SCALE,
    docker_cleanup,
    docker_compose_command,
    docker_compose_file,
    docker_compose_project_name,
    docker_setup,
    node_image,
    sim_cluster,
    simulator_environment,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

MAILBOX = "/var/mail/root"
TEXTFILE = "/var/lib/prometheus/node-exporter/xivo_ha.prom"


def simulate(report_dir: Path, scenario: str, *extra: str) -> tuple[int, dict]:
    """``xivo-ha-simulator run --reuse`` on the e2e cluster; (exit code, report.json)."""
    from xivo_ha_simulator import cli

    argv = ["run", "--reuse", "--project", PROJECT, "--phones", str(PHONES), "--time-scale", f"{TIME_SCALE:g}",
            "--scenario", scenario, "--report-dir", str(report_dir), *extra]
    code = cli.main(argv)
    path = report_dir / "report.json"
    assert path.is_file(), f"no report.json after `xivo-ha-simulator {' '.join(argv)}` (exit {code})"
    return code, json.loads(path.read_text())


def test_cluster_is_configured_by_the_toolkit(sim_cluster):
    info = sim_cluster.bring_up_info
    assert info.master == f"{NET}.10" and info.slave == f"{NET}.11"
    # `xivo-ha enable master` wrote the slave as backup registrar into provisioning.
    assert (info.primary, info.backup) == (info.master, info.slave)
    # ... and into every phone's own device config, which the phone fetches over HTTP.
    from xivo_ha_simulator.phone import provisioned_pair

    assert {provisioned_pair(info.master, 1001 + i) for i in range(PHONES)} == {(info.master, info.slave)}
    # The slave has the master's users after the first replication.
    assert info.users >= PHONES
    # `xivo-ha enable` wrote XiVO's expiry, and the registrar grants it divided by K.
    assert info.expiry == {"minexpiry": "180", "maxexpiry": "300", "defaultexpiry": "240"}
    assert info.granted == {"min_expires": 18, "max_expires": 30, "default_expires": 24}
    # On the slave, cron is not running at K = 10 but the toolkit wrote XiVO's line.
    cron = sim_cluster.exec("slave", ["cat", "/etc/cron.d/xivo-ha-slave"]).stdout
    assert f"* * * * * root /usr/sbin/xivo-check-master-status {info.master} >/dev/null" in cron
    # The files holding the asterisk role's password are not world-readable.
    modes = sim_cluster.exec("master", ["stat", "-c", "%a %U:%G", "/etc/xivo-ha-simulator/node.conf",
                                        "/run/kamailio/kamailio.cfg"]).stdout.split("\n")
    assert modes[:2] == ["600 root:root", "640 root:kamailio"]


def slave_metrics(cluster) -> dict[str, float]:
    """The slave's textfile samples without labels, e.g. ``{"xivo_ha_serving": 1.0}``."""
    text = cluster.exec("slave", ["cat", TEXTFILE], check=False).stdout
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and not line.startswith("#"))
            if "{" not in name}


class WhileServing:
    """Watches the slave during a run; the first time it serves: `xivo-ha check` and the textfile."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.check = None
        self.metrics: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 1500
        while self.check is None and not self._stop.is_set() and time.monotonic() < deadline:
            if self.cluster.slave_state().get("mode") == "serving":
                self.check = self.cluster.exec("slave", ["xivo-ha", "check"], check=False, timeout=120)
                self.metrics = slave_metrics(self.cluster)
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(150)


def test_power_off_fails_over_then_back(sim_cluster, tmp_path):
    sim_cluster.reset()
    sim_cluster.exec("slave", ["rm", "-f", MAILBOX])
    before = slave_metrics(sim_cluster)
    with WhileServing(sim_cluster) as serving:
        code, report = simulate(tmp_path, "power-off", "--failback-after", "30")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert report["registered_at_fault"] == {"master": PHONES}
    assert report["failovers_seen"] == PHONES
    assert report["failover_downtime"]["over_bound"] == 0
    assert report["failback_downtime"]["over_bound"] == 0
    assert sim["slave_failovers"] == 1 and sim["slave_failbacks"] >= 1
    assert sim["counts_at_end"].get("master") == PHONES
    # The slave registered the trunk when it started serving: PSTN calls reached the phones
    # there, within the bound.
    pstn = sim["pstn"]
    assert pstn["trunk_expiry"] == 120 and pstn["calls"]["during"]["connected"] > 0, pstn
    assert pstn["first_connected_after_fault"] <= 300, pstn
    for name in ("report.json", "junit.xml", "timeline.png"):
        assert (tmp_path / name).stat().st_size > 0

    # What the administrator sees on the slave: one mail per change, the monitoring check, metrics.
    mailbox = sim_cluster.exec("slave", ["cat", MAILBOX], check=False).stdout
    subjects = sorted(line.rsplit(": ", 1)[-1] for line in mailbox.splitlines() if line.startswith("Subject: "))
    assert subjects == ["failback", "failover"], mailbox
    assert serving.check is not None, "the slave was never seen serving"
    assert serving.check.returncode == 2, serving.check.stdout
    assert serving.check.stdout.startswith("XIVO-HA CRITICAL - this slave serves the phones (failover)")
    assert serving.metrics["xivo_ha_serving"] == 1
    after = sim_cluster.exec("slave", ["xivo-ha", "check"], check=False, timeout=120)
    assert after.returncode == 0, after.stdout
    metrics = slave_metrics(sim_cluster)
    assert metrics["xivo_ha_serving"] == 0
    assert metrics["xivo_ha_failovers_total"] == before.get("xivo_ha_failovers_total", 0) + 1
    assert metrics["xivo_ha_failbacks_total"] == before.get("xivo_ha_failbacks_total", 0) + 1


def test_registrar_crash_without_sip_probe_never_fails_over(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "registrar-crash")
    sim = report["simulation"]
    assert report["verdict"] == "FAIL" and code == 1
    assert sim["slave_failovers"] == 0, sim["slave_events"]
    assert report["failovers_seen"] == 0
    assert report["failover_downtime"]["over_bound"] == PHONES
    assert report["failover_downtime"]["never"] == PHONES


def test_registrar_crash_with_sip_probe_fails_over(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "registrar-crash", "--sip-probe")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert sim["slave_failovers"] == 1
    assert any(e["condition"] == "registrar-down" for e in sim["slave_events"]), sim["slave_events"]
    assert report["failovers_seen"] == PHONES
    assert report["failover_downtime"]["over_bound"] == 0


def test_packet_loss_causes_no_failover(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "packet-loss", "--failback-after", "30")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert report["failovers_seen"] == 0
    assert sim["slave_failovers"] == 0
    assert sim["lost_registration"] == 0
    assert sim["packets_dropped"] > 0


def test_a_long_trunk_expiry_keeps_pstn_calls_failing_after_the_network_comes_back(sim_cluster, tmp_path):
    """The seed's trunk prerequisite made visible: with `register => ...~3600` PSTN calls fail long
    after the master is back.

    The mechanism: the carrier keeps one binding for the trunk, the last registrant's.  During
    the cut the slave starts serving and registers the trunk, which moves the binding to it.  When
    the network comes back the slave stops its services, silently (nothing unregisters a stopped
    Asterisk), while the master still holds a registration it believes valid for up to 3600 s, so
    it does not register again before its refresh.  Until then the carrier sends every DID to the
    stopped slave and answers the PSTN 408 (its INVITE timer), although the master and its phones
    are fine again.
    """
    from xivo_ha_simulator import cli

    argv = ["run", "--reuse", "--project", PROJECT, "--phones", "10", "--time-scale", f"{TIME_SCALE:g}",
            "--scenario", "network-cut", "--failback-after", "30", "--trunk-expiry", "3600",
            "--pstn-rate", "240", "--report-dir", str(tmp_path)]
    try:
        cli.main(argv)
        report = json.loads((tmp_path / "report.json").read_text())
    finally:
        # The next runs find the default trunk expiry again.
        sim_cluster.set_trunk("master", 120)
        sim_cluster.exec("master", ["xivo-master-slave-db-replication", sim_cluster.address("slave")], timeout=300)
        sim_cluster.exec("master", ["service", "kamailio", "restart"], timeout=60)
    sim = report["simulation"]
    pstn = sim["pstn"]
    assert sim["slave_failovers"] == 1 and sim["slave_failbacks"] >= 1, sim["slave_events"]
    assert pstn["trunk_expiry"] == 3600
    assert pstn["calls"]["during"]["connected"] > 0, pstn  # the slave's registration took the calls
    # Back home, the phones are registered on the master, but PSTN calls still go to the slave.
    assert sim["counts_at_end"].get("master") == 10, sim["counts_at_end"]
    # The carrier's INVITEs to the stopped slave time out; once it stopped, no PSTN call connects.
    assert pstn["failures_after_restore"].get("408 Request Timeout", 0) > 0, pstn
    assert pstn["last_failed_after_fault"] > pstn["restored_after_fault"] + 60, pstn
    assert pstn["last_failed_after_fault"] - pstn["last_connected_after_fault"] > 20, pstn

def test_users_created_after_the_last_replication_cannot_register_on_the_slave(sim_cluster, tmp_path):
    # 3 users created 20 s real (2 s here) before a power-off: the master last replicated when the
    # run reset the cluster, before they existed, and its next hourly run (every 360 s here) is far.
    code, report = simulate(tmp_path, "power-off", "--new-users", "3", "--created-before-fault", "20")
    rpo, sim = report["rpo"], report["simulation"]
    assert rpo["users"] == 3 and not rpo["replicated_before_fault"], rpo
    assert rpo["registered_on_slave"] == 0 and rpo["called_on_slave"] == 0, rpo
    assert "not replicated yet: created after the last replication" in rpo["sentence"]
    assert rpo["last_replication_wall"] < rpo["created_wall"]
    assert sim["replications"] == []  # none was due during the run
    # The users created before that replication (the fleet's) moved to the slave and passed.
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert report["failovers_seen"] == PHONES
    # The XiVO Clients: every one logged in again, on the slave's CTI server, within the bound.
    cti = report["cti_reconnection"]
    assert cti["phones"] == PHONES and cti["over_bound"] == 0 and cti["never"] == 0, cti
    assert cti["p50"] > 0  # they did lose the powered-off master
    last_login = {pid: [e for e in evs if e["event"] == "cti_connected"][-1]["node"]
                  for pid, evs in sim["cti_events"].items()}
    assert set(last_login.values()) == {"slave"}, last_login
