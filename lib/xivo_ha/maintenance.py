"""Maintenance mode: pause this node's HA cron for an upgrade, and resume it.

XiVO's upgrade procedure says "comment out the HA cron lines, upgrade both nodes, put
them back, then replicate by hand".  ``xivo-ha maintenance on`` does the commenting:
the cron file stays where XiVO and its runbooks look for it
(``/etc/cron.d/xivo-ha-master`` or ``-slave``), every job line is prefixed with
:data:`PAUSED_PREFIX` and a header line says why, so the content is never lost and
``cat`` shows at once what is paused.  Why and when is recorded in
``/var/lib/xivo-ha/maintenance.json``::

    {"since": "2024-05-01T12:00:00.000+00:00", "reason": "upgrade to 2024.05",
     "role": "master", "cron_file": "/etc/cron.d/xivo-ha-master"}

``xivo-ha maintenance off`` strips the prefixes again (the exact previous content),
removes the record and, on the master, runs a replication and a file sync at once,
the upgrade procedure's last steps.

While maintenance is on, ``xivo-ha cron regenerate`` writes the cron file paused
(:func:`regenerate_content`), and ``xivo-ha enable|disable`` refuse
(:func:`refuse_role_change`): a role change rewrites the cron file and would resume
the jobs behind the operator's back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import cron, paths, role, system
from .apply import FileState, Observed, Step, execute
from .errors import OperationFailed, UsageError
from .log import LOGGER, Progress
from .role import Role
from .settings import Settings

STATE_FILE = "maintenance.json"
PAUSED_PREFIX = "#xivo-ha-maintenance# "
HEADER = "# xivo-ha maintenance mode: the jobs below are paused; resume them with `xivo-ha maintenance off`"
MAX_REASON = 200

@dataclass(frozen=True)
class Maintenance:
    since: float
    reason: str
    role: str
    cron_file: str

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.since

    def since_text(self) -> str:
        return _iso(self.since)

    def describe(self, now: float | None = None) -> str:
        """``on since 2024-05-01 12:00 UTC (3 h ago): upgrade to 2024.05``"""
        when = datetime.fromtimestamp(self.since, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        text = f"on since {when} ({age_text(self.age(now))} ago)"
        return text + (f": {self.reason}" if self.reason else "")

    def to_dict(self, now: float | None = None) -> dict:
        return {
            "on": True, "since": self.since_text(), "age_seconds": round(self.age(now)),
            "reason": self.reason, "role": self.role, "cron_file": self.cron_file,
        }


# --- pure text edits --------------------------------------------------------------


def is_job_line(line: str) -> bool:
    """A line cron acts on: not blank, not a comment."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def pause_text(text: str) -> str:
    """``text`` with every job line commented out behind the marker; idempotent."""
    lines = text.splitlines()
    out = [] if HEADER in lines else [HEADER]
    for line in lines:
        out.append(PAUSED_PREFIX + line if is_job_line(line) else line)
    return "\n".join(out) + "\n"


def resume_text(text: str) -> str:
    """The inverse of :func:`pause_text`: exactly the content before pausing."""
    out = []
    for line in text.splitlines():
        if line == HEADER:
            continue
        out.append(line[len(PAUSED_PREFIX):] if line.startswith(PAUSED_PREFIX) else line)
    return "\n".join(out) + "\n" if out else ""


def is_paused(text: str) -> bool:
    lines = text.splitlines()
    return HEADER in lines or any(line.startswith(PAUSED_PREFIX) for line in lines)


def active_jobs(text: str) -> list[str]:
    return [line for line in text.splitlines() if is_job_line(line)]


def validate_reason(text: str | None) -> str:
    reason = (text or "").strip()
    if len(reason) > MAX_REASON:
        raise UsageError(f"--reason is {len(reason)} characters long: keep it under {MAX_REASON}")
    if any(not ch.isprintable() for ch in reason):
        raise UsageError("--reason must be one line of printable text")
    return reason


def age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds")


# --- state ------------------------------------------------------------------------


def state_path() -> Path:
    return paths.state(STATE_FILE)


