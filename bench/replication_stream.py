#!/usr/bin/env python3
"""Benchmark: [replication] mode = continuous (the logical replication stream).

Two throw-away PostgreSQL 15 clusters on 127.0.0.1 (tests/pg.py), the master with
wal_level = logical; the master gets --users demo users.  Measured:

  a. the master's CPU for --changes configuration changes (one UPDATE of a user each,
     one transaction each, --rate per second) with no stream, then with the stream
     on: the extra CPU per change (every process of the master's cluster, from
     /proc: the backend that runs the changes, the walsender that decodes them);
  b. the lag of each change under that steady stream: from the master's commit to
     the slave's apply (a slave-only trigger stamps the apply with the same clock),
     p50 and p95;
  c. one changed row end to end (b's median) against the hourly command's full run
     (`xivo-master-slave-db-replication --force`, a new process as cron runs it).

Ratios are printed; nothing is asserted.  Everything stays on loopback and ends
after --changes changes.

Usage: .venv/bin/python bench/replication_stream.py [--users 1000] [--changes 300] [--rate 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "lib"))

from pg import PgServer  # noqa: E402

COMMAND = REPO / "bin" / "xivo-master-slave-db-replication"
EXCLUDE = ["netiface", "resolvconf", "mail", "monitoring", "provisioning", "queue_log", "cel", "call_log*",
           "stat_*", "alembic_version"]
TICKS = os.sysconf("SC_CLK_TCK")

ARRIVALS = """
CREATE TABLE bench_arrival (value text, at double precision);
CREATE FUNCTION bench_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.bench_arrival VALUES (NEW.firstname, extract(epoch FROM clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER bench_stamp AFTER UPDATE ON userfeatures FOR EACH ROW EXECUTE FUNCTION bench_stamp();
ALTER TABLE userfeatures ENABLE ALWAYS TRIGGER bench_stamp;
"""
NO_ARRIVALS = "DROP TABLE bench_arrival; DROP TRIGGER bench_stamp ON userfeatures; DROP FUNCTION bench_stamp()"


def cluster_cpu(server: PgServer) -> float:
    """CPU seconds (user + system) of the cluster's postmaster and its live children."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def changes(conn, count: int, rate: float, users: int, tag: str) -> dict[str, float]:
    """``count`` committed updates, paced at ``rate`` per second: value -> time of its commit."""
    committed = {}
    started = time.monotonic()
    for i in range(count):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        value = f"{tag}{i}"
        conn.execute("UPDATE userfeatures SET firstname = %s WHERE id = %s", (value, i % users + 1))
        # Taken before the commit: the lag measured includes the commit itself (an upper bound).
        committed[value] = time.time()
        conn.commit()
    return committed


def wait_arrivals(slave, count: int, tag: str, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = slave.execute("SELECT value, min(at) FROM bench_arrival WHERE value LIKE %s GROUP BY value",
                             (tag + "%",)).fetchall()
        if len(rows) >= count:
            return dict(rows)
        time.sleep(0.2)
    from xivo_ha.replication import stream

    raise SystemExit(f"only {len(rows)} of {count} changes reached the slave within {timeout:g} s "
                     f"(stream: {stream.describe(stream.observe(slave, 'slave'))})")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def full_run(env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(COMMAND), "--force", "127.0.0.1"], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"replication failed: {result.stderr}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--repeat", type=int, default=3, help="full runs of the hourly command")
    args = parser.parse_args()
    if not 0 < args.changes <= args.users:
        raise SystemExit("--changes must be between 1 and --users (one row each)")

    import psycopg

    from xivo_ha.replication import Target, stream

    master_server = PgServer(options="-c wal_level=logical").start()
    slave_server = PgServer().start()
    root = Path(tempfile.mkdtemp(prefix="xivo-ha-bench-"))
    try:
        master_db, slave_db = master_server.create_database(), slave_server.create_database()
        print(f"loading {args.users} demo users ...", flush=True)
        master_db.add_demo_users(1, args.users)
        (root / "etc/xivo").mkdir(parents=True)
        (root / "etc/xivo/ha.conf").write_text('{"node_type": "master", "remote_address": "127.0.0.1"}\n')
        env = {**os.environ, "XIVO_HA_ROOT": str(root), "XIVO_HA_ALLOW_LOOPBACK_PEER": "1",
               "XIVO_HA_DATABASE_DSN": master_db.dsn, "XIVO_HA_REPLICATION_SLAVE_PORT": str(slave_server.port),
               "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave_db.name, "XIVO_HA_REPLICATION_MODE": "hourly",
               "XIVO_HA_SYSLOG_SOCKET": str(root / "no-syslog"), "PATH": "/usr/bin:/bin"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("XIVO_HA_")})
        hourly = [full_run(env) for _ in range(args.repeat)]

        conn = psycopg.connect(master_db.dsn)
        cpu = cluster_cpu(master_server)
        changes(conn, args.changes, args.rate, args.users, "quiet")
        cpu_without = cluster_cpu(master_server) - cpu

        target = Target("127.0.0.1", slave_server.port, "postgres", slave_db.name, 10, 60)
        stream.rebase(master_db.dsn, target, EXCLUDE)
        slave = psycopg.connect(slave_db.dsn, autocommit=True)
        slave.execute(ARRIVALS)
        deadline = time.monotonic() + 30
        while not stream.observe(slave, "slave").get("streaming"):
            if time.monotonic() > deadline:
                raise SystemExit("the stream did not start")
            time.sleep(0.1)
        cpu = cluster_cpu(master_server)
        committed = changes(conn, args.changes, args.rate, args.users, "stream")
        arrived = wait_arrivals(slave, args.changes, "stream")
        cpu_with = cluster_cpu(master_server) - cpu
        slave.execute(NO_ARRIVALS)
        conn.close()
        slave.close()
    finally:
        slave_server.stop()
        master_server.stop()

    lags = [arrived[value] - at for value, at in committed.items()]
    p50, p95, one = percentile(lags, 0.5), percentile(lags, 0.95), statistics.median(lags)
    full = statistics.median(hourly)
    per_change_without = cpu_without / args.changes * 1000
    per_change_with = cpu_with / args.changes * 1000
    print(f"{args.users} users, {args.changes} changes at {args.rate:g}/s")
    print(f"lag under a steady stream of changes: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")
    print(f"master CPU per change: {per_change_without:.2f} ms without the stream, {per_change_with:.2f} ms "
          f"with it: {per_change_with - per_change_without:+.2f} ms extra "
          + (f"(x{per_change_with / per_change_without:.2f})" if per_change_without else
             "(too few changes to measure the base: raise --changes)"))
    print(f"one changed row end to end: {one * 1000:.1f} ms; the hourly command's full run: {full:.2f} s "
          f"(median of {args.repeat}): ratio full / one row = {full / one:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
