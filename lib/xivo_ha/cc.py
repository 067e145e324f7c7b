"""XiVO CC "DB Replic" in HA mode on the slave.

Queue logs and CELs are not replicated to the slave: each node keeps its own event data,
and DB Replic on the slave, run in its HA mode, sends the slave's to XiVO CC.  The
recipe (XiVO's "Interconnection with XiVO CC"):

1. ``/etc/docker/xivo/custom.env``: ``REPORTING_DB_HOST``, ``ELASTICSEARCH``,
   ``IS_HA_SLAVE=true``;
2. ``/var/log/xivo-db-replication`` owned ``daemon:daemon``;
3. ``apt-get install xivocc-docker-components``;
4. ``touch /var/lib/xivo/xc_enabled``;
5. ``xivo-service start``;
6. ``/usr/sbin/xivo-monitoring-update``.

:func:`enable` does 1, 2 and 4 all or nothing, then prints 3, 5 and 6 or, with
``apply``, runs each whose program exists.  :func:`disable` removes the three keys
and the sentinel (the log directory and its logs stay).

Accepted values: ``REPORTING_DB_HOST`` is an IPv4 address or a DNS host name;
``ELASTICSEARCH`` the same with an optional ``:port``.  Nothing else: no URL scheme,
no IPv6, no spaces or shell characters, since the file is read by docker-compose and
shell scripts alike.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import paths, role, system
from .errors import OperationFailed, UsageError
from .log import LOGGER, Progress
from .role import Role
from .settings import Settings

KEYS = ("REPORTING_DB_HOST", "ELASTICSEARCH", "IS_HA_SLAVE")
LOG_OWNER = "daemon"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")

# --- validation (pure) -------------------------------------------------------------


def validate_host(text: str | None, option: str, allow_port: bool = False) -> str:
    """An IPv4 address or DNS host name (``:port`` too when ``allow_port``), else UsageError."""
    value = (text or "").strip()
    example = "10.0.0.5 or reporting.example.com" + (", optionally with :port" if allow_port else "")
    if not value:
        raise UsageError(f"{option} is required: give a host ({example})")
    if "://" in value:
        raise UsageError(f"{option} {text!r}: give a host ({example}), not a URL")
    host, port = value, None
    if allow_port and value.count(":") == 1:
        host, port = value.split(":")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(f"{option} {text!r}: the port must be a number from 1 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
        except ValueError:
            suffix = " (a port is not accepted here)" if not allow_port else ""
            raise UsageError(f"{option} {text!r}: not a host name or IPv4 address{suffix}") from None
        raise UsageError(f"{option} {text!r}: IPv6 is not supported, give an IPv4 address or a host name")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise UsageError(f"{option} {text!r}: not a valid IPv4 address") from None
        if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
            raise UsageError(f"{option} {text!r}: not a unicast host address")
    elif len(host) > 253 or not _HOSTNAME.match(host):
        raise UsageError(f"{option} {text!r}: not a host name or IPv4 address ({example})")
    return value


# --- custom.env edits (pure) -------------------------------------------------------


def edit_env(text: str | None, values: dict[str, str | None]) -> str:
    """``text`` with each key of ``values`` set (or removed when None).

    Every other line and comment stays as it is.  The first active assignment of a key is
    replaced in place, later ones are dropped (the file then says one thing); missing keys
    are appended at the end.
    """
    lines = (text or "").splitlines()
    out: list[str] = []
    done: set[str] = set()
    for line in lines:
        match = _ASSIGNMENT.match(line)
        key = match.group(1) if match else None
        if key not in values:
            out.append(line)
            continue
        if key in done or values[key] is None:
            continue
        out.append(f"{key}={values[key]}")
        done.add(key)
    for key, value in values.items():
        if value is not None and key not in done:
            out.append(f"{key}={value}")
    return "\n".join(out) + "\n" if out else ""


def env_values(text: str | None) -> dict[str, str]:
    """The active ``KEY=value`` assignments (last one wins, as docker-compose reads them)."""
    found = {}
    for line in (text or "").splitlines():
        match = _ASSIGNMENT.match(line)
        if match:
            found[match.group(1)] = line.split("=", 1)[1].strip()
    return found


# --- applying ------------------------------------------------------------------------


@dataclass(frozen=True)
class _PathState:
    path: Path
    content: bytes | None
    mode: int
    owner: tuple[int, int] | None
    is_dir: bool

    @classmethod
    def read(cls, path: Path) -> "_PathState":
        try:
            info = path.stat()
            is_dir = path.is_dir()
            content = None if is_dir else path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return cls(path, None, 0o644, None, False)
        except OSError as exc:
            raise OperationFailed(f"cannot read {shown(path)}: {exc.strerror}. Nothing was changed.") from None
        return cls(path, content, info.st_mode & 0o7777, (info.st_uid, info.st_gid), is_dir)

    @property
    def exists(self) -> bool:
        return self.owner is not None

    def restore(self) -> None:
        if self.is_dir:
            os.chown(self.path, *self.owner)
            os.chmod(self.path, self.mode)
        elif self.exists:
            system.write_atomic(self.path, self.content, self.mode)
            os.chown(self.path, *self.owner)
        elif self.path.is_dir() and not self.path.is_symlink():
            self.path.rmdir()
        else:
            try:
                self.path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                pass


def _daemon_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam(LOG_OWNER).pw_uid, grp.getgrnam(LOG_OWNER).gr_gid
    except KeyError:
        raise OperationFailed(f"there is no {LOG_OWNER} user or group on this node. Nothing was changed.") from None


def _apply_files(changes: list[tuple[str, str, Callable[[], None]]], before: list[_PathState], say: Progress) -> None:
    """Run each (action, done, change); on any failure restore every path in ``before`` and raise."""
    for action, done, change in changes:
        try:
            change()
        except Exception as exc:  # noqa: BLE001 - any failure rolls back
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            leftovers = []
            for state in reversed(before):
                try:
                    state.restore()
                except Exception as undo_exc:  # noqa: BLE001 - report, keep undoing
                    leftovers.append(f"{shown(state.path)} ({undo_exc})")
            if leftovers:
                raise OperationFailed(
                    f"could not {action}: {reason}{where}. Rollback incomplete: {'; '.join(leftovers)}"
                ) from None
            raise OperationFailed(f"could not {action}: {reason}{where}. Rolled back: nothing was changed.") from None
        say(f"  {done}")


def enable(settings: Settings, reporting_host: str, elasticsearch: str, apply: bool, say: Progress) -> list[str]:
    """Configure DB Replic's HA mode; the steps still to run (printed or run with ``apply``)."""
    reporting_host = validate_host(reporting_host, "--reporting-db-host")
    elasticsearch = validate_host(elasticsearch, "--elasticsearch", allow_port=True)
    config = role.read()
    if config.role is not Role.SLAVE:
        raise OperationFailed(
            f"this node is {'a ' + config.role.value if config.role is not Role.DISABLED else 'not in HA'}: "
            "DB Replic's HA mode is for the slave (the master's DB Replic runs normally). Nothing was changed."
        )
    env_path = paths.node(paths.CC_CUSTOM_ENV)
    log_dir = paths.node(paths.CC_LOG_DIR)
    sentinel = paths.node(paths.CC_SENTINEL)
    uid, gid = _daemon_ids()
    before = [_PathState.read(p) for p in (env_path, log_dir, sentinel)]
    if before[0].is_dir:
        raise OperationFailed(f"{paths.CC_CUSTOM_ENV} is a directory. Nothing was changed.")
    current = before[0].content.decode("utf-8", errors="replace") if before[0].exists else None
    wanted = {"REPORTING_DB_HOST": reporting_host, "ELASTICSEARCH": elasticsearch, "IS_HA_SLAVE": "true"}
    new_text = edit_env(current, wanted)

    def write_env() -> None:
        system.write_atomic(env_path, new_text, before[0].mode if before[0].exists else 0o644)
        if before[0].exists:
            os.chown(env_path, *before[0].owner)

    def make_log_dir() -> None:
        log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(log_dir, uid, gid)

    say("xivo-ha: configuring DB Replic in HA slave mode")
    assignments = ", ".join(f"{k}={v}" for k, v in wanted.items())
    _apply_files([
        (f"write {paths.CC_CUSTOM_ENV}", f"set {assignments} in {paths.CC_CUSTOM_ENV}", write_env),
        (f"create {paths.CC_LOG_DIR}", f"created {paths.CC_LOG_DIR} owned {LOG_OWNER}:{LOG_OWNER}", make_log_dir),
        (f"touch {paths.CC_SENTINEL}", f"touched {paths.CC_SENTINEL}", lambda: system.touch(sentinel)),
    ], before, say)
    LOGGER.info("XiVO CC DB Replic HA mode enabled (reporting DB %s, Elasticsearch %s)",
                   reporting_host, elasticsearch)
    steps = [list(settings.cc.install_command), list(settings.cc.start_command), list(settings.cc.monitoring_command)]
    return _remaining(steps, settings, apply, say)


