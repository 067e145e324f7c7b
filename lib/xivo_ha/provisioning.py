"""provd: the registrar configs and the device configs that phones are provisioned from.

provd keeps its documents in ``/var/lib/xivo-provd/jsondb/{configs,devices}`` (one JSON
document per file, named by its id).  Registrar configs (``X_type = registrar``) carry
``registrar_main``/``proxy_main`` and their backups; device configs carry, per SIP line,
``raw_config.sip_lines.<n>.{registrar_ip, proxy_ip, backup_registrar_ip, backup_proxy_ip}``,
and each device names its config in ``config``.  A phone only learns a change once
its config is regenerated (provd does it when the config is updated through its REST
API) and the device is synchronized.

When provd answers at ``[provisioning] url`` the documents are read and updated through
its REST API (``cfg_mgr/configs``, ``dev_mgr/devices``, ``dev_mgr/synchronize``); when
nothing listens there the jsondb files are edited instead, and provd reads them when it
starts.  What ``enable master`` replaced in a line is recorded in the config itself
under ``X_xivo_ha_backup`` so that leaving the master role restores exactly that.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import paths
from .errors import OperationFailed, UsageError

BACKUP_KEYS = ("registrar_backup", "proxy_backup")
LINE_BACKUP_KEYS = ("backup_registrar_ip", "backup_proxy_ip")
RECORD_KEY = "X_xivo_ha_backup"
PROV_MIME_TYPE = "application/vnd.proformatique.provd+json"


@dataclass(frozen=True)
class ProvdDocument:
    path: Path
    text: str
    data: dict

    @property
    def is_registrar(self) -> bool:
        return self.data.get("X_type") == "registrar"

    def backups(self) -> dict:
        return {key: self.data.get(key) for key in BACKUP_KEYS}


def _load_directory(directory: Path, what: str) -> list[ProvdDocument]:
    if not directory.is_dir():
        return []
    documents = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OperationFailed(f"cannot read provisioning {what} {path}: {exc}") from None
        if isinstance(data, dict):
            documents.append(ProvdDocument(path, text, data))
    return documents


def load_all() -> list[ProvdDocument]:
    """Every provd config document; an unreadable one fails before anything is written."""
    return _load_directory(paths.node(paths.PROVD_CONFIGS), "config")


def registrar_with_backup(data: dict, address: str | None) -> dict | None:
    """A registrar document with ``address`` as backup; None if not a registrar or unchanged."""
    if data.get("X_type") != "registrar":
        return None
    if all(data.get(key, object()) == address for key in BACKUP_KEYS):
        return None
    new = dict(data)
    for key in BACKUP_KEYS:
        new[key] = address
    return new


def dump(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def registrar_mains(configs: Iterable[dict]) -> frozenset[str]:
    """This node's registrar addresses: ``registrar_main`` of every registrar config."""
    return frozenset(c["registrar_main"] for c in configs
                     if c.get("X_type") == "registrar" and isinstance(c.get("registrar_main"), str))


def _sip_lines(data: dict) -> dict:
    raw = data.get("raw_config")
    lines = raw.get("sip_lines") if isinstance(raw, dict) else None
    return lines if isinstance(lines, dict) else {}


def device_with_backup(data: dict, registrars: frozenset[str], backup: str) -> dict | None:
    """A config whose lines registering on ``registrars`` get ``backup``; None if unchanged.

    The values replaced are recorded (once: a later master keeps the first record) so
    that :func:`device_restored` can put them back.
    """
    lines = _sip_lines(data)
    wanted = [n for n, line in lines.items()
              if isinstance(line, dict) and line.get("registrar_ip") in registrars
              and any(line.get(key) != backup for key in LINE_BACKUP_KEYS)]
    if not wanted:
        return None
    new = copy.deepcopy(data)
    record = new.setdefault(RECORD_KEY, {})
    for n in wanted:
        line = new["raw_config"]["sip_lines"][n]
        record.setdefault(n, {key: line[key] for key in LINE_BACKUP_KEYS if key in line})
        for key in LINE_BACKUP_KEYS:
            line[key] = backup
    return new


def device_restored(data: dict) -> dict | None:
    """A config with the recorded line values put back and the record removed; None if none."""
    record = data.get(RECORD_KEY)
    if not isinstance(record, dict):
        return None
    new = copy.deepcopy(data)
    del new[RECORD_KEY]
    lines = _sip_lines(new)
    for n, previous in record.items():
        line = lines.get(n)
        if not isinstance(line, dict) or not isinstance(previous, dict):
            continue
        for key in LINE_BACKUP_KEYS:
            if key in previous:
                line[key] = previous[key]
            else:
                line.pop(key, None)
    return new


