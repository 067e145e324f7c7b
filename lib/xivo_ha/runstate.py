"""Results of the periodic jobs (replication, sync, failback copy), kept for status and doctor.

Each job has one JSON file under ``/var/lib/xivo-ha/``:
``{"job": ..., "result": "success"|"failed"|"skipped"|"busy", "finished_at": <unix time>,
"duration": <seconds>, "detail": <one line>}``.  "busy" means postponed, nothing
changed: a lock held too long, or another run of the job.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from . import paths, system

JOBS = ("replication", "sync", "failback")


@dataclass(frozen=True)
class RunRecord:
    job: str
    result: str
    finished_at: float
    duration: float
    detail: str

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.finished_at


def record(job: str, result: str, duration: float, detail: str, now: float | None = None) -> RunRecord:
    entry = RunRecord(job, result, time.time() if now is None else now, round(duration, 3), detail)
    state_dir = paths.node(paths.STATE_DIR)
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    system.write_atomic(paths.state(f"{job}.json"), json.dumps(asdict(entry), indent=2) + "\n", 0o640)
    return entry


def read(job: str) -> RunRecord | None:
    """The last record of ``job``, or None when it never ran or the file is unreadable."""
    try:
        text = system.read_text(paths.state(f"{job}.json"))
        if text is None:
            return None
        data = json.loads(text)
        return RunRecord(**{key: data[key] for key in RunRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None
