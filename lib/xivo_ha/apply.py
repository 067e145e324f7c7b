"""Role changes: observe the node, plan every side effect, apply them in order, roll back on failure.

The order is XiVO's, with the replication stream's step second: (a) ha.conf, (b) the
replication stream's database objects that the new role or mode does not keep
(subscription, slots, publication, role), (c) slave PostgreSQL access (and, on a master
in ``[replication] mode = continuous``, the slave's stream access, wal_level = logical),
(d) cron, (e) sentinels, (f) SIP expiry rows, (g) provisioning backup registrar (provd's
registrar and device configs), (h) on an ex-slave, the slave services back on at boot
(and started when asked).  The stream's objects go before (c) restarts PostgreSQL:
a server holding a logical slot does not start with a lower wal_level.
Restarting every service is left to the caller.  Everything that can be checked is
checked while observing, before the first write; a step that still fails makes every
applied step undo itself.

:func:`execute` is the one rollback engine: `xivo-ha cc` and `xivo-ha maintenance` build
their own :class:`Step` lists and apply them through it too (without the journal, which
is for role changes).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import cron, database, paths, pgaccess, provisioning, role, services, system
from .errors import OperationFailed, UsageError
from .log import Progress
from .replication import stream
from .role import ALLOW_LOOPBACK_ENV, HaConfig, Role
from .settings import Settings


@dataclass(frozen=True)
class FileState:
    """A path as read before a change: what undoing the change puts back."""

    path: Path
    content: bytes | None                  # None: no file there (or a directory)
    mode: int
    owner: tuple[int, int] | None = None   # None: nothing there
    is_dir: bool = False

    @classmethod
    def read(cls, path: Path, directory_ok: bool = False) -> "FileState":
        """The file (or, with ``directory_ok``, the directory) at ``path``; a missing one too."""
        try:
            info = path.stat()
            if stat.S_ISDIR(info.st_mode) and directory_ok:
                return cls(path, None, info.st_mode & 0o7777, (info.st_uid, info.st_gid), True)
            content = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return cls(path, None, 0o644)
        except OSError as exc:
            raise OperationFailed(f"cannot read {path}: {exc.strerror}") from None
        return cls(path, content, info.st_mode & 0o7777, (info.st_uid, info.st_gid))

    @classmethod
    def read_quietly(cls, path: Path, directory_ok: bool = False) -> "FileState | None":
        try:
            return cls.read(path, directory_ok)
        except OperationFailed:
            return None

    def restore(self) -> None:
        """Put the path back as it was read (a directory created since is removed if empty)."""
        if self.is_dir:
            os.chown(self.path, *self.owner)
            os.chmod(self.path, self.mode)
        elif self.content is not None:
            system.write_atomic(self.path, self.content, self.mode)
            os.chown(self.path, *self.owner)
        elif self.path.is_dir() and not self.path.is_symlink():
            self.path.rmdir()
        else:
            with contextlib.suppress(NotADirectoryError):
                system.remove(self.path)


@dataclass(frozen=True)
class Observed:
    """Everything a change depends on, read before anything is written.

    ``current`` is the role (None for changes that do not depend on it); ``files`` every
    path a step writes or creates; ``sip_expiry`` and ``provd`` what role changes edit.
    """

    current: HaConfig | None
    files: dict[Path, FileState]
    sip_expiry: dict[str, str | None] = field(default_factory=dict)
    provd: provisioning.Snapshot = field(default_factory=lambda: provisioning.Snapshot(None, {}, {}, []))
    stream: tuple[str, ...] = ()  # the replication stream's objects in the local database


@dataclass
class Step:
    """One side effect: file writes and directories, then optional commands and a DB change."""

    name: str
    writes: dict[Path, tuple[str | bytes | None, int]] = field(default_factory=dict)
    directories: dict[Path, tuple[int, tuple[int, int]]] = field(default_factory=dict)  # mode, owner
    commands: list[list[str]] = field(default_factory=list)
    sip_expiry: dict[str, str | None] | None = None
    provd_puts: dict[str, dict] = field(default_factory=dict)
    undo_commands: list[list[str]] | None = None   # None: undoing runs ``commands`` again
    database_change: Callable[[Settings], object] | None = None  # run last; not undone
    why: str = ""                                  # said once the step is applied
    said: list[str] | None = None                  # said instead of "wrote …", "ran …" when set

    def is_noop(self) -> bool:
        return (not self.writes and not self.directories and self.sip_expiry is None and not self.provd_puts
                and not self.commands and self.database_change is None)


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
        if (target.role is Role.SLAVE or _streams(target, settings)) and state.content is None:
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
        objects = tuple(stream.local_objects(conn))
    finally:
        conn.close()
    return Observed(current, files, expiry, provd, objects)


def plan(target: HaConfig, settings: Settings, observed: Observed, start: bool = False) -> list[Step]:
    """The steps that bring the node from ``observed`` to ``target`` (pure).

    ``start``: an ex-slave also starts its slave services, not only enables them at boot.
    """
    files = role_files()
    role_step = Step("a. role in /etc/xivo/ha.conf")
    _want(role_step, observed, files["ha"], target.to_json())

    cron_step = Step("d. cron")
    for path, content in cron.desired_files(target, settings.replication.mode).items():
        _want(cron_step, observed, path, content)

    sentinel_step = Step("e. sentinels")
    _want(sentinel_step, observed, files["primary"], "" if target.role is Role.MASTER else None)
    _want(sentinel_step, observed, files["secondary"], "" if target.role is Role.SLAVE else None)

    expiry_step = Step("f. SIP expiry")
    expiry = database.BLANK_SIP_EXPIRY if target.role is Role.DISABLED else database.HA_SIP_EXPIRY
    if observed.sip_expiry != expiry:
        expiry_step.sip_expiry = dict(expiry)

    return [role_step, _stream_step(target, settings, observed), _pg_step(target, settings, observed), cron_step,
            sentinel_step, expiry_step, _provd_step(target, observed), _services_step(target, settings, observed, start)]


def _want(step: Step, observed: Observed, path: Path, content: str | bytes | None, mode: int = 0o644) -> None:
    """Add the write of ``path`` to ``step`` unless the node holds it already."""
    current = observed.files[path]
    new = content.encode("utf-8") if isinstance(content, str) else content
    if current.content != new or (new is not None and current.mode != mode):
        step.writes[path] = (content, mode)


def _streams(target: HaConfig, settings: Settings) -> bool:
    """A master in continuous mode: the slave streams from its PostgreSQL."""
    return target.role is Role.MASTER and settings.replication.mode == stream.CONTINUOUS


def _pg_step(target: HaConfig, settings: Settings, observed: Observed) -> Step:
    step = Step("c. slave PostgreSQL access")
    master_ip = target.remote_address if target.role is Role.SLAVE else None
    slave_ip = target.remote_address if _streams(target, settings) else None
    for key, edit in (("hba_file", lambda text: pgaccess.edit_hba(text, master_ip, slave_ip)),
                      ("conf_file", lambda text: pgaccess.edit_conf(text, bool(master_ip or slave_ip),
                                                                    slave_ip is not None))):
        path = paths.node(getattr(settings.postgresql, key))
        current = observed.files[path]
        if current.content is not None:
            _want(step, observed, path, edit(current.content), current.mode)
    if step.writes:
        step.commands.append(list(settings.postgresql.reload_command))
    return step


def _provd_step(target: HaConfig, observed: Observed) -> Step:
    step = Step("g. provisioning backup registrar")
    leaving_slave = target.role is Role.DISABLED and observed.current.role is Role.SLAVE
    backup = target.remote_address if target.role is Role.MASTER else None
    edits, step.why = provisioning.edited_configs(observed.provd.configs, backup,
                                                  registrar_too=target.role is not Role.SLAVE and not leaving_slave)
    for config_id, document in edits.items():
        if observed.provd.url:
            step.provd_puts[config_id] = document
        else:
            path = observed.provd.files[config_id]
            _want(step, observed, path, provisioning.dump(document), observed.files[path].mode)
    return step


def _services_step(target: HaConfig, settings: Settings, observed: Observed, start: bool) -> Step:
    step = Step("h. slave services at boot")
    if observed.current.role is Role.SLAVE and target.role is not Role.SLAVE:
        manager = services.Manager.from_settings(settings)
        step.undo_commands = []
        for name in manager.services:
            step.commands.append(manager.command(manager.enable_command, name))
            if start:
                step.commands.append(manager.command(manager.start_command, name))
        for name in reversed(manager.services):
            if start:
                step.undo_commands.append(manager.command(manager.stop_command, name))
            step.undo_commands.append(manager.command(manager.disable_command, name))
    return step


def _stream_step(target: HaConfig, settings: Settings, observed: Observed) -> Step:
    """Remove the stream's objects that the new role or mode does not keep.  Not undone
    should a later step fail (the failure says so): in continuous mode the next verified
    copy recreates them."""
    step = Step("b. replication stream")
    plan = stream.teardown(target.role.value, settings.replication.mode, observed.stream)
    if plan.needed:
        removed = [o for o in observed.stream if (plan.subscription if o.startswith("subscription ") else plan.master)]
        step.database_change = lambda config: stream.remove_local(config.database.dsn, plan.subscription, plan.master)
        step.said = [f"removed {', '.join(removed)} ({plan.reason})"]
    return step


def devices_to_sync(steps: list[Step], observed: Observed) -> list[str]:
    """The devices whose config the provisioning step rewrites: they need a synchronize."""
    provd_step = next(step for step in steps if step.name.startswith("g. "))
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


def execute(steps: list[Step], settings: Settings | None, observed: Observed, say: Progress,
            target: HaConfig | None = None) -> Outcome:
    """Apply ``steps`` in order; on failure or SIGINT/SIGTERM/SIGHUP undo what was applied
    and raise OperationFailed.  For a role change (``target``), a journal records the change
    while it is in progress, for :func:`undo_interrupted`.  ``settings`` may be None when no
    step runs commands or edits the SIP expiry rows or provd."""
    applied: list[Step] = []
    current: Step | None = None
    timeout = system.DEFAULT_TIMEOUT if settings is None else settings.services.command_timeout
    try:
        with system.interruptible():
            for step in steps:
                if step.is_noop():
                    continue
                current = step
                if target is not None:
                    _journal_write(target, steps, observed, applied, current)
                _apply_step(step, settings, timeout, observed)
                applied.append(step)
                current = None
    except (Exception, system.Interrupted) as exc:  # noqa: BLE001 - any failure rolls back
        name = current.name if current else "the role change" if target is not None else "the change"
        with system.deferred_signals():
            leftovers = _rollback(applied, settings, observed, timeout, failed=current)
            if not leftovers and target is not None:
                system.remove(journal_path())
        if leftovers:
            raise OperationFailed(
                f"{name} failed: {_reason(exc)}. Rollback incomplete, still applied: {'; '.join(leftovers)}"
            ) from None
        raise OperationFailed(f"{name} failed: {_reason(exc)}. Rolled back: nothing was changed.") from None
    if target is not None:
        system.remove(journal_path())
    changed = [line for step in applied for line in _said(step, observed)]
    for line in changed:
        say(f"  {line}")
    return Outcome([step.name for step in applied], changed)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, system.Interrupted):
        return f"interrupted by {exc.name}"
    if isinstance(exc, OperationFailed):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"


def _said(step: Step, observed: Observed) -> list[str]:
    """What an applied step changed, one line each."""
    if step.said is not None:
        return step.said
    lines = [f"{'removed' if content is None else 'wrote'} {_shown(path)}" for path, (content, _) in step.writes.items()]
    if step.sip_expiry is not None:
        lines.append("set SIP expiry " + ", ".join(f"{k}={v or 'blank'}" for k, v in step.sip_expiry.items()))
    if step.why:
        lines.append(step.why)
    lines.extend(f"updated provd config {config_id} ({observed.provd.url})" for config_id in step.provd_puts)
    lines.extend("ran " + " ".join(command) for command in step.commands)
    return lines


def _apply_step(step: Step, settings: Settings, timeout: float, observed: Observed) -> None:
    for path, (mode, owner) in step.directories.items():
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chown(path, *owner)
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
    if step.database_change is not None:
        step.database_change(settings)


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
    the rows differ (or cannot be read), the stream's objects when any is gone.  Commands
    (the PostgreSQL reload) are run again once the files are back; their failure leaves
    nothing applied.
    """
    problems = []
    undo = [*([failed] if failed else []), *reversed(applied)]
    for step in undo:
        for path in [*step.writes, *step.directories]:
            before = observed.files[path]
            try:
                before.restore()
            except OSError:
                pass
            if FileState.read_quietly(path, directory_ok=before.is_dir) != before:
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
        if step.database_change is not None:
            gone = _stream_objects_gone(settings, observed)
            if gone:
                problems.append(f"{step.name}: removed {', '.join(gone)} (not put back: in continuous mode "
                                f"the next verified copy recreates the stream)")
    return problems


def _stream_objects_gone(settings: Settings, observed: Observed) -> list[str]:
    """The stream's objects observed before the change that the database no longer holds
    (all of them when it cannot be read)."""
    import psycopg

    try:
        conn = database.connect(settings.database.dsn)
    except OperationFailed:
        return list(observed.stream)
    try:
        now = set(stream.local_objects(conn))
    except psycopg.Error:
        return list(observed.stream)
    finally:
        conn.close()
    return [name for name in observed.stream if name not in now]


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
