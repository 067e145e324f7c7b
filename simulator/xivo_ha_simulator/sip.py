"""SIP messages as a scapy layer, and the builders a registering phone needs.

``SIP`` is a scapy ``Packet`` made of three fields: the start line (request
line or status line), the header list (``(name, value)`` pairs, in order and
spelled as received) and the body.  It is bound to UDP port 5060 both ways, so
``IP()/UDP()/SIP(...)`` builds and a captured 5060 datagram dissects into it.

    >>> msg = SIP(b"SIP/2.0 200 OK\\r\\nv: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\\r\\n\\r\\n")
    >>> msg.status_code, msg.get_header("Via")
    (200, 'SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx')

Building is ``bytes(pkt)``; parsing is ``SIP(raw)`` (or :func:`parse`, which
also rejects datagrams that are not SIP).  Header look-ups are
case-insensitive and understand the compact forms (``v``, ``i``, ``m``, ...).
A ``Content-Length`` header whose value is ``None`` is filled in with the body
length at build time, the way scapy fills length fields; a parsed value is kept
as it was, so a parsed message rebuilds to the same bytes.

Line endings are CRLF on output; bare LF is accepted on input.  The layer only
needs scapy's core, and costs a few tens of microseconds per message: the
phones use it on plain asyncio UDP sockets.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from scapy.fields import Field
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers
from scapy.volatile import VolatileValue

SIP_PORT = 5060
SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC = "z9hG4bK"
USER_AGENT = "xivo-ha-simulator"
CRLF = b"\r\n"
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # any byte survives a parse/build round trip

# RFC 3261 section 7.3.3 and the later RFCs that added compact forms.
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    600: "Busy Everywhere",
    603: "Decline",
}


class SipParseError(ValueError):
    """The bytes are not a SIP message."""


_canonical_cache: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """Lower-case header name with compact forms expanded (``i`` -> ``call-id``)."""
    try:
        return _canonical_cache[name]
    except KeyError:
        pass
    low = name.strip().lower()
    canon = COMPACT_FORMS.get(low, low)
    if len(_canonical_cache) < 4096:  # bounded: names come from the network
        _canonical_cache[name] = canon
    return canon


def _decode(raw: bytes) -> str:
    return raw.decode(_ENCODING, _ERRORS)


def _encode(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


# --------------------------------------------------------------------------- fields


class StartLineField(Field):
    """The request line or status line, as text, without its line ending."""

    def __init__(self, name: str, default: str):
        Field.__init__(self, name, default, fmt="s")

    def getfield(self, pkt, s):
        end = s.find(b"\n")
        if end < 0:
            return b"", _decode(s.rstrip(b"\r"))
        return s[end + 1:], _decode(s[:end].rstrip(b"\r"))

    def addfield(self, pkt, s, val):
        return s + _encode(val or "") + CRLF

    def any2i(self, pkt, x):
        return _decode(x) if isinstance(x, bytes) else x

    def i2repr(self, pkt, x):
        return repr(x)


class HeadersField(Field):
    """Header fields as a list of ``(name, value)`` pairs, up to the empty line."""

    islist = 1  # one value, not a set of values to iterate packets over
    ismutable = True  # lets scapy notice in-place edits of a parsed message

    def __init__(self, name: str, default=None):
        Field.__init__(self, name, default, fmt="s")

    def getfield(self, pkt, s):
        if s.startswith(b"\r\n"):
            return s[2:], []
        if s.startswith(b"\n"):
            return s[1:], []
        crlf = s.find(b"\r\n\r\n")
        lf = s.find(b"\n\n")
        if crlf >= 0 and (lf < 0 or crlf < lf):
            block, rest = s[:crlf], s[crlf + 4:]
        elif lf >= 0:
            block, rest = s[:lf], s[lf + 2:]
        else:
            block, rest = s, b""
        headers: list[tuple[str, str]] = []
        for line in _decode(block).split("\n"):
            line = line.rstrip("\r")
            if not line:
                continue
            if line[0] in " \t":
                if headers:  # folded continuation of the previous header
                    name, value = headers[-1]
                    headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue  # not a header: dropped rather than guessed at
            headers.append((name.strip(), value.strip()))
        return rest, headers

    def addfield(self, pkt, s, val):
        parts = []
        for name, value in val or ():
            if value is None:
                if canonical_name(name) == "content-length":
                    value = len(pkt.getfieldval("body") or b"")
                else:
                    value = ""
            parts.append(f"{name}: {value}\r\n")
        return s + _encode("".join(parts)) + CRLF

    def any2i(self, pkt, x):
        if x is None or type(x) is list:
            return x  # already (name, value) pairs: values are formatted at build time
        if isinstance(x, dict):
            x = x.items()
        return [(str(n), v if v is None else str(v)) for n, v in x]

    def i2repr(self, pkt, x):
        return repr(x)

    def do_copy(self, x):
        return None if x is None else list(x)


class BodyField(Field):
    """The message body: ``Content-Length`` bytes, or the rest of the datagram."""

    def __init__(self, name: str, default: bytes = b""):
        Field.__init__(self, name, default, fmt="s")

    def getfield(self, pkt, s):
        length = _content_length(pkt.fields.get("headers") or ())
        if length is None or length > len(s):
            return b"", s
        return s[length:], s[:length]

    def addfield(self, pkt, s, val):
        return s + (val or b"")

    def any2i(self, pkt, x):
        return _encode(x) if isinstance(x, str) else x

    def i2len(self, pkt, x):
        return len(x or b"")


def _content_length(headers: Iterable[tuple[str, str | None]]) -> int | None:
    for name, value in headers:
        if canonical_name(name) == "content-length":
            try:
                return int(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
    return None


# --------------------------------------------------------------------------- the layer


class SIP(Packet):
    """One SIP message: start line, headers, body."""

    name = "SIP"
    __slots__ = ["_header_index"]
    fields_desc = [
        StartLineField("start_line", f"OPTIONS sip:localhost {SIP_VERSION}"),
        HeadersField("headers", None),
        BodyField("body", b""),
    ]

    def do_build(self):
        # Scapy first expands "sets of values" into one packet each, at the cost
        # of a copy; a SIP message has none unless a field holds a volatile
        # (random) value, so the common case skips it.
        if self.explicit or any(isinstance(v, VolatileValue) for v in self.fields.values()):
            return Packet.do_build(self)
        pkt = self.self_build()
        for transform in self.post_transforms:
            pkt = transform(pkt)
        return self.post_build(pkt, self.do_build_payload())

    def extract_padding(self, s):
        # Bytes after Content-Length are not a payload: RFC 3261 18.3 says discard.
        return b"", s

    def mysummary(self):
        return f"SIP {self.start_line}"

    # -- start line
    def _line(self) -> str:
        line = self.fields.get("start_line")  # not via scapy's __getattr__: hot path
        return self.default_fields["start_line"] if line is None else line

    @property
    def is_request(self) -> bool:
        return not self._line().startswith("SIP/")

    @property
    def is_response(self) -> bool:
        return self._line().startswith("SIP/")

    @property
    def method(self) -> str | None:
        line = self._line()
        if line.startswith("SIP/"):
            return None
        return line.split(" ", 1)[0]

    @property
    def request_uri(self) -> str | None:
        line = self._line()
        if line.startswith("SIP/"):
            return None
        parts = line.split(" ")
        return parts[1] if len(parts) > 2 else None

    @property
    def status_code(self) -> int | None:
        line = self._line()
        if not line.startswith("SIP/"):
            return None
        code = line[8:11] if line[7:8] == " " else ""
        if len(code) == 3 and code.isdigit() and line[11:12] in ("", " "):
            return int(code)
        return None

    @property
    def reason(self) -> str | None:
        line = self._line()
        if not line.startswith("SIP/"):
            return None
        parts = line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    # -- headers
    def _index(self) -> dict[str, list[str]]:
        """Header values by canonical name, rebuilt when the header list changes."""
        headers = self.fields.get("headers")
        if headers is None:
            headers = self.default_fields.get("headers") or []
        try:
            cached = object.__getattribute__(self, "_header_index")
        except AttributeError:
            cached = None
        if cached is not None and cached[0] is headers and cached[1] == len(headers):
            return cached[2]
        index: dict[str, list[str]] = {}
        for hname, value in headers:
            key = canonical_name(hname)
            if key in index:
                index[key].append(value)
            else:
                index[key] = [value]
        object.__setattr__(self, "_header_index", (headers, len(headers), index))
        return index

    def get_header(self, name: str, default: str | None = None) -> str | None:
        """The value of the first header called ``name`` (any case, compact or not)."""
        values = self._index().get(canonical_name(name))
        return values[0] if values else default

    def get_headers(self, name: str) -> list[str]:
        """Every header line called ``name``, in order, as written."""
        return list(self._index().get(canonical_name(name), ()))

    def header_values(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split (Via, Contact, ...)."""
        values: list[str] = []
        for line in self.get_headers(name):
            values.extend(split_header_list(line))
        return values

    def set_header(self, name: str, value: str | None) -> None:
        """Replace the first ``name`` header (dropping later ones), or append it."""
        want = canonical_name(name)
        out, done = [], False
        for hname, hvalue in self.headers or ():
            if canonical_name(hname) == want:
                if not done:
                    out.append((hname, value))
                    done = True
                continue
            out.append((hname, hvalue))
        if not done:
            out.append((name, value))
        self.headers = out

    def add_header(self, name: str, value: str | None) -> None:
        self.headers = list(self.headers or ()) + [(name, value)]

    # -- common fields
    @property
    def call_id(self) -> str | None:
        return self.get_header("call-id")

    @property
    def cseq(self) -> tuple[int, str] | None:
        """``(number, method)`` of the CSeq header."""
        value = self.get_header("cseq")
        if not value:
            return None
        number, _, method = value.strip().partition(" ")
        try:
            return int(number), method.strip()
        except ValueError:
            return None

    @property
    def via_branch(self) -> str | None:
        """The branch parameter of the top Via."""
        vias = self.header_values("via")
        if not vias:
            return None
        return parse_via(vias[0]).params.get("branch")

    @property
    def from_tag(self) -> str | None:
        value = self.get_header("from")
        return parse_name_addr(value).params.get("tag") if value else None

    @property
    def to_tag(self) -> str | None:
        value = self.get_header("to")
        return parse_name_addr(value).params.get("tag") if value else None

    @property
    def expires(self) -> int | None:
        """The Expires header, as an integer."""
        return _int_or_none(self.get_header("expires"))

    @property
    def min_expires(self) -> int | None:
        """The Min-Expires header (sent with 423 Interval Too Brief)."""
        return _int_or_none(self.get_header("min-expires"))

    @property
    def contacts(self) -> list["NameAddr"]:
        return [parse_name_addr(v) for v in self.header_values("contact") if v.strip() != "*"]


