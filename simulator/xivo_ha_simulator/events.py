"""What the simulated users see: the event kinds and the :class:`Event` record.

Three sources write them, each keyed by the phone id of the user concerned,
and the report (``report``) reads them:

* the phones (``phone``): registrations, probes, the calls they place and answer;
* the PSTN caller: the calls the trunk carrier sends to each phone's DID
  (``CALL_PLACED``/``CALL_CONNECTED``/``CALL_FAILED``, info ``to`` = the DID);
* the CTI clients (XiVO Client stand-ins): ``CTI_*`` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

STARTED = "started"
REGISTERED = "registered"  # node, info: granted (s), requested (s)
REGISTER_FAILED = "register_failed"  # node, info: reason
INTERVAL_TOO_BRIEF = "interval_too_brief"  # node, info: min_expires
SWITCHED = "switched"  # node = new node, info: from, to
EXPIRED = "expired"  # node: the registration lapsed without a refresh
PROBE_OK = "probe_ok"  # node answered OPTIONS
PROBE_FAILED = "probe_failed"  # node, info: reason
STOPPED = "stopped"
CALL_PLACED = "call_placed"  # node the INVITE went to, info: to (number)
CALL_CONNECTED = "call_connected"  # node, info: to, setup (s from the first INVITE to the 200)
CALL_FAILED = "call_failed"  # node, info: to, reason
CALL_RETRIED = "call_retried"  # node the call is retried through, info: to, reason (why, a sentence)
CALL_ANSWERED = "call_answered"  # an incoming call answered, info: from (user of the caller)
CALL_ENDED = "call_ended"  # the caller's BYE, info: to, reason (absent when its 200 came)
CTI_CONNECTED = "cti_connected"  # node the client logged in to
CTI_LOST = "cti_lost"  # node, info: reason (the connection to a logged-in client dropped)
CTI_CONNECT_FAILED = "cti_connect_failed"  # node, info: reason (one connection attempt failed)

NONE = "none"  # label of "registered nowhere" in counts and plots


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one phone.

    ``t`` is ``time.monotonic()``, ``wall`` is ``time.time()`` at the same
    instant; ``info`` holds the kind's details (``granted``, ``reason``, ...).
    """

    t: float
    wall: float
    kind: str
    node: str | None = None
    info: Mapping | None = None

    def to_dict(self) -> dict:
        out = {"t": round(self.t, 6), "wall": round(self.wall, 6), "event": self.kind}
        if self.node is not None:
            out["node"] = self.node
        if self.info:
            out.update(self.info)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "Event":
        rest = {k: v for k, v in data.items() if k not in ("t", "wall", "event", "node")}
        return cls(float(data["t"]), float(data["wall"]), str(data["event"]), data.get("node"), rest or None)
