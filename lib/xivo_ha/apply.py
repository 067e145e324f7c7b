"""Role changes: observe the node, plan every side effect, apply them in order, roll back on failure.

The order is XiVO's: (a) ha.conf, (b) slave PostgreSQL access, (c) cron, (d) sentinels,
(e) SIP expiry rows, (f) provisioning backup registrar (provd's registrar and device
configs), (g) on an ex-slave, the slave services back on at boot (and started when asked).
Restarting every service is left to the caller.  Everything that can be checked is
checked while observing, before the first write; a step that still fails makes every
applied step undo itself.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import cron, database, paths, pgaccess, provisioning, role, services, system
from .errors import OperationFailed, UsageError
from .log import Progress
from .role import ALLOW_LOOPBACK_ENV, HaConfig, Role
from .settings import Settings


@dataclass(frozen=True)
class FileState:
    path: Path
    content: bytes | None
    mode: int

    @classmethod
    def read(cls, path: Path) -> "FileState":
        try:
            return cls(path, path.read_bytes(), path.stat().st_mode & 0o7777)
        except FileNotFoundError:
            return cls(path, None, 0o644)
        except OSError as exc:
            raise OperationFailed(f"cannot read {path}: {exc.strerror}") from None

    @classmethod
    def read_quietly(cls, path: Path) -> "FileState | None":
        try:
            return cls.read(path)
        except OperationFailed:
            return None


@dataclass(frozen=True)
class Observed:
    """Everything a role change depends on, read before anything is written."""

    current: HaConfig
    files: dict[Path, FileState]
    sip_expiry: dict[str, str | None]
    provd: provisioning.Snapshot


@dataclass
class Step:
    """One lettered side effect: file writes, then optional commands and a DB change."""

    name: str
    writes: dict[Path, tuple[str | bytes | None, int]] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    sip_expiry: dict[str, str | None] | None = None
    provd_puts: dict[str, dict] = field(default_factory=dict)
    undo_commands: list[list[str]] | None = None   # None: undoing runs ``commands`` again
    why: str = ""                                  # said once the step is applied

    def is_noop(self) -> bool:
        return not self.writes and self.sip_expiry is None and not self.provd_puts and not self.commands


def role_files() -> dict[str, Path]:
    return {
        "ha": paths.node(paths.HA_CONF),
        "cron_master": paths.node(paths.CRON_MASTER),
        "cron_slave": paths.node(paths.CRON_SLAVE),
        "primary": paths.node(paths.SENTINEL_PRIMARY),
        "secondary": paths.node(paths.SENTINEL_SECONDARY),
    }


def observe(settings: Settings, target: HaConfig) -> Observed:
    current = role.read()
    files = {path: FileState.read(path) for path in role_files().values()}
    for key in ("hba_file", "conf_file"):
        path = paths.node(getattr(settings.postgresql, key))
        state = FileState.read(path)
        if target.role is Role.SLAVE and state.content is None:
            raise OperationFailed(
                f"{path} not found: is PostgreSQL 15 installed? Set [postgresql] {key} in "
                f"{paths.SETTINGS} if it lives elsewhere. Nothing was changed."
            )
        files[path] = state
    provd = provisioning.observe(settings.provisioning.url, settings.provisioning.timeout)
    for path in provd.files.values():
        files[path] = FileState.read(path)
    conn = database.connect(settings.database.dsn)
    try:
        expiry = database.read_sip_expiry(conn)
    finally:
        conn.close()
    return Observed(current, files, expiry, provd)


def plan(target: HaConfig, settings: Settings, observed: Observed, start: bool = False) -> list[Step]:
    """The steps that bring the node from ``observed`` to ``target`` (pure).

    ``start``: an ex-slave also starts its slave services, not only enables them at boot.
    """
    files = role_files()
    steps: list[Step] = []

    def wanted(step: Step, path: Path, content: str | bytes | None, mode: int = 0o644) -> None:
        current = observed.files[path]
        new = content.encode("utf-8") if isinstance(content, str) else content
        if current.content != new or (new is not None and current.mode != mode):
            step.writes[path] = (content, mode)

    role_step = Step("a. role in /etc/xivo/ha.conf")
    wanted(role_step, files["ha"], target.to_json())
    steps.append(role_step)

    pg_step = Step("b. slave PostgreSQL access")
    master_ip = target.remote_address if target.role is Role.SLAVE else None
    for key, edit in (("hba_file", lambda text: pgaccess.edit_hba(text, master_ip)),
                      ("conf_file", lambda text: pgaccess.edit_conf(text, master_ip is not None))):
        path = paths.node(getattr(settings.postgresql, key))
        current = observed.files[path]
        if current.content is not None:
            wanted(pg_step, path, edit(current.content), current.mode)
    if pg_step.writes:
        pg_step.commands.append(list(settings.postgresql.reload_command))
    steps.append(pg_step)

    cron_step = Step("c. cron")
    for path, content in cron.desired_files(target).items():
        wanted(cron_step, path, content)
    steps.append(cron_step)

    sentinel_step = Step("d. sentinels")
    wanted(sentinel_step, files["primary"], "" if target.role is Role.MASTER else None)
    wanted(sentinel_step, files["secondary"], "" if target.role is Role.SLAVE else None)
    steps.append(sentinel_step)

    expiry_step = Step("e. SIP expiry")
    expiry = database.BLANK_SIP_EXPIRY if target.role is Role.DISABLED else database.HA_SIP_EXPIRY
    if observed.sip_expiry != expiry:
        expiry_step.sip_expiry = dict(expiry)
    steps.append(expiry_step)

    provd_step = Step("f. provisioning backup registrar")
    leaving_slave = target.role is Role.DISABLED and observed.current.role is Role.SLAVE
    backup = target.remote_address if target.role is Role.MASTER else None
    edits, provd_step.why = provisioning.edited_configs(observed.provd.configs, backup,
                                           registrar_too=target.role is not Role.SLAVE and not leaving_slave)
    for config_id, document in edits.items():
        if observed.provd.url:
            provd_step.provd_puts[config_id] = document
        else:
            path = observed.provd.files[config_id]
            wanted(provd_step, path, provisioning.dump(document), observed.files[path].mode)
    steps.append(provd_step)

    services_step = Step("g. slave services at boot")
    if observed.current.role is Role.SLAVE and target.role is not Role.SLAVE:
        manager = services.Manager.from_settings(settings)
        services_step.undo_commands = []
        for name in manager.services:
            services_step.commands.append(manager.command(manager.enable_command, name))
            if start:
                services_step.commands.append(manager.command(manager.start_command, name))
        for name in reversed(manager.services):
            if start:
                services_step.undo_commands.append(manager.command(manager.stop_command, name))
            services_step.undo_commands.append(manager.command(manager.disable_command, name))
    steps.append(services_step)
    return steps


def devices_to_sync(steps: list[Step], observed: Observed) -> list[str]:
    """The devices whose config the provisioning step rewrites: they need a synchronize."""
    provd_step = next(step for step in steps if step.name.startswith("f. "))
    ids = set(provd_step.provd_puts)
    ids.update(config_id for config_id, path in observed.provd.files.items() if path in provd_step.writes)
    return provisioning.affected_devices(observed.provd.devices, ids)


@dataclass
class Outcome:
    applied: list[str]
    changed: list[str]
    devices: list[str] = field(default_factory=list)   # to synchronize
    provd_url: str | None = None                       # None: provd was not running


JOURNAL = "role-change.json"


def journal_path() -> Path:
    return paths.state(JOURNAL)


def _journal_write(target: HaConfig, steps: list[Step], observed: Observed,
                   applied: list[Step], current: Step | None) -> None:
    """Record the change in progress (atomically, before each step): enough to undo it."""
    touched = [*applied, *([current] if current else [])]
    data = {
        "pid": os.getpid(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": {"node_type": target.role.value, "remote_address": target.remote_address},
        "plan": [step.name for step in steps if not step.is_noop()],
        "applied": [step.name for step in applied],
        "current": current.name if current else None,
        "previous_files": {
            str(path): {"content": None if observed.files[path].content is None
                        else base64.b64encode(observed.files[path].content).decode("ascii"),
                        "mode": observed.files[path].mode}
            for step in touched for path in step.writes
        },
        "previous_sip_expiry": observed.sip_expiry if any(s.sip_expiry is not None for s in touched) else None,
        "commands": [command for step in touched
                     for command in (step.commands if step.undo_commands is None else step.undo_commands)],
        "provd_url": observed.provd.url,
        "previous_provd": {config_id: observed.provd.configs[config_id]
                           for step in touched for config_id in step.provd_puts},
    }
    system.write_atomic(journal_path(), json.dumps(data, indent=1) + "\n", 0o600)


def read_journal() -> dict | None:
    """The journal of an interrupted change, or None; an unreadable one is reported as such."""
    try:
        raw = journal_path().read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"error": f"cannot read {journal_path()}: {exc.strerror}"}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {"error": f"{journal_path()} is not valid JSON"}
    if not isinstance(data, dict):
        return {"error": f"{journal_path()} is not a JSON object"}
    return data


def interrupted_change() -> str | None:
    """A sentence on an interrupted change (journal left by a process that is gone), or None."""
    data = read_journal()
    if data is None:
        return None
    pid = data.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        return None
    return describe_journal(data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_journal(data: dict) -> str:
    """One sentence on an interrupted change, for status and doctor."""
    if "error" in data:
        return f"an interrupted role change left an unreadable journal ({data['error']})"
    target = data.get("target") if isinstance(data.get("target"), dict) else {}
    what = target.get("node_type", "?")
    if target.get("remote_address"):
        what += f" {target['remote_address']}"
    step = data.get("current") or "between steps"
    return (f"a role change to {what} started at {data.get('started_at', '?')} was interrupted "
            f"(at {step}); the next `xivo-ha enable` or `xivo-ha disable` undoes it first")


def undo_interrupted(settings: Settings, say: Progress) -> None:
    """Finish an interrupted change by undoing it: restore the recorded previous state."""
    data = read_journal()
    if data is None:
        return
    if "error" in data:
        raise OperationFailed(f"{data['error']}: restore the node by hand, then remove it")
    try:
        files = {Path(name): (None if entry["content"] is None else base64.b64decode(entry["content"]),
                              int(entry["mode"]))
                 for name, entry in data["previous_files"].items()}
        expiry = data["previous_sip_expiry"]
        commands = [[str(arg) for arg in command] for command in data["commands"]]
        provd = data.get("previous_provd") or {}
        if not isinstance(provd, dict):
            raise TypeError("previous_provd")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise OperationFailed(f"{journal_path()} is incomplete: restore the node by hand, then remove it") from None
    say(f"xivo-ha: {describe_journal(data).split(';')[0]}: undoing it first")
    for path, (content, mode) in files.items():
        if content is None:
            system.remove(path)
        else:
            system.write_atomic(path, content, mode)
        say(f"  restored {_shown(path)}")
    if isinstance(expiry, dict):
        _write_expiry(settings, expiry)
        say("  restored the SIP expiry rows")
    if provd:
        try:
            provisioning.restore_configs(str(data.get("provd_url")), provd, settings.provisioning.timeout)
        except OSError as exc:
            raise OperationFailed(f"cannot restore provd configs {', '.join(sorted(provd))}: {exc}") from None
        say(f"  restored provd configs {', '.join(sorted(provd))}")
    for command in commands:
        system.run(command, timeout=settings.services.command_timeout, check=False)
        say("  ran " + " ".join(command))
    system.remove(journal_path())


def execute(steps: list[Step], settings: Settings, observed: Observed, say: Progress,
            target: HaConfig | None = None) -> Outcome:
    """Apply ``steps`` in order; on failure or SIGINT/SIGTERM/SIGHUP undo what was applied
    and raise OperationFailed.  A journal records the change while it is in progress."""
    applied: list[Step] = []
    changed: list[str] = []
    current: Step | None = None
    timeout = settings.services.command_timeout
    target = observed.current if target is None else target
    try:
        with system.interruptible():
            for step in steps:
                if step.is_noop():
                    continue
                current = step
                _journal_write(target, steps, observed, applied, current)
                _apply_step(step, settings, timeout, observed)
                applied.append(step)
                current = None
    except (Exception, system.Interrupted) as exc:  # noqa: BLE001 - any failure rolls back
        if isinstance(exc, system.Interrupted):
            reason = f"interrupted by {exc.name}"
        elif isinstance(exc, OperationFailed):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        name = current.name if current else "the role change"
        with system.deferred_signals():
            leftovers = _rollback(applied, settings, observed, timeout, failed=current)
            if not leftovers:
                system.remove(journal_path())
        if leftovers:
            raise OperationFailed(
                f"{name} failed: {reason}. Rollback incomplete, still applied: {'; '.join(leftovers)}"
            ) from None
        raise OperationFailed(f"{name} failed: {reason}. Rolled back: nothing was changed.") from None
    system.remove(journal_path())
    for step in applied:
        for path in step.writes:
            changed.append(f"{'removed' if step.writes[path][0] is None else 'wrote'} {_shown(path)}")
        if step.sip_expiry is not None:
            changed.append("set SIP expiry " + ", ".join(f"{k}={v or 'blank'}" for k, v in step.sip_expiry.items()))
        if step.why:
            changed.append(step.why)
        for config_id in step.provd_puts:
            changed.append(f"updated provd config {config_id} ({observed.provd.url})")
        for command in step.commands:
            changed.append("ran " + " ".join(command))
    for line in changed:
        say(f"  {line}")
    return Outcome([step.name for step in applied], changed)


def _apply_step(step: Step, settings: Settings, timeout: float, observed: Observed) -> None:
    for path, (content, mode) in step.writes.items():
        if content is None:
            system.remove(path)
        else:
            system.write_atomic(path, content, mode)
    if step.provd_puts:
        provisioning.put_configs(observed.provd.url, step.provd_puts, settings.provisioning.timeout)
    if step.sip_expiry is not None:
        _write_expiry(settings, step.sip_expiry)
    for command in step.commands:
        system.run(command, timeout=timeout, check=True)


def _write_expiry(settings: Settings, values: dict[str, str | None]) -> None:
    import psycopg

    conn = database.connect(settings.database.dsn)
    try:
        with conn.transaction():
            database.write_sip_expiry(conn, values)
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot write SIP expiry rows: {database.error_text(exc)}") from None
    finally:
        conn.close()


def _rollback(applied: list[Step], settings: Settings, observed: Observed, timeout: float,
              failed: Step | None) -> list[str]:
    """Undo ``failed`` then ``applied`` in reverse order; what is still applied afterwards.

    Whatever an undo reports, the result is what the node holds afterwards: a file is
    still applied when its content differs from the observed one, the SIP expiry when
    the rows differ (or cannot be read).  Commands (the PostgreSQL reload) are run again
    once the files are back; their failure leaves nothing applied.
    """
    problems = []
    undo = [*([failed] if failed else []), *reversed(applied)]
    for step in undo:
        for path in step.writes:
            before = observed.files[path]
            try:
                if before.content is None:
                    system.remove(path)
                else:
                    system.write_atomic(path, before.content, before.mode)
            except OSError:
                pass
            now = FileState.read_quietly(path)
            if now != before:
                problems.append(f"{step.name}: {_shown(path)}")
        if step.sip_expiry is not None:
            try:
                _write_expiry(settings, observed.sip_expiry)
            except OperationFailed:
                pass
            if _read_expiry_quietly(settings) != observed.sip_expiry:
                problems.append(f"{step.name}: SIP expiry rows")
        if step.provd_puts:
            try:
                provisioning.restore_configs(observed.provd.url,
                                             {c: observed.provd.configs[c] for c in step.provd_puts},
                                             settings.provisioning.timeout)
            except (OperationFailed, OSError):
                problems.append(f"{step.name}: provd configs {', '.join(sorted(step.provd_puts))}")
        for command in step.commands if step.undo_commands is None else step.undo_commands:
            try:
                system.run(command, timeout=timeout, check=False)
            except OperationFailed:
                pass
    return problems


def _read_expiry_quietly(settings: Settings) -> dict[str, str | None] | None:
    import psycopg

    try:
        conn = database.connect(settings.database.dsn)
    except OperationFailed:
        return None
    try:
        return database.read_sip_expiry(conn)
    except psycopg.Error:
        return None
    finally:
        conn.close()


def _shown(path: Path) -> str:
    root = paths.root()
    try:
        return "/" + str(path.relative_to(root))
    except ValueError:
        return str(path)


def change_role(target: HaConfig, settings: Settings, say: Progress, start: bool = False) -> Outcome:
    """Validate, observe, plan and apply a role change (``start``: see :func:`plan`)."""
    if target.role is not Role.DISABLED and target.remote_address in _own_addresses():
        raise UsageError(
            f"peer address {target.remote_address!r} is this node's own address: give the other node's address"
        )
    undo_interrupted(settings, say)
    observed = observe(settings, target)
    steps = plan(target, settings, observed, start)
    outcome = execute(steps, settings, observed, say, target)
    outcome.devices = devices_to_sync(steps, observed)
    outcome.provd_url = observed.provd.url
    return outcome


def _own_addresses() -> frozenset[str]:
    addresses = system.local_ipv4_addresses()
    if os.environ.get(ALLOW_LOOPBACK_ENV) == "1":
        return frozenset(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    return addresses
