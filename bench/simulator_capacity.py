#!/usr/bin/env python3
"""How much SIP load the simulator's phones generate, next to SIPp.

Against one Kamailio registrar on 127.0.0.1 (the node template, started with
the test fixture: it authenticates every REGISTER against a node database
holding a line for each phone and each SIPp user), in one run:

1. REGISTER/s at 0 failures, SIPp (``sipp`` from Debian's sip-tester, a
   REGISTER-only scenario written here) and our phones: the rate is ramped
   until a REGISTER fails or goes unanswered (5 s), or the generator cannot
   keep up; the highest clean rate is then run three more times and the
   median achieved rate is kept.  Both generators retransmit at 500 ms.
   SIPp answers a fresh 401 challenge for each registration (two REGISTERs
   per registration counted); our phones, as desk phones do, reuse the nonce
   of their last challenge (one REGISTER, checked by the registrar all the
   same), so the two rates are registrations per second, not messages.
2. The ratio ours / SIPp (target >= 0.25).  As both share two cores with
   the registrar, the generators' CPU time per REGISTER is shown too: when
   the achieved rates are close, Kamailio is the limit and the CPU figure
   tells how the generators compare on their own.
3. The most phones kept registered and refreshing: fleets of growing size
   with short expiries; a phone "keeps" when it registered and every refresh
   over two refresh cycles succeeded (no failure, no lapse).  Target >= 5000.

Everything is bounded: each step has a time limit, and the whole run stops
starting new steps after ``--budget`` seconds (default 480).  Only loopback
addresses are used.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "simulator"))

from kamailio_fixture import line_credentials, start_kamailio  # noqa: E402

from xivo_ha_simulator.events import EXPIRED, REGISTER_FAILED, REGISTERED  # noqa: E402
from xivo_ha_simulator.phone import Fleet, PhoneConfig, Registrar  # noqa: E402

HOST = "127.0.0.1"
STEP_SECONDS = 3.0  # sending time of one ramp step
ANSWER_TIMEOUT = 5.0  # a REGISTER unanswered this long (retransmissions included) is a failure
RATES = [500, 1000, 2000, 3000, 4000, 6000, 8000, 11000, 15000, 20000]
REPEATS = 3
FLEET_SIZES = [1000, 2000, 5000, 8000, 10000]
KEEP_EXPIRES = 10  # seconds asked and granted: a refresh every 5 s
KEEP_CYCLES = 2
POOL = 4000  # phones taking turns for the REGISTER/s measurement
POOL_LINES = range(500000, 500000 + POOL)  # extensions of the pool's lines
SIPP_LINES = range(200000, 200000 + POOL)  # and of the lines SIPp registers
FLEET_FIRST = 1_000_000  # first extension of the kept fleets
LOCAL_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- One registration per call: REGISTER, 401, REGISTER with the digest answer;
     users cycle through users.csv, each with its [authentication] keyword. -->
<scenario name="register-only">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      Expires: 3600
      User-Agent: SIPp register bench
      Content-Length: [len]

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port]>
      [field1]
      Expires: 3600
      User-Agent: SIPp register bench
      Content-Length: [len]

    ]]>
  </send>
  <recv response="200" rtd="true"/>
</scenario>
"""


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() > seconds


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- SIPp


