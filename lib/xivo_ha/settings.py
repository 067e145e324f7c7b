"""Tunables from ``/etc/xivo-ha/xivo-ha.conf``, validated against the shipped configspec.

A missing file means defaults.  ``XIVO_HA_<SECTION>_<KEY>`` environment variables win
over the file.  Any invalid value raises :class:`~xivo_ha.errors.UsageError` naming the
key and the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import Validator

from . import paths
from .errors import UsageError

ENV_PREFIX = "XIVO_HA_"


@dataclass(frozen=True)
class Settings:
    """Validated settings: ``settings.section.key`` or ``settings["section"]["key"]``."""

    values: Mapping[str, Mapping[str, Any]]
    source: str

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    def __getattr__(self, section: str) -> "_Section":
        try:
            return _Section(section, self.values[section])
        except KeyError:
            raise AttributeError(section) from None


class _Section:
    def __init__(self, name: str, values: Mapping[str, Any]):
        self._name = name
        self._values = values

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"[{self._name}] {key}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]


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
    return Settings(values=values, source=str(settings_path))


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
