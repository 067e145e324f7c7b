"""What the replication reads from a database: the catalogue (tables, columns, foreign
keys, sequences), per-table row counts, state hashes and content checksums, sequence
values, the WAL insert position and the other client sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .. import database
from .plan import SCHEMA, DatabaseInfo, Plan, Table

if TYPE_CHECKING:
    import psycopg

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


def sql_module():
    """psycopg's ``sql``, imported when first needed."""
    from psycopg import sql

    return sql


def qualified(name: str):
    """The identifier of ``public.<name>``."""
    return sql_module().Identifier(SCHEMA, name)


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
    version = database.schema_version(conn)
    return DatabaseInfo(name, encoding, collate, ctype, version, tables, references, sequences)


def _union(parts: list) -> Any:
    sql = sql_module()
    return sql.SQL(" UNION ALL ").join(parts)


def _row_text(table: Table):
    """``ROW(c1, c2, ...)::text``: the same text on both servers for equal rows."""
    sql = sql_module()
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names))


def table_stats(conn, tables: Sequence[Table], content: bool, state: bool) -> dict[str, tuple]:
    """Per table, in one query: row count, then the content checksum and/or the state hash."""
    if not tables:
        return {}
    sql = sql_module()
    parts = []
    for table in tables:
        columns = [sql.Literal(table.name), sql.SQL("count(*)")]
        if content:
            columns.append(sql.SQL("coalesce(sum(hashtextextended({}, 0)), 0)::text").format(_row_text(table)))
        if state:
            # A 64-bit hash of the row version's place, seeded with the transaction
            # that wrote it: no value is formatted, so this is about as cheap as count(*).
            columns.append(sql.SQL("coalesce(sum(hashtidextended(ctid, xmin::text::bigint)), 0)::text"))
        parts.append(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), qualified(table.name)))
    return {row[0]: tuple(row[1:]) for row in conn.execute(_union(parts))}


def sequence_values(conn, names: Sequence[str]) -> dict[str, tuple[int, bool]]:
    if not names:
        return {}
    sql = sql_module()
    parts = [
        sql.SQL("SELECT {}, last_value, is_called FROM {}").format(sql.Literal(name), qualified(name))
        for name in names
    ]
    return {row[0]: (int(row[1]), bool(row[2])) for row in conn.execute(_union(parts))}


def table_states(conn, tables: Sequence[Table]) -> dict[str, str]:
    stats = table_stats(conn, tables, content=False, state=True)
    return {name: f"{rows}:{digest}" for name, (rows, digest) in stats.items()}


def with_sequences(states: dict[str, str], sequences: Mapping[str, tuple[int, bool]]) -> dict[str, str]:
    for name, (value, called) in sequences.items():
        states[f"sequence {name}"] = f"{value}:{'t' if called else 'f'}"
    return states


def state_fingerprint(conn, plan: Plan, tables: Mapping[str, Table]) -> dict[str, str]:
    """The cheap per-table state (rows and (xmin, ctid) hash) and the sequence values."""
    states = table_states(conn, [tables[name] for name in plan.tables])
    return with_sequences(states, sequence_values(conn, plan.sequences))


def row_counts(conn, tables: Sequence[str]) -> dict[str, int]:
    if not tables:
        return {}
    sql = sql_module()
    parts = [sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), qualified(t)) for t in tables]
    return {row[0]: int(row[1]) for row in conn.execute(_union(parts))}



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

