"""provd registrar configs: the backup registrar/proxy that phones fail over to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import OperationFailed

BACKUP_KEYS = ("registrar_backup", "proxy_backup")


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


def load_all() -> list[ProvdDocument]:
    """Every provd config document; an unreadable one fails before anything is written."""
    directory = paths.node(paths.PROVD_CONFIGS)
    if not directory.is_dir():
        return []
    documents = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OperationFailed(f"cannot read provisioning config {path}: {exc}") from None
        if isinstance(data, dict):
            documents.append(ProvdDocument(path, text, data))
    return documents


def with_backup(document: ProvdDocument, address: str | None) -> str | None:
    """New text of a registrar document with ``address`` as backup; None if unchanged."""
    if not document.is_registrar:
        return None
    if all(document.data.get(key, object()) == address for key in BACKUP_KEYS):
        return None
    data = dict(document.data)
    for key in BACKUP_KEYS:
        data[key] = address
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def registrar_backups() -> dict[str, dict]:
    """Backup values per registrar document, for status."""
    return {doc.path.name: doc.backups() for doc in load_all() if doc.is_registrar}