bind_layers(UDP, SIP, sport=SIP_PORT)
bind_layers(UDP, SIP, dport=SIP_PORT)


# --------------------------------------------------------------------------- header values


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact value: display name, URI and header parameters."""

    uri: str
    display: str = ""
    params: dict = field(default_factory=dict)

    @property
    def expires(self) -> int | None:
        return _int_or_none(self.params.get("expires"))


@dataclass(frozen=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict = field(default_factory=dict)


def _int_or_none(value) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def split_header_list(text: str) -> list[str]:
    """Split ``a, b`` at top-level commas (not inside quotes or angle brackets)."""
    if "," not in text:
        return [text.strip()] if text.strip() else []
    items, start, depth, quoted, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [item for item in items if item]


def parse_params(text: str) -> dict:
    """``;a=1;b;c="x y"`` -> ``{'a': '1', 'b': None, 'c': 'x y'}`` (names lower-cased)."""
    params: dict = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        params[name.strip().lower()] = value if sep else None
    return params


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``"Bob" <sip:bob@h;transport=udp>;expires=60`` or ``sip:bob@h;tag=1``."""
    text = text.strip()
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            gt = len(text)
        display = text[:lt].strip().strip('"')
        return NameAddr(text[lt + 1:gt].strip(), display, parse_params(text[gt + 1:]))
    # addr-spec without brackets: parameters after the URI are header parameters
    uri, _, params = text.partition(";")
    return NameAddr(uri.strip(), "", parse_params(params))


