"""Observe the master: ICMP reachability and, optionally, its SIP registrar.

A probe returns an :class:`Observation` -- what was asked, of whom, whether it
answered, a short detail and how long it took.  It never decides anything; that is
:mod:`xivo_ha.failover`'s job.

* :func:`ping` runs the system ``ping`` (``ping -n -q -c COUNT -i INTERVAL -W
  TIMEOUT ADDR``) through :func:`xivo_ha.system.run`; the host is alive when any
  reply came back (exit 0), as XiVO's own check does, and dead when none did
  (exit 1).
* :func:`sip_options` sends one SIP ``OPTIONS`` request over a plain UDP socket and
  retransmits it like an RFC 3261 non-INVITE client transaction (T1 = 500 ms,
  doubling up to T2 = 4 s, giving up after Timer F).  Any final response (>= 200),
  even an error, proves the registrar is up; a 1xx only means "keep waiting".

Only a definite answer is an observation.  A probe that could not run (ping
exiting 2 or missing, our own timeout, a socket error other than a timeout or a
refusal) raises :class:`ProbeError`: nothing is known about the master, so
nothing may be decided.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from . import __version__, system
from .errors import OperationFailed

ICMP = "icmp"
SIP = "sip"
WITNESS = "witness"

T1 = 0.5
T2 = 4.0
TIMER_F = 64 * T1

_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


class ProbeError(OperationFailed):
    """The probe could not run: neither up nor down."""


@dataclass(frozen=True)
class Observation:
    """One probe's outcome: a fact, not a decision."""

    what: str
    target: str
    alive: bool
    detail: str
    duration: float

    def describe(self) -> str:
        """``icmp 10.0.0.1: alive (3/3 replies, rtt avg 0.4 ms) in 20.0 s``"""
        state = "alive" if self.alive else "dead"
        return f"{self.what} {self.target}: {state} ({self.detail}) in {self.duration:.1f} s"

    def to_dict(self) -> dict:
        return {
            "what": self.what,
            "target": self.target,
            "alive": self.alive,
            "detail": self.detail,
            "duration": round(self.duration, 3),
        }


def _number(value: float) -> str:
    return f"{value:g}"


def ping_command(address: str, count: int, interval: float, timeout: float) -> list[str]:
    return ["ping", "-n", "-q", "-c", str(count), "-i", _number(interval), "-W", _number(timeout), address]


def ping(address: str, count: int = 3, interval: float = 10.0, timeout: float = 1.0, what: str = ICMP) -> Observation:
    """Ping ``address`` ``count`` times, ``interval`` seconds apart; alive when any reply came back.

    Raises :class:`ProbeError` when ping could not give an answer: missing, exiting
    with anything but 0 (a reply) or 1 (no reply), or outliving its time budget.
    """
    argv = ping_command(address, count, interval, timeout)
    budget = (count - 1) * interval + timeout + 10.0
    started = time.monotonic()
    if system.which("ping") is None:
        raise ProbeError("the ping program is missing: install iputils-ping")
    try:
        result = system.run(argv, timeout=budget, env={"LC_ALL": "C"})
    except OperationFailed as exc:
        raise ProbeError(f"{what} probe of {address} could not run: {exc}") from None
    duration = time.monotonic() - started
    if result.returncode not in (0, 1):
        raise ProbeError(
            f"{what} probe of {address} could not run: ping exited with {result.returncode}"
            f" ({result.output() or 'no output'})"
        )
    return Observation(what, address, result.returncode == 0, _ping_detail(result), duration)


def _ping_detail(result: system.Result) -> str:
    summary = _PING_SUMMARY.search(result.stdout)
    if summary is None:
        return result.output() or f"ping exited with {result.returncode}"
    sent, received = summary.groups()
    detail = f"{received}/{sent} replies"
    rtt = _PING_RTT.search(result.stdout)
    if rtt is not None:
        detail += f", rtt avg {float(rtt.group(1)):g} ms"
    error = result.stderr.strip()
    if error and int(received) == 0:
        detail += f", {error.splitlines()[-1]}"
    return detail


