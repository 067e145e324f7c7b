"""Digest authentication of the phones (RFC 2617, RFC 7616 MD5): the RFCs' own examples."""

import pytest

from xivo_ha_simulator import sip


def test_rfc2617_example_response():
    # RFC 2617 section 3.5.
    assert sip.digest_response(
        username="Mufasa", realm="testrealm@host.com", password="Circle Of Life", method="GET",
        uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc=1,
        cnonce="0a4f113b") == "6629fae49393a05397450978507c4ef1"


def test_rfc7616_md5_example_response():
    # RFC 7616 section 3.9.1, MD5.
    assert sip.digest_response(
        username="Mufasa", realm="http-auth@example.org", password="Circle of Life", method="GET",
        uri="/dir/index.html", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth", nc=1,
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ") == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc2069_form_without_qop():
    # RFC 2069 section 2.4 example, with its erratum's corrected response.
    assert sip.digest_response(
        username="Mufasa", realm="testrealm@host.com", password="CircleOfLife", method="GET",
        uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093") == "1949323746fe6a43ef61f9606e7febea"


def test_challenge_parsed_and_answered_with_the_rfc_example():
    challenge = sip.parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert challenge.qop == ("auth", "auth-int") and not challenge.stale
    header = sip.authorization(challenge, username="Mufasa", password="Circle Of Life", method="GET",
                               uri="/dir/index.html", nc=1, cnonce="0a4f113b")
    assert header.startswith("Digest ")
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert "nc=00000001" in header and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header


def test_stale_flag_and_bad_challenges():
    assert sip.parse_challenge('Digest realm="a", nonce="b", stale=true').stale
    with pytest.raises(sip.SipParseError):
        sip.parse_challenge('Basic realm="a"')
    with pytest.raises(sip.SipParseError):
        sip.parse_challenge('Digest realm="a"')
    with pytest.raises(sip.SipParseError):
        sip.parse_challenge('Digest realm="a", nonce="b", algorithm=SHA-256')
