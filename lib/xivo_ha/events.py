"""Telling the administrator that the cluster changed state: a mail to root, and a hook.

Events come in topics; each topic is in one state at a time, and an event is told only
when it changes its topic's state (a slave serving for an hour is mailed once, not
sixty times).  The last state of each topic is kept in ``/var/lib/xivo-ha/events.json``;
a topic starts in its quiet state (standing by, services fine), which is not told.

* topic ``mode``: ``failover`` (the slave starts serving), ``failback`` (it stands by again);
* topic ``services``: ``start-failed``, ``stop-failed``, ``services-ok`` (the next start
  or stop that works);
* topics ``replication``, ``sync`` and ``failback-copy`` (the periodic jobs of the master,
  :func:`job_failed` and :func:`job_succeeded`): ``replication-failed`` / ``replication-ok``,
  ``sync-failed`` / ``sync-ok``, ``failback-copy-failed`` / ``failback-copy-ok``.  A failure
  that goes on is told once; the later runs say it on stderr only.  A run that succeeds
  after failures tells the recovery;
* topic ``maintenance``: ``maintenance-overdue``, once per maintenance period (its start
  time is kept with the state) when it has been on longer than [doctor]
  maintenance_warn_age (:func:`maintenance_reminder`, run hourly by the package's
  ``/etc/cron.d/xivo-ha``: the HA cron jobs are paused while maintenance is on).

Each told event is mailed to root through the local MTA as :mod:`notify` does, and
runs ``[notify] hook`` when set: an argument list whose ``{event}``, ``{node}`` and
``{detail}`` are replaced (e.g. a chat or paging command).  A mail or hook that fails
is logged, never raised.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time

from . import failover, maintenance, notify, paths, system
from .errors import XivoHaError
from .log import LOGGER
from .settings import Settings

STATE_FILE = "events.json"
LOCK_FILE = "events.lock"
# The lock is held for one read and one write of events.json: a few tries, 50 ms apart.
LOCK_TRIES = 60
LOCK_PAUSE = 0.05
TOPICS = {
    "failover": "mode", "failback": "mode",
    "start-failed": "services", "stop-failed": "services", "services-ok": "services",
    "replication-failed": "replication", "replication-ok": "replication",
    "sync-failed": "sync", "sync-ok": "sync",
    "failback-copy-failed": "failback-copy", "failback-copy-ok": "failback-copy",
    "maintenance-overdue": "maintenance",
}
QUIET = {"mode": "failback", "services": "services-ok", "replication": "replication-ok", "sync": "sync-ok",
         "failback-copy": "failback-copy-ok", "maintenance": ""}
# The job records' names (runstate) and their (failure, recovery) events.
JOB_EVENTS = {
    "replication": ("replication-failed", "replication-ok"),
    "sync": ("sync-failed", "sync-ok"),
    "failback": ("failback-copy-failed", "failback-copy-ok"),
}
# Mail subjects other than the event's name: the failures keep the subjects root always got.
SUBJECTS = {
    "replication-failed": "slave replication failed",
    "replication-ok": "slave replication works again",
    "sync-failed": "file synchronization failed",
    "sync-ok": "file synchronization works again",
    "failback-copy-failed": "failback copy failed",
    "failback-copy-ok": "failback copy works again",
    "maintenance-overdue": "maintenance mode left on",
}
LEVELS = {"replication-failed": logging.ERROR, "sync-failed": logging.ERROR, "failback-copy-failed": logging.ERROR,
          "replication-ok": logging.INFO, "sync-ok": logging.INFO, "failback-copy-ok": logging.INFO}
ADVICE = {
    "failover": "The master stopped answering: this slave now serves the phones. Check the master, then "
                "let it come back; the slave fails back by itself. `xivo-ha check` and `xivo-ha doctor` "
                "on both nodes tell what they see.",
    "failback": "The master answers again: this slave stopped its services. On the master, run "
                "`xivo-sync --failback` if voicemail or recordings were made on the slave meanwhile.",
    "start-failed": "Run `xivo-manage-slave-services status` and `xivo-manage-slave-services start` on this "
                    "slave; xivo-check-master-status retries every minute.",
    "stop-failed": "Run `xivo-manage-slave-services status` and `xivo-manage-slave-services stop` on this "
                   "slave; xivo-check-master-status retries every minute.",
    "services-ok": "The services of this slave are again as the failover state wants them.",
    "replication-failed": "Run `xivo-master-slave-db-replication --verbose <slave>` on the master to retry and "
                          "see each step.",
    "replication-ok": "The slave's database is a copy of the master's again.",
    "sync-failed": "Run `xivo-sync --verbose` on the master to retry and see each step.",
    "sync-ok": "The slave's configuration files are a copy of the master's again.",
    "failback-copy-failed": "Nothing was deleted; rerun `xivo-sync --failback --verbose` on the master.",
    "failback-copy-ok": "What the slave recorded while it served is back on the master.",
    "maintenance-overdue": "The HA cron jobs of this node do not run while maintenance is on: no failover, "
                           "no replication, no sync. Finish the upgrade on both nodes, then run "
                           "`xivo-ha maintenance off` (slave first, master last).",
}


def state_of(event: str, period: str = "") -> str:
    """What the topic's state becomes with ``event`` (in ``period`` when the topic has periods)."""
    return f"{event} {period}" if period else event