def edited_configs(configs: dict[str, dict], backup: str | None, registrar_too: bool) -> tuple[dict[str, dict], str]:
    """The configs to rewrite so that phones fail over to ``backup`` (None: restore), and why.

    ``registrar_too``: also set the registrar configs' backup (the master, or a master
    being disabled); a slave leaves them as the master wrote them.
    """
    registrars = registrar_mains(configs.values())
    edits: dict[str, dict] = {}
    for config_id, data in configs.items():
        new = registrar_with_backup(data, backup) if registrar_too else None
        if new is None and data.get("X_type") != "registrar":
            new = device_with_backup(data, registrars, backup) if backup else device_restored(data)
        if new is not None:
            edits[config_id] = new
    devices = len([c for c in edits if configs[c].get("X_type") != "registrar"])
    if backup:
        on = ", ".join(sorted(registrars)) or "no registrar"
        why = f"{devices} device config(s) with lines on {on} get backup {backup}"
    else:
        why = f"{devices} device config(s) get back their backup registrar from before HA"
    return edits, why


def affected_devices(devices: Iterable[dict], config_ids: Iterable[str]) -> list[str]:
    """Ids of the devices that use one of ``config_ids``."""
    wanted = set(config_ids)
    return sorted(str(d["id"]) for d in devices if d.get("config") in wanted and "id" in d)


@dataclass(frozen=True)
class Snapshot:
    """provd's documents as read before a role change, and where they came from."""

    url: str | None                 # provd's REST API, or None: the jsondb files
    configs: dict[str, dict]
    files: dict[str, Path]          # config id -> jsondb file (files only)
    devices: list[dict]

    @property
    def source(self) -> str:
        return f"provd at {self.url}" if self.url else f"the files in {paths.PROVD_CONFIGS}"


def observe(url: str, timeout: float) -> Snapshot:
    """Read provd's configs and devices: from its REST API when it answers, else the files."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"[provisioning] url: {url!r} is not an http:// or https:// URL")
    try:
        configs = _rest(url, "GET", "/cfg_mgr/configs", timeout=timeout)["configs"]
    except ConnectionRefusedError:
        documents = load_all()
        devices = [d.data for d in _load_directory(paths.node(paths.PROVD_DEVICES), "device")]
        return Snapshot(None, {d.path.name: d.data for d in documents},
                        {d.path.name: d.path for d in documents}, devices)
    except (KeyError, TypeError) as exc:
        raise OperationFailed(f"provd at {url} answered without configs ({exc}): check [provisioning] url") from None
    devices = _rest(url, "GET", "/dev_mgr/devices", timeout=timeout).get("devices", [])
    return Snapshot(url, {str(c["id"]): c for c in configs if isinstance(c, dict) and "id" in c}, {}, devices)


def put_configs(url: str, documents: dict[str, dict], timeout: float) -> None:
    """Update configs through provd, which regenerates the devices' files."""
    for config_id, data in documents.items():
        _rest(url, "PUT", f"/cfg_mgr/configs/{urllib.request.quote(config_id, safe='')}",
              {"config": data}, timeout=timeout)


def restore_configs(url: str, originals: dict[str, dict], timeout: float) -> None:
    """Put back the configs that differ from ``originals`` (a step that failed half-way)."""
    for config_id, data in originals.items():
        current = _rest(url, "GET", f"/cfg_mgr/configs/{urllib.request.quote(config_id, safe='')}", timeout=timeout)
        if current.get("config") != data:
            put_configs(url, {config_id: data}, timeout)


def synchronize(url: str, device_ids: Iterable[str], timeout: float) -> list[str]:
    """Ask provd to synchronize each device; the sentences of those that failed."""
    failures = []
    for device_id in device_ids:
        try:
            _rest(url, "POST", "/dev_mgr/synchronize", {"id": device_id}, timeout=timeout)
        except (OperationFailed, ConnectionRefusedError) as exc:
            failures.append(f"{device_id}: {exc}")
    return failures


def _rest(base: str, method: str, path: str, body: dict | None = None, *, timeout: float) -> dict:
    """One call to provd's REST API; ConnectionRefusedError when nothing listens."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"Accept": PROV_MIME_TYPE}
    if data is not None:
        headers["Content-Type"] = PROV_MIME_TYPE
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace").strip()[:200]
        raise OperationFailed(f"provd refused {method} {path}: HTTP {exc.code} {detail}".rstrip()) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise exc.reason from None
        raise OperationFailed(f"cannot reach provd at {base}: {exc.reason}") from None
    except OSError as exc:
        raise OperationFailed(f"cannot reach provd at {base}: {exc}") from None
    if not payload:
        return {}
    try:
        result = json.loads(payload)
    except ValueError:
        raise OperationFailed(f"provd answered {method} {path} with something other than JSON") from None
    return result if isinstance(result, dict) else {}


def registrar_backups() -> dict[str, dict]:
    """Backup values per registrar document, for status."""
    return {doc.path.name: doc.backups() for doc in load_all() if doc.is_registrar}
