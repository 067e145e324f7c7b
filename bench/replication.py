#!/usr/bin/env python3
"""Benchmark: xivo-master-slave-db-replication against XiVO's pg_dump | psql pipeline.

Two throw-away PostgreSQL 15 clusters on 127.0.0.1 (tests/pg.py); the master gets
--users demo users (each: SIP account, line, extension, voicemail, user, user/line
link: about 6 rows).  Each repetition runs, in this order:

  a. the raw pipeline, as XiVO does it: TRUNCATE the replicated tables on the slave
     with psql, then ``pg_dump --data-only --disable-triggers -T <excluded> ... |
     psql`` into the slave (no single transaction, no verification);
  b. our replication, forced (``--force``): full copy, verified, one transaction;
  c. our replication with nothing changed, first run after b: both sides scanned
     (row versions; this is also the cost on a busy master whose excluded tables,
     CEL and queue_log, keep changing);
  d. our replication with nothing changed and both servers idle since the last
     check: WAL positions compared, no scan.

Between steps, untimed, the slave is vacuumed and analyzed, so that autovacuum does
not charge one step's aftermath to the next.  Each of b, c, d is timed as the command cron runs (a new Python process, which pays
for the interpreter and its imports) and as a library call in this process (the
work itself).  Medians and ratios to a are printed.  Targets: b/a <= 1.2,
unchanged/a <= 0.1.

Usage: .venv/bin/python bench/replication.py [--users 10000] [--repeat 5]
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

from pg import PG_BIN, PgServer  # noqa: E402

EXCLUDE = ["netiface", "resolvconf", "mail", "monitoring", "provisioning", "queue_log", "cel", "call_log*",
           "stat_*", "alembic_version"]
COMMAND = REPO / "bin" / "xivo-master-slave-db-replication"


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def raw_pipeline(master_dsn: str, slave_dsn: str, tables: list[str]) -> None:
    """XiVO's way: truncate on the slave, then pg_dump -a | psql."""
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", slave_dsn, "-c",
                    "TRUNCATE " + ", ".join(tables)], check=True, capture_output=True)
    dump_argv = [str(PG_BIN / "pg_dump"), "--data-only", "--disable-triggers", "-d", master_dsn]
    for pattern in EXCLUDE:
        dump_argv += ["-T", pattern]
    dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    load = subprocess.run(["psql", "-X", "-q", "-d", slave_dsn], stdin=dump.stdout, capture_output=True)
    dump.stdout.close()
    if dump.wait() != 0 or load.returncode != 0:
        raise SystemExit(f"raw pipeline failed: {load.stderr.decode()[-500:]}")


