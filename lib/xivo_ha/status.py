"""What `xivo-ha status` reports: observed node state as one dictionary with stable keys."""

from __future__ import annotations

from typing import Any

from . import apply, cron, database, maintenance, paths, provisioning, role, runstate
from .errors import XivoHaError
from .settings import Settings


def collect(settings: Settings, probe_peer: bool = False) -> dict[str, Any]:
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
    report["interrupted_change"] = apply.interrupted_change()
    report["maintenance"] = _maintenance(settings)
    report["failover"] = _failover() if config.role is role.Role.SLAVE else None
    report["replication"] = _replication(settings, config, report["failover"])
    report["peer"] = _peer(settings, config) if probe_peer and config.remote_address else None
    return report


def _maintenance(settings: Settings) -> dict[str, Any]:
    try:
        entry = maintenance.read()
    except XivoHaError as exc:
        return {"on": None, "error": str(exc)}
    if entry is None:
        return {"on": False}
    data = entry.to_dict()
    data["overdue"] = entry.age() > settings.doctor.maintenance_warn_age
    return data


def _replication(settings: Settings, config: role.HaConfig, failover: dict | None) -> dict[str, Any]:
    """The replication mode; on a master or slave, the stream as this node sees it and its verdict."""
    from .replication import stream

    mode = settings.replication.mode
    if config.role is role.Role.DISABLED:
        return {"mode": mode, "stream": None, "verdict": None}
    state = stream.observe_local(settings.database.dsn, config.role.value)
    found = stream.verdict(mode, config.role.value, state, serving=(failover or {}).get("mode") == "serving")
    return {"mode": mode, "stream": state,
            "verdict": None if found is None else {"status": found.level, "finding": found.sentence}}


def _failover() -> dict[str, Any]:
    """The slave's failover state (failover.json), times as ISO 8601 UTC."""
    import json

    from . import failover

    return json.loads(failover.state_to_json(failover.load_state()))


def _peer(settings: Settings, config: role.HaConfig) -> dict[str, Any]:
    """One short probe of the peer: the slave pings the master (as failover does); the
    master connects to the slave's ssh port (what xivo-sync needs; ICMP may be filtered)."""
    from . import doctor, probes

    address = config.remote_address
    if config.role is role.Role.SLAVE:
        try:
            obs = probes.ping(address, count=1, interval=1.0, timeout=settings.doctor.ping_timeout)
            reachable, detail = obs.alive, obs.detail
        except XivoHaError as exc:
            reachable, detail = False, str(exc)
        return {"address": address, "probe": "icmp", "reachable": reachable, "detail": detail}
    port = settings.sync.ssh_port
    result = doctor.tcp_connect(address, port, settings.doctor.connect_timeout)
    return {"address": address, "probe": f"tcp/{port}", "reachable": result["alive"], "detail": result["detail"]}


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
            lines.append(f"last {job}: {entry['result']} {maintenance.age_text(entry['age_seconds'])} ago ({entry['detail']})")
    lines += _more_lines(report)
    return lines


def _more_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    if report.get("interrupted_change"):
        lines.append(f"warning: {report['interrupted_change']}")
    state = report.get("maintenance") or {}
    if state.get("error"):
        lines.append(f"maintenance: unknown ({state['error']})")
    elif state.get("on"):
        reason = f": {state['reason']}" if state.get("reason") else ""
        lines.append(f"maintenance: on since {state['since']} ({maintenance.age_text(state['age_seconds'])} ago){reason}; "
                     f"{state['cron_file']} is paused")
        if state.get("overdue"):
            lines.append("warning: maintenance has been on for more than a day: run `xivo-ha maintenance off` "
                         "once both nodes are upgraded")
    else:
        lines.append("maintenance: off")
    failover = report.get("failover")
    if failover:
        since = failover.get("last_failover") if failover.get("mode") == "serving" else failover.get("last_failback")
        text = f"failover: {failover.get('mode')}"
        if failover.get("condition"):
            text += f", master {failover['condition']}"
        if since:
            text += f" (since {since})"
        lines.append(text)
        if failover.get("reason"):
            lines.append(f"  last transition: {failover['reason']}")
    replication = report.get("replication") or {}
    if replication.get("mode"):
        text = f"replication: {replication['mode']}"
        if replication.get("verdict"):
            verdict = replication["verdict"]
            text += f", stream {verdict['finding']}" if verdict["status"] == "OK" else \
                f"; {verdict['status']}: {verdict['finding']}"
        lines.append(text)
    peer = report.get("peer")
    if peer:
        state_text = "reachable" if peer["reachable"] else "NOT reachable"
        lines.append(f"peer {peer['address']}: {state_text} ({peer['probe']}: {peer['detail']})")
    return lines
