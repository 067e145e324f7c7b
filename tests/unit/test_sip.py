"""The SIP scapy layer: build/parse round trips on real-world message shapes."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Padding

from xivo_ha_simulator import sip
from xivo_ha_simulator.sip import SIP

KAMAILIO_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:45194;branch=z9hG4bK6bff06052b5b09a5;rport=45194;received=127.0.0.1\r\n"
    b"From: <sip:1001@127.0.0.1>;tag=525686bdff75\r\n"
    b"To: <sip:1001@127.0.0.1>;tag=b9dcc20e5ffba37e2b03af6a7ee57ad3.73587bb6\r\n"
    b"Call-ID: 190b98aef6fa592be7700042@127.0.0.1\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:1001@10.0.0.9:5062>;expires=3400, <sip:1001@127.0.0.1:45194>;expires=60\r\n"
    b"Server: kamailio (5.6.3 (x86_64/linux))\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# A desk phone's REGISTER (Yealink-like shape: display name, instance id, Allow list).
PHONE_REGISTER = (
    b"REGISTER sip:192.168.1.10:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.50:5062;branch=z9hG4bK1234567890\r\n"
    b'From: "Reception, desk 2" <sip:1002@192.168.1.10:5060>;tag=1817045227\r\n'
    b"To: <sip:1002@192.168.1.10:5060>\r\n"
    b"Call-ID: 1626352345@192.168.1.50\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b'Contact: <sip:1002@192.168.1.50:5062>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-001565123456>"\r\n'
    b"X-Yealink-Info: unknown\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\n"
    b"Expires: 3600\r\n"
    b"Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, REFER, PUBLISH, UPDATE, MESSAGE\r\n"
    b"Allow-Events: talk,hold,conference,refer,check-sync\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# Compact forms, as some proxies and stacks send them.
COMPACT_RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"v: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKtop\r\n"
    b"v: SIP/2.0/UDP 10.1.1.2:5070;branch=z9hG4bKsecond\r\n"
    b"f: <sip:2000@example.org>;tag=abc\r\n"
    b"t: <sip:2000@example.org>;tag=def\r\n"
    b"i: compact-call-id\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"m: <sip:2000@10.1.1.1:5060>;expires=120\r\n"
    b"l: 0\r\n"
    b"\r\n"
)

INVITE_WITH_SDP_BODY = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 10.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 10.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)
INVITE_WITH_SDP = (
    b"INVITE sip:1001@10.0.0.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKinv\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:1000@10.0.0.2>;tag=1\r\n"
    b"To: <sip:1001@10.0.0.2>\r\n"
    b"Call-ID: inv-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(INVITE_WITH_SDP_BODY)).encode() + b"\r\n"
    b"\r\n" + INVITE_WITH_SDP_BODY
)


@pytest.mark.parametrize("raw", [KAMAILIO_200, PHONE_REGISTER, COMPACT_RESPONSE, INVITE_WITH_SDP])
def test_parsed_message_rebuilds_to_the_same_bytes(raw):
    assert bytes(SIP(raw)) == raw
    assert bytes(sip.parse(raw)) == raw


def test_status_line_and_headers_of_a_kamailio_answer():
    msg = sip.parse(KAMAILIO_200)
    assert msg.is_response and not msg.is_request
    assert (msg.status_code, msg.reason) == (200, "OK")
    assert msg.method is None
    assert msg.call_id == "190b98aef6fa592be7700042@127.0.0.1"
    assert msg.cseq == (2, "REGISTER")
    assert msg.via_branch == "z9hG4bK6bff06052b5b09a5"
    assert msg.from_tag == "525686bdff75"
    assert msg.to_tag == "b9dcc20e5ffba37e2b03af6a7ee57ad3.73587bb6"
    assert [c.uri for c in msg.contacts] == ["sip:1001@10.0.0.9:5062", "sip:1001@127.0.0.1:45194"]
    assert msg.get_header("SERVER") == "kamailio (5.6.3 (x86_64/linux))"
    assert msg.get_header("content-length") == "0"


def test_request_line_and_quoted_values_of_a_phone_register():
    msg = sip.parse(PHONE_REGISTER)
    assert msg.is_request
    assert msg.method == "REGISTER"
    assert msg.request_uri == "sip:192.168.1.10:5060"
    assert msg.expires == 3600
    from_ = sip.parse_name_addr(msg.get_header("From"))
    assert from_.display == "Reception, desk 2"  # the comma inside quotes is not a separator
    assert from_.params["tag"] == "1817045227"
    (contact,) = msg.contacts
    assert contact.uri == "sip:1002@192.168.1.50:5062"
    assert contact.params["+sip.instance"] == "<urn:uuid:00000000-0000-1000-8000-001565123456>"
    assert len(msg.header_values("Allow")) == 14


def test_compact_forms_are_found_under_their_long_names():
    msg = sip.parse(COMPACT_RESPONSE)
    assert msg.call_id == "compact-call-id"
    assert msg.get_header("Call-ID") == msg.get_header("i")
    assert msg.via_branch == "z9hG4bKtop"  # the top Via, of two header lines
    assert len(msg.header_values("via")) == 2
    assert msg.from_tag == "abc" and msg.to_tag == "def"
    assert sip.granted_expires(msg, "sip:2000@10.1.1.1:5060") == 120
    assert msg.get_header("Content-Length") == "0"


def test_body_is_content_length_bytes_and_the_rest_is_padding():
    msg = SIP(INVITE_WITH_SDP + b"\r\n\r\njunk")
    assert msg.body == INVITE_WITH_SDP_BODY
    assert msg.method == "INVITE"
    assert isinstance(msg.payload, Padding)
    assert msg.payload.load == b"\r\n\r\njunk"


def test_body_without_content_length_is_the_rest_of_the_datagram():
    raw = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nhello"
    assert SIP(raw).body == b"hello"


def test_bare_lf_and_folded_headers_are_understood():
    raw = b"SIP/2.0 200 OK\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKlf\nSubject: first\n  second\nCSeq: 1 OPTIONS\n\n"
    msg = sip.parse(raw)
    assert msg.via_branch == "z9hG4bKlf"
    assert msg.get_header("subject") == "first second"
    assert msg.cseq == (1, "OPTIONS")
    assert bytes(msg) == raw  # unmodified: the bytes as received
    msg.set_header("Subject", "edited")
    assert bytes(msg) == (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKlf\r\n"
                          b"Subject: edited\r\nCSeq: 1 OPTIONS\r\n\r\n")  # rebuilt: CRLF


def test_content_length_is_computed_when_left_to_the_layer():
    msg = SIP(start_line="MESSAGE sip:a@b SIP/2.0", headers=[("Call-ID", "x"), ("Content-Length", None)],
              body=b"12345")
    raw = bytes(msg)
    assert b"Content-Length: 5\r\n\r\n12345" in raw
    assert sip.parse(raw).body == b"12345"


def test_editing_a_parsed_message_changes_its_bytes():
    msg = sip.parse(KAMAILIO_200)
    msg.set_header("Server", "other")
    msg.add_header("X-Test", "1")
    raw = bytes(msg)
    assert b"Server: other\r\n" in raw and b"X-Test: 1\r\n" in raw
    assert b"kamailio" not in raw


def test_register_has_the_mandatory_headers():
    msg = sip.register(
        registrar_host="10.0.0.1", registrar_port=5060, user="1001", domain="xivo.test",
        local_host="127.0.0.1", local_port=40000, call_id="cid@127.0.0.1", cseq=3,
        from_tag="ftag", expires=120, contact_expires=120,
    )
    raw = bytes(msg)
    parsed = sip.parse(raw)
    assert parsed.start_line == "REGISTER sip:10.0.0.1:5060 SIP/2.0"
    assert parsed.via_branch.startswith("z9hG4bK") and len(parsed.via_branch) > len("z9hG4bK")
    via = sip.parse_via(parsed.header_values("via")[0])
    assert (via.transport, via.host, via.port) == ("UDP", "127.0.0.1", 40000)
    assert "rport" in via.params
    assert parsed.get_header("Max-Forwards") == "70"
    assert parsed.get_header("From") == "<sip:1001@xivo.test>;tag=ftag"
    assert parsed.get_header("To") == "<sip:1001@xivo.test>"
    assert parsed.call_id == "cid@127.0.0.1"
    assert parsed.cseq == (3, "REGISTER")
    assert parsed.expires == 120
    assert parsed.contacts[0].uri == "sip:1001@127.0.0.1:40000"
    assert parsed.contacts[0].expires == 120
    assert parsed.get_header("Content-Length") == "0"
    assert raw.endswith(b"\r\n\r\n")


def test_register_without_expiry_lets_the_registrar_choose():
    msg = sip.register(registrar_host="10.0.0.1", user="1001", domain="d", local_host="127.0.0.1",
                       local_port=1, call_id="c", cseq=1, from_tag="t")
    parsed = sip.parse(bytes(msg))
    assert parsed.expires is None
    assert parsed.contacts[0].expires is None


def test_each_request_gets_a_fresh_branch():
    kwargs = dict(registrar_host="h", user="u", domain="d", local_host="127.0.0.1", local_port=1,
                  call_id="c", cseq=1, from_tag="t")
    branches = {sip.register(**kwargs).via_branch for _ in range(50)}
    assert len(branches) == 50


def test_options_request():
    msg = sip.parse(bytes(sip.options(target_host="10.0.0.1", target_port=5070, user="probe", domain="d",
                                      local_host="127.0.0.1", local_port=5555, call_id="o1", cseq=1,
                                      from_tag="t")))
    assert msg.method == "OPTIONS"
    assert msg.request_uri == "sip:10.0.0.1:5070"
    assert msg.cseq == (1, "OPTIONS")
    assert msg.get_header("Accept") == "application/sdp"


def test_response_for_copies_the_transaction_headers():
    req = sip.parse(PHONE_REGISTER)
    resp = sip.response_for(req, 423, to_tag="srv", headers=[("Min-Expires", "60")])
    parsed = sip.parse(bytes(resp))
    assert parsed.start_line == "SIP/2.0 423 Interval Too Brief"
    assert parsed.via_branch == "z9hG4bK1234567890"
    assert parsed.call_id == req.call_id
    assert parsed.cseq == (1, "REGISTER")
    assert parsed.to_tag == "srv"
    assert parsed.from_tag == "1817045227"
    assert parsed.min_expires == 60


def test_granted_expiry_prefers_our_contact_then_the_expires_header():
    msg = sip.parse(KAMAILIO_200)
    assert sip.granted_expires(msg, "sip:1001@127.0.0.1:45194") == 60
    assert sip.granted_expires(msg, "<sip:1001@10.0.0.9:5062;transport=udp>") == 3400
    with_header = sip.parse(
        b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nExpires: 90\r\nContact: <sip:x@h>\r\n\r\n")
    assert sip.granted_expires(with_header, "sip:x@h") == 90
    none = sip.parse(b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n")
    assert sip.granted_expires(none, "sip:x@h") is None


def test_bound_to_udp_5060_in_both_directions():
    req = sip.register(registrar_host="10.0.0.1", user="1001", domain="d", local_host="10.0.0.2",
                       local_port=5070, call_id="c", cseq=1, from_tag="t", expires=60)
    for sport, dport in ((5070, 5060), (5060, 5070)):
        frame = IP(bytes(IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=sport, dport=dport) / req))
        assert frame.haslayer(SIP)
        assert frame[SIP].method == "REGISTER"
        assert frame[SIP].call_id == "c"
    other = IP(bytes(IP() / UDP(sport=1234, dport=4321) / b"REGISTER x SIP/2.0\r\n\r\n"))
    assert not other.haslayer(SIP)


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"hello world", b"GET / HTTP/1.1\r\n\r\n",
                                 b"SIP/2.0 abc OK\r\n\r\n", b"\x00\x01\x02"])
def test_parse_rejects_what_is_not_sip(raw):
    with pytest.raises(sip.SipParseError):
        sip.parse(raw)


def test_header_list_splitting_respects_quotes_and_brackets():
    assert sip.split_header_list('"a, b" <sip:x@h;p=1,2>;q=1, <sip:y@h>') == [
        '"a, b" <sip:x@h;p=1,2>;q=1', "<sip:y@h>"]
    assert sip.split_header_list("") == []


def test_via_with_ipv6_and_parameters():
    via = sip.parse_via("SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKv6;received=2001:db8::9")
    assert (via.transport, via.host, via.port) == ("TCP", "[2001:db8::1]", 5061)
    assert via.params["branch"] == "z9hG4bKv6"


def test_canonical_names():
    assert sip.canonical_name("i") == "call-id"
    assert sip.canonical_name("M") == "contact"
    assert sip.canonical_name("Via") == "via"
    assert sip.canonical_name("X-Custom") == "x-custom"


def test_uri_user_and_hostport():
    assert sip.uri_user("sip:user1@10.0.0.1:5062;transport=udp") == "user1"
    assert sip.uri_user("<sip:10.0.0.1>") is None
    assert sip.uri_hostport("sip:user1@10.0.0.1:5062;transport=udp") == ("10.0.0.1", 5062)
    assert sip.uri_hostport("sip:10.0.0.1") == ("10.0.0.1", 5060)
    assert sip.uri_hostport("sip:u@[::1]:5070") == ("::1", 5070)
    assert sip.uri_hostport("sip:") is None