def parse_via(text: str) -> Via:
    """Parse one Via value: ``SIP/2.0/UDP host:port;branch=...``."""
    sent, _, params = text.strip().partition(";")
    protocol, _, hostport = sent.strip().partition(" ")
    transport = protocol.rsplit("/", 1)[-1].strip().upper()
    hostport = hostport.strip()
    host, port = hostport, None
    if hostport.startswith("["):  # IPv6 reference
        end = hostport.find("]")
        host = hostport[: end + 1]
        rest = hostport[end + 1:]
        port = _int_or_none(rest[1:]) if rest.startswith(":") else None
    elif ":" in hostport:
        host, _, port_text = hostport.rpartition(":")
        port = _int_or_none(port_text)
    return Via(transport, host, port, parse_params(params))


def uri_key(uri: str) -> str:
    """Compare-key of a SIP URI: without parameters or headers, case-folded."""
    uri = uri.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    for stop in (";", "?"):
        cut = uri.find(stop)
        if cut >= 0:
            uri = uri[:cut]
    return uri.lower()


def uri_user(uri: str) -> str | None:
    """The user part of ``sip:user@host:port;params``, None without one."""
    rest = uri.strip().strip("<>").partition(":")[2]
    user, at, _ = rest.partition("@")
    return user.partition(";")[0] if at else None


