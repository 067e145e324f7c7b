"""Pure parts of the operations tools: redaction, perfdata, counters, event topics."""

from __future__ import annotations

from xivo_ha import bundle, check, events, metrics


def test_redact_dsn_uri_keys_and_private_keys():
    text = ('dsn = "host=db password=S3cret user=a"\nuri = postgresql://u:S3cret@h/db\n'
            '{"admin_password": "S3cret", "api_secret":"S3cret"}\nPASSWORD: S3cret\n'
            "-----BEGIN RSA PRIVATE KEY-----\nS3cretKeyBody\n-----END RSA PRIVATE KEY-----\nafter\n")
    redacted = bundle.redact(text)
    assert "S3cret" not in redacted
    assert "host=db password=REDACTED user=a" in redacted
    assert "postgresql://u:REDACTED@h/db" in redacted
    assert redacted.endswith("-----REDACTED PRIVATE KEY-----\nafter\n")


def test_redact_leaves_plain_text_alone():
    text = "last replication succeeded (replicated 12 tables, 345 rows)\n"
    assert bundle.redact(text) == text


def test_perf_rendering():
    assert check.Perf("replication_age", 12.5, "s", "7200", "86400", "0").render() == \
        "'replication_age'=12.5s;7200;86400;0"
    assert check.Perf("serving", None, minimum="0", maximum="1").render() == "'serving'=U;;;0;1"
    assert check.Verdict(check.OK, "a | b").line() == "XIVO-HA OK - a / b"


def test_failover_counters_grow_once_per_new_time():
    counters = metrics.count({}, {"last_failover": None, "last_failback": None})
    assert (counters["failovers"], counters["failbacks"]) == (0, 0)
    counters = metrics.count(counters, {"last_failover": 100.0, "last_failback": None})
    assert counters["failovers"] == 1
    assert metrics.count(counters, {"last_failover": 100.0, "last_failback": None}) == counters
    counters = metrics.count(counters, {"last_failover": 100.0, "last_failback": 200.0})
    assert (counters["failovers"], counters["failbacks"]) == (1, 1)


def test_event_topics_start_quiet_and_tell_changes_only():
    assert not events.changed({}, "failback")
    assert events.changed({}, "failover")
    assert not events.changed({"mode": "failover"}, "failover")
    assert events.changed({"mode": "failover"}, "failback")
    assert not events.changed({}, "services-ok")
    assert events.changed({"services": "start-failed"}, "services-ok")


def test_hook_argv():
    assert events.hook_argv(["page", "--to", "{node}", "{event}: {detail}"], "failover", "xivo2", "down") == \
        ["page", "--to", "xivo2", "failover: down"]
