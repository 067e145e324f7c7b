"""Settings: defaults, file values, environment overrides and validation errors."""

from __future__ import annotations

import pytest

from xivo_ha import settings
from xivo_ha.errors import UsageError


def test_missing_file_gives_the_documented_defaults(tmp_path):
    loaded = settings.load(tmp_path / "absent.conf", environ={})
    assert loaded.database.dsn == "dbname=asterisk user=postgres"
    assert loaded.replication.slave_port == 5432
    assert loaded.probe.ping_count == 3 and loaded.probe.ping_interval == 10.0
    assert loaded.probe.sip_probe is False
    assert loaded.failover.failures_before_failover == 1
    assert loaded.services.slave_services == ["monit", "asterisk"]
    assert "/etc/asterisk/extensions_extra.d" in loaded.sync.directories
    assert len(loaded.sync.directories) == 7


def test_shipped_commented_file_equals_the_defaults(tmp_path):
    from xivo_ha import paths

    shipped = settings.load(paths.share_dir() / "xivo-ha.conf", environ={})
    assert shipped.values == settings.load(tmp_path / "absent.conf", environ={}).values


def test_file_values_and_single_item_lists(tmp_path):
    conf = tmp_path / "x.conf"
    conf.write_text("[services]\nslave_services = kamailio\n[probe]\nsip_probe = on\nping_count = 1\n")
    loaded = settings.load(conf, environ={})
    assert loaded.services.slave_services == ["kamailio"]
    assert loaded.probe.sip_probe is True and loaded.probe.ping_count == 1


def test_environment_wins_over_the_file(tmp_path):
    conf = tmp_path / "x.conf"
    conf.write_text("[probe]\nping_count = 5\n")
    loaded = settings.load(conf, environ={"XIVO_HA_PROBE_PING_COUNT": "2",
                                          "XIVO_HA_SERVICES_SLAVE_SERVICES": "a, b"})
    assert loaded.probe.ping_count == 2
    assert loaded.services.slave_services == ["a", "b"]


@pytest.mark.parametrize("text,message", [
    ("[probe]\nping_count = many\n", "[probe] ping_count"),
    ("[replication]\nslave_port = 70000\n", "[replication] slave_port"),
    ("[probe]\nsip_probe = perhaps\n", "[probe] sip_probe"),
    ("[probe]\nping_cuont = 3\n", "unknown setting [probe] ping_cuont"),
    ("[probe\nping_count = 3\n", "x.conf"),
])
def test_invalid_values_name_the_key(tmp_path, text, message):
    conf = tmp_path / "x.conf"
    conf.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings.load(conf, environ={})


def test_invalid_environment_value_is_refused(tmp_path):
    with pytest.raises(UsageError, match="ping_interval"):
        settings.load(tmp_path / "absent.conf", environ={"XIVO_HA_PROBE_PING_INTERVAL": "soon"})


@pytest.mark.parametrize("section,key,value", [
    ("failover", "interval", "nan"), ("probe", "ping_timeout", "nan"), ("probe", "ping_interval", "NaN"),
    ("doctor", "connect_timeout", "-inf"), ("failover", "interval", "inf"),
])
def test_nan_and_infinities_are_refused(tmp_path, section, key, value):
    path = tmp_path / "xivo-ha.conf"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(UsageError, match=rf"\[{section}\] {key}"):
        settings.load(path, environ={})
    with pytest.raises(UsageError, match=rf"\[{section}\] {key}"):
        settings.load(tmp_path / "absent.conf", environ={f"XIVO_HA_{section}_{key}".upper(): value})


def test_binary_settings_and_relative_paths_are_refused(tmp_path):
    path = tmp_path / "xivo-ha.conf"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(UsageError, match="not UTF-8"):
        settings.load(path, environ={})
    path.write_text("[postgresql]\nhba_file = pg_hba.conf\n")
    with pytest.raises(UsageError, match=r"\[postgresql\] hba_file.*absolute"):
        settings.load(path, environ={})


# The Python type each configspec check gives.
CHECK_TYPES = {"string": str, "option": str, "integer": int, "float": float, "boolean": bool, "string_list": list[str]}


def test_every_configspec_key_has_its_typed_field_and_every_field_its_key():
    import dataclasses
    import typing

    from configobj import ConfigObj

    from xivo_ha import paths

    spec = ConfigObj(str(paths.configspec()), list_values=False, _inspec=True)
    assert list(settings.SECTIONS) == list(spec.sections)
    for section, kind in settings.SECTIONS.items():
        hints = typing.get_type_hints(kind)
        assert [f.name for f in dataclasses.fields(kind)] == list(spec[section].scalars), section
        for key, check in spec[section].items():
            assert hints[key] == CHECK_TYPES[check.split("(", 1)[0]], f"[{section}] {key}"


def test_loaded_values_have_their_field_types(tmp_path):
    import dataclasses
    import typing

    loaded = settings.load(tmp_path / "absent.conf", environ={"XIVO_HA_NOTIFY_HOOK": "logger,-t,ha"})
    for section, kind in settings.SECTIONS.items():
        for key, hint in typing.get_type_hints(kind).items():
            value = getattr(getattr(loaded, section), key)
            expected = list if hint == list[str] else hint
            assert type(value) is expected, f"[{section}] {key}: {value!r}"
    assert loaded.notify.hook == ["logger", "-t", "ha"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.probe.ping_count = 5  # type: ignore[misc]