def uri_hostport(uri: str) -> tuple[str, int] | None:
    """(host, port) a request to ``uri`` goes to (port 5060 when absent); None if it has no host."""
    rest = uri.strip().strip("<>").partition(":")[2]
    hostport = rest.rpartition("@")[2]
    for stop in (";", "?"):
        hostport = hostport.partition(stop)[0]
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = _int_or_none(tail[1:]) if tail.startswith(":") else None
    else:
        host, _, port_text = hostport.partition(":")
        port = _int_or_none(port_text) if port_text else None
    return (host, port or SIP_PORT) if host else None


# --------------------------------------------------------------------------- parse


def parse(data: bytes) -> SIP:
    """Dissect a datagram; raise :class:`SipParseError` unless it is SIP."""
    if not data or data[:1] in (b"\r", b"\n", b" "):
        raise SipParseError("empty or keep-alive datagram")
    msg = SIP(data)
    line = msg._line()
    if line.startswith("SIP/2.0 "):
        if msg.status_code is None:
            raise SipParseError(f"bad status line {line!r}")
    else:
        parts = line.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[0].isalpha():
            raise SipParseError(f"bad request line {line!r}")
    return msg


def granted_expires(response: SIP, contact_uri: str | None = None) -> int | None:
    """The registration lifetime a 2xx to REGISTER grants.

    The ``expires`` parameter of our own Contact wins (registrars list every
    binding of the address of record); then the Expires header; then, if
    there is exactly one Contact, its ``expires`` parameter.
    """
    contacts = response.contacts
    if contact_uri is not None:
        key = uri_key(contact_uri)
        for contact in contacts:
            if uri_key(contact.uri) == key and contact.expires is not None:
                return contact.expires
    header = response.expires
    if header is not None:
        return header
    if len(contacts) == 1:
        return contacts[0].expires
    return None


# --------------------------------------------------------------------------- digest authentication


