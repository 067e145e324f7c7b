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

The package: :mod:`.plan` (the pure decisions), :mod:`.catalogue` (what is read from
a database), :mod:`.copy` (what is written to the slave), :mod:`.run` (one run, in
named phases, and the state it keeps).
"""

from .catalogue import inspect, other_sessions, row_counts, state_fingerprint, wal_position
from .copy import copy_tables, empty_tables, restart_sequences
from .plan import (
    SCHEMA, DatabaseInfo, Fingerprint, Plan, ServingCheck, SkipDecision, SlaveServing, Stored, Table, WalPositions,
    checksum_mismatches, decide_skip, is_excluded, locale_remedy, make_plan, nothing_written, preflight,
    schema_signature, serving_check,
)
from .run import (
    APPLICATION_NAME, FINGERPRINT_FILE, LOCK_FILE, Busy, Outcome, Target, ask_slave, database_dsn, describe_error,
    forget_fingerprint, load_fingerprint, replicate, save_fingerprint,
)

__all__ = [
    "APPLICATION_NAME", "FINGERPRINT_FILE", "LOCK_FILE", "SCHEMA", "Busy", "DatabaseInfo", "Fingerprint", "Outcome",
    "Plan", "ServingCheck", "SkipDecision", "SlaveServing", "Stored", "Table", "Target", "WalPositions",
    "ask_slave", "checksum_mismatches", "copy_tables", "database_dsn", "decide_skip", "describe_error",
    "empty_tables", "forget_fingerprint", "inspect", "is_excluded", "load_fingerprint", "locale_remedy",
    "make_plan", "nothing_written", "other_sessions", "preflight", "replicate", "restart_sequences", "row_counts",
    "save_fingerprint", "schema_signature", "serving_check", "state_fingerprint", "wal_position",
]
