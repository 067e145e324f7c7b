"""Copy the master's configuration data (schema ``public`` of ``asterisk``) to the slave.

What ``xivo-master-slave-db-replication <slave_ip>`` does, in order:

1. **Observe** both databases (one catalogue read each): encoding and locale, the
   alembic schema version, tables with their columns, foreign keys, sequences.
2. **Plan** (pure, :func:`make_plan`): every ``public`` table not matching
   ``[replication] exclude_tables`` is replicated; the others are never touched on
   the slave.  :func:`preflight` refuses to go on when encodings, locales, schema
   versions, table sets or columns differ, and says how to fix it.
3. **Skip** when nothing changed (:func:`decide_skip`): the fingerprint of both
   sides is compared with the one stored after the last successful run.  A table's
   fingerprint is its row count and the sum of a 64-bit hash of each row version's
   ``(xmin, ctid)``: every INSERT, UPDATE or DELETE creates or removes row versions,
   and a new version never has the ``(xmin, ctid)`` of a removed one, so any change
   moves the sum (except with a 2^-64 chance).  It costs one sequential scan without
   formatting a single value, about 25 times cheaper than hashing the content.
   The slave's fingerprint is part of it: a slave modified since (during a failover)
   is replicated again.
4. **Apply** in one slave transaction: ``session_replication_role = replica`` (no
   foreign-key or user triggers fire, so the circular ``userfeatures`` /
   ``voicemail`` keys do not matter), empty the replicated tables (TRUNCATE; DELETE
   for the few that tables kept on the slave refer to), stream each table with
   COPY from the master's snapshot into the slave (a reader thread, 128 KiB chunks,
   nothing on disk), restart the sequences at the master's values.
5. **Verify before commit**: per table, the row count and the sum of
   ``hashtextextended(ROW(<columns>)::text, 0)`` computed by both servers with the
   same session settings; any difference rolls everything back.
6. **Commit**, then store the new fingerprint under ``/var/lib/xivo-ha``.

Sequences are restarted with ``ALTER SEQUENCE .. RESTART`` followed by ``setval``:
the restart gives the sequence a new relation file inside the transaction, which
makes the following ``setval`` roll back with it (a bare ``setval`` would not).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from . import database, paths, system
from .errors import OperationFailed
from .log import Progress, quiet
from .settings import Settings

if TYPE_CHECKING:
    import psycopg

SCHEMA = "public"
SCHEMA_VERSION_TABLE = "alembic_version"
FINGERPRINT_FILE = "replication-fingerprint.json"
LOCK_FILE = "replication.lock"
APPLICATION_NAME = "xivo-ha replication"
CHUNK = 128 * 1024
QUEUE_DEPTH = 32

# Both servers format values identically under these settings, so that the text of
# a row (hashed for the verification) and COPY's text format are the same on both.
SESSION_SETTINGS = (
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)

# ---------------------------------------------------------------------------
# What a database looks like (observed), and the pure decisions over it
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, type as format_type() spells it), in order

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    encoding: str
    collate: str
    ctype: str
    schema_version: str | None  # alembic_version content; None without that table
    tables: Mapping[str, Table]
    # (schema, table) that holds a foreign key -> public table it refers to
    references: frozenset[tuple[str, str, str]] = frozenset()
    # public sequence -> public table that owns it (serial / identity), or None
    sequences: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Which tables are copied and how the slave's copies are emptied."""

    tables: tuple[str, ...]
    excluded: tuple[str, ...]
    truncate: tuple[str, ...]
    delete: tuple[str, ...]
    sequences: tuple[str, ...]
    patterns: tuple[str, ...] = ()

    def explain(self) -> str:
        parts = [f"{len(self.tables)} tables replicated, {len(self.excluded)} excluded"]
        if self.delete:
            parts.append(
                "emptied with DELETE because tables kept on the slave refer to them: " + ", ".join(self.delete)
            )
        return "; ".join(parts)


