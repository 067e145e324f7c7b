"""Role changes: observe the node, plan every side effect, apply them in order, roll back on failure.

The order is XiVO's: (a) ha.conf, (b) slave PostgreSQL access, (c) cron, (d) sentinels,
(e) SIP expiry rows, (f) provisioning backup registrar (provd's registrar and device
configs), (g) on an ex-slave, the slave services back on at boot (and started when asked).
Restarting every service is left to the caller.  Everything that can be checked is
checked while observing, before the first write; a step that still fails makes every
applied step undo itself.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import cron, database, paths, pgaccess, provisioning, role, services, system
from .errors import OperationFailed, UsageError
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

    def text(self) -> str | None:
        return None if self.content is None else self.content.decode("utf-8", errors="replace")


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
    writes: dict[Path, tuple[str | None, int]] = field(default_factory=dict)
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
        path = paths.node(settings.postgresql[key])
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

    def wanted(step: Step, path: Path, content: str | None, mode: int = 0o644) -> None:
        current = observed.files[path]
        new = None if content is None else content.encode("utf-8")
        if current.content != new or (new is not None and current.mode != mode):
            step.writes[path] = (content, mode)

    role_step = Step("a. role in /etc/xivo/ha.conf")
    wanted(role_step, files["ha"], target.to_json())
    steps.append(role_step)

    pg_step = Step("b. slave PostgreSQL access")
    master_ip = target.remote_address if target.role is Role.SLAVE else None
    for key, edit in (("hba_file", lambda text: pgaccess.edit_hba(text, master_ip)),
                      ("conf_file", lambda text: pgaccess.edit_conf(text, master_ip is not None))):
        path = paths.node(settings.postgresql[key])
        current = observed.files[path]
        if current.text() is not None:
            wanted(pg_step, path, edit(current.text()), current.mode)
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


def execute(steps: list[Step], settings: Settings, observed: Observed, say: Callable[[str], None]) -> Outcome:
    """Apply ``steps`` in order; on failure undo what was applied and raise OperationFailed."""
    applied: list[Step] = []
    changed: list[str] = []
    timeout = settings.services.command_timeout
    for step in steps:
        if step.is_noop():
            continue
        try:
            _apply_step(step, settings, timeout, observed)
        except Exception as exc:  # noqa: BLE001 - any failure rolls back
            reason = str(exc) if isinstance(exc, OperationFailed) else f"{type(exc).__name__}: {exc}"
            leftovers = _rollback(applied, settings, observed, timeout, failed=step)
            if leftovers:
                raise OperationFailed(
                    f"{step.name} failed: {reason}. Rollback incomplete, still applied: {'; '.join(leftovers)}"
                ) from None
            raise OperationFailed(f"{step.name} failed: {reason}. Rolled back: nothing was changed.") from None
        applied.append(step)
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
        raise OperationFailed(f"cannot write SIP expiry rows: {database.first_line(exc)}") from None
    finally:
        conn.close()


def _rollback(applied: list[Step], settings: Settings, observed: Observed, timeout: float,
              failed: Step) -> list[str]:
    """Undo ``failed`` then ``applied`` in reverse order; the names of what could not be undone.

    The failed step's database change ran in one transaction that did not commit, so only
    its files and commands are undone.
    """
    leftovers = []
    partial = Step(failed.name, failed.writes, failed.commands, provd_puts=failed.provd_puts,
                   undo_commands=failed.undo_commands)
    for step in [partial, *reversed(applied)]:
        try:
            for path in step.writes:
                before = observed.files[path]
                if before.content is None:
                    system.remove(path)
                else:
                    system.write_atomic(path, before.content, before.mode)
            if step.provd_puts:
                provisioning.restore_configs(observed.provd.url,
                                             {c: observed.provd.configs[c] for c in step.provd_puts},
                                             settings.provisioning.timeout)
            if step.sip_expiry is not None:
                _write_expiry(settings, observed.sip_expiry)
            for command in step.commands if step.undo_commands is None else step.undo_commands:
                system.run(command, timeout=timeout, check=False)
        except Exception as exc:  # noqa: BLE001 - report, keep undoing the rest
            leftovers.append(f"{step.name} ({exc})")
    return leftovers


def _shown(path: Path) -> str:
    root = paths.root()
    try:
        return "/" + str(path.relative_to(root))
    except ValueError:
        return str(path)


def change_role(target: HaConfig, settings: Settings, say: Callable[[str], None], start: bool = False) -> Outcome:
    """Validate, observe, plan and apply a role change (``start``: see :func:`plan`)."""
    if target.role is not Role.DISABLED and target.remote_address in _own_addresses():
        raise UsageError(
            f"peer address {target.remote_address!r} is this node's own address: give the other node's address"
        )
    observed = observe(settings, target)
    steps = plan(target, settings, observed, start)
    outcome = execute(steps, settings, observed, say)
    outcome.devices = devices_to_sync(steps, observed)
    outcome.provd_url = observed.provd.url
    return outcome


def _own_addresses() -> frozenset[str]:
    addresses = system.local_ipv4_addresses()
    if os.environ.get(ALLOW_LOOPBACK_ENV) == "1":
        return frozenset(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    return addresses