def options_request(host: str, port: int, local: tuple[str, int], branch: str, tag: str, call_id: str) -> bytes:
    """The SIP OPTIONS request sent to ``host:port`` from the ``local`` socket address."""
    local_host, local_port = local
    lines = [
        f"OPTIONS sip:{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {local_host}:{local_port};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:xivo-ha@{local_host}>;tag={tag}",
        f"To: <sip:{host}:{port}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:xivo-ha@{local_host}:{local_port}>",
        "Accept: application/sdp",
        f"User-Agent: xivo-ha/{__version__}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def parse_response(data: bytes, branch: str, call_id: str) -> tuple[int, str] | None:
    """``(code, reason)`` when ``data`` is a response to our transaction, else None."""
    try:
        text = data.decode("utf-8", errors="replace")
    except Exception:  # pragma: no cover - decode with errors=replace does not raise
        return None
    head, _, _ = text.partition("\r\n\r\n")
    lines = head.replace("\r\n", "\n").split("\n")
    match = re.match(r"SIP/2\.0 (\d{3})(?: (.*))?$", lines[0].strip())
    if match is None:
        return None
    headers: dict[str, str] = {}
    compact = {"v": "via", "i": "call-id"}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = compact.get(key, key)
        headers.setdefault(key, value.strip())
    if headers.get("call-id") != call_id:
        return None
    if f"branch={branch}" not in headers.get("via", ""):
        return None
    if not headers.get("cseq", "").upper().endswith("OPTIONS"):
        return None
    return int(match.group(1)), (match.group(2) or "").strip()


def sip_options(host: str, port: int = 5060, timeout: float = TIMER_F, t1: float = T1, t2: float = T2) -> Observation:
    """Ask the registrar at ``host:port`` with SIP OPTIONS over UDP.

    Alive on any final response; dead when nothing final arrives within ``timeout``
    seconds, or at once when the host reports the port unreachable (ICMP).  Any
    other socket error raises :class:`ProbeError`.
    """
    import secrets  # only the SIP probe needs it: keep it out of every ping-only run

    target = f"{host}:{port}"
    started = time.monotonic()
    branch = "z9hG4bK" + secrets.token_hex(8)
    tag = secrets.token_hex(6)
    call_id = secrets.token_hex(12) + "@xivo-ha"
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise _sip_failed(target, "cannot open a UDP socket", exc) from None
    with sock:
        try:
            sock.connect((host, port))
            request = options_request(host, port, sock.getsockname(), branch, tag, call_id)
        except OSError as exc:
            raise _sip_failed(target, "cannot address it", exc) from None
        alive, detail = _transaction(sock, request, target, (branch, call_id), (started, timeout), (t1, t2))
    return Observation(SIP, target, alive, detail, time.monotonic() - started)


def _sip_failed(target: str, doing: str, exc: OSError) -> ProbeError:
    return ProbeError(f"sip probe of {target} could not run: {doing}: {exc.strerror or exc}")


def _transaction(sock: socket.socket, request: bytes, target: str, ids: tuple[str, str],
                 budget: tuple[float, float], timers: tuple[float, float]) -> tuple[bool, str]:
    """Send ``request`` and retransmit it (``timers``: T1, T2) until a final response to
    our transaction (``ids``: branch, Call-ID) or the end of ``budget`` (start, seconds)."""
    started, timeout = budget
    deadline = started + timeout
    wait, t2 = timers
    sent = 0
    provisional = ""
    next_send = time.monotonic()
    while (now := time.monotonic()) < deadline:
        if now >= next_send:
            try:
                sock.send(request)
            except ConnectionRefusedError:
                return False, "port unreachable (ICMP)"
            except OSError as exc:
                raise _sip_failed(target, "send failed", exc) from None
            sent += 1
            next_send = now + wait
            wait = min(wait * 2, t2)
        sock.settimeout(max(0.001, min(next_send, deadline) - time.monotonic()))
        try:
            data = sock.recv(65535)
        except socket.timeout:
            continue
        except ConnectionRefusedError:
            return False, "port unreachable (ICMP)"
        except OSError as exc:
            raise _sip_failed(target, "receive failed", exc) from None
        response = parse_response(data, *ids)
        if response is None:
            continue
        code, reason = response
        if code >= 200:
            return True, f"{code} {reason}".strip()
        # Proceeding: the server has the request; retransmit at T2 only (RFC 3261 17.1.2.2).
        provisional = f", last provisional {code} {reason}".rstrip()
        wait = t2
        next_send = time.monotonic() + t2
    return False, f"no final response after {sent} requests in {timeout:g} s{provisional}"