def sipp_run(workdir: Path, port: int, rate: int, count: int) -> dict:
    """One SIPp run of ``count`` REGISTERs at ``rate``/s; counts from its final statistics."""
    stats = workdir / f"sipp-{rate}-{time.monotonic_ns()}.csv"
    command = [
        "sipp", f"{HOST}:{port}", "-sf", str(workdir / "register.xml"), "-inf", str(workdir / "users.csv"),
        "-i", HOST, "-p", "0", "-r", str(rate), "-rp", "1000", "-m", str(count), "-l", "5000",
        "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-recv_timeout", str(int(ANSWER_TIMEOUT * 1000)), "-timeout", str(int(count / rate + 30)),
        "-timeout_error", "-max_socket", "64",
    ]
    started = time.monotonic()
    cpu_before = _children_cpu()
    try:
        subprocess.run(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=count / rate + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"rate": rate, "ok": 0, "failed": count, "retransmissions": 0, "achieved": 0.0,
                "cpu_us_per_register": None}
    elapsed = time.monotonic() - started
    cpu = _children_cpu() - cpu_before  # SIPp's own CPU time: the registrar is not a waited-for child
    with stats.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    last = rows[-1] if rows else {}
    ok = int(last.get("SuccessfulCall(C)", 0) or 0)
    failed = int(last.get("FailedCall(C)", 0) or 0) + max(0, count - ok - int(last.get("FailedCall(C)", 0) or 0))
    return {
        "rate": rate,
        "ok": ok,
        "failed": failed,
        "retransmissions": int(last.get("Retransmissions(C)", 0) or 0),
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "cpu_us_per_register": cpu / ok * 1e6 if ok else None,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- our phones


async def our_rate_step(fleet: Fleet, rate: int, count: int) -> dict:
    """``count`` REGISTERs at ``rate``/s from a pool of registered phones, each refreshing on demand."""
    loop = asyncio.get_running_loop()
    phones = fleet.phones
    stats = fleet.stats
    ok0, failed0, retrans0 = stats.register_ok, stats.register_failed, stats.retransmissions
    sent = index = 0
    cpu_before = time.process_time()
    started = loop.time()
    send_limit = started + 3 * count / rate + 5  # the generator falling behind ends the step
    while sent < count and loop.time() < send_limit:
        due = min(count, int((loop.time() - started) * rate) + 1)
        tries = 0
        while sent < due and tries < len(phones):
            phone = phones[index % len(phones)]
            index += 1
            tries += 1
            if phone.refresh_now():
                sent += 1
                tries = 0
        await asyncio.sleep(0.001)
    last_ok, last_change = stats.register_ok, loop.time()
    drain_limit = loop.time() + ANSWER_TIMEOUT
    while any(p.busy for p in phones) and loop.time() < drain_limit:
        await asyncio.sleep(0.005)
        if stats.register_ok != last_ok:
            last_ok, last_change = stats.register_ok, loop.time()
    cpu = time.process_time() - cpu_before
    unanswered = sum(1 for p in phones if p.busy)
    ok = stats.register_ok - ok0
    elapsed = max(last_change - started, count / rate)
    return {
        "rate": rate,
        "ok": ok,
        "failed": stats.register_failed - failed0 + unanswered + (count - sent),
        "retransmissions": stats.retransmissions - retrans0,
        "achieved": ok / elapsed if elapsed > 0 else 0.0,
        "cpu_us_per_register": cpu / ok * 1e6 if ok else None,
    }


async def our_pool(port: int) -> Fleet:
    # K=1: T1 500 ms like SIPp's retrans; a long expiry so that no refresh of
    # its own interferes: every REGISTER is one the bench asked for.
    fleet = Fleet(Registrar("registrar", HOST, port), None, POOL, PhoneConfig(expires=3600, time_scale=1),
                  local_hosts=LOCAL_HOSTS, first_user=POOL_LINES.start, credentials=line_credentials)
    await fleet.start(rate=4000)
    await fleet.wait_registered(30)
    return fleet


# --------------------------------------------------------------------------- ramp


def ramp(name: str, step, budget: Budget) -> tuple[int | None, list[dict]]:
    """Highest target rate with 0 failures, and the steps run."""
    steps, best = [], None
    for rate in RATES:
        if not budget.allows(STEP_SECONDS * 3 + ANSWER_TIMEOUT + 60):
            say(f"  {name}: time budget reached, ramp stopped")
            break
        result = step(rate, int(rate * STEP_SECONDS))
        steps.append(result)
        clean = result["failed"] == 0
        cpu = result["cpu_us_per_register"]
        say(f"  {name:5} target {rate:>6}/s  achieved {result['achieved']:8.0f}/s  ok {result['ok']:>6}"
            f"  failed {result['failed']:>5}  retransmissions {result['retransmissions']:>5}"
            f"  CPU {'-' if cpu is None else f'{cpu:.0f}'} us/REGISTER")
        if not clean:
            break
        best = rate
        if result["achieved"] < 0.85 * rate:
            break  # saturated: a higher target would not be reached either
    return best, steps


def repeat(step, rate: int) -> list[dict]:
    return [step(rate, int(rate * STEP_SECONDS)) for _ in range(REPEATS)]


def median_clean(results: list[dict]) -> float:
    return statistics.median(r["achieved"] if r["failed"] == 0 else 0.0 for r in results)


def median_cpu(results: list[dict]) -> float | None:
    values = [r["cpu_us_per_register"] for r in results if r["cpu_us_per_register"]]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- phones kept


async def keep_fleet(port: int, size: int) -> dict:
    config = PhoneConfig(expires=KEEP_EXPIRES, time_scale=1)
    refresh = KEEP_EXPIRES * config.refresh_ratio
    fleet = Fleet(Registrar("registrar", HOST, port), None, size, config, local_hosts=LOCAL_HOSTS,
                  first_user=FLEET_FIRST, credentials=line_credentials)
    loop = asyncio.get_running_loop()
    try:
        opened = loop.time()
        await fleet.open()
        # Spread the first registrations over one refresh interval: the steady load is size/refresh per s.
        await fleet.start(rate=size / refresh)
        all_registered = await fleet.wait_registered(KEEP_EXPIRES)
        window_start = time.monotonic()
        await asyncio.sleep(KEEP_CYCLES * refresh + 1.0)
        window_end = time.monotonic()
        setup = window_start - opened
    finally:
        await fleet.stop()
    kept = 0
    for events in fleet.events().values():
        troubles = [e for e in events if e.kind in (REGISTER_FAILED, EXPIRED) and e.t <= window_end]
        refreshes = [e for e in events if e.kind == REGISTERED and window_start <= e.t <= window_end]
        if not troubles and len(refreshes) >= KEEP_CYCLES:
            kept += 1
    return {"phones": size, "kept": kept, "all_registered": all_registered, "setup_seconds": round(setup, 1),
            "register_per_second": round(size / refresh), "retransmissions": fleet.stats.retransmissions,
            "timeouts": fleet.stats.timeouts}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=480, help="seconds after which no new step starts")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    parser.add_argument("--quick", action="store_true", help="a short run: fewer rates and fleets")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        say("sipp is not installed (Debian package sip-tester): apt-get install sip-tester")
        return 1
    global RATES, FLEET_SIZES, REPEATS
    if args.quick:
        RATES, FLEET_SIZES, REPEATS = [1000, 4000], [1000, 5000], 1
    budget = Budget(args.budget)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="simulator-capacity-") as tmp:
        workdir = Path(tmp)
        (workdir / "register.xml").write_text(SCENARIO)
        # SIPp cycles through as many users as our pool has phones: same registrar state size.
        (workdir / "users.csv").write_text("SEQUENTIAL\n" + "".join(
            f"{c.username};[authentication username={c.username} password={c.password}]\n"
            for c in map(line_credentials, SIPP_LINES)))
        registrar = start_kamailio(workdir, 0, min_expires=1, max_expires=3600, default_expires=60,
                                   children=2, shm_mb=256, lines=POOL_LINES)
        loop = asyncio.new_event_loop()
        try:
            registrar.database.add_lines(SIPP_LINES)
            registrar.database.add_lines(range(FLEET_FIRST, FLEET_FIRST + max(FLEET_SIZES)))
            say(f"Kamailio registrar on {HOST}:{registrar.port} (2 UDP workers); "
                f"{STEP_SECONDS:g} s per step, unanswered after {ANSWER_TIMEOUT:g} s = failure")
            say("REGISTER/s ramp:")
            sipp_step = lambda rate, count: sipp_run(workdir, registrar.port, rate, count)  # noqa: E731
            sipp_best, sipp_steps = ramp("SIPp", sipp_step, budget)

            pool = loop.run_until_complete(our_pool(registrar.port))
            our_step = lambda rate, count: loop.run_until_complete(our_rate_step(pool, rate, count))  # noqa: E731
            ours_best, our_steps = ramp("ours", our_step, budget)

            sipp_runs = repeat(sipp_step, sipp_best) if sipp_best and budget.allows(60) else []
            our_runs = repeat(our_step, ours_best) if ours_best and budget.allows(60) else []
            loop.run_until_complete(pool.stop())
            sipp_rate = median_clean(sipp_runs) if sipp_runs else 0.0
            our_rate = median_clean(our_runs) if our_runs else 0.0
            ratio = our_rate / sipp_rate if sipp_rate else 0.0
            sipp_cpu = median_cpu(sipp_runs or sipp_steps)
            our_cpu = median_cpu(our_runs or our_steps)
            cpu_ratio = sipp_cpu / our_cpu if sipp_cpu and our_cpu else 0.0
            results["cpu_us_per_register"] = {"sipp": sipp_cpu, "ours": our_cpu, "ratio": round(cpu_ratio, 3)}
            results["register_rate"] = {
                "sipp": {"best_target": sipp_best, "median_achieved": round(sipp_rate), "steps": sipp_steps,
                         "repeats": sipp_runs},
                "ours": {"best_target": ours_best, "median_achieved": round(our_rate), "steps": our_steps,
                         "repeats": our_runs},
                "ratio": round(ratio, 3),
            }

            say(f"Phones kept registered ({KEEP_EXPIRES} s expiry, refresh every "
                f"{KEEP_EXPIRES // 2} s, {KEEP_CYCLES} cycles):")
            fleets, most = [], 0
            for size in FLEET_SIZES:
                if not budget.allows(KEEP_EXPIRES * 3 + 30):
                    say("  time budget reached, fleets stopped")
                    break
                outcome = loop.run_until_complete(keep_fleet(registrar.port, size))
                fleets.append(outcome)
                say(f"  {size:>6} phones: {outcome['kept']:>6} kept  ({outcome['register_per_second']} REGISTER/s,"
                    f" {outcome['retransmissions']} retransmissions, {outcome['timeouts']} timeouts,"
                    f" set up in {outcome['setup_seconds']} s)")
                if outcome["kept"] == size:
                    most = size
                else:
                    break
            results["phones_kept"] = {"fleets": fleets, "most": most}
        finally:
            loop.close()
            registrar.stop()

    say("")
    say(f"REGISTER/s at 0 failures (median of {REPEATS} at the highest clean rate):")
    say(f"  SIPp  {sipp_rate:8.0f}/s")
    say(f"  ours  {our_rate:8.0f}/s")
    say(f"  ratio ours/SIPp {ratio:.2f}  (target >= 0.25)")
    if sipp_cpu and our_cpu:
        say(f"Generator CPU per REGISTER (median at the highest clean rate): SIPp {sipp_cpu:.0f} us, ours {our_cpu:.0f} us;"
            f" one core's worth ours/SIPp {cpu_ratio:.2f}")
        say("  (when both achieved rates are close, the registrar is the limit, not the generators)")
    say(f"Most phones kept registered and refreshing: {most}  (target >= 5000)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
