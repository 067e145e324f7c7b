"""One replication run: connect to both databases, observe, plan, decide, copy, verify,
commit, remember; the slave's own word on whether it serves; the stored fingerprint."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .. import database, paths, system
from ..errors import OperationFailed
from ..log import Progress, quiet
from ..settings import Settings
from . import catalogue
from .copy import copy_tables, empty_tables, restart_sequences, set_session
from .plan import (
    DatabaseInfo, Fingerprint, Plan, SkipDecision, SlaveServing, Stored, Table, WalPositions, checksum_mismatches,
    decide_skip, make_plan, nothing_written, preflight, schema_signature,
)

FINGERPRINT_FILE = "replication-fingerprint.json"
LOCK_FILE = "replication.lock"
APPLICATION_NAME = "xivo-ha replication"
SLAVE_HINT = (" (is PostgreSQL on the slave listening on that address and accepting the master? "
              "`xivo-ha enable slave <master_ip>` on the slave sets that up)")


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
    status: str  # "replicated", "skipped", "dry-run", "unneeded" (--repair-stream: nothing to repair)
    sentence: str
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)
    excluded: tuple[str, ...] = ()


class Busy(OperationFailed):
    """A table stayed locked longer than the lock timeout: nothing was changed, try again later."""


# ---------------------------------------------------------------------------
# What the last successful run left, and what the slave says about itself
# ---------------------------------------------------------------------------


def load_fingerprint() -> Stored | None:
    try:
        text = system.read_text(paths.state(FINGERPRINT_FILE))
    except OSError:
        return None
    return None if text is None else Stored.from_json(text)


def save_fingerprint(stored: Stored) -> None:
    paths.node(paths.STATE_DIR).mkdir(mode=0o750, parents=True, exist_ok=True)
    system.write_atomic(paths.state(FINGERPRINT_FILE), stored.to_json(), 0o600)


def forget_fingerprint() -> None:
    system.remove(paths.state(FINGERPRINT_FILE))


def ask_slave(config: Settings, slave_ip: str) -> tuple[dict | None, str]:
    """The slave's ``xivo-ha status --json`` over the HA key, or None and why not."""
    from .. import doctor

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



# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


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


@dataclass
class Run:
    """What the phases of one run share: both connections, the request, what was learnt."""

    master: Any
    slave: Any
    target: Target
    exclude: tuple[str, ...]
    force: bool
    dry_run: bool
    progress: Progress
    started: float
    pool: ThreadPoolExecutor
    stored: Stored | None = None
    positions: tuple[str | None, str | None] = (None, None)  # WAL insert positions: master, slave
    info: DatabaseInfo | None = None  # the master's
    plan: Plan | None = None
    tables: list[Table] = field(default_factory=list)
    snapshot: str | None = None  # an exported snapshot the master's transaction reads from
    before_commit: Callable[[Any, Plan], None] | None = None  # run in the slave's transaction, last

    def both(self, function: Callable[[Any], Any]) -> tuple[Any, Any]:
        """``function`` on the master and, at the same time, on the slave: both results."""
        on_slave = self.pool.submit(function, self.slave)
        on_master = function(self.master)
        return on_master, on_slave.result()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


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
    snapshot: str | None = None,
    before_commit: Callable[[Any, Plan], None] | None = None,
) -> Outcome:
    """Replicate (or skip, or describe with ``dry_run``); raises OperationFailed with the reason.

    Every session gets ``limits`` (default: the [database] settings); the whole run
    is cancelled after ``target.deadline`` seconds.  A lock held too long raises
    :class:`Busy`.  With ``snapshot``, the master's copy reads that exported snapshot
    (see :mod:`.stream`); ``before_commit(slave, plan)`` runs last in the slave's transaction.
    """
    started = time.monotonic()
    limits = database.Limits.from_settings() if limits is None else limits
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replication-slave") as pool:
        master, slave = _connect_both(master_dsn, target, limits, pool)
        try:
            run = Run(master, slave, target, tuple(exclude), force, dry_run, progress, started, pool,
                      snapshot=snapshot, before_commit=before_commit)
            return _within_deadline(run, sessions_must_be_ours)
        finally:
            _close(slave)
            _close(master)


