"""Telling the administrator that the cluster changed state: a mail to root, and a hook.

Events come in topics; each topic is in one state at a time, and an event is told only
when it changes its topic's state (a slave serving for an hour is mailed once, not
sixty times).  The last state of each topic is kept in ``/var/lib/xivo-ha/events.json``;
a topic starts in its quiet state (standing by, services fine), which is not told.

* topic ``mode``: ``failover`` (the slave starts serving), ``failback`` (it stands by again);
* topic ``services``: ``start-failed``, ``stop-failed``, ``services-ok`` (the next start
  or stop that works).

Each told event is mailed to root through the local MTA as :mod:`notify` does, and
runs ``[notify] hook`` when set: an argument list whose ``{event}``, ``{node}`` and
``{detail}`` are replaced (e.g. a chat or paging command).  A mail or hook that fails
is logged, never raised.
"""

from __future__ import annotations

import json
import socket

from . import failover, notify, paths, system
from .errors import XivoHaError
from .log import LOGGER
from .settings import Settings

STATE_FILE = "events.json"
TOPICS = {
    "failover": "mode", "failback": "mode",
    "start-failed": "services", "stop-failed": "services", "services-ok": "services",
}
QUIET = {"mode": "failback", "services": "services-ok"}
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
}


def changed(last: dict, event: str) -> bool:
    """Whether ``event`` changes its topic's state (pure)."""
    topic = TOPICS[event]
    return last.get(topic, QUIET[topic]) != event


def hook_argv(template: list[str], event: str, node: str, detail: str) -> list[str]:
    """The hook's argument list with {event}, {node} and {detail} filled in (pure)."""
    return [part.replace("{event}", event).replace("{node}", node).replace("{detail}", detail)
            for part in template]


def _load() -> dict:
    return system.read_json_object(paths.state(STATE_FILE))


def emit(settings: Settings, event: str, detail: str, logged: bool = False) -> bool:
    """Tell ``event`` when it changes its topic's state; True when it was told.

    ``logged``: the caller already wrote the syslog line; otherwise one is written here.
    """
    logger = LOGGER
    last = _load()
    if not changed(last, event):
        return False
    system.write_atomic(paths.state(STATE_FILE), json.dumps({**last, TOPICS[event]: event}) + "\n", 0o644)
    if not logged:
        logger.warning("%s: %s", event, detail)
    node = socket.gethostname()
    body = f"{detail}\n\n{ADVICE[event]}\n\nHost: {node}\nDetails are in syslog (ident xivo-ha)."
    try:
        notify.send_mail(f"[xivo-ha] {node}: {event}", body)
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


def after_check(settings: Settings, decision: failover.Decision, error: Exception | None = None) -> None:
    """Tell what one xivo-check-master-status round changed (its lines are already logged)."""
    mode = "failover" if decision.state.mode == failover.SERVING else "failback"
    emit(settings, mode, decision.reason, logged=True)
    if error is not None:
        emit(settings, f"{decision.action.value}-failed", f"{decision.reason}, but it failed: {error}", logged=True)
    elif decision.action is not failover.Action.NOTHING:
        emit(settings, "services-ok", f"{decision.reason}: done", logged=True)
