"""Tunables from ``/etc/xivo-ha/xivo-ha.conf``, validated against the shipped configspec.

A missing file means defaults.  ``XIVO_HA_<SECTION>_<KEY>`` environment variables win
over the file.  Any invalid value raises :class:`~xivo_ha.errors.UsageError` naming the
key and the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, get_type_hints

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import Validator

from . import paths
from .errors import UsageError

ENV_PREFIX = "XIVO_HA_"


@dataclass(frozen=True)
class Database:
    dsn: str
    statement_timeout: int
    lock_timeout: int


@dataclass(frozen=True)
class Postgresql:
    hba_file: str
    conf_file: str
    reload_command: list[str]


@dataclass(frozen=True)
class Replication:
    slave_port: int
    slave_user: str
    slave_dbname: str
    connect_timeout: int
    exclude_tables: list[str]
    lock_timeout: int
    timeout: int
    mode: str


@dataclass(frozen=True)
class Sync:
    key: str
    ssh_port: int
    ssh_user: str
    connect_timeout: int
    directories: list[str]
    failback_directories: list[str]
    remote_root: str
    timeout: int
    io_timeout: int


@dataclass(frozen=True)
class Probe:
    ping_count: int
    ping_interval: float
    ping_timeout: float
    sip_probe: bool
    sip_port: int
    sip_timeout: float
    witness: str


@dataclass(frozen=True)
class Failover:
    failures_before_failover: int
    successes_before_failback: int
    failback_hold_down: int
    loop: int
    interval: float


@dataclass(frozen=True)
class Services:
    slave_services: list[str]
    start_command: list[str]
    stop_command: list[str]
    enable_command: list[str]
    disable_command: list[str]
    status_command: list[str]
    restart_command: list[str]
    command_timeout: int


@dataclass(frozen=True)
class Provisioning:
    url: str
    timeout: float


@dataclass(frozen=True)
class Doctor:
    subnet_prefix: int
    connect_timeout: float
    ping_timeout: float
    job_warn_age: int
    job_fail_age: int
    maintenance_warn_age: int
    peer_command: list[str]
    peer_timeout: int


@dataclass(frozen=True)
class Maintenance:
    replication_command: list[str]
    sync_command: list[str]
    command_timeout: int


@dataclass(frozen=True)
class Cc:
    install_command: list[str]
    start_command: list[str]
    monitoring_command: list[str]
    command_timeout: int


@dataclass(frozen=True)
class Notify:
    hook: list[str]
    hook_timeout: int


@dataclass(frozen=True)
class Settings:
    """Validated settings, one typed dataclass per section: ``settings.section.key``."""

    database: Database
    postgresql: Postgresql
    replication: Replication
    sync: Sync
    probe: Probe
    failover: Failover
    services: Services
    provisioning: Provisioning
    doctor: Doctor
    maintenance: Maintenance
    cc: Cc
    notify: Notify
    source: str

    @property
    def values(self) -> dict[str, dict[str, Any]]:
        """Every section as a plain mapping of its keys."""
        return {f.name: asdict(getattr(self, f.name)) for f in fields(self) if f.name != "source"}


# The dataclass of each configspec section.
SECTIONS: dict[str, type] = {name: kind for name, kind in get_type_hints(Settings).items() if name != "source"}


def _env_overrides(spec: ConfigObj, environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for section in spec.sections:
        for key in spec[section].scalars:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in environ:
                overrides.setdefault(section, {})[key] = environ[name]
    return overrides


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def load(path: os.PathLike | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the settings."""
    environ = os.environ if environ is None else environ
    settings_path = paths.node(paths.SETTINGS) if path is None else os.fspath(path)
    spec_path = paths.configspec()
    try:
        spec = ConfigObj(str(spec_path), list_values=False, _inspec=True, file_error=True)
    except (OSError, ConfigObjError) as exc:
        raise UsageError(f"cannot read the configspec {spec_path}: {exc}") from None
    try:
        config = ConfigObj(str(settings_path), configspec=spec, file_error=False, encoding="utf-8")
    except ConfigObjError as exc:
        raise UsageError(f"{settings_path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{settings_path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {settings_path}: {exc.strerror}") from None
    for section, keys in _env_overrides(spec, environ).items():
        config.setdefault(section, {})
        for key, value in keys.items():
            config[section][key] = _split_list(value) if _is_list(spec[section][key]) else value
    _single_values_as_lists(config, spec)
    result = config.validate(Validator(), preserve_errors=True)
    if result is not True:
        for sections, key, error in flatten_errors(config, result):
            where = "/".join(sections)
            if key is None:
                raise UsageError(f"{settings_path}: section [{where}] is missing or invalid")
            reason = error if error else "missing"
            raise UsageError(f"{settings_path}: [{where}] {key}: {reason}")
    extras = get_extra_values(config)
    if extras:
        sections, name = extras[0]
        where = "[" + "/".join(sections) + "] " if sections else ""
        raise UsageError(f"{settings_path}: unknown setting {where}{name}")
    values = {section: dict(config[section]) for section in spec.sections}
    _check_values(values, settings_path)
    return Settings(source=str(settings_path),
                    **{section: SECTIONS[section](**keys) for section, keys in values.items()})


# Settings that name a node path: absolute, so that they resolve under the root prefix.
PATH_SETTINGS = (("postgresql", "hba_file"), ("postgresql", "conf_file"))


def _check_values(values: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """What the configspec cannot say: floats are finite numbers, node paths are absolute."""
    for section, keys in values.items():
        for key, value in keys.items():
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, float) and not math.isfinite(item) for item in items):
                raise UsageError(f"{where}: [{section}] {key}: {value!r} is not a finite number")
    for section, key in PATH_SETTINGS:
        value = values.get(section, {}).get(key)
        if isinstance(value, str) and not value.startswith("/"):
            raise UsageError(f"{where}: [{section}] {key}: {value!r} is not an absolute path")


def _single_values_as_lists(config: ConfigObj, spec: ConfigObj) -> None:
    """configobj reads ``key = one`` as a string; a list setting with one item is a list."""
    for section in spec.sections:
        if section not in config:
            continue
        for key in spec[section].scalars:
            value = config[section].get(key)
            if isinstance(value, str) and _is_list(spec[section][key]):
                config[section][key] = [value] if value.strip() else []


def _is_list(check: str) -> bool:
    return check.strip().startswith(("string_list", "list", "int_list", "float_list"))
