"""What `xivo-ha status` reports: observed node state as one dictionary with stable keys."""

from __future__ import annotations

from typing import Any

from . import cron, database, paths, provisioning, role, runstate
from .errors import XivoHaError
from .settings import Settings


def collect(settings: Settings) -> dict[str, Any]:
    config = role.read()
    report: dict[str, Any] = {
        "role": config.role.value,
        "remote_address": config.remote_address,
        "cron_files": cron.present_files(),
        "sentinels": {
            "is-primary": paths.node(paths.SENTINEL_PRIMARY).exists(),
            "is-secondary": paths.node(paths.SENTINEL_SECONDARY).exists(),
        },
    }
    try:
        conn = database.connect(settings.database.dsn, timeout=5)
        try:
            report["sip_expiry"] = database.read_sip_expiry(conn)
        finally:
            conn.close()
    except XivoHaError as exc:
        report["sip_expiry"] = {"error": str(exc)}
    try:
        report["provisioning_backup"] = provisioning.registrar_backups()
    except XivoHaError as exc:
        report["provisioning_backup"] = {"error": str(exc)}
    report["jobs"] = {}
    for job in runstate.JOBS:
        entry = runstate.read(job)
        report["jobs"][job] = None if entry is None else {
            "result": entry.result, "finished_at": entry.finished_at,
            "age_seconds": round(entry.age()), "duration": entry.duration, "detail": entry.detail,
        }
    return report


def render_text(report: dict[str, Any]) -> list[str]:
    lines = [f"role: {report['role']}"]
    if report["remote_address"]:
        peer = "slave" if report["role"] == "master" else "master"
        lines.append(f"{peer}: {report['remote_address']}")
    lines.append("cron files: " + (", ".join(report["cron_files"]) or "none"))
    lines.append("sentinels: " + (", ".join(k for k, v in report["sentinels"].items() if v) or "none"))
    expiry = report["sip_expiry"]
    if "error" in expiry:
        lines.append(f"SIP expiry: unknown ({expiry['error']})")
    else:
        lines.append("SIP expiry: " + ", ".join(f"{k}={v if v is not None else 'blank'}" for k, v in expiry.items()))
    backups = report["provisioning_backup"]
    if "error" in backups:
        lines.append(f"provisioning backup: unknown ({backups['error']})")
    elif backups:
        for name, values in backups.items():
            lines.append(f"provisioning {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    else:
        lines.append("provisioning backup: no registrar config")
    for job, entry in report["jobs"].items():
        if entry is None:
            lines.append(f"last {job}: never")
        else:
            lines.append(f"last {job}: {entry['result']} {_age(entry['age_seconds'])} ago ({entry['detail']})")
    return lines


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
