#!/usr/bin/env python3
"""Benchmark: how far the slave's copy of the registrations lags behind the master's registrar.

A real Kamailio (the node template: usrloc write-through to the ``location`` table)
on the master's database, the slave's database fed by ``[replication] mode =
continuous`` (a verified copy, then PostgreSQL's logical replication), both
throw-away PostgreSQL 15 clusters on 127.0.0.1 (tests/pg.py).  --phones of our
phones (digest authentication with their line credentials) then:

  1. register, --rate phones per second (one INSERT each);
  2. keep re-registering for --steady seconds with a --expires lifetime (a refresh
     every expires/2 s: one UPDATE each);
  3. all re-register at once (a burst: every phone's refresh sent in the same
     instant, as after a registrar's restart).

The lag of each registration is from the master's write of its row (before the
200 OK: write-through) to the slave's apply of it (a trigger on each side stamps
the row with the same clock); p50, p95 and max per phase, in milliseconds.  Nothing is asserted.  Everything stays on loopback.

Usage: .venv/bin/python bench/registration_lag.py [--phones 1000] [--rate 200] [--expires 20] [--steady 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "simulator"))

from kamailio_fixture import (  # noqa: E402
    ASTERISK_PASSWORD, ASTERISK_ROLE, LOCATION_GRANTS, line_credentials, start_kamailio,
)
from pg import PgServer  # noqa: E402

from xivo_ha_simulator.events import REGISTERED  # noqa: E402
from xivo_ha_simulator.phone import Fleet, PhoneConfig, Registrar  # noqa: E402

EXCLUDE = ["netiface", "resolvconf", "mail", "monitoring", "provisioning", "queue_log", "cel", "call_log*",
           "stat_*", "alembic_version"]
FIRST = 1001

# Each write of a binding stamped, on the master (created after the copy: not published)
# and on the slave (ALWAYS: it fires for the rows the stream applies; the apply worker's
# search_path is empty, hence the schema).
STAMPS = """
CREATE TABLE bench_stamp (username text, at double precision);
CREATE FUNCTION bench_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.bench_stamp VALUES (NEW.username, extract(epoch FROM clock_timestamp())); RETURN NEW; END $$;
CREATE TRIGGER bench_stamp AFTER INSERT OR UPDATE ON location FOR EACH ROW EXECUTE FUNCTION bench_stamp();
ALTER TABLE location ENABLE ALWAYS TRIGGER bench_stamp;
"""


@dataclass(frozen=True)
class NodeDatabase:
    url: str  # what start_kamailio needs


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def drive(fleet: Fleet, args, marks: dict[str, float]) -> None:
    marks["register"] = time.time()
    await fleet.start(rate=args.rate)
    if not await fleet.wait_registered(60):
        raise SystemExit(f"not every phone registered: {fleet.progress_line()}")
    marks["steady"] = time.time()
    await asyncio.sleep(args.steady)
    marks["burst"] = time.time()
    for phone in fleet.phones:
        phone.refresh_now()
    await asyncio.sleep(5)
    marks["end"] = time.time()
    await fleet.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="phones started per second")
    parser.add_argument("--expires", type=int, default=20, help="registration lifetime, s (refresh at half)")
    parser.add_argument("--steady", type=float, default=30.0, help="seconds of steady re-registration")
    args = parser.parse_args()
    if not 1 <= args.phones <= 5000:
        raise SystemExit("--phones must be between 1 and 5000")

    import psycopg

    from xivo_ha.replication import Target, replicate, stream

    master_server = PgServer(options="-c wal_level=logical").start()
    slave_server = PgServer().start()
    root = Path(tempfile.mkdtemp(prefix="xivo-ha-bench-"))
    registrar = None
    try:
        master_db, slave_db = master_server.create_database(), slave_server.create_database()
        master_db.add_demo_users(FIRST - 1000, args.phones)
        for db in (master_db, slave_db):
            db.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ASTERISK_ROLE}') "
                       f"THEN CREATE ROLE {ASTERISK_ROLE} LOGIN PASSWORD '{ASTERISK_PASSWORD}'; END IF; END $$")
            db.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ASTERISK_ROLE}; {LOCATION_GRANTS}")
        os.environ.update({"XIVO_HA_ROOT": str(root), "XIVO_HA_SYSLOG_SOCKET": str(root / "no-syslog")})
        target = Target("127.0.0.1", slave_server.port, "postgres", slave_db.name, 10, 60)
        stream.rebase(master_db.dsn, target, EXCLUDE, replicate)
        slave = psycopg.connect(slave_db.dsn, autocommit=True)
        slave.execute(STAMPS)
        master_db.execute(STAMPS + f"GRANT INSERT ON bench_stamp TO {ASTERISK_ROLE};")  # Kamailio writes there
        deadline = time.monotonic() + 30
        while not stream.observe(slave, "slave").get("streaming"):
            if time.monotonic() > deadline:
                raise SystemExit("the stream did not start")
            time.sleep(0.1)

        url = f"postgres://{ASTERISK_ROLE}:{ASTERISK_PASSWORD}@127.0.0.1:{master_server.port}/{master_db.name}"
        registrar = start_kamailio(root, 0, min_expires=1, max_expires=3600, default_expires=60, children=2,
                                   shm_mb=256, database=NodeDatabase(url))
        fleet = Fleet(Registrar("master", "127.0.0.1", registrar.port), None, args.phones,
                      PhoneConfig(expires=args.expires), first_user=FIRST, credentials=line_credentials)
        marks: dict[str, float] = {}
        asyncio.run(drive(fleet, args, marks))
        written = master_db.query("SELECT username, at FROM bench_stamp ORDER BY at")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = slave.execute("SELECT username, at FROM bench_stamp ORDER BY at").fetchall()
            if len(rows) >= len(written):
                break
            time.sleep(0.5)
        state = stream.observe(slave, "slave")
        slave.close()
    finally:
        if registrar is not None:
            registrar.stop()
        slave_server.stop()
        master_server.stop()

    def by_user(stamps) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for username, at in stamps:
            out.setdefault(username, []).append(at)
        return out

    applied = by_user(rows)
    lags: dict[str, list[float]] = {"register": [], "steady": [], "burst": []}
    for username, writes in by_user(written).items():
        for wrote, at in zip(writes, applied.get(username, [])):  # in order: one stream, commit order
            phase = "burst" if wrote >= marks["burst"] else "steady" if wrote >= marks["steady"] else "register"
            lags[phase].append(at - wrote)
    burst_done = max((at for _, at in rows if at >= marks["burst"]), default=marks["burst"]) - marks["burst"]
    oks = sum(1 for phone in fleet.phones for e in phone.events if e.kind == REGISTERED)
    print(f"{args.phones} phones, one Kamailio (2 UDP workers) on the master's database, continuous stream "
          f"to the slave's: {oks} REGISTERs answered 200, {len(written)} rows written on the master, "
          f"{len(rows)} applied on the slave (stream {'on' if state.get('enabled') else 'OFF'}, "
          f"errors {state.get('errors')})")
    for phase, text in (("register", f"first registrations at {args.rate:g}/s"),
                        ("steady", f"steady re-registration ({args.expires} s expiry, {args.steady:g} s)"),
                        ("burst", "every phone re-registering at once")):
        values = lags[phase]
        if values:
            print(f"  {text}: {len(values)} registrations, lag p50 {percentile(values, 0.5) * 1000:.1f} ms, "
                  f"p95 {percentile(values, 0.95) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")
    print(f"  the burst: every binding on the slave {burst_done * 1000:.0f} ms after the phones sent their REGISTER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
