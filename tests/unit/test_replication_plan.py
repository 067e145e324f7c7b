"""The pure decisions of the replication: which tables, preflight verdicts, skip or not."""

from __future__ import annotations

import pytest

from xivo_ha.errors import OperationFailed
from xivo_ha.replication.plan import (
    DatabaseInfo,
    Fingerprint,
    Stored,
    Table,
    WalPositions,
    checksum_mismatches,
    decide_skip,
    is_excluded,
    make_plan,
    nothing_written,
    preflight,
    schema_signature,
    serving_check,
)

DEFAULT_EXCLUDES = ["netiface", "resolvconf", "mail", "monitoring", "provisioning", "queue_log", "cel",
                    "call_log*", "stat_*", "alembic_version"]
REFERENCE_TABLES = [
    "alembic_version", "context", "userfeatures", "voicemail", "usersip", "linefeatures", "extensions",
    "user_line", "staticsip", "trunkfeatures", "location", "dhcp", "netiface", "resolvconf", "mail", "monitoring",
    "provisioning", "queue_log", "cel", "call_log", "call_log_participant", "stat_agent", "stat_queue",
    "stat_call_on_queue",
]


def table(name: str, *columns: tuple[str, str]) -> Table:
    return Table(name, columns or (("id", "integer"), ("name", "character varying(40)")))


def info(tables=REFERENCE_TABLES, *, encoding="UTF8", collate="fr_FR.UTF-8", ctype="fr_FR.UTF-8",
         version="2c1b3ad2b9d7", references=(), sequences=None, name="asterisk", columns=None) -> DatabaseInfo:
    columns = columns or {}
    return DatabaseInfo(
        name=name, encoding=encoding, collate=collate, ctype=ctype, schema_version=version,
        tables={t: table(t, *columns.get(t, ())) for t in tables},
        references=frozenset(references),
        sequences=sequences if sequences is not None else {f"{t}_id_seq": t for t in tables if t != "user_line"},
    )


def test_patterns_are_shell_style_and_case_sensitive():
    assert is_excluded("call_log_participant", ["call_log*"])
    assert is_excluded("stat_call_on_queue", ["stat_*"])
    assert not is_excluded("statistics", ["stat_*"])
    assert not is_excluded("Mail", ["mail"])
    assert not is_excluded("anything", [])


def test_default_plan_replicates_configuration_and_excludes_the_rest():
    plan = make_plan(info(), DEFAULT_EXCLUDES)
    assert plan.tables == ("context", "dhcp", "extensions", "linefeatures", "location", "staticsip",
                           "trunkfeatures", "user_line", "userfeatures", "usersip", "voicemail")
    assert set(plan.excluded) == set(REFERENCE_TABLES) - set(plan.tables)
    assert "alembic_version" in plan.excluded and "call_log_participant" in plan.excluded
    assert plan.truncate == plan.tables and plan.delete == ()
    assert "11 tables replicated, 13 excluded" in plan.explain()


def test_circular_keys_between_replicated_tables_allow_truncate():
    references = {("public", "userfeatures", "voicemail"), ("public", "voicemail", "userfeatures"),
                  ("public", "call_log_participant", "call_log")}
    plan = make_plan(info(references=references), DEFAULT_EXCLUDES)
    assert plan.delete == ()
    assert "userfeatures" in plan.truncate and "voicemail" in plan.truncate


def test_replicated_table_referenced_by_a_kept_table_is_emptied_with_delete():
    references = {("public", "provisioning", "context"), ("other", "audit", "usersip"),
                  ("public", "linefeatures", "usersip")}
    plan = make_plan(info(references=references), DEFAULT_EXCLUDES)
    assert plan.delete == ("context", "usersip")
    assert "context" not in plan.truncate and "usersip" not in plan.truncate
    assert "linefeatures" in plan.truncate
    assert "DELETE" in plan.explain() and "context, usersip" in plan.explain()


def test_sequences_follow_their_table_or_their_own_name():
    sequences = {"context_id_seq": "context", "cel_id_seq": "cel", "free_seq": None, "stat_free": None}
    plan = make_plan(info(sequences=sequences), DEFAULT_EXCLUDES)
    assert plan.sequences == ("context_id_seq", "free_seq")


