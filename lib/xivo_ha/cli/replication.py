"""xivo-master-slave-db-replication <slave_ip>: copy the master's configuration to the slave."""

from __future__ import annotations

import dataclasses
import time

from plumbum import cli

from . import Command, run
from .. import database, events, metrics, paths, replication, role, runstate, settings, system
from ..errors import OperationFailed
from ..replication import stream

JOB = "replication"
FAILED = "Slave replication failed"


class Replication(Command):
    """Replicate this master's `asterisk` database to the slave.

    Copies the data of every table of schema public except those matching
    [replication] exclude_tables (network, support and provisioning settings, event
    data, the schema version) into the slave's database, in one transaction: the
    slave's copies are emptied, filled with COPY, their sequences set to the
    master's values, and row counts and content checksums are compared on both
    sides before the commit.  Any failure rolls back: the slave stays as it was.
    Tables excluded are never touched on the slave.

    Runs on the master, every hour from cron.  When nothing changed on either side
    since the last successful run, nothing is copied (--force copies anyway).
    With [replication] mode = continuous, every run copies and re-bases the
    PostgreSQL logical replication stream that ships each change to the slave
    within seconds: it starts exactly where the copy's snapshot ends.
    Before copying, both databases must have the same encoding and locale, the
    same alembic schema version and the same tables and columns; otherwise the
    error says how to fix the slave.

    Never while the slave serves: the slave is asked over the HA key (`xivo-ha
    status --json`); serving, an unknown failover state or a slave that says it is
    a master is refused (--force overrides, with a warning).  A slave that cannot
    be asked is replicated only when its database has no other client session.

    Every session has [database] statement_timeout and lock_timeout; the run is
    cancelled after [replication] timeout seconds.

    --repair-stream (continuous mode, every minute from cron): looks at the stream
    first, without the lock: the slave's `xivo-ha status --json` and this master's
    slot.  Only when the slave stands by and its stream is off (no subscription, a
    subscription disabled by a failover or a conflict, no slot on this master) does it
    take the lock, look again, and re-base as above; a serving slave, one that cannot
    be asked, or a stream merely disconnected (PostgreSQL reconnects by itself) is left
    alone: exit 0, nothing printed.  In hourly mode there is no stream to repair.

    Prints one summary line.  On failure: exit 1, "Slave replication failed:
    <reason>" on stderr; the first failure is also in syslog and mailed to root
    when an MTA is installed, and so is the next run that works again.
    A table locked too long or another run postpones it: exit 1, "Slave replication
    postponed: <reason>" on stdout and in syslog, recorded as busy, no mail.
    Exit 2 on bad input (nothing done).
    """

    PROGNAME = "xivo-master-slave-db-replication"

    force = cli.Flag(["-f", "--force"], help="Replicate even when nothing changed since the last successful run, "
                                             "and even while the slave serves (with a warning)")
    dry_run = cli.Flag(
        ["-n", "--dry-run"],
        help="Check both databases and print the tables and row counts that would be replicated; change nothing",
    )
    repair_stream = cli.Flag(
        ["--repair-stream"], excludes=["--force", "--dry-run"],
        help="Continuous mode (every minute from cron): re-base only when the slave stands by and its stream "
             "is off (no subscription, disabled, no slot on this master); otherwise do nothing, silently",
    )

    def main(self, slave_ip: str):
        logger = self.log()
        slave = role.validate_peer(slave_ip)
        config = settings.load()
        self._check_role(slave, logger)
        if self.repair_stream:
            if config.replication.mode != stream.CONTINUOUS:
                print(f"[replication] mode is {config.replication.mode}: there is no stream to repair")
                return 0
            # Every minute: a look first, without the lock, and mostly nothing to do.
            needed, reason, report = self._repair_decision(config, slave)
            if not needed:
                (logger.debug if report is not None else logger.info)("%s", reason)
                return 0
        started = time.monotonic()
        try:
            outcome = self._replicate(config, slave, logger)
        except (system.LockBusy, replication.Busy) as exc:
            # Not a failure: nothing was changed, the next run tries again.  Said on
            # stdout (which cron discards) and in syslog; no mail.
            message = f"Slave replication postponed: {exc}"
            print(message)
            logger.info("%s", message)
            if not self.dry_run:
                runstate.record(JOB, "busy", time.monotonic() - started, str(exc))
            return 1
        except OperationFailed as exc:
            message = f"{FAILED}: {exc}"
            if self.dry_run:
                logger.error("%s", message)
                return 1
            runstate.record(JOB, "failed", time.monotonic() - started, str(exc))
            events.job_failed(
                config, JOB, message,
                advice=f"Run `{self.PROGNAME} --verbose {slave}` on the master to retry and see each step.",
            )
            return 1

        if outcome.status == "dry-run":
            self._print_dry_run(outcome)
            return 0
        if outcome.status == "unneeded":
            logger.debug("%s", outcome.sentence)
            return 0
        runstate.record(JOB, "skipped" if outcome.status == "skipped" else "success",
                        time.monotonic() - started, outcome.sentence)
        print(outcome.sentence[0].upper() + outcome.sentence[1:])
        logger.info("%s", outcome.sentence)
        events.job_succeeded(config, JOB, outcome.sentence)
        return 0

    @staticmethod
    def _check_role(slave: str, logger) -> None:
        """The replication runs on the master only; another slave than ha.conf's is a warning."""
        current = role.read()
        if current.role is not role.Role.MASTER:
            raise OperationFailed(
                f"this node is not the master (its role is {current.role.value} in "
                f"{paths.node(paths.HA_CONF)}): the replication runs on the master only"
            )
        if current.remote_address and current.remote_address != slave:
            logger.warning(
                "replicating to %s although %s names the slave %s",
                slave, paths.node(paths.HA_CONF), current.remote_address,
            )

    def _replicate(self, config, slave: str, logger) -> replication.Outcome:
        """Under the lock: ask the slave whether it serves, then replicate."""
        options = config.replication
        target = replication.Target(
            address=slave,
            port=options.slave_port,
            user=options.slave_user,
            dbname=options.slave_dbname,
            connect_timeout=options.connect_timeout,
            lock_timeout=options.lock_timeout,
            deadline=float(options.timeout),
        )
        with system.exclusive_lock(paths.state(replication.LOCK_FILE), "replication"):
            repair = ""
            if self.repair_stream:
                # Another run may have re-based it, or the slave may serve since the first look.
                needed, repair, report = self._repair_decision(config, slave)
                if not needed:
                    return replication.Outcome("unneeded", repair)
                problem = ""  # a re-base is only needed when the slave was asked
            else:
                report, problem = replication.ask_slave(config, slave)
            check = replication.serving_check(report, problem, slave, self.force)
            if not check.go and not self.dry_run:
                raise replication.SlaveServing(check.reason)
            # A slave that could not be asked is said in syslog (info), not on stderr: cron
            # would mail that every hour, and its database is checked instead.
            level = logger.warning if check.warn else logger.info if report is None else logger.debug
            level("%s", check.reason)
            limits = database.Limits.from_settings(config)
            sessions_must_be_ours = check.sessions_must_be_ours and not self.dry_run
            if options.mode == stream.CONTINUOUS and not self.dry_run:
                # Every verified copy re-bases the stream: whatever drifted or stopped is repaired.
                outcome = stream.rebase(config.database.dsn, target, options.exclude_tables, progress=logger.debug,
                                        limits=limits, sessions_must_be_ours=sessions_must_be_ours)
                if repair:
                    outcome = dataclasses.replace(outcome, sentence=f"stream repaired ({repair}): {outcome.sentence}")
                return outcome
            return replication.replicate(
                config.database.dsn, target, options.exclude_tables,
                force=self.force, dry_run=self.dry_run, progress=logger.debug,
                limits=limits, sessions_must_be_ours=sessions_must_be_ours,
            )

    @staticmethod
    def _repair_decision(config, slave: str) -> tuple[bool, str, dict | None]:
        """--repair-stream: the slave's report and this master's own view of the stream,
        and whether they call for a re-base (and why); the report, None when not asked."""
        report, problem = replication.ask_slave(config, slave)
        master = stream.observe_local(config.database.dsn, "master")
        needed, reason = stream.repair_needed(master, report, problem)
        return needed, reason, report

    @staticmethod
    def _print_dry_run(outcome: replication.Outcome) -> None:
        print(outcome.sentence[0].upper() + outcome.sentence[1:] + ":")
        width = max((len(name) for name in outcome.counts), default=0)
        for name, rows in sorted(outcome.counts.items()):
            print(f"  {name:<{width}}  {rows:>9} rows")
        if outcome.excluded:
            print("Excluded (left untouched on the slave): " + ", ".join(outcome.excluded))


def main(argv=None) -> int:
    return metrics.after(run(Replication, argv))
