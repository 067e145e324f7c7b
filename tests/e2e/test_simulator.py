"""The failover simulator end to end: a real two-node cluster built from our .deb,
SIP phones on the host that register and call each other, faults from the
catalog, the report and its call-based verdict.

One cluster (docker-compose project xivo-ha-sim-e2e, brought up once with the
real toolkit) serves every test; each run resets it.  Time scale 10, 10 phones
calling at 360 calls per phone per real hour (one every 10 s: an outage is
sampled to within seconds; the HA settings are the shipped defaults):

* power-off, then failback: every phone can call and be called again within
  the bound, on the slave and back on the master -- PASS; the slave mails root
  once for the failover and once for the failback, `xivo-ha check` is CRITICAL
  while it serves and OK after, and its metrics textfile counts the failover;
* network-cut: the slave takes over, calls come back -- PASS;
* registrar-crash without the SIP probe: the master still pings, the slave never
  starts its services, no call gets through again -- FAIL, every phone never
  back (XiVO's documented limitation, measured);
* registrar-crash with the SIP probe: the slave takes over -- PASS;
* packet-loss (30 % from slave to master): zero failovers, no call failed -- PASS;
* flapping (the master's link down and up, four times): several outages per
  phone, each within the bound -- PASS;
* a stale slave (its `usersip` emptied after the replication): after the
  power-off no phone can register or call on it -- FAIL, and the reasons say so.
* network-cut with a 3600 s trunk expiry: PSTN calls keep failing after the
  master is back (the carrier keeps the slave's registration);
* power-off with `--compare-replication --fast --sweep 5`, 3 users created 60 s before the
  fault: hourly, the new users cannot register on the slave (the report says why), the
  others and their XiVO Clients move to it -- PASS; continuous, the slave's registrar
  starts with the bindings the stream brought, phones are called through it before they
  register there, the new users register and call on it, and every DID is reached sooner
  than with the hourly copy (PSTN outages printed) -- PASS.
"""

from __future__ import annotations

import io
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
CALLING = 10  # phones of each run (the cluster has PHONES users)
CALL_RATE = 360.0  # calls per phone per real hour
CALLS = ("outgoing", "incoming")


def options(report_dir: Path, scenario: str, **extra):
    """The e2e runs' simulator options: the reused cluster, few phones calling often."""
    from xivo_ha_simulator.simulation import Options

    return Options(phones=CALLING, scenario=scenario, time_scale=TIME_SCALE, report_dir=str(report_dir),
                   call_rate=CALL_RATE, pstn_rate=CALL_RATE, reuse=True, project=PROJECT, **extra)


def simulate(report_dir: Path, scenario: str, *extra: str) -> tuple[int, dict]:
    """``xivo-ha-simulator run --reuse`` on the e2e cluster; (exit code, report.json)."""
    from xivo_ha_simulator import cli

    argv = ["run", "--reuse", "--project", PROJECT, "--phones", str(CALLING), "--time-scale", f"{TIME_SCALE:g}",
            "--call-rate", f"{CALL_RATE:g}", "--pstn-rate", f"{CALL_RATE:g}", "--scenario", scenario, "--report-dir", str(report_dir), *extra]
    code = cli.main(argv)
    path = report_dir / "report.json"
    assert path.is_file(), f"no report.json after `xivo-ha-simulator {' '.join(argv)}` (exit {code})"
    return code, json.loads(path.read_text())


def assert_calls_back(report: dict) -> None:
    """Every phone called and was called after the fault, and came back within the bound both ways."""
    for direction in CALLS:
        figures = report["outages"][direction]
        assert figures["decisive"] and figures["phones"] == CALLING, (direction, figures)
        assert figures["over_bound"] == [] and figures["unmeasured"] == [], (direction, figures)
        assert figures["max"] is not None and figures["max"] <= report["bound_seconds"], (direction, figures)
    assert report["outages"]["over_bound"] == []
    assert report["calls"]["internal"]["during"]["attempts"] > 0
    assert report["outages"]["pstn"]["decisive"] and report["outages"]["pstn"]["over_bound"] == []


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
    assert report["registered_at_fault"] == {"master": CALLING}
    assert report["failovers_seen"] == CALLING
    assert_calls_back(report)
    assert report["calls"]["internal"]["during"]["failures"] > 0  # the power cut was felt
    assert report["calls"]["internal"]["after"]["attempts"] > 0  # and calls were placed after the failback
    assert report["outages"]["registration"]["decisive"] is False
    assert sim["slave_failovers"] == 1 and sim["slave_failbacks"] >= 1
    assert len(report["slave_serving_since"]) == 1
    assert sim["counts_at_end"].get("master") == CALLING
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


