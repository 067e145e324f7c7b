"""Metrics for Prometheus: a node_exporter textfile written at the end of every HA job.

``/var/lib/prometheus/node-exporter/xivo_ha.prom`` (the textfile directory of Debian's
prometheus-node-exporter) is rewritten atomically by xivo-master-slave-db-replication,
xivo-sync and xivo-check-master-status from the state files they keep: ha.conf, the job
records, the failover state, the probes of the last round of checks
(``/var/lib/xivo-ha/probes.json``, kept by :func:`record_probes`) and maintenance.  The
failover and failback counters are kept in ``/var/lib/xivo-ha/metrics.json``: they grow
each time a write sees a new ``last_failover`` / ``last_failback`` in the failover state.

Two layers: :func:`gather` reads the files, :func:`render` (pure) turns them into the
text exposition format.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict
from typing import Any, Mapping, Sequence

from . import __version__, maintenance, paths, role, runstate, system
from .errors import EXIT_USAGE, XivoHaError
from .probes import Observation
from .role import Role

COUNTERS_FILE = "metrics.json"
PROBES_FILE = "probes.json"
JOBS = ("replication", "sync")
CONDITIONS = ("up", "down", "registrar-down", "isolated")
ROWS = re.compile(r"(\d+) rows\b")


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_label(value)}"' for key, value in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[Mapping[str, Any], float]]) -> None:
        if not samples:
            return
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]


def render(data: Mapping[str, Any]) -> str:
    """The textfile for ``data`` (what :func:`gather` returns)."""
    out = _Text()
    current = data.get("role") or "unknown"
    out.metric("xivo_ha_info", "gauge", "This node's HA role and peer, and the xivo-ha version.",
               [({"role": current, "peer": data.get("peer") or "", "version": __version__}, 1)])
    out.metric("xivo_ha_serving", "gauge",
               "1 when this node serves the phones: the master, or the slave in failover.",
               [({}, 1 if data.get("serving") else 0)])
    out.metric("xivo_ha_maintenance", "gauge", "1 while maintenance is on (HA cron jobs paused).",
               [({}, 1 if data.get("maintenance") else 0)])
    jobs = data.get("jobs") or {}
    present = [(job, jobs[job]) for job in JOBS if jobs.get(job)]
    out.metric("xivo_ha_job_success", "gauge", "1 when the last run of the job did not fail (success or skipped).",
               [({"job": job, "result": entry["result"]}, 0 if entry["result"] == "failed" else 1)
                for job, entry in present])
    out.metric("xivo_ha_job_last_run_timestamp_seconds", "gauge", "When the last run of the job finished.",
               [({"job": job}, float(entry["finished_at"])) for job, entry in present])
    out.metric("xivo_ha_job_duration_seconds", "gauge", "How long the last run of the job took.",
               [({"job": job}, float(entry["duration"])) for job, entry in present])
    replication = jobs.get("replication") or {}
    rows = ROWS.search(replication.get("detail") or "") if replication.get("result") == "success" else None
    out.metric("xivo_ha_replication_rows", "gauge", "Rows copied by the last successful replication.",
               [({}, int(rows.group(1)))] if rows else [])
    if current == Role.SLAVE.value:
        _slave(out, data)
    out.metric("xivo_ha_metrics_timestamp_seconds", "gauge", "When this file was written.",
               [({}, float(data.get("now", 0)))])
    return "\n".join(out.lines) + "\n"


def _slave(out: _Text, data: Mapping[str, Any]) -> None:
    """The slave's part: failover counters and times, the master's condition, the probes."""
    state = data.get("failover") or {}
    counters = data.get("counters") or {}
    out.metric("xivo_ha_failovers_total", "counter", "Failovers seen by this slave.",
               [({}, int(counters.get("failovers", 0)))])
    out.metric("xivo_ha_failbacks_total", "counter", "Failbacks seen by this slave.",
               [({}, int(counters.get("failbacks", 0)))])
    for key in ("last_failover", "last_failback", "last_check"):
        if state.get(key) is not None:
            out.metric(f"xivo_ha_{key}_timestamp_seconds", "gauge",
                       f"When the slave's {key.replace('last_', 'last ')} happened.",
                       [({}, float(state[key]))])
    condition = state.get("condition") or ""
    out.metric("xivo_ha_master_condition", "gauge",
               "1 for the last verdict of the slave's probes on the master (up, down, registrar-down, isolated).",
               [({"condition": name}, 1 if name == condition else 0) for name in CONDITIONS])
    out.metric("xivo_ha_probe_consecutive_failures", "gauge", "Consecutive failed checks of the master.",
               [({}, int(state.get("consecutive_failures", 0)))])
    probes = _probe_samples(data.get("probes") or {})
    out.metric("xivo_ha_probe_up", "gauge",
               "1 when the probe (icmp, sip, witness) got an answer in the last round of checks.",
               [(labels, 1 if up else 0) for labels, up, _ in probes])
    out.metric("xivo_ha_probe_seconds", "gauge", "How long the probe took in the last round of checks.",
               [(labels, seconds) for labels, _, seconds in probes])


def _probe_samples(probes: Mapping[str, Any]) -> list[tuple[dict, bool, float]]:
    """``(labels, up, seconds)`` per probe of the last round, skipping what is not one."""
    samples = []
    for name, entry in sorted(probes.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("up"), bool):
            continue
        seconds = entry.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < float("inf"):
            continue
        samples.append(({"probe": name, "target": str(entry.get("target", ""))}, entry["up"], float(seconds)))
    return samples


def count(counters: Mapping[str, Any], failover: Mapping[str, Any] | None) -> dict:
    """The counters after seeing ``failover`` (pure): one more per new failover or failback time."""
    result = {"failovers": int(counters.get("failovers", 0)), "failbacks": int(counters.get("failbacks", 0)),
              "last_failover": counters.get("last_failover"), "last_failback": counters.get("last_failback")}
    for key, counter in (("last_failover", "failovers"), ("last_failback", "failbacks")):
        seen = (failover or {}).get(key)
        if seen is not None and seen != result[key]:
            result[counter] += 1
            result[key] = seen
    return result


def gather(now: float | None = None) -> dict:
    """Read the state files; update the failover/failback counters on the slave."""
    data: dict[str, Any] = {"now": time.time() if now is None else now}
    try:
        config = role.read()
        data["role"], data["peer"] = config.role.value, config.remote_address
    except XivoHaError:
        config = None
    try:
        data["maintenance"] = maintenance.read() is not None
    except XivoHaError:
        data["maintenance"] = False
    data["jobs"] = {job: (asdict(entry) if (entry := runstate.read(job)) else None) for job in JOBS}
    data["serving"] = config is not None and config.role is Role.MASTER
    if config is not None and config.role is Role.SLAVE:
        from . import failover

        state = asdict(failover.load_state())
        data["failover"] = state
        data["serving"] = state["mode"] == failover.SERVING
        previous = _read_counters()
        data["counters"] = count(previous, state)
        if data["counters"] != previous:
            system.write_atomic(paths.state(COUNTERS_FILE), json.dumps(data["counters"]) + "\n", 0o644)
        data["probes"] = system.read_json_object(paths.state(PROBES_FILE))
    return data


def _read_counters() -> dict:
    return system.read_json_object(paths.state(COUNTERS_FILE))


def record_probes(observations: Sequence[Observation]) -> None:
    """Keep the probes of xivo-check-master-status's last round (answered or not, how long
    they took) for the textfile; a failure is logged, never raised."""
    data = {obs.what: {"up": obs.alive, "seconds": round(obs.duration, 3), "target": obs.target}
            for obs in observations}
    try:
        system.write_atomic(paths.state(PROBES_FILE), json.dumps(data, sort_keys=True) + "\n", 0o644)
    except (OSError, XivoHaError) as exc:
        logging.getLogger("xivo-ha").warning("could not write %s: %s", paths.state(PROBES_FILE), exc)


def write() -> None:
    """Rewrite the textfile; a failure is logged, never raised (the job's own result matters)."""
    try:
        system.write_atomic(paths.node(paths.PROMETHEUS_TEXTFILE), render(gather()), 0o644)
    except (OSError, XivoHaError) as exc:
        logging.getLogger("xivo-ha").warning("could not write %s: %s", paths.PROMETHEUS_TEXTFILE, exc)


def after(code: int) -> int:
    """Write the textfile at the end of a job run and hand back its exit code.

    Not after a usage error (exit 2): bad input changes nothing.
    """
    if code != EXIT_USAGE:
        write()
    return code
