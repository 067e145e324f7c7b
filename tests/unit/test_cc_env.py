"""`cc.edit_env`: custom.env with DB Replic's keys set or removed, every other line kept."""

from __future__ import annotations

import pytest

from xivo_ha import cc

HA = {"REPORTING_DB_HOST": "10.0.0.5", "ELASTICSEARCH": "es:9200", "IS_HA_SLAVE": "true"}
REMOVE = {key: None for key in cc.KEYS}


@pytest.mark.parametrize("text, values, expected", [
    (None, HA, "REPORTING_DB_HOST=10.0.0.5\nELASTICSEARCH=es:9200\nIS_HA_SLAVE=true\n"),
    ("", HA, "REPORTING_DB_HOST=10.0.0.5\nELASTICSEARCH=es:9200\nIS_HA_SLAVE=true\n"),
    # replaced in place, comments and other keys kept, later duplicates dropped, missing keys appended
    ("# cc\nXIVO_HOST=1.2.3.4\nELASTICSEARCH=old\n#REPORTING_DB_HOST=x\nELASTICSEARCH=older\n", HA,
     "# cc\nXIVO_HOST=1.2.3.4\nELASTICSEARCH=es:9200\n#REPORTING_DB_HOST=x\n"
     "REPORTING_DB_HOST=10.0.0.5\nIS_HA_SLAVE=true\n"),
    # `export` and spaces around `=` are assignments too
    ("export IS_HA_SLAVE = false\nSECRET=a=b\n", {"IS_HA_SLAVE": "true"}, "IS_HA_SLAVE=true\nSECRET=a=b\n"),
    ("REPORTING_DB_HOST=db\nXIVO_HOST=h\nIS_HA_SLAVE=true\nELASTICSEARCH=es\n", REMOVE, "XIVO_HOST=h\n"),
    ("REPORTING_DB_HOST=db\n", REMOVE, ""),
    ("# only a comment\n", REMOVE, "# only a comment\n"),
    ("A=1\r\nB=2", {"B": "3"}, "A=1\nB=3\n"),
])
def test_edit_env(text, values, expected):
    assert cc.edit_env(text, values) == expected


def test_setting_then_removing_gives_back_the_other_lines():
    text = "# keep me\nXIVO_HOST=10.20.30.1\n\nCONFIGMGT_AUTH_SECRET=s3cret=with=equals\n"
    assert cc.edit_env(cc.edit_env(text, HA), REMOVE) == text
