"""`xivo-ha support-bundle`: one tar.gz with what support asks for, secrets redacted.

Collected (each entry is named in ``manifest.json``, with what was *not* collected and
why): doctor's facts and checks of this node and, when it answers over the HA key, of
the peer; ``status --json``; ha.conf; our settings file; the HA cron files; the
failover state, maintenance record, job records, last probe results and event states;
our syslog/journal lines of the last N days (each syslog line by its own timestamp, not
only by its file's date); the versions of the packages that matter.

Every text goes through :func:`redact`: passwords in DSNs and URIs, values of keys
named like ``password`` or ``secret``, and PEM private keys.  Nothing is read from
``/root/.ssh``.  The archive is written with mode 0600.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import __version__, cron, doctor, events, metrics, paths, runstate, status, system
from .errors import OperationFailed, XivoHaError
from .settings import Settings

REDACTED = "REDACTED"
PACKAGES = ("xivo-ha", "xivo", "xivo-config", "xivo-sync", "xivo-provd", "asterisk", "kamailio",
            "postgresql", "postgresql-15", "postgresql-11", "xivocc-docker-components")
LOG_IDENT = "xivo-ha"
JOURNAL_DIRS = ("/var/log/journal", "/run/log/journal")
SYSLOG_DIR = "/var/log"
STATE_FILES = ("failover.json", "maintenance.json", "metrics.json", metrics.PROBES_FILE, events.STATE_FILE) + tuple(
    f"{job}.json" for job in runstate.JOBS)

_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                          re.DOTALL)
_URI_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)
# Syslog timestamps: RFC 3339 (bookworm's rsyslog) and the traditional "Mmm dd hh:mm:ss".
_ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s")
_BSD_TIME = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)\s")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_KEY_VALUE = re.compile(r"""(\b\w*(?:password|passwd|secret)\w*["']?\s*[=:]\s*["']?)([^\s"',;&]+)""",
                        re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with passwords, secrets and private keys replaced by REDACTED (pure)."""
    text = _PRIVATE_KEY.sub(f"-----{REDACTED} PRIVATE KEY-----", text)
    text = _URI_PASSWORD.sub(rf"\1{REDACTED}@", text)
    return _KEY_VALUE.sub(rf"\1{REDACTED}", text)


@dataclass
class Contents:
    """What goes into the archive, and what could not."""

    files: dict[str, str] = field(default_factory=dict)
    collected: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)

    def add(self, name: str, source: str, text: str) -> None:
        self.files[name] = redact(text)
        self.collected.append({"name": name, "source": source})

    def skip(self, name: str, source: str, reason: str) -> None:
        self.missing.append({"name": name, "source": source, "reason": doctor.one_line(reason)})

    def attempt(self, name: str, source: str, produce: Callable[[], str | None], absent: str) -> None:
        """Add what ``produce`` returns; None means ``absent``, an error its own reason."""
        try:
            text = produce()
        except (OSError, XivoHaError) as exc:
            self.skip(name, source, str(exc))
            return
        if text is None:
            self.skip(name, source, absent)
        else:
            self.add(name, source, text)

    def file(self, name: str, node_path: str) -> None:
        self.attempt(name, node_path, lambda: system.read_text(paths.node(node_path)), "no such file")


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def _doctor(contents: Contents, settings: Settings) -> None:
    try:
        local = doctor.observe(settings)
    except (OSError, XivoHaError) as exc:
        contents.skip("doctor/local.json", "xivo-ha doctor --facts", str(exc))
        contents.skip("doctor/peer.json", "xivo-ha doctor --facts on the peer", "this node's facts failed")
        return
    peer, problem = None, "HA is not enabled on this node"
    if doctor.role_of(local) in ("master", "slave"):
        peer, problem = doctor.fetch_peer_facts(settings, local)
    limits = doctor.Limits.from_settings(settings)
    checks = doctor.run_checks(local, peer, limits, problem)
    contents.add("doctor/local.json", "xivo-ha doctor --facts, and the checks",
                 _json({"facts": local, "checks": [c.to_dict() for c in checks]}))
    if peer is not None and not peer.get("partial"):
        contents.add("doctor/peer.json", "xivo-ha doctor --facts on the peer, over the HA key", _json(peer))
    else:
        contents.skip("doctor/peer.json", "xivo-ha doctor --facts on the peer", problem or "no facts")


def _journal(days: int) -> tuple[str | None, str]:
    """Our journal lines (``journalctl -t xivo-ha``) when the node keeps a journal."""
    program = system.which("journalctl")
    directory = next((paths.node(d) for d in JOURNAL_DIRS if paths.node(d).is_dir()), None)
    if program is None or directory is None:
        return None, "no journal (journalctl or /var/log/journal missing)"
    result = system.run([str(program), "-D", str(directory), "-t", LOG_IDENT, "--since", f"-{days}d",
                         "--no-pager", "-o", "short-iso"], timeout=120)
    if not result.ok:
        return None, f"journalctl exited with {result.returncode}: {result.output() or 'no output'}"
    return result.stdout, f"journalctl -D {directory} -t {LOG_IDENT} --since -{days}d"


