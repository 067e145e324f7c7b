"""SIP phones that register to a primary registrar and fail over to a backup.

Each :class:`Phone` owns one UDP socket (asyncio datagram endpoint) and is a
small state machine driven by responses and timers:

* **Register** to the primary, asking for ``expires / time_scale`` seconds.
  The lifetime used is the one the registrar *granted*: the ``expires``
  parameter of our Contact in the 200 OK, else its Expires header, else what
  we asked for.
* **Refresh** at ``granted x refresh_ratio`` (default 0.5, i.e. half way, as
  most desk phones do: it leaves half the lifetime for a failing refresh to
  time out - Timer F - and for the backup to answer before the binding lapses).
* **Transactions** follow RFC 3261 17.1.2 over UDP: retransmit at T1, doubling
  up to T2 (T2 again once a provisional response came), give up at Timer F =
  64 x T1.  T1 = 0.5 s and T2 = 4 s, divided by the time scale.
* **Fail over**: a timeout or any final non-2xx answer (other than a 423 we
  can satisfy) is a failure of that node, and the phone tries the next node
  of the attempt: primary then backup.  When every node failed it waits
  ``retry_interval`` and starts again from the primary.
* **423 Interval Too Brief**: retry at once with the Min-Expires asked for,
  and keep using it on that node.
* **401/407**: with line credentials (those of its provisioning file), answer
  the digest challenge (MD5, qop=auth) with the next CSeq, and keep the nonce
  for the following REGISTERs to that node (nc counting up), as desk phones
  do.  A fresh challenge to an answer computed from a fresh nonce means the
  credentials are refused: a failure of that node.  The address of record is
  then the line's user name (usersip ``name``), as on a XiVO line.
* **Calls** (``call_rate`` per phone per real hour, exponential intervals,
  to a random other phone of ``peers``, in a fleet the other phones that have
  registered at least once): an INVITE to the number through the
  registrar the phone is registered on (else its primary), as an INVITE
  client transaction (Timer A doubling, Timer B = ``invite_timeout``,
  default 64 x T1); a 401/407 is ACKed and answered once; a 2xx is ACKed to
  the callee's Contact and the caller sends BYE there after ``hold_time``.
  Every other final answer is a failed call, which its user dials again
  after ``redial_after`` (at most ``redials`` times in a row; 0: never).
  No media, no SDP.
* **Call failover**: when Timer B fires without any answer from the
  registrar, the phone retries the call through its other registrar (the
  backup, or the primary when the call went to the backup) as a new INVITE
  (a new Call-ID), once,
  and re-registers there, as phones with a backup proxy do (the registrar it
  was registered on failed it: it is down from now).  A call connected after
  the retry is connected, its setup time counted from the first INVITE.  A
  registrar that answered provisionally is alive: its timeout fails the call.
* **Answering**: an INVITE gets 180 then 200 (retransmitted until the ACK,
  up to 64 x T1), a BYE 200; an unknown dialog 481.
* **Fail back**, by policy:
  ``next-refresh`` - every refresh tries the primary first, then the backup
  (the common phone default); ``probe`` - while on the backup, refresh there,
  and send OPTIONS to the primary every ``probe_interval``; the first answer
  moves the phone back with a REGISTER to the primary.
* A phone is registered on a node from that node's 200 OK; it is down from
  the moment its binding lapses without a successful refresh, or a
  transaction to the node it is registered on fails.  ICMP errors are
  ignored, as most phones do: only timers and answers count.

Every change is logged as a :class:`~xivo_ha_simulator.events.Event`
(monotonic and wall time) in ``phone.events``, for the report.

Time scale K: every SIP timer, the requested expiry, the probe and retry
intervals are divided by K, so a K=10 run shows in 60 s what a real
deployment shows in 10 minutes.

:class:`Fleet` runs N phones in one event loop, keeps live counts of phones
per registrar, and aggregates transaction statistics; :class:`FleetThread`
runs a fleet in a background thread for a synchronous driver.
"""

from __future__ import annotations

import asyncio
import collections.abc
import random
import resource
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Sequence

from . import sip
from .events import (
    CALL_ANSWERED,
    CALL_CONNECTED,
    CALL_ENDED,
    CALL_FAILED,
    CALL_PLACED,
    CALL_RETRIED,
    EXPIRED,
    INTERVAL_TOO_BRIEF,
    NONE,
    PROBE_FAILED,
    PROBE_OK,
    REGISTER_FAILED,
    REGISTERED,
    STARTED,
    STOPPED,
    SWITCHED,
    Event,
)
from .loop import LoopThread, Pending

NEXT_REFRESH = "next-refresh"
PROBE = "probe"
FAILBACK_POLICIES = (NEXT_REFRESH, PROBE)

T1 = 0.5
T2 = 4.0
MAX_423_RETRIES = 3
MAX_AUTH_ANSWERS = 2  # challenges answered per node and attempt (a stale nonce, then a fresh one)
_rand = random.Random()


@dataclass(frozen=True)
class Credentials:
    """A SIP line's credentials, as provisioning hands them to the phone."""

    username: str
    password: str


