"""`probes.parse_response`: a SIP response to our OPTIONS transaction, or None."""

from __future__ import annotations

import pytest

from xivo_ha import probes

BRANCH, CALL_ID = "z9hG4bK-ours", "call-ours@10.0.0.2"


def response(status: str = "SIP/2.0 200 OK", via: str = f"Via: SIP/2.0/UDP 10.0.0.2:5060;branch={BRANCH}",
             call_id: str = f"Call-ID: {CALL_ID}", cseq: str = "CSeq: 1 OPTIONS", body: str = "") -> bytes:
    return "\r\n".join([status, via, call_id, cseq, "Content-Length: 0", "", body]).encode()


@pytest.mark.parametrize("data, expected", [
    (response(), (200, "OK")),
    (response("SIP/2.0 404 Not Found"), (404, "Not Found")),
    (response("SIP/2.0 100 Trying"), (100, "Trying")),
    (response("SIP/2.0 503"), (503, "")),
    (response("SIP/2.0 483 Too Many Hops  "), (483, "Too Many Hops")),
    # compact header names, lower case, LF line ends
    (f"SIP/2.0 200 OK\nv: SIP/2.0/UDP h;branch={BRANCH}\ni: {CALL_ID}\ncseq: 7 options\n\n".encode(), (200, "OK")),
    # the first Via is the one that counts
    (response(via=f"Via: SIP/2.0/UDP a;branch={BRANCH}\r\nVia: SIP/2.0/UDP b;branch=other"), (200, "OK")),
    (response(via="Via: SIP/2.0/UDP a;branch=other\r\nVia: SIP/2.0/UDP b;branch=" + BRANCH), None),
    (response(call_id="Call-ID: someone-else"), None),
    (response(via="Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK-theirs"), None),
    (response(cseq="CSeq: 1 REGISTER"), None),
    (response("OPTIONS sip:10.0.0.1 SIP/2.0"), None),
    (response("SIP/2.0 2000 OK"), None),
    (b"", None),
    (b"\xff\xfe garbage", None),
])
def test_parse_response(data, expected):
    assert probes.parse_response(data, BRANCH, CALL_ID) == expected