def changed(last: dict, event: str, period: str = "") -> bool:
    """Whether ``event`` changes its topic's state (pure)."""
    topic = TOPICS[event]
    return last.get(topic, QUIET[topic]) != state_of(event, period)


def hook_argv(template: list[str], event: str, node: str, detail: str) -> list[str]:
    """The hook's argument list with {event}, {node} and {detail} filled in (pure)."""
    return [part.replace("{event}", event).replace("{node}", node).replace("{detail}", detail)
            for part in template]


def _load() -> dict:
    return system.read_json_object(paths.state(STATE_FILE))


def _record(event: str, period: str) -> bool:
    """Set the topic's state when ``event`` changes it; True when it did.

    Under the events lock: replication and sync run at the same minute, and each must
    keep the other's state.  Still busy after the tries, it is written without the lock.
    A run that changes nothing (the usual case) reads the state and takes no lock.
    """
    if not changed(_load(), event, period):
        return False
    for _ in range(LOCK_TRIES):
        try:
            with system.exclusive_lock(paths.state(LOCK_FILE), "event update"):
                return _update(event, period)
        except system.LockBusy:
            time.sleep(LOCK_PAUSE)
    LOGGER.warning("%s stayed locked: updating %s without it", paths.state(LOCK_FILE), paths.state(STATE_FILE))
    return _update(event, period)


def _update(event: str, period: str) -> bool:
    last = _load()
    if not changed(last, event, period):
        return False
    system.write_atomic(paths.state(STATE_FILE),
                        json.dumps({**last, TOPICS[event]: state_of(event, period)}) + "\n", 0o644)
    return True


def emit(settings: Settings, event: str, detail: str, logged: bool = False, advice: str = "",
         period: str = "") -> bool:
    """Tell ``event`` when it changes its topic's state; True when it was told.

    ``logged``: the caller already wrote the syslog line; otherwise ``detail`` is logged
    here (at the event's level).  ``advice`` replaces the event's usual advice in the mail.
    """
    logger = LOGGER
    if not _record(event, period):
        return False
    if not logged:
        logger.log(LEVELS.get(event, logging.WARNING), "%s", detail)
    node = socket.gethostname()
    body = (f"{detail}\n\n{advice or ADVICE[event]}\n\nHost: {node}\n"
            f"Time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\nDetails are in syslog (ident xivo-ha).")
    try:
        notify.send_mail(f"[xivo-ha] {node}: {SUBJECTS.get(event, event)}", body)
    except XivoHaError as exc:
        logger.warning("could not mail root about the %s: %s", event, exc)
    template = list(settings.notify.hook)
    if template:
        try:
            result = system.run(hook_argv(template, event, node, detail), timeout=settings.notify.hook_timeout)
            if not result.ok:
                logger.warning("[notify] hook exited with %s: %s", result.returncode, result.output() or "no output")
        except XivoHaError as exc:
            logger.warning("[notify] hook failed: %s", exc)
    return True


def job_failed(settings: Settings, job: str, message: str, advice: str = "") -> None:
    """A periodic job failed: logged as an error and mailed when it did not fail before;
    a failure that goes on is only said on stderr (for whoever ran it)."""
    if not emit(settings, JOB_EVENTS[job][0], message, advice=advice):
        print(message, file=sys.stderr)


def job_succeeded(settings: Settings, job: str, sentence: str) -> None:
    """A periodic job worked: after failures, its recovery is logged and mailed."""
    emit(settings, JOB_EVENTS[job][1], f"{SUBJECTS[JOB_EVENTS[job][1]]}: {sentence}")


def maintenance_reminder(settings: Settings, now: float | None = None) -> str:
    """Mail once per maintenance period left on longer than [doctor] maintenance_warn_age.

    Returns the sentence of what was found (maintenance off, on but not for long, told,
    already told).  A corrupt maintenance record raises UsageError, as ``maintenance status``.
    """
    entry = maintenance.read()
    if entry is None:
        return "maintenance is off"
    limit = float(settings.doctor.maintenance_warn_age)
    if entry.age(now) <= limit:
        return f"maintenance is {entry.describe(now)}: not longer than {maintenance.age_text(limit)} yet"
    detail = (f"maintenance has been {entry.describe(now)}, longer than {maintenance.age_text(limit)}: "
              f"the HA cron jobs of this node are paused")
    if emit(settings, "maintenance-overdue", detail, period=entry.since_text()):
        return detail + " (root was told)"
    return detail + " (root was told already)"


def after_check(settings: Settings, decision: failover.Decision, error: Exception | None = None) -> None:
    """Tell what one xivo-check-master-status round changed (its lines are already logged)."""
    mode = "failover" if decision.state.mode == failover.SERVING else "failback"
    emit(settings, mode, decision.reason, logged=True)
    if error is not None:
        emit(settings, f"{decision.action.value}-failed", f"{decision.reason}, but it failed: {error}", logged=True)
    elif decision.action is not failover.Action.NOTHING:
        emit(settings, "services-ok", f"{decision.reason}: done", logged=True)