@dataclass(frozen=True)
class Challenge:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` digest challenge."""

    realm: str
    nonce: str
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    algorithm: str = "MD5"
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    """Parse ``Digest realm="x", nonce="y", qop="auth,auth-int"``; raise SipParseError otherwise."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError(f"not a digest challenge: {value!r}")
    params = {}
    for item in split_header_list(rest):
        name, sep, val = item.partition("=")
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val if sep else ""
    if "realm" not in params or "nonce" not in params:
        raise SipParseError(f"digest challenge without realm or nonce: {value!r}")
    algorithm = params.get("algorithm") or "MD5"
    if algorithm.upper() != "MD5":
        raise SipParseError(f"digest algorithm {algorithm} is not supported (MD5 only)")
    qop = tuple(q.strip().lower() for q in (params.get("qop") or "").split(",") if q.strip())
    return Challenge(params["realm"], params["nonce"], qop, params.get("opaque"), "MD5",
                     (params.get("stale") or "").lower() == "true")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(_ENCODING, _ERRORS)).hexdigest()


def digest_response(*, username: str, realm: str, password: str, method: str, uri: str, nonce: str,
                    qop: str | None = None, nc: int = 1, cnonce: str = "") -> str:
    """The digest ``response`` of RFC 2617 section 3.2.2.1 / RFC 7616 section 3.4.1, MD5.

    ``qop`` None: the RFC 2069 form, MD5(HA1:nonce:HA2); ``"auth"``: with nc and cnonce.
    """
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop is None:
        return _md5(f"{ha1}:{nonce}:{ha2}")
    if qop != "auth":
        raise ValueError(f"qop {qop!r} is not supported (auth only)")
    return _md5(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


def authorization(challenge: Challenge, *, username: str, password: str, method: str, uri: str,
                  nc: int = 1, cnonce: str | None = None) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge``."""
    qop = "auth" if "auth" in challenge.qop else None
    if challenge.qop and qop is None:
        raise ValueError(f"challenge offers qop {','.join(challenge.qop)}: only auth is supported")
    cnonce = cnonce if cnonce is not None else f"{_rand.getrandbits(64):016x}"
    response = digest_response(username=username, realm=challenge.realm, password=password, method=method,
                               uri=uri, nonce=challenge.nonce, qop=qop, nc=nc, cnonce=cnonce)
    parts = [f'username="{username}"', f'realm="{challenge.realm}"', f'nonce="{challenge.nonce}"',
             f'uri="{uri}"', f'response="{response}"', "algorithm=MD5"]
    if qop:
        parts += [f"qop={qop}", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    if challenge.opaque is not None:
        parts.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------- build

_rand = random.Random()


def new_branch() -> str:
    """A fresh RFC 3261 Via branch (with the ``z9hG4bK`` magic cookie)."""
    return f"{BRANCH_MAGIC}{_rand.getrandbits(64):016x}"


def new_tag() -> str:
    return f"{_rand.getrandbits(48):012x}"


def new_call_id(host: str = "") -> str:
    token = f"{_rand.getrandbits(96):024x}"
    return f"{token}@{host}" if host else token


def _hostport(host: str, port: int | None) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def sip_uri(user: str | None, host: str, port: int | None = None) -> str:
    hp = _hostport(host, port)
    return f"sip:{user}@{hp}" if user else f"sip:{hp}"


def request(
    method: str,
    uri: str,
    *,
    local_host: str,
    local_port: int,
    from_uri: str,
    to_uri: str,
    call_id: str,
    cseq: int,
    from_tag: str,
    to_tag: str | None = None,
    branch: str | None = None,
    contact: str | None = None,
    max_forwards: int = 70,
    transport: str = "UDP",
    user_agent: str | None = USER_AGENT,
    extra_headers: Sequence[tuple[str, str | None]] = (),
    body: bytes = b"",
    reuse: SIP | None = None,
) -> SIP:
    """A request with the headers RFC 3261 section 8.1.1 makes mandatory.

    ``reuse``: a message to overwrite instead of making a new one (saves
    scapy's per-packet set-up when a sender builds many requests).
    """
    via = f"SIP/2.0/{transport} {_hostport(local_host, local_port)};branch={branch or new_branch()};rport"
    headers: list[tuple[str, str | None]] = [
        ("Via", via),
        ("Max-Forwards", str(max_forwards)),
        ("From", f"<{from_uri}>;tag={from_tag}"),
        ("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    headers.extend(extra_headers)
    if user_agent:
        headers.append(("User-Agent", user_agent))
    headers.append(("Content-Length", None))
    start_line = f"{method} {uri} {SIP_VERSION}"
    if reuse is not None:
        reuse.start_line = start_line
        reuse.headers = headers
        reuse.body = body
        return reuse
    return SIP(start_line=start_line, headers=headers, body=body)


def register(
    *,
    registrar_host: str,
    registrar_port: int | None = SIP_PORT,
    user: str,
    domain: str,
    local_host: str,
    local_port: int,
    call_id: str,
    cseq: int,
    from_tag: str,
    expires: int | None = None,
    contact_expires: int | None = None,
    branch: str | None = None,
    **kwargs,
) -> SIP:
    """A REGISTER of ``sip:user@domain`` binding ``sip:user@local_host:local_port``.

    ``expires`` becomes the Expires header, ``contact_expires`` the Contact's
    ``;expires=`` parameter; leave both out to let the registrar pick its
    default.  ``expires=0`` unregisters.
    """
    aor = sip_uri(user, domain)
    contact = f"<{sip_uri(user, local_host, local_port)}>"
    if contact_expires is not None:
        contact += f";expires={contact_expires}"
    extra = list(kwargs.pop("extra_headers", ()))
    if expires is not None:
        extra.insert(0, ("Expires", str(expires)))
    return request(
        "REGISTER",
        sip_uri(None, registrar_host, registrar_port),
        local_host=local_host,
        local_port=local_port,
        from_uri=aor,
        to_uri=aor,
        call_id=call_id,
        cseq=cseq,
        from_tag=from_tag,
        branch=branch,
        contact=contact,
        extra_headers=extra,
        **kwargs,
    )


def options(
    *,
    target_host: str,
    target_port: int | None = SIP_PORT,
    user: str,
    domain: str,
    local_host: str,
    local_port: int,
    call_id: str,
    cseq: int,
    from_tag: str,
    branch: str | None = None,
    **kwargs,
) -> SIP:
    """An out-of-dialog OPTIONS, the usual "are you alive" ping of a server."""
    extra = list(kwargs.pop("extra_headers", ())) + [("Accept", "application/sdp")]
    return request(
        "OPTIONS",
        sip_uri(None, target_host, target_port),
        local_host=local_host,
        local_port=local_port,
        from_uri=sip_uri(user, domain),
        to_uri=sip_uri(None, target_host, target_port),
        call_id=call_id,
        cseq=cseq,
        from_tag=from_tag,
        branch=branch,
        contact=f"<{sip_uri(user, local_host, local_port)}>",
        extra_headers=extra,
        **kwargs,
    )


def response_for(
    req: SIP,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Sequence[tuple[str, str | None]] = (),
    body: bytes = b"",
) -> SIP:
    """A response to ``req`` (RFC 3261 8.2.6): Via, From, To, Call-ID, CSeq copied, and Record-Route
    (12.1.1: a proxy that record-routed stays on the dialog's path)."""
    copied: list[tuple[str, str | None]] = []
    for name, value in req.headers or ():
        cname = canonical_name(name)
        if cname == "via":
            copied.append(("Via", value))
        elif cname == "to":
            if to_tag and "tag=" not in (value or "") and code > 100:
                value = f"{value};tag={to_tag}"
            copied.append(("To", value))
        elif cname == "from":
            copied.append(("From", value))
        elif cname == "call-id":
            copied.append(("Call-ID", value))
        elif cname == "cseq":
            copied.append(("CSeq", value))
        elif cname == "record-route":
            copied.append(("Record-Route", value))
    copied.extend(headers)
    copied.append(("Content-Length", None))
    line = f"{SIP_VERSION} {code} {reason if reason is not None else REASONS.get(code, '')}"
    return SIP(start_line=line, headers=copied, body=body)