def line_time(line: str, now: float) -> float | None:
    """When a syslog line was written, or None when it starts with no timestamp (pure).

    RFC 3339 times carry their zone (without one: local time).  Traditional times are
    local and have no year: the latest year that does not put the line in the future.
    """
    match = _ISO_TIME.match(line)
    if match:
        try:
            return datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    match = _BSD_TIME.match(line)
    if not match or match.group(1) not in MONTHS:
        return None
    month, day, hour, minute, second = MONTHS.index(match.group(1)) + 1, *map(int, match.groups()[1:])
    year = datetime.fromtimestamp(now).year
    for candidate in (year, year - 1):
        try:
            when = datetime(candidate, month, day, hour, minute, second).timestamp()
        except ValueError:  # Feb 29 of a year without one
            continue
        if when <= now + 86400:
            return when
    return None


def recent_lines(text: str, since: float, now: float) -> list[str]:
    """The lines of ``text`` written at ``since`` or later; lines without a timestamp are kept (pure)."""
    kept = []
    for line in text.splitlines():
        when = line_time(line, now)
        if when is None or when >= since:
            kept.append(line)
    return kept


def _syslog(days: int, now: float) -> tuple[str | None, str]:
    """Our lines of /var/log/syslog* and /var/log/xivo-ha.log* written in the last ``days``."""
    directory = paths.node(SYSLOG_DIR)
    names = sorted(directory.glob("syslog*")) + sorted(directory.glob(Path(paths.LOG_FILE).name + "*"))
    since = now - days * 86400
    # a file last written before the period holds no line of it
    recent = [p for p in names if p.is_file() and p.stat().st_mtime >= since]
    if not recent:
        return None, f"no syslog file of the last {days} days in {SYSLOG_DIR}"
    lines = []
    for path in recent:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", "replace")
        mine = path.name.startswith(Path(paths.LOG_FILE).name)
        lines += [f"{path.name}: {line}" for line in recent_lines(text, since, now) if mine or LOG_IDENT in line]
    return "\n".join(lines) + ("\n" if lines else ""), ", ".join(p.name for p in recent)


def _logs(contents: Contents, days: int, now: float) -> None:
    for name, (text, source) in (("logs/journal.txt", _journal(days)), ("logs/syslog.txt", _syslog(days, now))):
        if text is None:
            contents.skip(name, "our log lines", source)
        else:
            contents.add(name, source, text)


def _packages() -> str | None:
    if system.which("dpkg-query") is None:
        return None
    result = system.run(["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n", *PACKAGES],
                        timeout=60)
    # dpkg-query exits 1 and names on stderr the packages that are not installed
    if result.returncode not in (0, 1):
        raise OperationFailed(f"dpkg-query exited with {result.returncode}: {result.output() or 'no output'}")
    return result.stdout + result.stderr


def collect(settings: Settings, days: int, now: float | None = None) -> Contents:
    """Everything the bundle holds, each text already redacted."""
    now = time.time() if now is None else now
    contents = Contents()
    _doctor(contents, settings)
    contents.attempt("status.json", "xivo-ha status --json", lambda: _json(status.collect(settings)), "")
    contents.file("etc/xivo/ha.conf", paths.HA_CONF)
    contents.file("etc/xivo-ha/xivo-ha.conf", paths.SETTINGS)
    for name in cron.CRON_FILES.values():
        contents.file(name.lstrip("/"), name)
    for name in STATE_FILES:
        contents.file(f"var/lib/xivo-ha/{name}", f"{paths.STATE_DIR}/{name}")
    _logs(contents, days, now)
    contents.attempt("packages.txt", "dpkg-query -W", _packages, "dpkg-query is not installed")
    return contents


def archive(contents: Contents, days: int, now: float) -> bytes:
    """The tar.gz of ``contents`` with its manifest (pure)."""
    top = f"xivo-ha-support-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
    manifest = {
        "format": 1, "version": __version__, "hostname": socket.gethostname(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "days": days,
        "collected": contents.collected, "not_collected": contents.missing,
        "redacted": "passwords in DSNs and URIs, values of password/secret keys, private keys; "
                    "nothing from /root/.ssh",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in [("manifest.json", _json(manifest)), *contents.files.items()]:
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o600
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def default_name(now: float) -> str:
    return f"xivo-ha-support-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}.tar.gz"


def write(settings: Settings, output: Path | None, days: int) -> tuple[Path, Contents]:
    """Collect and write the archive (mode 0600) to ``output`` or ./<default name>."""
    now = time.time()
    output = Path(default_name(now)) if output is None else output
    contents = collect(settings, days, now)
    system.write_atomic(output, archive(contents, days, now), 0o600)
    return output, contents