def test_network_cut_fails_over(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "network-cut")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert sim["slave_failovers"] == 1, sim["slave_events"]
    assert report["failovers_seen"] == CALLING
    assert_calls_back(report)


def test_registrar_crash_without_sip_probe_never_fails_over(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "registrar-crash")
    sim = report["simulation"]
    assert report["verdict"] == "FAIL" and code == 1
    assert sim["slave_failovers"] == 0, sim["slave_events"]
    assert report["failovers_seen"] == 0
    for direction in CALLS:
        assert report["outages"][direction]["never"] == CALLING, report["outages"][direction]
    assert len(report["outages"]["over_bound"]) == CALLING
    assert report["reasons"][1].startswith(f"outgoing calls: {CALLING} of {CALLING} phones over 300s")
    assert report["failover_downtime"]["never"] == CALLING


def test_registrar_crash_with_sip_probe_fails_over(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "registrar-crash", "--sip-probe")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert sim["slave_failovers"] == 1
    assert any(e["condition"] == "registrar-down" for e in sim["slave_events"]), sim["slave_events"]
    assert report["failovers_seen"] == CALLING
    assert_calls_back(report)


def test_packet_loss_causes_no_failover(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "packet-loss", "--failback-after", "30")
    sim = report["simulation"]
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert report["failovers_seen"] == 0
    assert sim["slave_failovers"] == 0
    assert sim["lost_registration"] == 0
    assert sim["packets_dropped"] > 0
    during = report["calls"]["internal"]["during"]
    assert during["attempts"] > 0 and during["failures"] == 0, during
    # The report states the loss and the settings it ran with: the scenario's, not tuned for the test.
    assert sim["fault_steps"] == ["drop 30% of the packets from the slave at the master (nftables)"]
    assert sim["slave_settings"] == {"probe.sip_probe": "off", "failover.failures_before_failover": "3",
                                     "failover.loop": "0", "failover.interval": "10", "probe.ping_count": "3"}


def test_flapping_reports_each_outage_within_the_bound(sim_cluster, tmp_path):
    code, report = simulate(tmp_path, "flapping")
    phones = report["per_phone"].values()
    # Four cuts: phones lose their calls more than once; each outage counts, the longest decides.
    assert report["simulation"]["slave_failovers"] >= 2, report["simulation"]["slave_events"]
    assert max(len(p["outgoing"]["outages"]) for p in phones) >= 2
    assert all(p["outgoing"]["total"] >= p["outgoing"]["longest"] for p in phones if p["outgoing"]["total"])
    assert report["outages"]["outgoing"]["max_total"] >= report["outages"]["outgoing"]["max"]
    # With XiVO's defaults the slave starts and stops its services at every cut; phones split between
    # the two registrars and a phone left on a stopped slave only notices at its next refresh.
    assert report["verdict"] == "PASS" and code == 0, report["reasons"]
    assert_calls_back(report)


