"""The node's reading of XiVO's trunk `register` rows (simulator/node/render-kamailio-cfg)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from pathlib import Path

import pytest

from xivo_ha import doctor

RENDER = Path(__file__).resolve().parents[2] / "simulator" / "node" / "render-kamailio-cfg"


@pytest.fixture(scope="module")
def render():
    loader = importlib.machinery.SourceFileLoader("render_kamailio_cfg", str(RENDER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("value, expected", [
    ("trunk:s3cret@172.28.5.20", dict(user="trunk", domain="172.28.5.20", secret="s3cret", auth_user="trunk",
                                      host="172.28.5.20", port=5060, extension="", expiry=None)),
    ("trunk:s3cret@172.28.5.20:5070/4000~120", dict(user="trunk", domain="172.28.5.20", secret="s3cret",
                                                   auth_user="trunk", host="172.28.5.20", port=5070,
                                                   extension="4000", expiry=120)),
    ("peer1?udp://trunk@example.org:pw@d:auth@10.0.0.1~3600",
     dict(user="trunk", domain="example.org", secret="pw@d", auth_user="auth", host="10.0.0.1", port=5060,
          extension="", expiry=3600)),
    ("  trunk@10.0.0.1/s  ", dict(user="trunk", domain="10.0.0.1", secret="", auth_user="trunk", host="10.0.0.1",
                                  port=5060, extension="s", expiry=None)),
])
def test_register_rows_parse_as_chan_sip_splits_them(render, value, expected):
    reg = render.parse_register(value)
    assert reg == render.TrunkRegistration(**expected)
    # The same split as the doctor's trunk-expiry check, which reads the same rows.
    seen = doctor.parse_register(value)
    assert (seen.user.partition("@")[0], seen.host, seen.port or 5060, seen.extension, seen.expiry) == \
        (reg.user, reg.host, reg.port, reg.extension, reg.expiry)


@pytest.mark.parametrize("value, reason", [
    ("", "empty register value"),
    (None, "empty register value"),
    ("trunk:secret", "'trunk:***': no user@host"),
    ("udp://trunk:secret", "'udp://trunk:***': no user@host"),
    ("trunk:secret@", "no user@host"),
    (":secret@10.0.0.1", "no user"),
    ("tcp://trunk:secret@10.0.0.1", "'tcp://trunk:***@10.0.0.1': transport 'tcp' (only udp)"),
    ("trunk:secret@carrier.example", "host 'carrier.example' is not an IPv4 address"),
    ("trunk:secret@10.0.0.1:0", "port '0' is not a port number"),
    ("trunk:secret@10.0.0.1:sip", "port 'sip' is not a port number"),
    ("trunk:secret@10.0.0.1~", "expiry '' is not a positive number of seconds"),
    ("trunk:secret@10.0.0.1~0", "expiry '0' is not a positive number of seconds"),
    ("trunk:secret@10.0.0.1~2m", "expiry '2m' is not a positive number of seconds"),
    ("a:b:c:d@10.0.0.1", "too many ':'"),
])
def test_bad_register_rows_are_refused_with_the_reason_and_no_secret(render, value, reason):
    with pytest.raises(render.BadRegisterRow) as caught:
        render.parse_register(value)
    message = str(caught.value)
    assert reason in message
    assert "secret" not in message  # the values' secrets are "secret"
    assert "\n" not in message


def test_the_uacreg_table_scales_the_expiry_and_escapes_colons(render):
    regs = [render.parse_register("trunk:pa:ss@10.0.0.20:5060/4000~120".replace("pa:ss", "pa\\ss")),
            render.parse_register("other:x@10.0.0.21")]
    tables = render.dbtext_tables(regs, default_expiry=240, scale=10, contact_address="10.0.0.10:5060")
    header, first, second = tables["uacreg"].splitlines()
    assert header.split() == list(render.UACREG_COLUMNS)
    assert first == ("1:4000:4000:10.0.0.10\\:5060:trunk:10.0.0.20:10.0.0.20:trunk:pa\\\\ss::"
                     "sip\\:10.0.0.20\\:5060:12:0:0:10.0.0.10\\:5060:")
    fields = re.split(r"(?<!\\):", second)
    assert fields[render.UACREG_COLUMNS.index("expires(int)")] == "24"  # no ~expiry: the default, scaled
    assert tables["version"].splitlines()[1] == f"1:uacreg:{render.UACREG_VERSION}"