def read() -> Maintenance | None:
    """The current maintenance record; None when maintenance is off.

    A corrupt record is a UsageError naming the file: deleting it by hand and running
    ``xivo-ha maintenance off`` resumes the jobs.
    """
    path = state_path()
    try:
        text = system.read_text(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if text is None:
        return None
    try:
        data = json.loads(text)
        since = datetime.fromisoformat(data["since"]).timestamp()
        return Maintenance(since, str(data.get("reason", "")), str(data.get("role", "")),
                           str(data.get("cron_file", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{path} is not a maintenance record ({exc}): remove it and run `xivo-ha maintenance off`"
        ) from None


def _record_text(entry: Maintenance) -> str:
    data = asdict(entry)
    data["since"] = entry.since_text()
    return json.dumps(data, indent=2) + "\n"


def paused_cron_files() -> list[Path]:
    """HA cron files that carry the pause marker."""
    found = []
    for name in cron.CRON_FILES.values():
        path = paths.node(name)
        text = system.read_text(path)
        if text is not None and is_paused(text):
            found.append(path)
    return found


# --- hooks for the other commands ---------------------------------------------------


def regenerate_content(content: str | None) -> str | None:
    """What `xivo-ha cron regenerate` must write: paused while maintenance is on."""
    if content is None or read() is None:
        return content
    return pause_text(content)


def refuse_role_change() -> None:
    """Role changes rewrite the HA cron: refused while maintenance is on (exit 1)."""
    entry = read()
    if entry is not None:
        raise OperationFailed(
            f"maintenance is {entry.describe()}: a role change would resume the HA cron jobs. "
            "Run `xivo-ha maintenance off` first. Nothing was changed."
        )


# --- the actions --------------------------------------------------------------------


def turn_on(reason: str, say: Progress, now: float | None = None) -> Maintenance:
    reason = validate_reason(reason)
    with role.change_lock():
        return _turn_on(reason, say, now)


def _turn_on(reason: str, say: Progress, now: float | None) -> Maintenance:
    config = role.read()
    entry = read()
    if entry is not None:
        path = paths.node(entry.cron_file) if entry.cron_file else None
        text = system.read_text(path) if path is not None else None
        if text is not None and active_jobs(text):
            system.write_atomic(path, pause_text(text), _mode(path))
            say(f"paused {entry.cron_file} again (it had been rewritten)")
        say(f"maintenance is already {entry.describe(now)}")
        return entry
    if config.role is Role.DISABLED:
        raise OperationFailed("HA is disabled on this node: there is no HA cron to pause")
    name = cron.CRON_FILES[config.role]
    path = paths.node(name)
    text = system.read_text(path)
    if text is None:
        raise OperationFailed(
            f"{name} is missing, so there is nothing to pause: run `xivo-ha cron regenerate` "
            "(or `xivo-ha doctor`) first. Nothing was changed."
        )
    entry = Maintenance(time.time() if now is None else now, reason, config.role.value, name)
    paths.node(paths.STATE_DIR).mkdir(mode=0o750, parents=True, exist_ok=True)
    observed = Observed(config, {p: FileState.read(p) for p in (path, state_path())})
    execute([Step(f"pause {name}", writes={path: (pause_text(text), _mode(path))}, said=[]),
             Step(f"record {shown(state_path())}", writes={state_path(): (_record_text(entry), 0o644)}, said=[])],
            None, observed, say)
    jobs = len(active_jobs(text))
    say(f"paused {jobs} job{'s' if jobs != 1 else ''} in {name}")
    LOGGER.info("maintenance on (%s): paused %s%s", config.role.value, name,
                   f": {reason}" if reason else "")
    return entry


@dataclass
class OffOutcome:
    resumed: list[str]
    ran: list[str]
    failed: str = ""


def turn_off(settings: Settings, say: Progress, replicate: bool = True) -> OffOutcome:
    """Resume the cron, forget the record, and on the master replicate and sync now."""
    with role.change_lock():
        return _turn_off(settings, say, replicate)


def _turn_off(settings: Settings, say: Progress, replicate: bool) -> OffOutcome:
    entry = read()
    config = role.read()
    outcome = OffOutcome([], [])
    paused = paused_cron_files()
    observed = Observed(config, {p: FileState.read(p) for p in (*paused, state_path())})
    steps = [Step(f"resume {shown(p)}", said=[],
                  writes={p: (resume_text(observed.files[p].content.decode("utf-8")), observed.files[p].mode)})
             for p in paused]
    record = observed.files[state_path()]
    if record.content is not None:
        steps.append(Step(f"remove {shown(state_path())}", writes={state_path(): (None, record.mode)}, said=[]))
    execute(steps, settings, observed, say)
    for path in paused:
        outcome.resumed.append(shown(path))
        say(f"resumed the jobs in {shown(path)}")
    if record.content is not None:
        LOGGER.info("maintenance off: resumed %s", ", ".join(outcome.resumed) or "no cron file")
    if entry is None and not outcome.resumed:
        say("maintenance is not on: nothing to resume")
        return outcome
    if config.role is not Role.MASTER:
        return outcome
    if not replicate:
        say("skipping the catch-up replication and sync (--no-replication): they run at the next hour")
        return outcome
    failures = []
    for key in ("replication_command", "sync_command"):
        argv = [part.replace("{slave}", config.remote_address) for part in getattr(settings.maintenance, key)]
        command_line = " ".join(argv)
        say(f"running {command_line}")
        try:
            result = system.run(argv, timeout=settings.maintenance.command_timeout)
        except OperationFailed as exc:
            failures.append(str(exc))
            continue
        if not result.ok:
            failures.append(f"`{command_line}` exited with {result.returncode}: {result.output() or 'no output'}")
            continue
        for line in result.stdout.strip().splitlines()[-3:]:
            say(f"  {line}")
        outcome.ran.append(command_line)
    outcome.failed = "; ".join(failures)
    if outcome.failed:
        LOGGER.error("maintenance off: the catch-up run failed: %s", outcome.failed)
    return outcome


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o644


def shown(path: Path) -> str:
    """A rooted node path as the node sees it (``/etc/...``)."""
    try:
        return "/" + str(path.relative_to(paths.root()))
    except ValueError:
        return str(path)