def test_a_stale_slave_fails_the_call_verdict(sim_cluster, tmp_path):
    """The slave's SIP lines emptied after the replication: the phones cannot register or call there."""
    from xivo_ha_simulator.simulation import Simulation

    class StaleSlave(Simulation):
        def inject_and_observe(self, cluster, checker, runner):
            # After the run's replication and with every phone registered on the master.
            cluster.sql("slave", "TRUNCATE usersip CASCADE")
            return super().inject_and_observe(cluster, checker, runner)

    progress = io.StringIO()
    outcome = StaleSlave(options(tmp_path, "power-off"), out=progress).run()
    report = json.loads((tmp_path / "report.json").read_text())
    assert outcome.verdict == report["verdict"] == "FAIL"
    assert report["simulation"]["slave_failovers"] == 1
    for direction in CALLS:
        assert report["outages"][direction]["never"] == CALLING, report["outages"][direction]
    reasons = " ".join(report["reasons"])
    assert f"outgoing calls: {CALLING} of {CALLING} phones over 300s" in reasons
    assert "its last REGISTER failed, slave: 401 Unauthorized" in reasons, reasons
    # The next replication gives the slave its lines back (as every run's does).
    sim_cluster.reset()
    sim_cluster.exec("master", ["xivo-master-slave-db-replication", sim_cluster.address("slave")], timeout=300)
    assert sim_cluster.users_digest("slave") == sim_cluster.users_digest("master"), progress.getvalue()[-3000:]
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


def compare(report_dir: Path, scenario: str, *extra: str) -> tuple[int, dict, dict]:
    """``xivo-ha-simulator run --compare-replication`` on the e2e cluster; (exit code, comparison.json,
    report.json by mode)."""
    from xivo_ha_simulator import cli

    argv = ["run", "--reuse", "--project", PROJECT, "--phones", str(CALLING), "--time-scale", f"{TIME_SCALE:g}",
            "--call-rate", f"{CALL_RATE:g}", "--pstn-rate", f"{CALL_RATE:g}", "--scenario", scenario,
            "--report-dir", str(report_dir), "--compare-replication", *extra]
    code = cli.main(argv)
    path = report_dir / "comparison.json"
    assert path.is_file(), f"no comparison.json after `xivo-ha-simulator {' '.join(argv)}` (exit {code})"
    reports = {mode: json.loads((report_dir / mode / "report.json").read_text()) for mode in ("hourly", "continuous")}
    return code, json.loads(path.read_text()), reports


def assert_new_users_not_on_the_hourly_slave(report: dict) -> None:
    # 3 users created 60 s real (6 s here) before the power-off: the master last replicated when
    # the run reset the cluster, before they existed, and its next hourly run (every 360 s here) is far.
    rpo, sim = report["rpo"], report["simulation"]
    assert rpo["users"] == 3 and not rpo["replicated_before_fault"] and rpo["on_slave_at_fault"] == 0, rpo
    assert rpo["registered_on_slave"] == 0 and rpo["called_on_slave"] == 0, rpo
    assert "not replicated yet: created after the last replication" in rpo["sentence"]
    assert rpo["last_replication_wall"] < rpo["created_wall"]
    assert sim["replications"] == []  # none was due during the run
    # The users created before that replication (the fleet's) moved to the slave and passed.
    assert report["verdict"] == "PASS", report["reasons"]
    assert report["failovers_seen"] == CALLING
    # The XiVO Clients: every one logged in again, on the slave's CTI server, within the bound.
    cti = report["cti_reconnection"]
    assert cti["phones"] == CALLING and cti["over_bound"] == 0 and cti["never"] == 0, cti
    assert cti["p50"] > 0  # they did lose the powered-off master
    last_login = {pid: [e for e in evs if e["event"] == "cti_connected"][-1]["node"]
                  for pid, evs in sim["cti_events"].items()}
    assert set(last_login.values()) == {"slave"}, last_login


