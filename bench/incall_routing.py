#!/usr/bin/env python3
"""Benchmark: what routing one incoming DID costs the registrar's database, next to one big join.

The node's registrar (simulator/node/kamailio.cfg.j2, route INCALL) finds the
line a DID rings in two queries: the incall's user (extensions -> incall ->
dialaction), then that user's line (userfeatures -> user_line -> linefeatures
-> usersip).  The anchor is the same lookup as one seven-table join, what the
template did before.  Kamailio's sqlops sends each query as plain text, so
PostgreSQL plans it at every call; this benchmark does the same (no prepared
statements) as the role ``asterisk`` over TCP, on a throw-away PostgreSQL 15
cluster on 127.0.0.1 holding --users demo users (simulator/node/demo-users.sql),
for --calls random DIDs each way, and prints p50/p95 per call in ms, calls per
second and the ratio.  Both ways must name the same line for every DID, or it
exits 1.  Nothing is asserted on time.

Usage: .venv/bin/python bench/incall_routing.py [--users 1000] [--calls 2000]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))

import psycopg  # noqa: E402

from kamailio_fixture import LineDatabase  # noqa: E402

TEMPLATE = REPO / "simulator" / "node" / "kamailio.cfg.j2"

ONE_JOIN = (
    "SELECT s.name FROM extensions e JOIN incall i ON i.id::text = e.typeval AND i.exten = e.exten "
    "AND i.context = e.context JOIN dialaction d ON d.category = 'incall' AND d.categoryval = i.id::text "
    "AND d.event = 'answer' AND d.action = 'user' JOIN userfeatures u ON u.id::text = d.actionarg1 "
    "JOIN user_line ul ON ul.user_id = u.id JOIN linefeatures l ON l.id = ul.line_id "
    "JOIN usersip s ON s.id = l.protocolid WHERE e.exten = {did} AND e.context = 'from-extern' "
    "AND e.type = 'incall' AND e.commented = 0 AND i.commented = 0 AND u.commented = 0 "
    "AND l.commented = 0 AND s.commented = 0 AND s.category = 'user' ORDER BY ul.main_line DESC LIMIT 1")


def shipped_queries() -> tuple[str, str]:
    """The two queries of the template's route INCALL, with {did} and {user} for its variables."""
    route = TEMPLATE.read_text().split("route[INCALL] {", 1)[1].split("\n}\n", 1)[0]
    found = dict((name, sql) for sql, name in re.findall(r'sql_query\("asterisk", "(.*?)", "(\w+)"\);', route))
    if set(found) != {"incall", "callee"}:
        raise SystemExit(f"incall_routing: route INCALL of {TEMPLATE} has not the two queries this measures")
    return (found["incall"].replace("$(rU{sql.val.str})", "{did}"),
            found["callee"].replace("$(var(user){sql.val.str})", "{user}"))


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def timed(conn: psycopg.Connection, dids: list[str], route) -> tuple[list[float], dict[str, str]]:
    times, lines = [], {}
    for did in dids:
        start = time.perf_counter()
        lines[did] = route(conn, did)
        times.append((time.perf_counter() - start) * 1000)
    return times, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="demo users (and DIDs) in the database")
    parser.add_argument("--calls", type=int, default=2000, help="DIDs routed each way")
    args = parser.parse_args()
    if not 1 <= args.users <= 20000 or not 1 <= args.calls <= 100000:
        print("incall_routing: --users must be 1..20000 and --calls 1..100000", file=sys.stderr)
        return 2
    first, second = shipped_queries()
    database = LineDatabase(range(1001, 1001 + args.users))
    try:
        with psycopg.connect(database.url, prepare_threshold=None, autocommit=True) as conn:
            all_dids = [row[0] for row in conn.execute(
                "SELECT exten FROM extensions WHERE type = 'incall' AND context = 'from-extern'")]
            rng = random.Random(1)
            dids = [rng.choice(all_dids) for _ in range(args.calls)]

            def one_join(c, did):
                row = c.execute(ONE_JOIN.format(did=literal(did))).fetchone()
                return row and row[0]

            def two_queries(c, did):
                user = c.execute(first.format(did=literal(did))).fetchone()
                if not user:
                    return None
                row = c.execute(second.format(user=literal(user[0]))).fetchone()
                return row and row[0]

            timed(conn, dids[:50], one_join)  # warm the caches, both ways
            timed(conn, dids[:50], two_queries)
            anchor, anchor_lines = timed(conn, dids, one_join)
            ours, our_lines = timed(conn, dids, two_queries)
    finally:
        database.stop()
    if anchor_lines != our_lines or None in our_lines.values():
        print("incall_routing: the two ways do not name the same line for every DID", file=sys.stderr)
        return 1

    def row(name, times):
        q = statistics.quantiles(times, n=20)
        return f"{name:<28} {statistics.median(times):8.3f} {q[18]:8.3f} {1000 * len(times) / sum(times):10.0f}"

    print(f"{args.users} users, {args.calls} DIDs routed each way (ms per DID, plain queries planned each time)")
    print(f"{'':<28} {'p50':>8} {'p95':>8} {'DIDs/s':>10}")
    print(row("one seven-table join", anchor))
    print(row("two queries (shipped)", ours))
    print(f"ratio one join / two queries: p50 x{statistics.median(anchor) / statistics.median(ours):.1f}, "
          f"DIDs/s x{sum(anchor) / sum(ours):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