@dataclass(frozen=True)
class Registrar:
    """A registrar the phones know: a label (``master``/``slave``) and an address."""

    name: str
    host: str
    port: int = sip.SIP_PORT

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class PhoneConfig:
    """How phones behave.  Durations are real seconds; the phones divide them by ``time_scale``."""

    expires: int = 3600
    time_scale: float = 1.0
    failback: str = NEXT_REFRESH
    refresh_ratio: float = 0.5
    probe_interval: float = 30.0
    retry_interval: float = 30.0
    t1: float = T1
    t2: float = T2
    domain: str | None = None  # domain of the address of record; default: the primary's host
    user_agent: str = sip.USER_AGENT
    contact_expires: bool = False  # also put ;expires= on the Contact, not only Expires
    call_rate: float = 0.0  # calls each phone places per real hour (0: none)
    hold_time: float = 30.0  # real seconds a connected call lasts before the caller's BYE
    invite_timeout: float | None = None  # real seconds an unanswered INVITE waits (None: Timer B = 64 x T1)
    redial_after: float = 0.0  # real seconds before a user dials a failed call again (0: never)
    redials: int = 10  # at most this many times in a row

    def __post_init__(self):
        if self.failback not in FAILBACK_POLICIES:
            raise ValueError(f"failback policy {self.failback!r}: expected one of {', '.join(FAILBACK_POLICIES)}")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if not 0 < self.refresh_ratio < 1:
            raise ValueError("refresh_ratio must be between 0 and 1")
        if self.expires < 1:
            raise ValueError("expires must be at least 1 second")
        if self.call_rate < 0:
            raise ValueError("call_rate must not be negative")
        if self.hold_time <= 0:
            raise ValueError("hold_time must be positive")
        if self.invite_timeout is not None and self.invite_timeout <= 0:
            raise ValueError("invite_timeout must be positive")
        if self.redial_after < 0 or self.redials < 0:
            raise ValueError("redial_after and redials must not be negative")

    @property
    def requested_expires(self) -> int:
        """What goes on the wire: the expiry divided by the time scale, at least 1 s."""
        return max(1, round(self.expires / self.time_scale))

    def scaled(self, seconds: float) -> float:
        return seconds / self.time_scale

    @property
    def timer_t1(self) -> float:
        return self.t1 / self.time_scale

    @property
    def timer_t2(self) -> float:
        return self.t2 / self.time_scale

    @property
    def timer_f(self) -> float:
        return 64 * self.t1 / self.time_scale

    @property
    def timer_b(self) -> float:
        """How long an INVITE goes unanswered before the phone gives up on that registrar."""
        real = self.invite_timeout if self.invite_timeout is not None else 64 * self.t1
        return real / self.time_scale


def invite_retry(node: Registrar, tried: Sequence[Registrar], primary: Registrar, backup: Registrar | None,
                 proceeding: bool) -> tuple[Registrar | None, str]:
    """Where a call goes after its INVITE to ``node`` timed out: the registrar to retry through, or None; and why.

    ``tried``: the registrars the call went to already; ``proceeding``: ``node``
    answered provisionally (it is alive: the call, not the registrar, failed).
    """
    if proceeding:
        return None, f"{node.name} answered the INVITE provisionally but no final answer came: the call failed"
    other = backup if node is primary else primary
    if other is None:
        return None, f"no answer from {node.name} to the INVITE and no other registrar: the call failed"
    if other in tried:
        return None, (f"no answer from {node.name} to the INVITE, and {other.name} was tried already: "
                      f"the call failed")
    return other, f"no answer from {node.name} to the INVITE: retrying the call through {other.name}"


@dataclass
class FleetStats:
    """Transaction counters of a fleet (or of a lone phone)."""

    register_sent: int = 0
    register_ok: int = 0
    register_failed: int = 0
    timeouts: int = 0
    retransmissions: int = 0
    options_sent: int = 0
    options_ok: int = 0
    bad_datagrams: int = 0
    calls_placed: int = 0
    calls_connected: int = 0
    calls_failed: int = 0
    calls_answered: int = 0


class _Transaction:
    """A client non-INVITE transaction over UDP (RFC 3261 17.1.2).

    Timers E (retransmit) and F (give up) share one timer handle: whichever
    is due first is scheduled, which halves the event loop's timer work.
    """

    __slots__ = ("phone", "node", "method", "branch", "data", "interval", "proceeding",
                 "deadline", "timer", "on_done", "requested", "nonce", "invite")

    def __init__(self, phone: "Phone", node: Registrar, method: str, branch: str, data: bytes,
                 on_done: Callable[["_Transaction", "sip.SIP | None"], None], requested: int | None = None,
                 nonce: str | None = None):
        self.phone = phone
        self.nonce = nonce  # the nonce its Authorization answered, if any
        self.invite = method == "INVITE"  # RFC 3261 17.1.1: Timers A and B
        self.node = node
        self.method = method
        self.branch = branch
        self.data = data
        self.on_done = on_done
        self.requested = requested
        self.interval = phone.config.timer_t1
        self.proceeding = False
        now = phone.loop.time()
        self.deadline = now + (phone.config.timer_b if self.invite else phone.config.timer_f)
        self.timer = None
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        at = now + self.interval
        if at < self.deadline:
            self.timer = self.phone.loop.call_at(at, self._retransmit)  # Timer E
        else:
            self.timer = self.phone.loop.call_at(self.deadline, self._timeout)  # Timer F

    def _retransmit(self) -> None:
        phone = self.phone
        phone._send(self.data, self.node.address)
        phone.stats.retransmissions += 1
        cfg = phone.config
        if self.invite:
            self.interval *= 2  # Timer A: no cap
        else:
            self.interval = cfg.timer_t2 if self.proceeding else min(2 * self.interval, cfg.timer_t2)
        self._schedule(phone.loop.time())

    def _timeout(self) -> None:
        self.phone.stats.timeouts += 1
        self.phone._end_transaction(self, None)

    def provisional(self) -> None:
        if not self.proceeding:
            self.proceeding = True
            self.timer.cancel()
            if self.invite:  # Proceeding: no more retransmissions; still bounded by Timer B
                self.timer = self.phone.loop.call_at(self.deadline, self._timeout)
                return
            self.interval = self.phone.config.timer_t2
            self._schedule(self.phone.loop.time())

    def cancel(self) -> None:
        self.timer.cancel()