def assert_the_continuous_slave_knew_the_phones_and_the_new_users(report: dict, cluster) -> None:
    sim = report["simulation"]
    assert (sim["replication_mode"], sim["fast"]) == ("continuous", True)
    assert sim["check_switches"] == ["--loop", "5.5", "--interval", "0.5"]
    assert report["verdict"] == "PASS", report["reasons"]
    # The users created 60 s before the fault reached the slave by the stream: they registered and
    # called there.
    rpo = report["rpo"]
    assert rpo["mode"] == "continuous" and rpo["on_slave_at_fault"] == 3 and rpo["replicated_before_fault"], rpo
    assert rpo["registered_on_slave"] == 3 and rpo["called_on_slave"] == 3, rpo
    serving = [e["wall"] for e in sim["slave_events"] if e["mode"] == "serving"]
    assert len(serving) == 1, sim["slave_events"]
    # Per phone: the first call it answered once the slave served, and its first REGISTER there.
    answered, registered = {}, {}
    for number, entry in report["per_phone"].items():
        events = entry["events"]
        answered[number] = next((e["wall"] for e in events if e["event"] == "call_answered"
                                 and e["wall"] >= serving[0]), None)
        registered[number] = next((e["wall"] for e in events if e["event"] == "registered"
                                   and e.get("node") == "slave"), None)
    before = [n for n in answered if answered[n] is not None
              and (registered[n] is None or answered[n] < registered[n])]
    # Phones that only ever registered on the master were reached through the slave: it
    # loaded their bindings, shipped by the stream, when it started serving.
    assert before, {n: (answered[n], registered[n]) for n in answered}
    assert int(cluster.sql("slave", "SELECT count(DISTINCT username) FROM location")) >= len(before)


def test_hourly_and_continuous_replication_side_by_side(sim_cluster, tmp_path):
    """Power-off, fast checks, a PSTN sweep, 3 users created 60 s before the fault: hourly, then continuous."""
    code, result, reports = compare(tmp_path, "power-off", "--fast", "--sweep", "5", "--new-users", "3",
                                    "--created-before-fault", "60")
    assert_new_users_not_on_the_hourly_slave(reports["hourly"])
    assert_the_continuous_slave_knew_the_phones_and_the_new_users(reports["continuous"], sim_cluster)
    assert code == 0 and result["verdict"] == "PASS", result["runs"]
    assert {mode: reports[mode]["simulation"]["pstn"]["sweep"] for mode in reports} == {"hourly": 5.0,
                                                                                       "continuous": 5.0}
    pstn = result["directions"]["pstn"]
    for mode in ("hourly", "continuous"):
        assert pstn[mode]["phones"] == CALLING and pstn[mode]["never"] == 0, pstn
    backs = "; ".join(f"{mode} {pstn[mode]['back_p50']}/{pstn[mode]['back_p95']}/{pstn[mode]['back_max']}"
                      for mode in ("hourly", "continuous"))
    print(f"PSTN: each DID first reached after the fault (real-equivalent s, p50/p95/max): {backs}; slave "
          f"serving after {result['runs']['continuous']['slave_serving_after_fault']} s")
    # The hourly slave starts with expired bindings: a DID is reached once its phone re-registered
    # there; the continuous slave starts with the master's bindings.
    assert pstn["continuous"]["back_p95"] < pstn["hourly"]["back_p95"], pstn


def test_a_continuous_cluster_goes_back_to_hourly_after_a_power_off(sim_cluster, tmp_path):
    """What `--reuse` does before an hourly run, on a cluster left by a continuous power-off: the
    killed master kept the stream's logical slot, which goes before its PostgreSQL restarts
    without logical WAL (PostgreSQL does not start with a logical slot and wal_level replica)."""
    from xivo_ha_simulator.simulation import Simulation

    slots = "SELECT count(*) FROM pg_replication_slots"
    progress = io.StringIO()
    sim_cluster.restore_master()  # started again, as a reset starts it
    if sim_cluster.replication_mode("master") != "continuous" or sim_cluster.sql("master", slots) == "0":
        Simulation(options(tmp_path, "power-off", replication="continuous"), out=progress).reuse(sim_cluster)
    assert int(sim_cluster.sql("master", slots)) >= 1
    assert sim_cluster.sql("master", "SELECT current_setting('wal_level')") == "logical"
    Simulation(options(tmp_path, "power-off"), out=progress).reuse(sim_cluster)
    assert "xivo-ha enable again on both nodes" in progress.getvalue()
    assert sim_cluster.sql("master", "SELECT current_setting('wal_level')") == "replica"
    assert sim_cluster.sql("master", slots) == "0"
    assert [sim_cluster.replication_mode(node) for node in ("master", "slave")] == ["hourly", "hourly"]
