#!/usr/bin/python3
"""What one xivo-check-master-status run costs, and how fast a failover is detected.

Two measurements, printed as medians (nothing here is asserted anywhere):

1. Overhead.  One ``xivo-check-master-status 127.0.0.1`` run on a temp root whose
   ha.conf makes this host the slave of 127.0.0.1, with probes that answer at once
   (one ping to loopback, ``-W 1``) and one service whose status is a ``test -e`` of
   a pid file -- against the shell equivalent ``ping -n -q -c 1 -W 1 127.0.0.1 &&
   test -e <pidfile>``, interleaved in the same run, 20 of each.  Loopback is refused
   as a peer address unless ``XIVO_HA_ALLOW_LOOPBACK_PEER=1`` (the single-host bench
   switch of role.validate_peer), which this bench sets: the alternative, a master in
   a network namespace, would add ``ip netns exec`` (a few ms) to both sides without
   changing the difference.  Both sides run on /usr/bin/python3 with Debian's
   packages (plumbum 1.8) and the source tree on PYTHONPATH, as the .deb runs.
   Python start-up and import time are printed apart, since they dominate.

2. Detection time, with a master in a network namespace: the time from its link going
   down to the slave's service (a real daemon behind an init script) running.
   * fast mode: ``--loop L --interval I`` with ``ping_count = 1`` -- a few trials, the
     link cut at a random moment after the first check;
   * parity mode (XiVO: cron every minute, ``ping -c 3 -i 10``): one full-scale check
     is timed with the link already down (the ping's own 3 x 10 s); the cron phase
     adds 0-60 s on top, uniformly.  With ``--parity-trials N`` the cron is emulated
     for real (N trials of up to ~2 minutes each); ``--parity-scale 10`` runs the
     same emulation 10 times faster (cron every 6 s, ping 3 x 1 s).

Run as root (network namespaces, start-stop-daemon):  python3 bench/check_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from netns import Lab, SlaveServices  # noqa: E402

PYTHON = "/usr/bin/python3"
CHECK = str(REPO / "bin" / "xivo-check-master-status")
MANAGE = str(REPO / "bin" / "xivo-manage-slave-services")


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def write_ha_conf(root: Path, role: str, remote: str) -> None:
    path = root / "etc" / "xivo" / "ha.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"node_type": role, "remote_address": remote}) + "\n")


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIVO_HA_")}
    env.update(
        XIVO_HA_ROOT=str(root),
        XIVO_HA_SYSLOG_SOCKET=str(root / "no-syslog"),  # keep the host's syslog out of it
        PYTHONPATH=str(REPO / "lib"),
    )
    return env


# --- 1. overhead ----------------------------------------------------------------------


def overhead(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="xivo-ha-bench-") as tmp:
        root = Path(tmp)
        write_ha_conf(root, "slave", "127.0.0.1")
        pidfile = root / "run" / "asterisk.pid"
        pidfile.parent.mkdir()
        env = base_env(root)
        env.update(
            XIVO_HA_ALLOW_LOOPBACK_PEER="1",
            XIVO_HA_PROBE_PING_COUNT="1",
            XIVO_HA_PROBE_PING_INTERVAL="0.2",
            XIVO_HA_PROBE_PING_TIMEOUT="1",
            XIVO_HA_SERVICES_SLAVE_SERVICES="asterisk",
            XIVO_HA_SERVICES_STATUS_COMMAND=f"test,-e,{root}/run/{{service}}.pid",
        )
        ours = [PYTHON, CHECK, "127.0.0.1"]
        # The service is not running: `test -e` answers 1, as our status command does.
        shell = ["sh", "-c", f"ping -n -q -c 1 -W 1 127.0.0.1 >/dev/null && test -e {pidfile}"]
        bare = [PYTHON, "-c", "pass"]
        imports = [PYTHON, "-c", "import xivo_ha.cli.check_master"]
        plumbum = [PYTHON, "-c", "import plumbum.cli"]
        timed(ours, env)  # warm the caches; the first run also records the condition
        samples: dict[str, list[float]] = {"ours": [], "shell": [], "python": [], "imports": [], "plumbum": []}
        for _ in range(runs):
            samples["ours"].append(timed(ours, env))
            samples["shell"].append(timed(shell, env, ok=(0, 1)))
            samples["python"].append(timed(bare, env))
            samples["imports"].append(timed(imports, env))
            samples["plumbum"].append(timed(plumbum, env))
    ours_ms = median_ms(samples["ours"])
    shell_ms = median_ms(samples["shell"])
    python_ms = median_ms(samples["python"])
    imports_ms = median_ms(samples["imports"])
    plumbum_ms = median_ms(samples["plumbum"])
    print(f"overhead, median of {runs} runs each (ping 127.0.0.1 once, one service status):")
    print(f"  xivo-check-master-status 127.0.0.1   {ours_ms:7.1f} ms")
    print(f"  shell: ping -c1 && test -e pidfile   {shell_ms:7.1f} ms")
    print(f"  ratio                                {ours_ms / shell_ms:7.1f} x")
    print(f"  of which: python3 start-up           {python_ms:7.1f} ms")
    print(f"            imports                    {imports_ms - python_ms:7.1f} ms")
    print(f"              of which plumbum.cli     {plumbum_ms - python_ms:7.1f} ms")
    print(f"            the check itself           {ours_ms - imports_ms:7.1f} ms")
    print(f"  target <= 150 ms: {'met' if ours_ms <= 150 else 'NOT met'}")


# --- 2. detection -----------------------------------------------------------------------


class Bench:
    """A slave and a master in namespaces, one real service on the slave."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.lab = Lab().setup()
        self.services = SlaveServices(tmp / "services")
        self.services.add_sleeper("asterisk")
        self.root = tmp / "node"
        write_ha_conf(self.root, "slave", self.lab.master_address)
        self.env = base_env(self.root)
        self.env.update(self.services.env(["asterisk"]))

    def reset(self) -> None:
        self.lab.master_link(True)
        subprocess.run([PYTHON, MANAGE, "stop"], env=self.env, capture_output=True, timeout=120)
        (self.root / "var/lib/xivo-ha/failover.json").unlink(missing_ok=True)

    def check_argv(self, *args: str) -> list[str]:
        return self.lab.in_slave([PYTHON, CHECK, *args, self.lab.master_address])

    def state(self) -> dict | None:
        path = self.root / "var/lib/xivo-ha/failover.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_running(self, limit: float) -> float | None:
        """Seconds until the service runs (polled every 5 ms), None past `limit`."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self.services.running("asterisk"):
                return time.monotonic() - started
            time.sleep(0.005)
        return None

    def close(self) -> None:
        self.services.cleanup()
        self.lab.cleanup()


def fast_mode(bench: Bench, trials: int, loop: float, interval: float) -> list[float]:
    env = dict(bench.env, XIVO_HA_PROBE_PING_COUNT="1", XIVO_HA_PROBE_PING_INTERVAL="0.2",
               XIVO_HA_PROBE_PING_TIMEOUT="1")
    times = []
    for _ in range(trials):
        bench.reset()
        process = subprocess.Popen(
            bench.check_argv("--loop", f"{loop:g}", "--interval", f"{interval:g}"),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(2000):  # the first check is recorded (bounded wait)
                if bench.state():
                    break
                time.sleep(0.005)
            time.sleep(random.uniform(0, interval))
            bench.lab.master_link(False)
            detected = bench.wait_running(loop + 5)
            if detected is not None:
                times.append(detected)
        finally:
            process.wait(timeout=loop + 60)
    return times


def parity_single_run(bench: Bench, count: int, interval: float) -> float:
    """One check with the link already down: how long until the service runs."""
    env = dict(bench.env, XIVO_HA_PROBE_PING_COUNT=str(count), XIVO_HA_PROBE_PING_INTERVAL=f"{interval:g}",
               XIVO_HA_PROBE_PING_TIMEOUT="1")
    bench.reset()
    bench.lab.master_link(False)
    started = time.monotonic()
    subprocess.run(bench.check_argv(), env=env, capture_output=True, timeout=count * interval + 120)
    if not bench.services.running("asterisk"):
        raise SystemExit("the parity run did not start the service")
    return time.monotonic() - started


def parity_emulated(bench: Bench, trials: int, scale: float) -> list[float]:
    """Cron every 60/scale s, ping 3 x 10/scale s; the link cut at a random moment."""
    period = 60.0 / scale
    env = dict(bench.env, XIVO_HA_PROBE_PING_COUNT="3", XIVO_HA_PROBE_PING_INTERVAL=f"{max(0.2, 10.0 / scale):g}",
               XIVO_HA_PROBE_PING_TIMEOUT="1")
    times = []
    for _ in range(trials):
        bench.reset()
        cut_at = time.monotonic() + random.uniform(0, period)
        next_tick = time.monotonic()
        cut = None
        running: list[subprocess.Popen] = []
        deadline = time.monotonic() + 3 * period + 60
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_tick:
                running.append(subprocess.Popen(bench.check_argv(), env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
                next_tick += period
            if cut is None and now >= cut_at:
                bench.lab.master_link(False)
                cut = now
            if cut is not None and bench.services.running("asterisk"):
                times.append(time.monotonic() - cut)
                break
            time.sleep(0.005)
        for process in running:
            process.wait(timeout=120)
    return times


def describe(label: str, times: list[float]) -> None:
    if not times:
        print(f"  {label}: no detection")
        return
    print(
        f"  {label}: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} trials"
    )


def detection(args) -> None:
    if os.geteuid() != 0:
        print("detection: skipped (network namespaces need root)")
        return
    if shutil.which("start-stop-daemon") is None:
        print("detection: skipped (start-stop-daemon is missing)")
        return
    with tempfile.TemporaryDirectory(prefix="xivo-ha-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            print("detection, link down -> service running (master in a network namespace):")
            for interval in args.fast_intervals:
                times = fast_mode(bench, args.fast_trials, args.fast_loop, interval)
                describe(f"fast mode, --loop {args.fast_loop:g} --interval {interval:g}, ping_count 1", times)
            if not args.skip_parity:
                run = parity_single_run(bench, 3, 10.0)
                print(
                    f"  parity mode, one check with the link down (ping -c 3 -i 10): {run:.2f} s; "
                    f"with cron's phase: {run:.0f}-{run + 60:.0f} s, about {run + 30:.0f} s on average"
                )
            if args.parity_scale and args.parity_trials:
                times = parity_emulated(bench, args.parity_trials, args.parity_scale)
                label = "parity mode, cron emulated" + (
                    f" {args.parity_scale:g}x faster (multiply by {args.parity_scale:g})" if args.parity_scale != 1 else ""
                )
                describe(label, times)
        finally:
            bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="overhead samples of each command (default 20)")
    parser.add_argument("--fast-trials", type=int, default=5)
    parser.add_argument("--fast-loop", type=float, default=10.0)
    parser.add_argument("--fast-intervals", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--skip-parity", action="store_true", help="skip the full-scale 3 x 10 s check")
    parser.add_argument("--parity-trials", type=int, default=0, help="emulate cron for real this many times")
    parser.add_argument("--parity-scale", type=float, default=10.0, help="speed-up of the cron emulation")
    parser.add_argument("--overhead-only", action="store_true")
    args = parser.parse_args()
    overhead(args.runs)
    if not args.overhead_only:
        detection(args)


if __name__ == "__main__":
    main()