class _Call:
    """An outgoing call, from its first INVITE to the BYE."""

    __slots__ = ("call_id", "from_tag", "number", "node", "uri", "cseq", "started", "auth_answers",
                 "ack", "remote", "to_tag", "timer", "tried", "redial")

    def __init__(self, number: str, node: Registrar, uri: str, started: float, host: str, redial: int = 0):
        self.call_id = sip.new_call_id(host)
        self.redial = redial  # how many times its user had already dialled the number in vain
        self.from_tag = sip.new_tag()
        self.number = number
        self.node = node
        self.uri = uri
        self.cseq = 1
        self.started = started
        self.auth_answers = 0
        self.ack: bytes | None = None  # the ACK of its 2xx, sent again if the 2xx is
        self.remote: Registrar | None = None  # the callee's Contact
        self.to_tag: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tried = [node]  # registrars its INVITEs went to


class _Incoming:
    """An answered incoming call: its 200 (retransmitted until the ACK) and where it goes."""

    __slots__ = ("ok", "address", "interval", "deadline", "timer", "acked")

    def __init__(self, ok: bytes, address, interval: float, deadline: float):
        self.ok = ok
        self.address = address
        self.interval = interval
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.acked = False


PROVISIONING_PORT = 8667  # the node's provisioning stand-in (provd's HTTP server on a real node)


def mac_of(number: int) -> str:
    """The MAC of the phone whose line is extension ``number``: 00:16:3e + the number in hex."""
    return "00163e" + f"{number:06x}"


@dataclass(frozen=True)
class ProvisionedLine:
    """Line 1 of a phone's provisioning file: its registrars and credentials."""

    registrar: str
    backup: str | None
    credentials: Credentials | None


def provisioned_line(server: str, number: int, timeout: float = 5.0,
                     port: int = PROVISIONING_PORT) -> ProvisionedLine:
    """Line 1 of the phone's own provisioning file.

    As a phone does at boot: GET ``http://<server>:8667/<mac>.cfg``; raises
    ``OSError`` when the file cannot be fetched or names no registrar.  The
    credentials are ``sip_line1_auth_username`` (else ``username``) and
    ``password``; None when the file has no user name.
    """
    url = f"http://{server}:{port}/{mac_of(number)}.cfg"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url}: HTTP {exc.code}") from None
    values = dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line)
    registrar = values.get("sip_line1_registrar_ip")
    if not registrar:
        raise OSError(f"{url} names no registrar for line 1")
    username = values.get("sip_line1_auth_username") or values.get("sip_line1_username")
    credentials = Credentials(username, values.get("sip_line1_password", "")) if username else None
    return ProvisionedLine(registrar, values.get("sip_line1_backup_registrar_ip") or None, credentials)


def provisioned_pair(server: str, number: int, timeout: float = 5.0,
                     port: int = PROVISIONING_PORT) -> tuple[str, str | None]:
    """(registrar, backup registrar) of line 1 in the phone's own provisioning file."""
    line = provisioned_line(server, number, timeout, port)
    return line.registrar, line.backup