def disable(settings: Settings, apply: bool, say: Progress) -> list[str]:
    """Remove the HA-mode keys and the sentinel (any role: undoing is always allowed)."""
    env_path = paths.node(paths.CC_CUSTOM_ENV)
    sentinel = paths.node(paths.CC_SENTINEL)
    before = [_PathState.read(p) for p in (env_path, sentinel)]
    changes = []
    if before[0].exists and not before[0].is_dir:
        current = before[0].content.decode("utf-8", errors="replace")
        new_text = edit_env(current, {key: None for key in KEYS})
        if new_text != current:
            def write_env() -> None:
                system.write_atomic(env_path, new_text, before[0].mode)
                os.chown(env_path, *before[0].owner)
            changes.append((f"write {paths.CC_CUSTOM_ENV}", f"removed {', '.join(KEYS)} from {paths.CC_CUSTOM_ENV}",
                            write_env))
    if before[1].exists:
        changes.append((f"remove {paths.CC_SENTINEL}", f"removed {paths.CC_SENTINEL}",
                        lambda: system.remove(sentinel)))
    if not changes:
        say("xivo-ha: DB Replic HA mode is not configured on this node: nothing to undo")
        return []
    say("xivo-ha: removing DB Replic's HA slave mode")
    _apply_files(changes, before, say)
    say(f"  kept {paths.CC_LOG_DIR} and its logs")
    LOGGER.info("XiVO CC DB Replic HA mode disabled")
    return _remaining([list(settings.cc.monitoring_command)], settings, apply, say)


def _remaining(steps: Sequence[list[str]], settings: Settings, apply: bool, say: Progress) -> list[str]:
    """Run (``apply``) or list the commands; returns those left for the operator."""
    left: list[str] = []
    failures: list[str] = []
    for argv in steps:
        line = " ".join(argv)
        if not apply:
            left.append(line)
            continue
        if failures:
            left.append(line)
            continue
        if system.which(argv[0]) is None:
            say(f"  {argv[0]} is not installed here: run `{line}` where it is")
            left.append(line)
            continue
        try:
            result = system.run(argv, timeout=settings.cc.command_timeout)
        except OperationFailed as exc:
            failures.append(str(exc))
            left.append(line)
            continue
        if not result.ok:
            failures.append(f"`{line}` exited with {result.returncode}: {result.output() or 'no output'}")
            left.append(line)
            continue
        say(f"  ran {line}")
    if failures:
        raise OperationFailed(
            f"the files are configured but {failures[0]}. Still to run: {'; '.join(left)}"
        )
    return left


def shown(path: Path) -> str:
    try:
        return "/" + str(path.relative_to(paths.root()))
    except ValueError:
        return str(path)