def test_preflight_accepts_equal_databases():
    master = info()
    preflight(master, info(), make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")


def test_preflight_locale_mismatch_names_values_and_remedy():
    master = info()
    slave = info(collate="C", ctype="C")
    with pytest.raises(OperationFailed) as caught:
        preflight(master, slave, make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")
    message = str(caught.value)
    assert "collation fr_FR.UTF-8" in message and "collation C," in message
    assert ("sudo -u postgres dropdb asterisk && sudo -u postgres createdb -E UTF8 -T template0 "
            "--lc-collate=fr_FR.UTF-8 --lc-ctype=fr_FR.UTF-8 asterisk") in message
    assert "pg_dump --schema-only asterisk | psql -h 10.0.0.2 -U postgres asterisk" in message
    assert "xivo-master-slave-db-replication 10.0.0.2" in message


def test_preflight_encoding_mismatch_is_a_locale_problem_too():
    master = info()
    with pytest.raises(OperationFailed, match="encoding SQL_ASCII"):
        preflight(master, info(encoding="SQL_ASCII"), make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")


def test_preflight_schema_version_mismatch():
    master = info()
    with pytest.raises(OperationFailed, match="master 2c1b3ad2b9d7, slave 1111aaaa2222"):
        preflight(master, info(version="1111aaaa2222"), make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")
    with pytest.raises(OperationFailed, match="slave none"):
        preflight(master, info(version=None), make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")


def test_preflight_table_sets():
    master = info()
    plan = make_plan(master, DEFAULT_EXCLUDES)
    with pytest.raises(OperationFailed, match="missing on the slave: voicemail"):
        preflight(master, info([t for t in REFERENCE_TABLES if t != "voicemail"]), plan, "10.0.0.2")
    with pytest.raises(OperationFailed, match="only on the slave: custom"):
        preflight(master, info(REFERENCE_TABLES + ["custom"]), plan, "10.0.0.2")
    # Excluded tables may differ: they are never touched.
    preflight(master, info([t for t in REFERENCE_TABLES if t != "cel"] + ["stat_new"]), plan, "10.0.0.2")


def test_preflight_columns():
    master = info()
    plan = make_plan(master, DEFAULT_EXCLUDES)
    slave = info(columns={"usersip": (("id", "bigint"), ("name", "character varying(40)"), ("extra", "text"))})
    with pytest.raises(OperationFailed) as caught:
        preflight(master, slave, plan, "10.0.0.2")
    assert "table usersip" in str(caught.value)
    assert "only on the slave: extra" in str(caught.value)
    assert "id is integer on the master, bigint on the slave" in str(caught.value)


def test_preflight_missing_sequence():
    master = info()
    slave = info(sequences={})
    with pytest.raises(OperationFailed, match="sequences missing on the slave: context_id_seq"):
        preflight(master, slave, make_plan(master, DEFAULT_EXCLUDES), "10.0.0.2")


def fingerprint(**changes) -> Fingerprint:
    values = {
        "target": "10.0.0.2:5432/asterisk", "schema": "abc",
        "master": {"context": "3:17", "usersip": "10:99", "sequence usersip_id_seq": "10:t"},
        "slave": {"context": "3:5", "usersip": "10:8"},
    }
    values.update(changes)
    return Fingerprint(**values)


def test_skip_only_when_both_sides_are_unchanged():
    assert decide_skip(fingerprint(), fingerprint(), force=False).skip
    decision = decide_skip(fingerprint(), fingerprint(), force=True)
    assert not decision.skip and "--force" in decision.reason
    assert "no earlier" in decide_skip(fingerprint(), None, force=False).reason


@pytest.mark.parametrize("change, words", [
    ({"target": "10.0.0.3:5432/asterisk"}, "went to 10.0.0.2:5432/asterisk"),
    ({"schema": "def"}, "columns or the schema version changed"),
    ({"master": {"context": "3:17", "usersip": "10:100", "sequence usersip_id_seq": "10:t"}},
     "changed on the master since the last replication: usersip"),
    ({"master": {"context": "3:17", "usersip": "10:99", "sequence usersip_id_seq": "11:t"}},
     "sequence usersip_id_seq"),
    ({"master": {"context": "3:17", "usersip": "10:99", "sequence usersip_id_seq": "10:t", "new": "0:0"}},
     "new"),
    ({"slave": {"context": "3:6", "usersip": "10:8"}}, "the slave was modified since the last replication: context"),
])
def test_any_difference_means_replicate(change, words):
    decision = decide_skip(fingerprint(**change), fingerprint(), force=False)
    assert not decision.skip
    assert words in decision.reason


def test_stored_state_round_trip_and_corrupt_file():
    stored = Stored(fingerprint(), 1234.5, WalPositions(("cel", "stat_*"), "7/16384/0/1A2B3C", None))
    assert Stored.from_json(stored.to_json()) == stored
    without = Stored(fingerprint(), 1.0)
    assert Stored.from_json(without.to_json()) == without
    assert Stored.from_json("{not json") is None
    assert Stored.from_json('{"target": "x"}') is None


def test_nothing_written_needs_every_position_unchanged():
    positions = WalPositions(("cel",), "7/1/0/100", "8/1/0/200")
    stored = Stored(fingerprint(), 1.0, positions)
    target = "10.0.0.2:5432/asterisk"
    assert nothing_written(stored, target, ["cel"], "7/1/0/100", "8/1/0/200")
    assert not nothing_written(stored, target, ["cel"], "7/1/0/101", "8/1/0/200")
    assert not nothing_written(stored, target, ["cel"], "7/1/0/100", "8/1/0/201")
    assert not nothing_written(stored, target, ["cel", "mail"], "7/1/0/100", "8/1/0/200")
    assert not nothing_written(stored, "10.0.0.3:5432/asterisk", ["cel"], "7/1/0/100", "8/1/0/200")
    assert not nothing_written(stored, target, ["cel"], None, "8/1/0/200")
    # Right after a replication the slave's position is unknown: a scan is needed.
    after_copy = Stored(fingerprint(), 1.0, WalPositions(("cel",), "7/1/0/100", None))
    assert not nothing_written(after_copy, target, ["cel"], "7/1/0/100", None)
    assert not nothing_written(Stored(fingerprint(), 1.0), target, ["cel"], "7/1/0/100", "8/1/0/200")
    assert not nothing_written(None, target, ["cel"], "7/1/0/100", "8/1/0/200")


def test_schema_signature_changes_with_columns_and_version():
    master = info()
    plan = make_plan(master, DEFAULT_EXCLUDES)
    base = schema_signature(master, plan)
    assert base == schema_signature(info(), plan)
    assert base != schema_signature(info(version="other"), plan)
    assert base != schema_signature(info(columns={"usersip": (("id", "bigint"),)}), plan)


def test_checksum_mismatches_explain_each_table():
    master = {"a": (3, "10"), "b": (2, "20"), "c": (1, "30")}
    slave = {"a": (3, "10"), "b": (2, "21"), "c": (0, "0")}
    assert checksum_mismatches(master, slave) == [
        "b: same row count (2) but different content",
        "c: 1 rows on the master, 0 on the slave",
    ]
    assert checksum_mismatches({"a": (1, "1")}, {}) == ["a: not verified on both sides"]
    assert checksum_mismatches(master, dict(master)) == []


# --- is the slave serving? ------------------------------------------------------------

SLAVE = "10.0.0.2"


def slave_report(mode, role="slave", **state):
    failover = None if mode is None else {"mode": mode, "reason": "master 10.0.0.1 does not answer ping", **state}
    return {"role": role, "remote_address": "10.0.0.1", "failover": failover}


SERVING_CASES = [
    # id, report, problem, force, go, warn, sessions must be ours, words in the reason
    ("standing by", slave_report("standby"), "", False, True, False, False, "is standing by"),
    ("serving", slave_report("serving", last_failover="2024-05-01T12:00:00.000+00:00"), "", False,
     False, False, False, "is serving since 2024-05-01T12:00:00.000+00:00 (master 10.0.0.1 does not answer ping)"),
    ("serving, forced", slave_report("serving"), "", True, True, True, False, "replicating anyway (--force)"),
    ("state unknown", slave_report("unknown"), "", False, False, False, False, "cannot tell whether it serves"),
    ("slave without failover state", slave_report(None), "", False, False, False, False, "failover state missing"),
    ("a master", slave_report(None, role="master"), "", False, False, False, False, "says it is a master"),
    ("disabled", slave_report(None, role="disabled"), "", False, True, False, False, "is standing by"),
    ("not asked", None, "no HA key /root/.ssh/xivo_id_rsa on this master", False, True, False, True,
     "could not ask the slave 10.0.0.2 whether it serves (no HA key"),
    ("not asked, forced", None, "ssh to 10.0.0.2 failed", True, True, True, False, "replicating anyway (--force)"),
]


@pytest.mark.parametrize("report, problem, force, go, warn, ours, words",
                         [c[1:] for c in SERVING_CASES], ids=[c[0] for c in SERVING_CASES])
def test_serving_check(report, problem, force, go, warn, ours, words):
    check = serving_check(report, problem, SLAVE, force)
    assert (check.go, check.warn, check.sessions_must_be_ours) == (go, warn, ours)
    assert words in check.reason
    if not go:
        assert check.reason.endswith("use --force to replicate anyway")