class Phone(asyncio.DatagramProtocol):
    """One phone: one socket, one address of record, one registration at a time."""

    def __init__(
        self,
        user: str,
        primary: Registrar,
        backup: Registrar | None,
        config: PhoneConfig = PhoneConfig(),
        local_host: str = "127.0.0.1",
        local_port: int = 0,
        stats: FleetStats | None = None,
        on_node_change: Callable[[str | None, str | None], None] | None = None,
        credentials: Credentials | None = None,
    ):
        self.user = user  # the phone's label in events (its number)
        self.credentials = credentials
        self.aor_user = credentials.username if credentials else user
        self.primary = primary
        self.backup = backup
        self.config = config
        self.local_host = local_host
        self.local_port = local_port
        self.domain = config.domain or primary.host
        self.stats = stats if stats is not None else FleetStats()
        self._on_node_change = on_node_change
        self.events: list[Event] = []
        self.node: Registrar | None = None  # where the phone is registered now
        self.last_node: Registrar | None = None  # where it last registered successfully
        self.granted: int | None = None
        self.registered_until: float | None = None  # loop time the current binding lapses
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.call_id = sip.new_call_id(local_host)
        self.from_tag = sip.new_tag()
        self.cseq = 0
        self._min_expires: dict[str, int] = {}  # node name -> Min-Expires it demanded
        self._transactions: dict[str, _Transaction] = {}
        self._attempt: list[Registrar] = []  # nodes left to try in the current attempt
        self._attempt_active = False
        self._423_count = 0
        # (node, REGISTER or INVITE) -> (header, challenge), and the nonce count of that challenge
        self._challenges: dict[tuple[str, str], tuple[str, sip.Challenge]] = {}
        self._nc: dict[tuple[str, str], int] = {}
        self._auth_answers = 0  # challenges answered in this attempt, on this node
        self._fresh_nonce = False  # the challenge in use came in this attempt
        self._refresh_due = False
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._probe_timer: asyncio.TimerHandle | None = None
        self._probing = False
        self._running = False
        self._out: sip.SIP | None = None  # reused for every request: saves scapy's set-up
        self.peers: Sequence[str] = ()  # numbers this phone calls
        self._calls: dict[str, _Call] = {}  # outgoing, by Call-ID
        self._incoming: dict[str, _Incoming] = {}  # answered, by Call-ID
        self._call_timer: asyncio.TimerHandle | None = None
        self._redials = Pending()

    # ------------------------------------------------------------------ lifecycle

    async def open(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the phone's socket (``local_port`` 0: an ephemeral port)."""
        self.loop = loop or asyncio.get_running_loop()
        await self.loop.create_datagram_endpoint(lambda: self, local_addr=(self.local_host, self.local_port))

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.local_port = transport.get_extra_info("sockname")[1]

    def connection_lost(self, exc) -> None:
        self.transport = None

    def error_received(self, exc) -> None:
        # ICMP port/host unreachable: ignored, the transaction timers decide.
        pass

    @property
    def contact_uri(self) -> str:
        return sip.sip_uri(self.aor_user, self.local_host, self.local_port)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def busy(self) -> bool:
        """A REGISTER attempt is in progress."""
        return self._attempt_active

    @property
    def calls_in_progress(self) -> int:
        """Outgoing calls placed and not over yet (ringing, connected, or hanging up)."""
        return len(self._calls)

    def start(self) -> None:
        """Start registering (to the primary first).  The socket must be open."""
        if self.transport is None:
            raise RuntimeError("open() the phone before start()")
        if self._running:
            return
        self._running = True
        self._log(STARTED, None)
        self._begin_attempt(self._nodes_in_order(prefer_primary=True))
        self._schedule_call()

    def stop(self) -> None:
        """Stop every timer and transaction, close the socket.  Idempotent."""
        if not self._running and self.transport is None:
            return
        was_running = self._running
        self._running = False
        for tx in list(self._transactions.values()):
            tx.cancel()
        self._transactions.clear()
        timers = [self._refresh_timer, self._expiry_timer, self._retry_timer, self._probe_timer, self._call_timer]
        timers += [c.timer for c in self._calls.values()] + [i.timer for i in self._incoming.values()]
        self._redials.cancel_all()
        for timer in timers:
            if timer is not None:
                timer.cancel()
        self._calls.clear()
        self._incoming.clear()
        self._refresh_timer = self._expiry_timer = self._retry_timer = self._probe_timer = None
        self._call_timer = None
        self._attempt_active = False
        self._set_node(None)
        if was_running:
            self._log(STOPPED, None)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def refresh_now(self) -> bool:
        """Send a REGISTER now as a refresh would; False if one is already in flight."""
        if not self._running or self._attempt_active:
            return False
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()  # replaced by this one; the 200 OK schedules the next
        self._refresh()
        return True

    # ------------------------------------------------------------------ events

    def _log(self, kind: str, node: Registrar | None, **info) -> None:
        self.events.append(Event(time.monotonic(), time.time(), kind, node.name if node else None, info or None))

    def _set_node(self, node: Registrar | None) -> None:
        if node is self.node:
            return
        old = self.node
        self.node = node
        if self._on_node_change is not None:
            self._on_node_change(old.name if old else None, node.name if node else None)

    # ------------------------------------------------------------------ I/O

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, address)

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = sip.parse(data)
        except (sip.SipParseError, ValueError, IndexError):
            self.stats.bad_datagrams += 1
            return
        if msg.is_request:
            self._answer_request(msg, addr)
            return
        tx = self._transactions.get(msg.via_branch or "")
        if tx is None:
            call = self._calls.get(msg.call_id or "")
            if call is not None and call.ack is not None and (msg.status_code or 0) // 100 == 2:
                self._send(call.ack, call.remote.address)  # the 2xx again: our ACK was lost
            return  # late answer to a finished transaction, or not ours
        cseq = msg.cseq
        if cseq is None or cseq[1] != tx.method:
            return
        code = msg.status_code or 0
        if code < 200:
            tx.provisional()
            return
        self._end_transaction(tx, msg)

    def _answer_request(self, msg: sip.SIP, addr) -> None:
        method = msg.method
        if method == "INVITE":
            self._answer_invite(msg, addr)
            return
        if method == "ACK":
            incoming = self._incoming.get(msg.call_id or "")
            if incoming is not None and not incoming.acked:
                incoming.acked = True
                incoming.timer.cancel()
                # Kept for the caller's BYE, at most a hold time and a Timer F more.
                cfg = self.config
                incoming.timer = self.loop.call_later(cfg.scaled(2 * cfg.hold_time) + cfg.timer_f,
                                                      self._incoming.pop, msg.call_id, None)
            return
        if method == "BYE":
            incoming = self._incoming.pop(msg.call_id or "", None)
            if incoming is not None:
                incoming.timer.cancel()
            self._send(bytes(sip.response_for(msg, 200 if incoming is not None else 481)), addr)
            return
        # A registrar may qualify its phones with OPTIONS (Asterisk does).
        code = 200 if method in ("OPTIONS", "NOTIFY") else 501
        self._send(bytes(sip.response_for(msg, code, to_tag=self.from_tag)), addr)

    def _end_transaction(self, tx: _Transaction, response: sip.SIP | None) -> None:
        if self._transactions.pop(tx.branch, None) is None:
            return
        tx.cancel()
        if self._running:
            tx.on_done(tx, response)

    def _new_transaction(self, node: Registrar, method: str, msg: sip.SIP, branch: str,
                         on_done, requested: int | None = None, nonce: str | None = None) -> None:
        data = bytes(msg)
        self._transactions[branch] = _Transaction(self, node, method, branch, data, on_done, requested, nonce)
        self._send(data, node.address)

    # ------------------------------------------------------------------ registration

    def _nodes_in_order(self, prefer_primary: bool) -> list[Registrar]:
        nodes = [self.primary] if self.backup is None else (
            [self.primary, self.backup] if prefer_primary else [self.backup, self.primary])
        return nodes

    def _begin_attempt(self, nodes: Sequence[Registrar]) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        self._attempt = list(nodes)
        self._attempt_active = True
        self._refresh_due = False
        self._423_count = 0
        self._auth_answers = 0
        self._fresh_nonce = False
        self._send_register(self._attempt.pop(0))

    def _requested_for(self, node: Registrar) -> int:
        return max(self.config.requested_expires, self._min_expires.get(node.name, 0))

    def _send_register(self, node: Registrar) -> None:
        self.cseq += 1
        requested = self._requested_for(node)
        branch = sip.new_branch()
        extra, nonce = self._authorization(node, "REGISTER", sip.sip_uri(None, node.host, node.port))
        msg = sip.register(
            registrar_host=node.host,
            registrar_port=node.port,
            user=self.aor_user,
            domain=self.domain,
            local_host=self.local_host,
            local_port=self.local_port,
            call_id=self.call_id,
            cseq=self.cseq,
            from_tag=self.from_tag,
            expires=requested,
            contact_expires=requested if self.config.contact_expires else None,
            branch=branch,
            user_agent=self.config.user_agent,
            extra_headers=extra,
            reuse=self._out,
        )
        self._out = msg
        self.stats.register_sent += 1
        self._new_transaction(node, "REGISTER", msg, branch, self._register_done, requested, nonce)

    def _authorization(self, node: Registrar, method: str, uri: str) -> tuple[list, str | None]:
        """The (Proxy-)Authorization header for ``node``'s last challenge to ``method``, and its nonce."""
        key = (node.name, method)
        kept = self._challenges.get(key)
        if kept is None or self.credentials is None:
            return [], None
        header, challenge = kept
        nc = self._nc[key] = self._nc.get(key, 0) + 1
        value = sip.authorization(challenge, username=self.credentials.username,
                                  password=self.credentials.password, method=method, uri=uri, nc=nc)
        name = "Proxy-Authorization" if header == "Proxy-Authenticate" else "Authorization"
        return [(name, value)], challenge.nonce

    def _keep_challenge(self, node: Registrar, method: str, tx: _Transaction, response: sip.SIP,
                        answered: int, fresh: bool) -> str | None:
        """Keep the challenge of a 401/407 to answer ``method``'s next request; None if kept, else why not.

        ``answered``: challenges already answered in this exchange; ``fresh``: the last answer
        used a nonce just received (a new challenge to it, not stale, means wrong credentials).
        """
        if self.credentials is None:
            return "no credentials"
        header = "WWW-Authenticate" if response.status_code == 401 else "Proxy-Authenticate"
        try:
            challenge = sip.parse_challenge(response.get_header(header) or "")
        except sip.SipParseError as exc:
            return str(exc)
        if tx.nonce is not None and fresh and not challenge.stale:
            return "credentials refused"
        if answered >= MAX_AUTH_ANSWERS:
            return "challenged again"
        self._challenges[(node.name, method)] = (header, challenge)
        self._nc[(node.name, method)] = 0
        return None

    def _take_challenge(self, node: Registrar, tx: _Transaction, response: sip.SIP) -> str | None:
        """Keep the challenge of a 401/407 to a REGISTER; None if answered, else why not."""
        why = self._keep_challenge(node, "REGISTER", tx, response, self._auth_answers, self._fresh_nonce)
        if why is None:
            self._auth_answers += 1
            self._fresh_nonce = True
        return why

    def _register_done(self, tx: _Transaction, response: sip.SIP | None) -> None:
        node = tx.node
        code = response.status_code if response is not None else None
        if code is not None and 200 <= code < 300:
            granted = sip.granted_expires(response, self.contact_uri)
            if granted is None:
                granted = tx.requested
            if granted and granted > 0:
                self._registered(node, granted, tx.requested)
                return
            reason = "registrar granted 0 seconds"
        elif code == 423:
            wanted = response.min_expires
            if wanted and wanted > (tx.requested or 0) and self._423_count < MAX_423_RETRIES:
                self._423_count += 1
                self._min_expires[node.name] = wanted
                self._log(INTERVAL_TOO_BRIEF, node, requested=tx.requested, min_expires=wanted)
                self._send_register(node)
                return
            reason = f"423 {response.reason} (Min-Expires {wanted})"
        elif code in (401, 407):
            why = self._take_challenge(node, tx, response)
            if why is None:
                self._send_register(node)
                return
            self._challenges.pop((node.name, "REGISTER"), None)
            reason = f"{code} {response.reason} ({why})"
        elif response is None:
            reason = "timeout"
        else:
            reason = f"{code} {response.reason}"
        self._register_failed(node, reason)

    def _registered(self, node: Registrar, granted: int, requested: int | None) -> None:
        self.stats.register_ok += 1
        self._attempt_active = False
        self._attempt = []
        self.granted = granted
        self._set_node(node)
        self._log(REGISTERED, node, granted=granted, requested=requested)
        if self.last_node is not None and self.last_node is not node:
            self._log(SWITCHED, node, **{"from": self.last_node.name, "to": node.name})
        self.last_node = node
        loop = self.loop
        self.registered_until = loop.time() + granted
        if self._expiry_timer is not None:  # armed by the refresh that just succeeded
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
        self._refresh_timer = loop.call_later(granted * self.config.refresh_ratio, self._refresh)
        if node is self.primary:
            self._stop_probing()
        elif self.config.failback == PROBE:
            self._start_probing()

    def _register_failed(self, node: Registrar, reason: str) -> None:
        self.stats.register_failed += 1
        self._log(REGISTER_FAILED, node, reason=reason)
        if self.node is node:  # the node serving us failed us: down from now
            self._set_node(None)
            if self._expiry_timer is not None:
                self._expiry_timer.cancel()
                self._expiry_timer = None
        if self._attempt:
            self._423_count = 0
            self._auth_answers = 0
            self._fresh_nonce = False
            self._send_register(self._attempt.pop(0))
            return
        self._attempt_active = False
        if self.node is not None:
            # Still registered elsewhere (a failback try that failed): carry on there.
            if self.config.failback == PROBE and self.node is not self.primary:
                self._start_probing()
            if self._refresh_due:
                self._refresh()
            return
        self._retry_timer = self.loop.call_later(self.config.scaled(self.config.retry_interval), self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self._running and not self._attempt_active:
            self._begin_attempt(self._nodes_in_order(prefer_primary=True))

    def _refresh(self) -> None:
        self._refresh_timer = None
        if not self._running:
            return
        # The refresh always comes before the lapse (refresh_ratio < 1), so the
        # lapse timer is armed only now, while the binding is at risk.
        if self.node is not None and self._expiry_timer is None and self.registered_until is not None:
            self._expiry_timer = self.loop.call_at(self.registered_until, self._expired, self.node)
        if self._attempt_active:
            self._refresh_due = True  # after the attempt in flight
            return
        on_backup = self.node is not None and self.node is not self.primary
        prefer_primary = not (on_backup and self.config.failback == PROBE)
        self._begin_attempt(self._nodes_in_order(prefer_primary))

    def _expired(self, node: Registrar) -> None:
        self._expiry_timer = None
        if self.node is node:
            self._log(EXPIRED, node)
            self._set_node(None)

    # ------------------------------------------------------------------ calls

    def _schedule_call(self) -> None:
        cfg = self.config
        if cfg.call_rate > 0:
            mean = 3600.0 / cfg.call_rate / cfg.time_scale
            self._call_timer = self.loop.call_later(_rand.expovariate(1.0 / mean), self._call_due)

    def _call_due(self) -> None:
        self._call_timer = None
        if self._running:
            if self.peers:
                self.call(_rand.choice(self.peers))
            self._schedule_call()

    def call(self, number: str, redial: int = 0) -> str:
        """Call ``number`` now, through the registrar in use (else the primary); its Call-ID."""
        node = self.node or self.primary
        call = _Call(number, node, sip.sip_uri(number, node.host, node.port), self.loop.time(), self.local_host,
                     redial)
        self._calls[call.call_id] = call
        self.stats.calls_placed += 1
        self._log(CALL_PLACED, node, to=number)
        self._send_invite(call)
        return call.call_id

    def _send_invite(self, call: _Call) -> None:
        branch = sip.new_branch()
        extra, nonce = self._authorization(call.node, "INVITE", call.uri)
        msg = sip.request("INVITE", call.uri, local_host=self.local_host, local_port=self.local_port,
                          from_uri=sip.sip_uri(self.aor_user, self.domain), to_uri=sip.sip_uri(call.number, self.domain),
                          call_id=call.call_id, cseq=call.cseq, from_tag=call.from_tag, branch=branch,
                          contact=f"<{self.contact_uri}>", user_agent=self.config.user_agent, extra_headers=extra)
        self._new_transaction(call.node, "INVITE", msg, branch,
                              lambda tx, response: self._invite_done(call, tx, response), nonce=nonce)

    def _in_dialog(self, call: _Call, method: str, uri: str, cseq: int, branch: str) -> sip.SIP:
        return sip.request(method, uri, local_host=self.local_host, local_port=self.local_port,
                           from_uri=sip.sip_uri(self.aor_user, self.domain),
                           to_uri=sip.sip_uri(call.number, self.domain), call_id=call.call_id, cseq=cseq,
                           from_tag=call.from_tag, to_tag=call.to_tag, branch=branch,
                           user_agent=self.config.user_agent)

    def _invite_done(self, call: _Call, tx: _Transaction, response: sip.SIP | None) -> None:
        code = response.status_code if response is not None else None
        if code is None:
            self._invite_timed_out(call, tx)
            return
        call.to_tag = response.to_tag
        if code >= 300:  # RFC 3261 17.1.1.3: ACK in the transaction, to the same hop
            self._send(bytes(self._in_dialog(call, "ACK", call.uri, call.cseq, tx.branch)), call.node.address)
        if code in (401, 407):
            why = self._call_challenge(call, tx, response)
            if why is None:
                call.cseq += 1
                call.to_tag = None
                self._send_invite(call)
                return
            self._call_failed(call, f"{code} {response.reason} ({why})")
            return
        if code >= 300:
            self._call_failed(call, f"{code} {response.reason}")
            return
        contacts = response.contacts
        address = sip.uri_hostport(contacts[0].uri) if contacts else None
        if address is None:
            self._call_failed(call, "2xx without a usable Contact")
            return
        call.remote = Registrar("callee", *address)
        remote_uri = contacts[0].uri
        call.ack = bytes(self._in_dialog(call, "ACK", remote_uri, call.cseq, sip.new_branch()))
        self._send(call.ack, call.remote.address)
        self.stats.calls_connected += 1
        self._log(CALL_CONNECTED, call.node, to=call.number, setup=round(self.loop.time() - call.started, 6))
        call.timer = self.loop.call_later(self.config.scaled(self.config.hold_time), self._hang_up, call, remote_uri)

    def _invite_timed_out(self, call: _Call, tx: _Transaction) -> None:
        node, why = invite_retry(call.node, call.tried, self.primary, self.backup, tx.proceeding)
        if node is None:
            self._call_failed(call, "timeout")
            return
        failed = call.node
        # A new INVITE through the other registrar: a call of its own there.
        del self._calls[call.call_id]
        call.call_id = sip.new_call_id(self.local_host)
        call.from_tag = sip.new_tag()
        call.cseq = 1
        call.auth_answers = 0
        call.to_tag = None
        call.node = node
        call.uri = sip.sip_uri(call.number, node.host, node.port)
        call.tried.append(node)
        self._calls[call.call_id] = call
        self._log(CALL_RETRIED, node, to=call.number, reason=why)
        self._send_invite(call)
        self._move_after_call(failed, node)

    def _move_after_call(self, failed: Registrar, node: Registrar) -> None:
        """Re-register on ``node``, the call's new registrar, now that ``failed`` let an INVITE time out."""
        if self.node is failed:  # the node serving us failed us: down from now
            self._set_node(None)
            if self._expiry_timer is not None:
                self._expiry_timer.cancel()
                self._expiry_timer = None
        if self.node is not node and not self._attempt_active:
            self._begin_attempt([node] + [n for n in self._nodes_in_order(prefer_primary=True) if n is not node])

    def _call_challenge(self, call: _Call, tx: _Transaction, response: sip.SIP) -> str | None:
        why = self._keep_challenge(call.node, "INVITE", tx, response, call.auth_answers, call.auth_answers > 0)
        if why is None:
            call.auth_answers += 1
        return why

    def _call_failed(self, call: _Call, reason: str) -> None:
        self._calls.pop(call.call_id, None)
        self.stats.calls_failed += 1
        self._log(CALL_FAILED, call.node, to=call.number, reason=reason)
        cfg = self.config
        if self._running and cfg.redial_after > 0 and call.redial < cfg.redials:
            self._redials.later(self.loop, cfg.scaled(cfg.redial_after), lambda: self._redial(call))

    def _redial(self, failed: _Call) -> None:
        if self._running:
            self.call(failed.number, failed.redial + 1)

    def _hang_up(self, call: _Call, remote_uri: str) -> None:
        call.timer = None
        branch = sip.new_branch()
        msg = self._in_dialog(call, "BYE", remote_uri, call.cseq + 1, branch)
        self._new_transaction(call.remote, "BYE", msg, branch, lambda tx, response: self._bye_done(call, response))

    def _bye_done(self, call: _Call, response: sip.SIP | None) -> None:
        self._calls.pop(call.call_id, None)
        code = response.status_code if response is not None else None
        if code is not None and 200 <= code < 300:
            self._log(CALL_ENDED, call.node, to=call.number)
        else:
            self._log(CALL_ENDED, call.node, to=call.number,
                      reason="timeout" if code is None else f"{code} {response.reason}")

    def _answer_invite(self, msg: sip.SIP, addr) -> None:
        call_id = msg.call_id or ""
        incoming = self._incoming.get(call_id)
        if incoming is not None:  # a retransmitted INVITE: the answer again
            self._send(incoming.ok, incoming.address)
            return
        tag = sip.new_tag()
        self._send(bytes(sip.response_for(msg, 180, to_tag=tag)), addr)
        ok = bytes(sip.response_for(msg, 200, to_tag=tag, headers=[("Contact", f"<{self.contact_uri}>")]))
        cfg = self.config
        incoming = _Incoming(ok, addr, cfg.timer_t1, self.loop.time() + cfg.timer_f)
        self._incoming[call_id] = incoming
        self._send(ok, addr)
        incoming.timer = self.loop.call_later(incoming.interval, self._resend_ok, call_id)
        caller = msg.get_header("From") or ""
        self.stats.calls_answered += 1
        self._log(CALL_ANSWERED, None, **{"from": sip.uri_user(sip.parse_name_addr(caller).uri)})

    def _resend_ok(self, call_id: str) -> None:
        incoming = self._incoming.get(call_id)
        if incoming is None or incoming.acked:
            return
        if self.loop.time() >= incoming.deadline:  # never ACKed: the call is gone
            del self._incoming[call_id]
            return
        self._send(incoming.ok, incoming.address)
        incoming.interval = min(2 * incoming.interval, self.config.timer_t2)
        incoming.timer = self.loop.call_later(incoming.interval, self._resend_ok, call_id)

    # ------------------------------------------------------------------ probing (failback policy "probe")

    def _start_probing(self) -> None:
        if not self._probing:
            self._probing = True
            self._probe_timer = self.loop.call_later(self.config.scaled(self.config.probe_interval), self._probe)

    def _stop_probing(self) -> None:
        self._probing = False
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

    def _probe(self) -> None:
        self._probe_timer = None
        if not self._running or not self._probing:
            return
        branch = sip.new_branch()
        msg = sip.options(
            target_host=self.primary.host,
            target_port=self.primary.port,
            user=self.aor_user,
            domain=self.domain,
            local_host=self.local_host,
            local_port=self.local_port,
            call_id=sip.new_call_id(self.local_host),
            cseq=1,
            from_tag=sip.new_tag(),
            branch=branch,
            user_agent=self.config.user_agent,
            reuse=self._out,
        )
        self._out = msg
        self.stats.options_sent += 1
        self._new_transaction(self.primary, "OPTIONS", msg, branch, self._probe_done)

    def _probe_done(self, tx: _Transaction, response: sip.SIP | None) -> None:
        code = response.status_code if response is not None else None
        if code is not None and 200 <= code < 300:
            self.stats.options_ok += 1
            self._log(PROBE_OK, self.primary)
            if not self._attempt_active:
                self._stop_probing()
                # Move back; if the primary refuses, _register_failed keeps the
                # backup binding and _registered on the backup restarts probing.
                self._begin_attempt([self.primary] if self.node is not None else
                                    self._nodes_in_order(prefer_primary=True))
                return
        else:
            self._log(PROBE_FAILED, self.primary, reason="timeout" if response is None
                      else f"{code} {response.reason}")
        if self._probing and self._running:
            self._probe_timer = self.loop.call_later(self.config.scaled(self.config.probe_interval), self._probe)


class _Registered(collections.abc.Sequence):
    """The fleet's phones that have registered at least once, but ``own``: whom that phone
    calls.  A phone not registered yet has nobody at it (a desk phone still booting):
    calling it would measure the fleet's start-up, not the fault.  One list shared by the
    fleet, in the order of the first registrations (``position``: number -> index), no copy."""

    __slots__ = ("numbers", "position", "own")

    def __init__(self, numbers: list[str], position: dict[str, int], own: str):
        self.numbers = numbers
        self.position = position
        self.own = own

    def __len__(self) -> int:
        return len(self.numbers) - (self.own in self.position)

    def __getitem__(self, k: int) -> str:
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        mine = self.position.get(self.own)
        return self.numbers[k if mine is None or k < mine else k + 1]


class Fleet:
    """N phones sharing one event loop, with live counts per registrar.

    Phone *i* is user ``first_user + i``, bound on ``local_hosts[i % len]``
    at port ``base_port + i // len(local_hosts)`` (``base_port`` 0: ephemeral
    ports), with the line credentials ``credentials(number)`` (None: none).
    """

    def __init__(
        self,
        primary: Registrar,
        backup: Registrar | None,
        count: int,
        config: PhoneConfig = PhoneConfig(),
        local_hosts: Sequence[str] = ("127.0.0.1",),
        base_port: int = 0,
        first_user: int = 10000,
        credentials: Callable[[int], Credentials | None] | None = None,
    ):
        if count < 0:
            raise ValueError("count must not be negative")
        self.primary = primary
        self.backup = backup
        self.config = config
        self.stats = FleetStats()
        self._counts: dict[str, int] = {primary.name: 0, NONE: count}
        if backup is not None:
            self._counts[backup.name] = 0
        hosts = list(local_hosts)
        self.phones = [
            Phone(
                str(first_user + i),
                primary,
                backup,
                config,
                local_host=hosts[i % len(hosts)],
                local_port=(base_port + i // len(hosts)) if base_port else 0,
                stats=self.stats,
                on_node_change=lambda old, new, user=str(first_user + i): self._node_changed(user, old, new),
                credentials=credentials(first_user + i) if credentials else None,
            )
            for i in range(count)
        ]
        self._registered: list[str] = []  # the phones that have registered once, in that order
        self._position: dict[str, int] = {}
        for phone in self.phones:
            phone.peers = _Registered(self._registered, self._position, phone.user)

    def _node_changed(self, user: str, old: str | None, new: str | None) -> None:
        if new is not None and user not in self._position:
            self._position[user] = len(self._registered)
            self._registered.append(user)
        counts = self._counts
        counts[old or NONE] = counts.get(old or NONE, 0) - 1
        counts[new or NONE] = counts.get(new or NONE, 0) + 1

    async def open(self) -> None:
        """Bind every phone's socket (raises the open-files limit if needed)."""
        ensure_open_files(len(self.phones) + 256)
        loop = asyncio.get_running_loop()
        for phone in self.phones:
            await phone.open(loop)

    async def start(self, rate: float | None = None) -> None:
        """Start every phone; ``rate`` phones per second (None: all at once)."""
        if any(p.transport is None for p in self.phones):
            await self.open()
        if not rate:
            for phone in self.phones:
                phone.start()
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i, phone in enumerate(self.phones):
            loop.call_at(t0 + i / rate, self._start_one, phone)
        await asyncio.sleep(len(self.phones) / rate)

    @staticmethod
    def _start_one(phone: Phone) -> None:
        if phone.transport is not None:  # not stopped meanwhile
            phone.start()

    async def wait_registered(self, timeout: float, node: str | None = None) -> bool:
        """Wait until every phone is registered (on ``node`` if given); False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            counts = self.counts()
            done = counts.get(node, 0) == len(self.phones) if node else counts[NONE] == 0
            if done:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def counts(self) -> dict[str, int]:
        """Phones per registrar name, and ``"none"`` for phones registered nowhere."""
        return dict(self._counts)

    def progress_line(self) -> str:
        c = self.counts()
        nodes = [self.primary.name] + ([self.backup.name] if self.backup else [])
        parts = [f"{name} {c.get(name, 0)}" for name in nodes] + [f"none {c.get(NONE, 0)}"]
        s = self.stats
        calls = (f"  | calls connected {s.calls_connected} failed {s.calls_failed}" if s.calls_placed else "")
        return (f"{'  '.join(parts)}  | REGISTER ok {s.register_ok} failed {s.register_failed}"
                f" timeouts {s.timeouts} retransmissions {s.retransmissions}" + calls)

    async def stop(self) -> None:
        for phone in self.phones:
            phone.stop()
        await asyncio.sleep(0)  # let the transports close

    def events(self) -> dict[str, list[Event]]:
        """Each phone's events, keyed by its user name."""
        return {phone.user: list(phone.events) for phone in self.phones}


class FleetThread:
    """A :class:`Fleet` on its own event loop in a background thread.

    For synchronous drivers: every method blocks until the loop has done the
    work, and is safe to call from the driver's thread.

        runner = FleetThread(Fleet(master, slave, 5000, PhoneConfig(expires=120, time_scale=10)))
        runner.start(rate=1000)
        runner.wait_registered(timeout=60)
        ... inject the fault, print runner.fleet.progress_line() ...
        runner.stop()
        events = runner.events()
    """

    def __init__(self, fleet: Fleet):
        self.fleet = fleet
        self._loop = LoopThread("phones")

    def start(self, rate: float | None = None, timeout: float | None = None) -> None:
        self._loop.call(self.fleet.start(rate), timeout)

    def wait_registered(self, timeout: float, node: str | None = None) -> bool:
        return self._loop.call(self.fleet.wait_registered(timeout, node), timeout + 5)

    def counts(self) -> dict[str, int]:
        return self.fleet.counts()  # a dict copy of plain ints: safe to read from here

    def events(self) -> dict[str, list[Event]]:
        return self._loop.read(self.fleet.events)

    def stop(self, timeout: float = 60) -> None:
        self._loop.close(self.fleet.stop, timeout)


def ensure_open_files(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise OSError(f"{needed} open files needed for the phones' sockets, the hard limit is {hard}: "
                      f"raise it (ulimit -Hn) or run fewer phones")
    return soft