def run_command(env: dict, *args: str) -> str:
    result = subprocess.run([sys.executable, str(COMMAND), *args, "127.0.0.1"], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"replication failed: {result.stderr}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()

    master_server, slave_server = PgServer(), PgServer()
    node_root = Path(tempfile.mkdtemp(prefix="xivo-ha-bench-"))
    try:
        master_server.start()
        slave_server.start()
        master = master_server.create_database("asterisk")
        slave = slave_server.create_database("asterisk")
        print(f"loading {options.users} demo users into the master...", file=sys.stderr)
        master.add_demo_users(1, options.users)
        slave.add_demo_users(1, max(1, options.users // 10))
        master.execute("VACUUM ANALYZE")

        env = dict(os.environ)
        env.update({
            "XIVO_HA_ROOT": str(node_root), "XIVO_HA_ALLOW_LOOPBACK_PEER": "1",
            "XIVO_HA_DATABASE_DSN": master.dsn, "XIVO_HA_REPLICATION_SLAVE_PORT": str(slave_server.port),
            "XIVO_HA_REPLICATION_SLAVE_DBNAME": slave.name, "XIVO_HA_SYSLOG_SOCKET": str(node_root / "no-syslog"),
        })
        os.environ.update({k: env[k] for k in ("XIVO_HA_ROOT", "XIVO_HA_ALLOW_LOOPBACK_PEER")})
        from xivo_ha import replication, role

        role.write(role.HaConfig(role.Role.MASTER, "127.0.0.1"))
        target = replication.Target("127.0.0.1", slave_server.port, "postgres", slave.name, 10, 60)
        dry = replication.replicate(master.dsn, target, EXCLUDE, dry_run=True)
        tables = [t for t in dry.counts]
        print(f"{len(tables)} tables, {dry.rows} rows replicated; {len(dry.excluded)} excluded", file=sys.stderr)

        def settle() -> None:
            """Wait until the slave stops writing after a copy (autoanalyze...)."""
            for _ in range(240):
                outcome = replication.replicate(master.dsn, target, EXCLUDE)
                assert outcome.status == "skipped", outcome.sentence
                if outcome.sentence.startswith("nothing was written"):
                    return
                time.sleep(0.5)
            raise SystemExit("the clusters never stopped writing WAL")

        def idle_run(run) -> float:
            """The time of a run that found both servers idle (autovacuum may still wake up)."""
            for _ in range(20):
                settle()
                seconds, out = timed(run)
                if out.startswith("Nothing was written"):
                    return seconds
                assert out.startswith("Nothing changed"), out
            raise SystemExit("the clusters never stayed idle")

        samples: dict[str, list[float]] = {k: [] for k in ("a", "b_cli", "c_cli", "d_cli", "b_lib", "c_lib", "d_lib")}
        def quiet_slave() -> None:
            """Untimed: analyze what a load left behind, so that autovacuum does not
            wake up during the next measurement and bill it for the previous one."""
            slave.execute("VACUUM ANALYZE")

        for rep in range(options.repeat):
            samples["a"].append(timed(lambda: raw_pipeline(master.dsn, slave.dsn, tables))[0])
            quiet_slave()
            seconds, out = timed(lambda: run_command(env, "--force"))
            assert out.startswith("Replicated"), out
            samples["b_cli"].append(seconds)
            quiet_slave()
            seconds, out = timed(lambda: run_command(env))
            assert out.startswith("Nothing changed"), out
            samples["c_cli"].append(seconds)
            samples["d_cli"].append(idle_run(lambda: run_command(env)))

            seconds, outcome = timed(lambda: replication.replicate(master.dsn, target, EXCLUDE, force=True))
            assert outcome.status == "replicated"
            samples["b_lib"].append(seconds)
            quiet_slave()
            seconds, outcome = timed(lambda: replication.replicate(master.dsn, target, EXCLUDE))
            assert outcome.sentence.startswith("nothing changed"), outcome.sentence
            samples["c_lib"].append(seconds)
            samples["d_lib"].append(idle_run(
                lambda: replication.replicate(master.dsn, target, EXCLUDE).sentence.capitalize()))
            quiet_slave()
            print(f"repetition {rep + 1}/{options.repeat} done", file=sys.stderr)

        floor = statistics.median(
            timed(lambda: subprocess.run([sys.executable, "-c", "import xivo_ha.cli.replication, psycopg"],
                                         check=True, env=env))[0]
            for _ in range(options.repeat)
        )
        median = {k: statistics.median(v) for k, v in samples.items()}
        a = median["a"]
        print(f"\nreplication benchmark: {options.users} users, {dry.rows} rows in {len(tables)} tables, "
              f"{options.repeat} repetitions (medians)")
        rows = [
            ("a ", "raw pg_dump | psql pipeline", "a", ""),
            ("b ", "--force, command (new process)", "b_cli", "target <= 1.2"),
            ("c ", "unchanged, scan, command", "c_cli", "target <= 0.1"),
            ("d ", "unchanged, idle, command", "d_cli", "target <= 0.1"),
            ("b'", "--force, library call", "b_lib", ""),
            ("c'", "unchanged, scan, library call", "c_lib", ""),
            ("d'", "unchanged, idle, library call", "d_lib", ""),
        ]
        for label, text, key, goal in rows:
            ratio = "" if key == "a" else f"   {label.strip()}/a = {median[key] / a:.2f}"
            print(f"  {label} {text:<34} {median[key]:7.3f} s{ratio}" + (f"   ({goal})" if goal else ""))
        print(f"  python3 start + imports (plumbum, psycopg): {floor:.3f} s, included in every command run")
        for key, values in samples.items():
            print(f"  samples {key:5}: " + " ".join(f"{v:.3f}" for v in values))
        return 0
    finally:
        master_server.stop()
        slave_server.stop()
        subprocess.run(["rm", "-rf", str(node_root)])


if __name__ == "__main__":
    sys.exit(main())
