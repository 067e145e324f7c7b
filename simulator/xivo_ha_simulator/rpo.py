"""Configuration RPO: what users created on the master shortly before a fault can do on the slave.

``--new-users N --created-before-fault S``: N users are created on the master
(in SQL, the rows XiVO's web interface writes for a user with a SIP line and
an extension) S real seconds (S/K measured) before the fault, and their phones
start then.  In hourly mode the slave only knows them if a
``xivo-master-slave-db-replication`` ran between their creation and the fault:
XiVO runs it hourly from cron, and the simulator keeps that cadence compressed
by K (:class:`Replicator`, every 3600/K s, when the nodes' cron does not run,
i.e. K != 1).  In continuous mode the stream brings them within seconds.
Either way the simulator counts their lines in the slave's database just
before the fault (``on_slave_at_fault``).

:func:`compute` is pure: from the new phones' events, the fault time, when the
users were created and when the master last replicated, it says how many of
them registered and placed a connected call through the slave after the
fault, and why the others could not.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .events import CALL_CONNECTED, CALL_FAILED, REGISTER_FAILED, REGISTERED, Event

REPLICATION_PERIOD = 3600.0  # real seconds: XiVO's hourly cron line for the replication
FINGERPRINT = "/var/lib/xivo-ha/replication-fingerprint.json"  # written by each run that replicated


@dataclass(frozen=True)
class Rpo:
    users: int
    created_wall: float
    last_replication_wall: float | None  # the master's last replication before the fault; None: none seen
    replicated: bool  # the users were created before that replication
    registered: int  # of the users, phones registered on the backup after the fault
    called: int  # of the users, phones with a call connected through the backup after the fault
    per_user: dict = field(default_factory=dict)  # phone id -> {"registered": bool, "called": bool}
    sentence: str = ""
    on_slave_at_fault: int | None = None  # of the users, lines in the slave's database just before the fault
    mode: str = "hourly"  # the [replication] mode of the run

    def to_dict(self) -> dict:
        return {"users": self.users, "created_wall": round(self.created_wall, 3),
                "last_replication_wall": None if self.last_replication_wall is None
                else round(self.last_replication_wall, 3),
                "replicated_before_fault": self.replicated, "registered_on_slave": self.registered,
                "called_on_slave": self.called, "on_slave_at_fault": self.on_slave_at_fault, "mode": self.mode,
                "sentence": self.sentence, "per_user": self.per_user}


def clock(wall: float | None) -> str:
    return "never" if wall is None else time.strftime("%H:%M:%S", time.gmtime(wall)) + " UTC"


def compute(events: Mapping[str, Sequence[Event]], fault_time: float, created_wall: float,
            last_replication_wall: float | None, backup: str = "slave", on_slave_at_fault: int | None = None,
            mode: str = "hourly") -> Rpo:
    """How many of the new users' phones could register and call on ``backup`` after the fault, and why not.

    ``on_slave_at_fault``: how many of their lines the backup's database had just before the
    fault (None: not looked); in continuous mode that, not the hourly copy, says whether they
    were replicated."""
    per_user: dict[str, dict] = {}
    refusals: Counter = Counter()
    for pid, evs in events.items():
        after = [e for e in evs if e.t >= fault_time and e.node == backup]
        registered = any(e.kind == REGISTERED for e in after)
        called = any(e.kind == CALL_CONNECTED for e in after)
        per_user[pid] = {"registered": registered, "called": called}
        if not registered:
            refusals.update(str((e.info or {}).get("reason", "?")) for e in after
                            if e.kind in (REGISTER_FAILED, CALL_FAILED))
    users = len(per_user)
    registered = sum(1 for u in per_user.values() if u["registered"])
    called = sum(1 for u in per_user.values() if u["called"])
    text = (f"{registered} of {users} users created at {clock(created_wall)} registered on the {backup} after "
            f"the fault, {called} called through it")
    if mode == "continuous":
        replicated = on_slave_at_fault == users
        why = (f"in the {backup}'s database at the fault" if replicated
               else f"not in the {backup}'s database at the fault: the stream had not brought them")
    else:
        replicated = last_replication_wall is not None and created_wall <= last_replication_wall
        why = (f"created before the last replication at {clock(last_replication_wall)}" if replicated
               else f"not replicated yet: created after the last replication "
                    f"({clock(last_replication_wall)})")
    if registered < users:
        seen = ", ".join(f"{reason} x{n}" for reason, n in refusals.most_common(3))
        text += f"; the others: {why}" + (f" (the {backup} answered: {seen})" if seen else "")
    if on_slave_at_fault is not None:
        text += f"; {on_slave_at_fault} of {users} were in the {backup}'s database at the fault ({mode} replication)"
    return Rpo(users, created_wall, last_replication_wall, replicated, registered, called, per_user, text,
               on_slave_at_fault, mode)


class Replicator:
    """Runs the master's replication every 3600/K s, as its hourly cron would (K != 1 only).

    ``replicate()`` runs one ``xivo-master-slave-db-replication`` and returns
    whether it succeeded; every run is kept in :attr:`runs` as (wall time, ok).
    """

    def __init__(self, replicate: Callable[[], bool], time_scale: float, log: Callable[[str], None]):
        self.replicate = replicate
        self.period = REPLICATION_PERIOD / time_scale
        self.drives = time_scale != 1
        self.log = log
        self.runs: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.drives:
            self._thread = threading.Thread(target=self._loop, name="replication", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 330.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        # Bounded: one run per period until stopped.
        while not self._stop.wait(self.period):
            ok = self.replicate()
            self.runs.append((time.time(), ok))
            self.log(f"master: hourly replication (every {self.period:.0f}s here) "
                     f"{'done' if ok else 'failed'}")
