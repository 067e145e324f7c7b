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
import pwd
import re
from typing import Sequence

from . import paths, role, system
from .apply import FileState, Observed, Step, execute
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


# --- applying ------------------------------------------------------------------------


def _daemon_ids() -> tuple[int, int]:
    try:
        return pwd.getpwnam(LOG_OWNER).pw_uid, grp.getgrnam(LOG_OWNER).gr_gid
    except KeyError:
        raise OperationFailed(f"there is no {LOG_OWNER} user or group on this node. Nothing was changed.") from None


def _observe(*node_paths: str) -> Observed:
    return Observed(None, {p: FileState.read(p, directory_ok=True) for p in map(paths.node, node_paths)})


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
    observed = _observe(paths.CC_CUSTOM_ENV, paths.CC_LOG_DIR, paths.CC_SENTINEL)
    env, log_dir, sentinel = observed.files.values()
    uid, gid = _daemon_ids()
    if env.is_dir:
        raise OperationFailed(f"{paths.CC_CUSTOM_ENV} is a directory. Nothing was changed.")
    current = env.content.decode("utf-8", errors="replace") if env.content is not None else None
    wanted = {"REPORTING_DB_HOST": reporting_host, "ELASTICSEARCH": elasticsearch, "IS_HA_SLAVE": "true"}
    assignments = ", ".join(f"{k}={v}" for k, v in wanted.items())
    steps = [
        Step(f"write {paths.CC_CUSTOM_ENV}", writes={env.path: (edit_env(current, wanted), env.mode)},
             said=[f"set {assignments} in {paths.CC_CUSTOM_ENV}"]),
        Step(f"create {paths.CC_LOG_DIR}", directories={log_dir.path: (0o755, (uid, gid))},
             said=[f"created {paths.CC_LOG_DIR} owned {LOG_OWNER}:{LOG_OWNER}"]),
        Step(f"touch {paths.CC_SENTINEL}", said=[f"touched {paths.CC_SENTINEL}"],
             writes={} if sentinel.owner is not None else {sentinel.path: ("", 0o644)}),
    ]
    say("xivo-ha: configuring DB Replic in HA slave mode")
    execute(steps, settings, observed, say)
    LOGGER.info("XiVO CC DB Replic HA mode enabled (reporting DB %s, Elasticsearch %s)",
                   reporting_host, elasticsearch)
    commands = [list(settings.cc.install_command), list(settings.cc.start_command),
                list(settings.cc.monitoring_command)]
    return _remaining(commands, settings, apply, say)


def disable(settings: Settings, apply: bool, say: Progress) -> list[str]:
    """Remove the HA-mode keys and the sentinel (any role: undoing is always allowed)."""
    observed = _observe(paths.CC_CUSTOM_ENV, paths.CC_SENTINEL)
    env, sentinel = observed.files.values()
    steps = []
    if env.content is not None:
        current = env.content.decode("utf-8", errors="replace")
        new_text = edit_env(current, {key: None for key in KEYS})
        if new_text != current:
            steps.append(Step(f"write {paths.CC_CUSTOM_ENV}", writes={env.path: (new_text, env.mode)},
                              said=[f"removed {', '.join(KEYS)} from {paths.CC_CUSTOM_ENV}"]))
    if sentinel.owner is not None:
        steps.append(Step(f"remove {paths.CC_SENTINEL}", writes={sentinel.path: (None, sentinel.mode)},
                          said=[f"removed {paths.CC_SENTINEL}"]))
    if not steps:
        say("xivo-ha: DB Replic HA mode is not configured on this node: nothing to undo")
        return []
    say("xivo-ha: removing DB Replic's HA slave mode")
    execute(steps, settings, observed, say)
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

