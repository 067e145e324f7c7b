"""The pure part of the replication: what to copy, whether the slave can receive it,
whether anything changed, whether the slave may be overwritten.  No I/O, no clock."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import OperationFailed

SCHEMA = "public"


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