def is_excluded(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` matches one of the shell-style ``patterns`` (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def make_plan(master: DatabaseInfo, patterns: Sequence[str]) -> Plan:
    """Replicate every master table that no pattern excludes.

    A replicated table referred to by a foreign key of a table that is *not*
    replicated (excluded, or outside ``public``) cannot be truncated (PostgreSQL
    refuses); it is emptied with DELETE instead, which under the replica session
    role fires no foreign-key action, so the kept rows stay as they are.
    """
    tables = tuple(sorted(name for name in master.tables if not is_excluded(name, patterns)))
    excluded = tuple(sorted(name for name in master.tables if is_excluded(name, patterns)))
    replicated = set(tables)
    delete = sorted(
        {
            target
            for schema, source, target in master.references
            if target in replicated and not (schema == SCHEMA and source in replicated)
        }
    )
    truncate = tuple(name for name in tables if name not in delete)
    # A serial's sequence follows its table; a free-standing one follows its own name.
    sequences = tuple(
        sorted(
            name
            for name, owner in master.sequences.items()
            if (owner in replicated if owner is not None else not is_excluded(name, patterns))
        )
    )
    return Plan(tables, excluded, truncate, tuple(delete), sequences, tuple(patterns))


def locale_remedy(master: DatabaseInfo, slave_dbname: str, slave_ip: str) -> str:
    """The commands that recreate the slave database with the master's encoding and locale."""
    return (
        f"on the slave, recreate the database with the master's encoding and locale: "
        f"`sudo -u postgres dropdb {slave_dbname} && sudo -u postgres createdb -E {master.encoding} "
        f"-T template0 --lc-collate={master.collate} --lc-ctype={master.ctype} {slave_dbname}`; "
        f"then, on the master, load the schema into it: "
        f"`sudo -u postgres pg_dump --schema-only {master.name} | psql -h {slave_ip} -U postgres {slave_dbname}`; "
        f"then rerun `xivo-master-slave-db-replication {slave_ip}`"
    )


def preflight(master: DatabaseInfo, slave: DatabaseInfo, plan: Plan, slave_ip: str) -> None:
    """Raise :class:`OperationFailed` with the remedy when the slave cannot receive the data."""
    mine = (master.encoding, master.collate, master.ctype)
    theirs = (slave.encoding, slave.collate, slave.ctype)
    if mine != theirs:
        raise OperationFailed(
            f"the databases differ in encoding or locale: master {master.name} has encoding {master.encoding}, "
            f"collation {master.collate}, ctype {master.ctype}; slave {slave.name} has encoding {slave.encoding}, "
            f"collation {slave.collate}, ctype {slave.ctype}. Remedy: {locale_remedy(master, slave.name, slave_ip)}"
        )
    if master.schema_version != slave.schema_version:
        raise OperationFailed(
            f"the schema versions differ (alembic_version: master {master.schema_version or 'none'}, "
            f"slave {slave.schema_version or 'none'}): upgrade both nodes to the same XiVO version "
            f"(xivo-upgrade), then rerun the replication"
        )
    missing = [name for name in plan.tables if name not in slave.tables]
    extra = sorted(
        name for name in slave.tables if name not in master.tables and not is_excluded(name, plan.patterns)
    )
    if missing or extra:
        details = []
        if missing:
            details.append("missing on the slave: " + ", ".join(missing))
        if extra:
            details.append("only on the slave: " + ", ".join(extra))
        raise OperationFailed(
            f"the table sets differ ({'; '.join(details)}) although the schema versions are equal: "
            f"the slave's schema was changed by hand; restore it from the master "
            f"(`pg_dump --schema-only` on the master, loaded into a recreated slave database)"
        )
    for name in plan.tables:
        ours = dict(master.tables[name].columns)
        theirs_cols = dict(slave.tables[name].columns)
        if ours != theirs_cols:
            only_master = sorted(set(ours) - set(theirs_cols))
            only_slave = sorted(set(theirs_cols) - set(ours))
            retyped = sorted(c for c in set(ours) & set(theirs_cols) if ours[c] != theirs_cols[c])
            details = []
            if only_master:
                details.append("missing on the slave: " + ", ".join(only_master))
            if only_slave:
                details.append("only on the slave: " + ", ".join(only_slave))
            for column in retyped:
                details.append(f"{column} is {ours[column]} on the master, {theirs_cols[column]} on the slave")
            raise OperationFailed(
                f"table {name} has different columns ({'; '.join(details)}): restore the slave's schema "
                f"from the master (`pg_dump --schema-only`)"
            )
    missing_sequences = [name for name in plan.sequences if name not in slave.sequences]
    if missing_sequences:
        raise OperationFailed(
            "sequences missing on the slave: " + ", ".join(missing_sequences)
            + ": restore the slave's schema from the master (`pg_dump --schema-only`)"
        )