def _connect_both(master_dsn: str, target: Target, limits, pool: ThreadPoolExecutor) -> tuple[Any, Any]:
    """Both connections at once: the slave's in the pool's thread."""
    slave_connected = pool.submit(
        database.connect, target.dsn(), target.connect_timeout, limits=limits,
        what=f"cannot reach the slave database {target.label}", hint=SLAVE_HINT,
    )
    try:
        master = database.connect(database_dsn(master_dsn), target.connect_timeout, limits=limits,
                                  what="cannot connect to the master database")
    except BaseException:
        with contextlib.suppress(BaseException):
            _close(slave_connected.result())
        raise
    try:
        return master, slave_connected.result()
    except BaseException:
        _close(master)
        raise


def _within_deadline(run: Run, sessions_must_be_ours: bool) -> Outcome:
    """The run under its deadline, with the database errors said as one sentence."""
    import psycopg

    deadline = _Deadline(max(1.0, run.target.deadline - run.elapsed()), (run.master, run.slave))
    try:
        with deadline:
            if sessions_must_be_ours:
                _refuse_if_used(run.slave, run.target)
            return _replicate(run)
    except psycopg.errors.LockNotAvailable as exc:
        raise Busy(
            f"a table stayed locked longer than the lock timeout ({database.first_line(exc)}): "
            f"the slave was left unchanged, the next run tries again"
        ) from None
    except psycopg.Error as exc:
        if deadline.expired:
            raise OperationFailed(
                f"the run did not finish within {run.target.deadline:g} s ([replication] timeout) and was "
                f"cancelled: the slave was left unchanged"
            ) from None
        raise OperationFailed(describe_error(exc)) from None


def _refuse_if_used(slave, target: Target) -> None:
    sessions = catalogue.other_sessions(slave)
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


def describe_error(exc: BaseException) -> str:
    """A database error met during the run, as one sentence."""
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


# ---------------------------------------------------------------------------
# The phases, in order
# ---------------------------------------------------------------------------


def _replicate(run: Run) -> Outcome:
    unwritten = _skip_if_unwritten(run)
    if unwritten is not None:
        return unwritten
    _observe(run)
    if run.dry_run:
        return _describe(run)
    assert run.info is not None and run.plan is not None
    signature = schema_signature(run.info, run.plan)
    sequences = catalogue.sequence_values(run.master, run.plan.sequences)
    decision, current = _decide(run, signature, sequences)
    run.progress(decision.reason)
    if decision.skip:
        assert run.stored is not None and current is not None
        # Remember where the logs stood, so that the next run can skip without scanning.
        save_fingerprint(Stored(current, run.stored.finished_at, WalPositions(run.exclude, *run.positions)))
        return _skipped(run.stored, decision.reason, len(run.plan.tables), run.started)
    # The slave is about to change: should anything fail from here on, no stored
    # fingerprint may make the next run skip.
    forget_fingerprint()
    counts, master_state, slave_state = _copy(run, sequences)
    return _commit(run, Fingerprint(run.target.label, signature, master_state, slave_state), counts)


def _skip_if_unwritten(run: Run) -> Outcome | None:
    """Read both WAL positions (before any snapshot is taken, see WalPositions); skip
    when neither server wrote anything since the last successful run."""
    import psycopg

    run.master.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    run.master.read_only = True
    run.stored = None if run.force or run.dry_run else load_fingerprint()
    run.positions = run.both(catalogue.wal_position)
    if not nothing_written(run.stored, run.target.label, run.exclude, *run.positions):
        return None
    assert run.stored is not None
    run.progress("neither database wrote anything since the last check")
    tables = sum(1 for key in run.stored.fingerprint.master if not key.startswith("sequence "))
    return _skipped(run.stored, "nothing was written to either database since the last successful replication",
                    tables, run.started)


def _observe(run: Run) -> None:
    """Both catalogues, the plan, the preflight checks, the session settings."""
    if run.snapshot is not None:
        sql = catalogue.sql_module()
        run.master.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(run.snapshot)))
    master_info, slave_info = run.both(catalogue.inspect)
    run.info = master_info
    run.plan = make_plan(master_info, run.exclude)
    run.progress(run.plan.explain())
    preflight(master_info, slave_info, run.plan, run.target.address)
    set_session(run.master, master_info.encoding)
    # synchronous_commit off: the commit does not wait for the slave's disk.  Should
    # the slave crash right after, its tables come back as they were before the run,
    # which its fingerprint no longer matches: the next run replicates again.
    set_session(run.slave, master_info.encoding,
                (("lock_timeout", f"{run.target.lock_timeout}s"), ("synchronous_commit", "off")))
    run.tables = [master_info.tables[name] for name in run.plan.tables]


