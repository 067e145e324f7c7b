"""Writing the slave: session settings, emptying the replicated tables, streaming each
table with COPY from the master's snapshot, restarting the sequences."""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, Sequence

from .catalogue import qualified, sql_module
from .plan import Plan, Table

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

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def set_session(conn, encoding: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    sql = sql_module()
    statements = [
        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
        for name, value in (*SESSION_SETTINGS, ("client_encoding", encoding), *extra)
    ]
    conn.execute(sql.SQL("; ").join(statements))


def _copy_statement(table: Table, direction: str):
    sql = sql_module()
    return sql.SQL("COPY {} ({}) " + direction).format(
        qualified(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
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


_END = object()


class _Abort(Exception):
    """Raised in the reader when the writer gave up."""


class _Stream:
    """The COPY data on its way from the reader (master) to the writer (slave)."""

    def __init__(self) -> None:
        self.chunks: "queue.Queue[Any]" = queue.Queue(maxsize=QUEUE_DEPTH)
        self.stop = threading.Event()

    def put(self, item: Any) -> None:
        """Hand ``item`` to the writer; raises :class:`_Abort` once the writer gave up."""
        while not self.stop.is_set():
            try:
                self.chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Abort()

    def table(self) -> Iterator[bytes]:
        """One table's chunks, up to its end; an error the reader handed over is raised."""
        while (item := self.chunks.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def abandon(self, reader: "Future[Any]") -> None:
        """The writer gives up: keep the queue from blocking the reader until it has stopped."""
        self.stop.set()
        while not reader.done():
            with contextlib.suppress(queue.Empty):
                self.chunks.get(timeout=0.1)


def _read_tables(master, tables: Sequence[Table], stream: _Stream, then: Callable[[], Any] | None) -> Any:
    """The reader: each table's COPY data into ``stream``, then ``then()`` (its value is returned)."""
    try:
        for table in tables:
            _read_copy(master, _copy_statement(table, "TO STDOUT").as_bytes(master), stream.put)
            stream.put(_END)
        return None if then is None else then()
    except _Abort:
        with contextlib.suppress(Exception):
            master.cancel()
        return None
    except BaseException as exc:  # handed to the writer, which raises it
        with contextlib.suppress(_Abort):
            stream.put(exc)
        raise


def _write_tables(slave, tables: Sequence[Table], stream: _Stream, progress: Progress) -> dict[str, int]:
    """The writer: each table's COPY data from ``stream`` into the slave; the row counts."""
    counts: dict[str, int] = {}
    with slave.cursor() as cur:
        for table in tables:
            progress(f"copying {table.name}")
            with cur.copy(_copy_statement(table, "FROM STDIN")) as copy:
                for chunk in stream.table():
                    copy.write(chunk)
            counts[table.name] = max(cur.rowcount, 0)
            progress(f"copied {table.name}: {counts[table.name]} rows")
    return counts


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
    stream = _Stream()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replication-reader") as pool:
        reader = pool.submit(_read_tables, master, tables, stream, then)
        try:
            counts = _write_tables(slave, tables, stream, progress)
        except BaseException:
            stream.abandon(reader)
            error = reader.exception()
            if error is not None:  # the master's error, not the slave's "COPY failed" that it caused
                raise error from None
            raise
        return counts, reader.result()


def empty_tables(slave, plan: Plan) -> None:
    sql = sql_module()
    statements = []
    if plan.truncate:
        statements.append(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(qualified(t) for t in plan.truncate)))
    statements.extend(sql.SQL("DELETE FROM {}").format(qualified(t)) for t in plan.delete)
    if statements:
        slave.execute(sql.SQL("; ").join(statements))


def restart_sequences(slave, values: Mapping[str, tuple[int, bool]]) -> None:
    """Give each sequence the master's value, inside the transaction (see the module doc)."""
    if not values:
        return
    sql = sql_module()
    statements = []
    for name, (value, called) in sorted(values.items()):
        statements.append(sql.SQL("ALTER SEQUENCE {} RESTART").format(qualified(name)))
        statements.append(
            sql.SQL("SELECT setval({}::regclass, {}, {})").format(
                sql.Literal(qualified(name).as_string(slave)), sql.Literal(value), sql.Literal(called)
            )
        )
    slave.execute(sql.SQL("; ").join(statements))