def schema_signature(master: DatabaseInfo, plan: Plan) -> str:
    """A short digest of what the plan replicates: tables, columns, sequences, schema version."""
    text = json.dumps(
        {
            "version": master.schema_version,
            "tables": [[name, list(map(list, master.tables[name].columns))] for name in plan.tables],
            "sequences": list(plan.sequences),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Fingerprint:
    """The state of both sides: compared with the one kept from the last successful run."""

    target: str
    schema: str
    master: Mapping[str, str]  # table -> "rows:hash"; "sequence <name>" -> "last_value:is_called"
    slave: Mapping[str, str]


@dataclass(frozen=True)
class WalPositions:
    """Where each server's write-ahead log stood just *before* its state was read.

    ``<system identifier>/<database oid>/<WAL insert position>``, or None when it
    could not be read (or, for the slave, right after a replication, whose own
    commit comes later in its log).  Any committed change to a row needs a
    transaction id, and every transaction with one writes a commit record, so an
    unchanged insert position means no row changed since.  Only sequences moved by
    ``nextval`` within their pre-logged range escape this: at worst the slave's
    sequences lag until the next real change.
    """

    patterns: tuple[str, ...]
    master: str | None
    slave: str | None


@dataclass(frozen=True)
class Stored:
    """What the last successful run left under /var/lib/xivo-ha."""

    fingerprint: Fingerprint
    finished_at: float
    positions: WalPositions | None = None

    def to_json(self) -> str:
        fp = self.fingerprint
        data: dict[str, Any] = {"target": fp.target, "schema": fp.schema, "master": dict(fp.master),
                                "slave": dict(fp.slave), "finished_at": self.finished_at}
        if self.positions is not None:
            data["positions"] = {"patterns": list(self.positions.patterns), "master": self.positions.master,
                                 "slave": self.positions.slave}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> "Stored | None":
        """None when unreadable: the next run then simply replicates."""
        try:
            data = json.loads(text)
            fingerprint = Fingerprint(
                str(data["target"]), str(data["schema"]),
                {str(k): str(v) for k, v in data["master"].items()},
                {str(k): str(v) for k, v in data["slave"].items()},
            )
            positions = None
            if isinstance(data.get("positions"), dict):
                raw = data["positions"]
                positions = WalPositions(
                    tuple(str(p) for p in raw["patterns"]),
                    None if raw.get("master") is None else str(raw["master"]),
                    None if raw.get("slave") is None else str(raw["slave"]),
                )
            return Stored(fingerprint, float(data.get("finished_at", 0)), positions)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def nothing_written(stored: Stored | None, target: str, patterns: Sequence[str], master: str | None,
                    slave: str | None) -> bool:
    """True when neither server wrote anything since the stored state was read (see WalPositions)."""
    if stored is None or stored.positions is None or stored.fingerprint.target != target:
        return False
    known = stored.positions
    return (
        known.patterns == tuple(patterns)
        and None not in (known.master, known.slave, master, slave)
        and known.master == master
        and known.slave == slave
    )


@dataclass(frozen=True)
class SkipDecision:
    skip: bool
    reason: str


def _changed(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def decide_skip(current: Fingerprint, previous: Fingerprint | None, force: bool) -> SkipDecision:
    """Skip only when both sides are exactly as the last successful run left them."""
    if force:
        return SkipDecision(False, "replication forced (--force)")
    if previous is None:
        return SkipDecision(False, "no earlier successful replication is recorded")
    if previous.target != current.target:
        return SkipDecision(False, f"the last replication went to {previous.target}, not {current.target}")
    if previous.schema != current.schema:
        return SkipDecision(False, "the replicated tables, their columns or the schema version changed")
    master_changes = _changed(previous.master, current.master)
    slave_changes = _changed(previous.slave, current.slave)
    if master_changes:
        return SkipDecision(False, f"changed on the master since the last replication: {_names(master_changes)}")
    if slave_changes:
        return SkipDecision(False, f"the slave was modified since the last replication: {_names(slave_changes)}")
    return SkipDecision(True, "nothing changed since the last successful replication")


def checksum_mismatches(master: Mapping[str, tuple[int, str]], slave: Mapping[str, tuple[int, str]]) -> list[str]:
    """One sentence per table whose row count or content checksum differs."""
    problems = []
    for table in sorted(set(master) | set(slave)):
        ours, theirs = master.get(table), slave.get(table)
        if ours is None or theirs is None:
            problems.append(f"{table}: not verified on both sides")
        elif ours[0] != theirs[0]:
            problems.append(f"{table}: {ours[0]} rows on the master, {theirs[0]} on the slave")
        elif ours[1] != theirs[1]:
            problems.append(f"{table}: same row count ({ours[0]}) but different content")
    return problems


class SlaveServing(OperationFailed):
    """The slave serves (or may serve) the phones: its data must not be overwritten."""


@dataclass(frozen=True)
class ServingCheck:
    """Whether the slave may be overwritten, from what it says about itself."""

    go: bool
    reason: str
    warn: bool = False  # going on against what the slave says (--force): logged as a warning
    # Proceed only when the slave's database shows no client but us (the slave could not be asked).
    sessions_must_be_ours: bool = False


def serving_check(report: Mapping[str, Any] | None, problem: str, slave_ip: str, force: bool) -> ServingCheck:
    """Decide from the slave's ``xivo-ha status --json`` (``report``), or from why it could not be asked.

    The slave says it serves, or cannot tell (its failover state is unknown), or
    claims to be a master: refuse, unless ``force``.  It could not be asked: go on
    only if its database shows no other client (the services that serve the phones
    keep sessions open on it); that is checked once connected.
    """
    if report is None:
        return ServingCheck(
            True,
            f"could not ask the slave {slave_ip} whether it serves ({problem}): going on only if its "
            f"database has no other client session" if not force else
            f"could not ask the slave {slave_ip} whether it serves ({problem}); replicating anyway (--force)",
            warn=force, sessions_must_be_ours=not force,
        )
    state = report.get("failover") if isinstance(report.get("failover"), dict) else {}
    node_role = report.get("role")
    mode = state.get("mode")
    if node_role == "master":
        why = f"the slave {slave_ip} says it is a master (its /etc/xivo/ha.conf): replicating would overwrite a master"
    elif mode == "serving":
        since = f" since {state['last_failover']}" if state.get("last_failover") else ""
        why = (
            f"the slave {slave_ip} is serving{since} ({state.get('reason') or 'failover'}): replicating now "
            f"would overwrite what users changed on it; it stops serving by itself once this master has "
            f"been up for [failover] successes_before_failback checks and failback_hold_down"
        )
    elif mode not in ("standby", None) or (node_role == "slave" and mode is None):
        why = (
            f"the slave {slave_ip} cannot tell whether it serves (failover state {mode or 'missing'}: "
            f"{state.get('reason') or 'no detail'}); its next xivo-check-master-status run records it"
        )
    else:
        return ServingCheck(True, f"the slave {slave_ip} is standing by")
    if force:
        return ServingCheck(True, f"{why}; replicating anyway (--force)", warn=True)
    return ServingCheck(False, f"{why}; use --force to replicate anyway")


def ask_slave(config: Settings, slave_ip: str) -> tuple[dict | None, str]:
    """The slave's ``xivo-ha status --json`` over the HA key, or None and why not."""
    from . import doctor

    key = paths.node(config.sync.key)
    if not key.is_file():
        return None, f"no HA key {config.sync.key} on this master"
    try:
        argv = doctor.ssh_command(config, slave_ip, list(config.doctor.peer_command) + ["status", "--json"])
        result = system.run(argv, timeout=config.doctor.peer_timeout)
    except OperationFailed as exc:
        return None, str(exc)
    if result.returncode == doctor.SSH_FAILED:
        return None, f"ssh to {slave_ip} failed: {result.output() or 'no output'}"
    try:
        report = json.loads(result.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        first = (result.output() or "no output").splitlines()[0][:200]
        return None, f"`xivo-ha status --json` on the slave exited with {result.returncode}: {first}"
    return report, ""


_SESSIONS_SQL = """
SELECT coalesce(nullif(application_name, ''), usename::text, '?') || ' from '
       || coalesce(host(client_addr), 'local socket')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
ORDER BY 1
"""


def other_sessions(conn) -> list[str]:
    """The slave database's other client sessions, e.g. ``asterisk from local socket``."""
    return [row[0] for row in conn.execute(_SESSIONS_SQL)]


# ---------------------------------------------------------------------------
# Reading the databases
# ---------------------------------------------------------------------------

_DATABASE_SQL = """
SELECT current_database(), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype
FROM pg_database d WHERE d.datname = current_database()
"""

_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname, a.attnum
"""

_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""

_REFERENCES_SQL = """
SELECT sn.nspname, s.relname, t.relname
FROM pg_constraint k
JOIN pg_class s ON s.oid = k.conrelid JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = k.confrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE k.contype = 'f' AND tn.nspname = %(schema)s
"""

_SEQUENCES_SQL = """
SELECT s.relname, min(t.relname)
FROM pg_class s
JOIN pg_namespace n ON n.oid = s.relnamespace
LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = d.refobjid AND t.relnamespace = n.oid
WHERE s.relkind = 'S' AND n.nspname = %(schema)s
GROUP BY s.relname
"""


def _sql():
    from psycopg import sql

    return sql


def _table(name: str):
    sql = _sql()
    return sql.Identifier(SCHEMA, name)


def inspect(conn: "psycopg.Connection") -> DatabaseInfo:
    """Everything :func:`make_plan` and :func:`preflight` need, from the catalogue."""
    params = {"schema": SCHEMA}
    name, encoding, collate, ctype = conn.execute(_DATABASE_SQL).fetchone()
    columns: dict[str, list[tuple[str, str]]] = {row[0]: [] for row in conn.execute(_TABLES_SQL, params)}
    for table, column, type_name in conn.execute(_COLUMNS_SQL, params):
        columns[table].append((column, type_name))
    tables = {table: Table(table, tuple(cols)) for table, cols in columns.items()}
    references = frozenset(tuple(row) for row in conn.execute(_REFERENCES_SQL, params))
    sequences = {row[0]: row[1] for row in conn.execute(_SEQUENCES_SQL, params)}
    version = None
    if SCHEMA_VERSION_TABLE in tables:
        sql = _sql()
        rows = conn.execute(
            sql.SQL("SELECT version_num::text FROM {} ORDER BY 1").format(_table(SCHEMA_VERSION_TABLE))
        ).fetchall()
        version = ",".join(row[0] for row in rows) or None
    return DatabaseInfo(name, encoding, collate, ctype, version, tables, references, sequences)


def _union(parts: list) -> Any:
    sql = _sql()
    return sql.SQL(" UNION ALL ").join(parts)


def _row_text(table: Table):
    """``ROW(c1, c2, ...)::text``: the same text on both servers for equal rows."""
    sql = _sql()
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names))


def _table_stats(conn, tables: Sequence[Table], content: bool, state: bool) -> dict[str, tuple]:
    """Per table, in one query: row count, then the content checksum and/or the state hash."""
    if not tables:
        return {}
    sql = _sql()
    parts = []
    for table in tables:
        columns = [sql.Literal(table.name), sql.SQL("count(*)")]
        if content:
            columns.append(sql.SQL("coalesce(sum(hashtextextended({}, 0)), 0)::text").format(_row_text(table)))
        if state:
            # A 64-bit hash of the row version's place, seeded with the transaction
            # that wrote it: no value is formatted, so this is about as cheap as count(*).
            columns.append(sql.SQL("coalesce(sum(hashtidextended(ctid, xmin::text::bigint)), 0)::text"))
        parts.append(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), _table(table.name)))
    return {row[0]: tuple(row[1:]) for row in conn.execute(_union(parts))}


def _sequence_values(conn, names: Sequence[str]) -> dict[str, tuple[int, bool]]:
    if not names:
        return {}
    sql = _sql()
    parts = [
        sql.SQL("SELECT {}, last_value, is_called FROM {}").format(sql.Literal(name), _table(name))
        for name in names
    ]
    return {row[0]: (int(row[1]), bool(row[2])) for row in conn.execute(_union(parts))}


def _table_states(conn, tables: Sequence[Table]) -> dict[str, str]:
    stats = _table_stats(conn, tables, content=False, state=True)
    return {name: f"{rows}:{digest}" for name, (rows, digest) in stats.items()}


def _with_sequences(states: dict[str, str], sequences: Mapping[str, tuple[int, bool]]) -> dict[str, str]:
    for name, (value, called) in sequences.items():
        states[f"sequence {name}"] = f"{value}:{'t' if called else 'f'}"
    return states


def state_fingerprint(conn, plan: Plan, tables: Mapping[str, Table]) -> dict[str, str]:
    """The cheap per-table state (rows and (xmin, ctid) hash) and the sequence values."""
    states = _table_states(conn, [tables[name] for name in plan.tables])
    return _with_sequences(states, _sequence_values(conn, plan.sequences))


def row_counts(conn, tables: Sequence[str]) -> dict[str, int]:
    if not tables:
        return {}
    sql = _sql()
    parts = [sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), _table(t)) for t in tables]
    return {row[0]: int(row[1]) for row in conn.execute(_union(parts))}


# ---------------------------------------------------------------------------
# Writing the slave
# ---------------------------------------------------------------------------


def _session(conn, encoding: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    sql = _sql()
    statements = [
        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in (*SESSION_SETTINGS, ("client_encoding", encoding), *extra)
    ]
    conn.execute(sql.SQL("; ").join(statements))


_END = object()


class _Abort(Exception):
    """Raised in the reader thread when the writer gave up."""


def _copy_statement(table: Table, direction: str):
    sql = _sql()
    return sql.SQL("COPY {} ({}) " + direction).format(
        _table(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
    )


def _wait_flushed(pgconn) -> None:
    import select

    while pgconn.flush():
        select.select([], [pgconn.socket], [], 1.0)


def _read_copy(conn, statement: bytes, emit: Callable[[bytes], None]) -> None:
    """Run ``COPY .. TO STDOUT`` and hand its data to ``emit`` in chunks of about CHUNK bytes.

    This talks to libpq through psycopg's ``pq`` layer: libpq hands COPY data over
    one row at a time, and psycopg's ``Copy`` iterator costs twice as much per row
    as this loop, which is what limits the whole copy.  The connection is left as
    psycopg expects it (idle in its transaction) unless an error is raised.
    """
    from psycopg import errors, pq

    pgconn = conn.pgconn
    encoding = conn.info.encoding

    def failure(result) -> Exception:
        while pgconn.get_result() is not None:
            pass
        make = getattr(errors, "error_from_result", None)
        if result is not None and make is not None:
            return make(result, encoding=encoding)
        return errors.OperationalError(pgconn.error_message.decode(encoding, "replace").strip())

    with conn.lock:
        pgconn.send_query(statement)
        _wait_flushed(pgconn)
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            raise failure(result)
        pending = bytearray()
        get = pgconn.get_copy_data
        while True:
            size, data = get(0)
            if size < 0:
                break
            pending += data
            if len(pending) >= CHUNK:
                emit(bytes(pending))
                pending.clear()
        if size == -2:
            raise failure(pgconn.get_result())
        if pending:
            emit(bytes(pending))
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COMMAND_OK:
            raise failure(result)
        while pgconn.get_result() is not None:
            pass


def copy_tables(
    master, slave, tables: Sequence[Table], progress: Progress = quiet, then: Callable[[], Any] | None = None
) -> tuple[dict[str, int], Any]:
    """Stream each table from the master's transaction into the slave's (COPY, text format).

    A reader thread pulls COPY data from the master while this thread pushes it to
    the slave, so that reading, the network and the slave's index maintenance
    overlap.  When the reader is done with the last table it runs ``then()`` on
    the master (the verification checksums), while the slave is still busy.
    Returns the row count per table as the slave reports it, and ``then()``'s value.
    """
    chunks: "queue.Queue[Any]" = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    box: dict[str, Any] = {}

    def put(item) -> None:
        while True:
            if stop.is_set():
                raise _Abort()
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def reader() -> None:
        try:
            for table in tables:
                _read_copy(master, _copy_statement(table, "TO STDOUT").as_bytes(master), put)
                put(_END)
            if then is not None:
                box["then"] = then()
        except _Abort:
            try:
                master.cancel()
            except Exception:
                pass
        except BaseException as exc:  # handed to the writer, which raises it
            box["error"] = exc
            try:
                put(exc)
            except _Abort:
                pass

    thread = threading.Thread(target=reader, name="replication-reader", daemon=True)
    thread.start()
    counts: dict[str, int] = {}
    try:
        with slave.cursor() as cur:
            for table in tables:
                progress(f"copying {table.name}")
                with cur.copy(_copy_statement(table, "FROM STDIN")) as copy:
                    while True:
                        item = chunks.get()
                        if item is _END:
                            break
                        if isinstance(item, BaseException):
                            raise item
                        copy.write(item)
                counts[table.name] = max(cur.rowcount, 0)
                progress(f"copied {table.name}: {counts[table.name]} rows")
    except BaseException:
        stop.set()
        while thread.is_alive():
            try:
                chunks.get(timeout=0.1)
            except queue.Empty:
                pass
        if "error" in box:  # the master's error, not the slave's "COPY failed" that it caused
            raise box["error"] from None
        raise
    thread.join()
    if "error" in box:
        raise box["error"]
    return counts, box.get("then")


def empty_tables(slave, plan: Plan) -> None:
    sql = _sql()
    statements = []
    if plan.truncate:
        statements.append(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(_table(t) for t in plan.truncate)))
    statements.extend(sql.SQL("DELETE FROM {}").format(_table(t)) for t in plan.delete)
    if statements:
        slave.execute(sql.SQL("; ").join(statements))


def restart_sequences(slave, values: Mapping[str, tuple[int, bool]]) -> None:
    """Give each sequence the master's value, inside the transaction (see the module doc)."""
    if not values:
        return
    sql = _sql()
    statements = []
    for name, (value, called) in sorted(values.items()):
        statements.append(sql.SQL("ALTER SEQUENCE {} RESTART").format(_table(name)))
        statements.append(
            sql.SQL("SELECT setval({}::regclass, {}, {})").format(
                sql.Literal(_table(name).as_string(slave)), sql.Literal(value), sql.Literal(called)
            )
        )
    slave.execute(sql.SQL("; ").join(statements))


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    user: str
    dbname: str
    connect_timeout: int
    lock_timeout: int
    deadline: float = 1800.0

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}/{self.dbname}"

    def dsn(self) -> str:
        from psycopg.conninfo import make_conninfo

        # Keepalives: a slave that vanishes mid-copy fails the run within about a
        # minute instead of hanging it until the next hour's run finds it locked.
        return make_conninfo(
            host=self.address, port=str(self.port), user=self.user, dbname=self.dbname,
            application_name=APPLICATION_NAME, keepalives="1", keepalives_idle="20",
            keepalives_interval="5", keepalives_count="4", tcp_user_timeout="60000",
        )


@dataclass(frozen=True)
class Outcome:
    status: str  # "replicated", "skipped", "dry-run"
    sentence: str
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()


def load_fingerprint() -> Stored | None:
    try:
        text = system.read_text(paths.state(FINGERPRINT_FILE))
    except OSError:
        return None
    return None if text is None else Stored.from_json(text)


def save_fingerprint(stored: Stored) -> None:
    paths.node(paths.STATE_DIR).mkdir(mode=0o750, parents=True, exist_ok=True)
    system.write_atomic(paths.state(FINGERPRINT_FILE), stored.to_json(), 0o600)


_POSITION_SQL = """
SELECT s.system_identifier::text || '/' || d.oid::text || '/' || pg_current_wal_insert_lsn()::text
FROM pg_control_system() s, pg_database d WHERE d.datname = current_database()
"""


def wal_position(conn) -> str | None:
    """This server's WAL insert position, read in a transaction of its own (so that
    the next statement's snapshot is taken after it); None when unavailable."""
    import psycopg

    try:
        position = conn.execute(_POSITION_SQL).fetchone()[0]
    except psycopg.Error:
        position = None
    conn.rollback()
    return position


def forget_fingerprint() -> None:
    system.remove(paths.state(FINGERPRINT_FILE))


def _connect(dsn: str, timeout: int, limits, what: str, hint: str = "") -> "psycopg.Connection":
    try:
        return database.connect(dsn, timeout=timeout, limits=limits)
    except OperationFailed as exc:
        raise OperationFailed(f"{what}: {exc}{hint}") from None


class Busy(OperationFailed):
    """A table stayed locked longer than the lock timeout: nothing was changed, try again later."""


class _Deadline:
    """Cancels the run's statements on both servers once ``seconds`` have passed."""

    def __init__(self, seconds: float, connections):
        self.seconds = seconds
        self.expired = False
        self._connections = connections
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        self.expired = True
        for conn in self._connections:
            try:
                conn.cancel()
            except Exception:
                pass

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _in_thread(function, *args):
    """Run ``function(*args)`` in a thread; returns a callable that joins and returns (or raises)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = function(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


def replicate(
    master_dsn: str,
    target: Target,
    exclude: Sequence[str],
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress = quiet,
    limits: "database.Limits | None" = None,
    sessions_must_be_ours: bool = False,
) -> Outcome:
    """Replicate (or skip, or describe with ``dry_run``); raises OperationFailed with the reason.

    Every session gets ``limits`` (default: the [database] settings); the whole run
    is cancelled after ``target.deadline`` seconds.  A lock held too long raises
    :class:`Busy`.
    """
    import psycopg

    started = time.monotonic()
    limits = database.Limits.from_settings() if limits is None else limits
    # Both connections at once: the slave's in a thread.
    slave_connected = _in_thread(
        _connect, target.dsn(), target.connect_timeout, limits, f"cannot reach the slave database {target.label}",
        " (is PostgreSQL on the slave listening on that address and accepting the master? "
        "`xivo-ha enable slave <master_ip>` on the slave sets that up)",
    )
    try:
        master = _connect(
            database_dsn(master_dsn), target.connect_timeout, limits, "cannot connect to the master database",
        )
    except BaseException:
        try:
            _close(slave_connected())
        except BaseException:
            pass
        raise
    try:
        slave = slave_connected()
        deadline = _Deadline(max(1.0, target.deadline - (time.monotonic() - started)), (master, slave))
        try:
            with deadline:
                if sessions_must_be_ours:
                    _refuse_if_used(slave, target)
                return _replicate(master, slave, target, tuple(exclude), force, dry_run, progress, started)
        except psycopg.errors.LockNotAvailable as exc:
            raise Busy(
                f"a table stayed locked longer than the lock timeout ({database.first_line(exc)}): "
                f"the slave was left unchanged, the next run tries again"
            ) from None
        except psycopg.Error as exc:
            if deadline.expired:
                raise OperationFailed(
                    f"the run did not finish within {target.deadline:g} s ([replication] timeout) and was "
                    f"cancelled: the slave was left unchanged"
                ) from None
            raise OperationFailed(_describe_error(exc)) from None
        finally:
            _close(slave)
    finally:
        _close(master)


def _refuse_if_used(slave, target: Target) -> None:
    sessions = other_sessions(slave)
    slave.rollback()
    if sessions:
        raise SlaveServing(
            f"the slave database {target.label} has other clients ({', '.join(sessions[:5])}): it may be "
            f"serving; use --force to replicate anyway"
        )


def database_dsn(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        if "application_name" in conninfo_to_dict(dsn):
            return dsn
    except Exception:
        return dsn
    return make_conninfo(dsn, application_name=APPLICATION_NAME)


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:
        pass


def _describe_error(exc: BaseException) -> str:
    import psycopg

    text = database.error_text(exc)
    if isinstance(exc, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
        return text
    if isinstance(exc, psycopg.OperationalError):
        return f"database connection lost: {text}"
    return text


def _skipped(stored: Stored, reason: str, tables: int, started: float) -> Outcome:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stored.finished_at)) if stored.finished_at else "?"
    return Outcome("skipped", f"{reason} (last replication at {when}); nothing to do (--force replicates anyway)",
                   tables, 0, time.monotonic() - started)


def _replicate(master, slave, target, exclude, force, dry_run, progress, started) -> Outcome:
    import psycopg

    master.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    master.read_only = True
    stored = None if force or dry_run else load_fingerprint()
    # Read before any snapshot is taken (see WalPositions).
    slave_positioned = _in_thread(wal_position, slave)
    master_position = wal_position(master)
    slave_position = slave_positioned()
    if nothing_written(stored, target.label, exclude, master_position, slave_position):
        progress("neither database wrote anything since the last check")
        tables = sum(1 for key in stored.fingerprint.master if not key.startswith("sequence "))
        return _skipped(stored, "nothing was written to either database since the last successful replication",
                        tables, started)

    # The two servers are independent: each step asks both at once.
    slave_inspected = _in_thread(inspect, slave)
    master_info = inspect(master)
    slave_info = slave_inspected()
    plan = make_plan(master_info, exclude)
    progress(plan.explain())
    preflight(master_info, slave_info, plan, target.address)
    _session(master, master_info.encoding)
    # synchronous_commit off: the commit does not wait for the slave's disk.  Should
    # the slave crash right after, its tables come back as they were before the run,
    # which its fingerprint no longer matches: the next run replicates again.
    _session(slave, master_info.encoding,
             (("lock_timeout", f"{target.lock_timeout}s"), ("synchronous_commit", "off")))
    tables = [master_info.tables[name] for name in plan.tables]

    if dry_run:
        counts = row_counts(master, plan.tables)
        total = sum(counts.values())
        return Outcome(
            "dry-run",
            f"would replicate {len(plan.tables)} tables ({total} rows) to {target.label}; "
            f"{len(plan.excluded)} excluded tables kept as they are on the slave",
            len(plan.tables), total, time.monotonic() - started, counts, plan.excluded,
        )

    signature = schema_signature(master_info, plan)
    sequences = _sequence_values(master, plan.sequences)
    if force:
        # Whatever the state, everything is copied: no need to measure it first.
        decision = decide_skip(Fingerprint(target.label, signature, {}, {}), None, force=True)
    else:
        slave_measured = _in_thread(state_fingerprint, slave, plan, master_info.tables)
        master_state = _with_sequences(_table_states(master, tables), sequences)
        current = Fingerprint(target.label, signature, master_state, slave_measured())
        decision = decide_skip(current, stored.fingerprint if stored else None, force)
    progress(decision.reason)
    if decision.skip:
        # Remember where the logs stood, so that the next run can skip without scanning.
        save_fingerprint(Stored(current, stored.finished_at, WalPositions(exclude, master_position, slave_position)))
        return _skipped(stored, decision.reason, len(plan.tables), started)
    # The slave is about to change: should anything fail from here on, no stored
    # fingerprint may make the next run skip.
    forget_fingerprint()

    try:
        slave.execute("SET session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        raise OperationFailed(
            f"the slave user {target.user} may not set session_replication_role: it must be a "
            f"PostgreSQL superuser ([replication] slave_user)"
        ) from None
    progress("emptying the replicated tables on the slave: " + plan.explain())
    empty_tables(slave, plan)
    # After the last table, the reader thread computes the master's checksums and
    # states in the same snapshot, while the slave is still loading.
    counts, master_stats = copy_tables(
        master, slave, tables, progress, then=lambda: _table_stats(master, tables, content=True, state=True)
    )
    restart_sequences(slave, sequences)
    master_state = _with_sequences({name: f"{v[0]}:{v[2]}" for name, v in master_stats.items()}, sequences)

    progress("verifying row counts and content checksums")
    slave_stats = _table_stats(slave, tables, content=True, state=True)
    mismatches = checksum_mismatches(
        {name: (int(v[0]), v[1]) for name, v in master_stats.items()},
        {name: (int(v[0]), v[1]) for name, v in slave_stats.items()},
    )
    if mismatches:
        slave.rollback()
        raise OperationFailed("verification failed, the slave was left unchanged: " + "; ".join(mismatches))
    new_slave_state = _with_sequences({name: f"{v[0]}:{v[2]}" for name, v in slave_stats.items()}, sequences)
    progress("committing on the slave")
    slave.commit()
    master.rollback()
    seconds = time.monotonic() - started
    # The slave's position is unknown here (its commit record comes after anything
    # read before it): the next unchanged run scans, then records it.
    save_fingerprint(Stored(
        Fingerprint(target.label, signature, master_state, new_slave_state), time.time(),
        WalPositions(exclude, master_position, None),
    ))
    rows = sum(counts.values())
    return Outcome(
        "replicated",
        f"replicated {len(plan.tables)} tables, {rows} rows to {target.label} in {seconds:.2f} s",
        len(plan.tables), rows, seconds, counts, plan.excluded,
    )