def _describe(run: Run) -> Outcome:
    """--dry-run: the tables and row counts that would be replicated."""
    assert run.plan is not None
    counts = catalogue.row_counts(run.master, run.plan.tables)
    total = sum(counts.values())
    return Outcome(
        "dry-run",
        f"would replicate {len(run.plan.tables)} tables ({total} rows) to {run.target.label}; "
        f"{len(run.plan.excluded)} excluded tables kept as they are on the slave",
        len(run.plan.tables), total, run.elapsed(), counts, run.plan.excluded,
    )


def _decide(run: Run, signature: str, sequences: Mapping[str, tuple[int, bool]]
            ) -> tuple[SkipDecision, Fingerprint | None]:
    """Skip or copy, from both sides' fingerprints (not measured with --force)."""
    assert run.info is not None and run.plan is not None
    if run.force:
        # Whatever the state, everything is copied: no need to measure it first.
        return decide_skip(Fingerprint(run.target.label, signature, {}, {}), None, force=True), None
    plan, tables = run.plan, run.info.tables
    slave_measured = run.pool.submit(catalogue.state_fingerprint, run.slave, plan, tables)
    master_state = catalogue.with_sequences(catalogue.table_states(run.master, run.tables), sequences)
    current = Fingerprint(run.target.label, signature, master_state, slave_measured.result())
    return decide_skip(current, run.stored.fingerprint if run.stored else None, run.force), current


def _copy(run: Run, sequences: Mapping[str, tuple[int, bool]]) -> tuple[dict[str, int], dict, dict]:
    """Empty, fill and verify the slave's tables in its transaction; the row counts and
    both sides' new states.  A difference rolls the slave back."""
    import psycopg

    assert run.plan is not None
    try:
        run.slave.execute("SET session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        raise OperationFailed(
            f"the slave user {run.target.user} may not set session_replication_role: it must be a "
            f"PostgreSQL superuser ([replication] slave_user)"
        ) from None
    run.progress("emptying the replicated tables on the slave: " + run.plan.explain())
    empty_tables(run.slave, run.plan)
    # After the last table, the reader thread computes the master's checksums and
    # states in the same snapshot, while the slave is still loading.
    counts, master_stats = copy_tables(
        run.master, run.slave, run.tables, run.progress,
        then=lambda: catalogue.table_stats(run.master, run.tables, content=True, state=True),
    )
    restart_sequences(run.slave, sequences)
    run.progress("verifying row counts and content checksums")
    slave_stats = catalogue.table_stats(run.slave, run.tables, content=True, state=True)
    mismatches = checksum_mismatches(
        {name: (int(v[0]), v[1]) for name, v in master_stats.items()},
        {name: (int(v[0]), v[1]) for name, v in slave_stats.items()},
    )
    if mismatches:
        run.slave.rollback()
        raise OperationFailed("verification failed, the slave was left unchanged: " + "; ".join(mismatches))
    return counts, _states(master_stats, sequences), _states(slave_stats, sequences)


def _states(stats: Mapping[str, tuple], sequences: Mapping[str, tuple[int, bool]]) -> dict[str, str]:
    return catalogue.with_sequences({name: f"{v[0]}:{v[2]}" for name, v in stats.items()}, sequences)


def _commit(run: Run, fingerprint: Fingerprint, counts: Mapping[str, int]) -> Outcome:
    """Commit on the slave, then remember the new fingerprint."""
    assert run.plan is not None
    if run.before_commit is not None:
        run.before_commit(run.slave, run.plan)
    run.progress("committing on the slave")
    run.slave.commit()
    run.master.rollback()
    seconds = run.elapsed()
    # The slave's position is unknown here (its commit record comes after anything
    # read before it): the next unchanged run scans, then records it.
    save_fingerprint(Stored(fingerprint, time.time(), WalPositions(run.exclude, run.positions[0], None)))
    rows = sum(counts.values())
    return Outcome(
        "replicated",
        f"replicated {len(run.plan.tables)} tables, {rows} rows to {run.target.label} in {seconds:.2f} s",
        len(run.plan.tables), rows, seconds, counts, run.plan.excluded,
    )
