"""`xivo-ha enable|disable|status` against a temp root and a real PostgreSQL 15 database."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import pytest

from node import make_node

pytestmark = pytest.mark.integration

SLAVE = "10.20.30.2"
MASTER = "10.20.30.1"
MASTER_CRON = (
    f"# Written by `xivo-ha enable master {SLAVE}` from /etc/xivo/ha.conf: do not edit.\n"
    f"0 * * * * root /usr/sbin/xivo-master-slave-db-replication {SLAVE} >/dev/null\n"
    "0 * * * * root /usr/bin/xivo-sync >/dev/null\n"
)
SLAVE_CRON = (
    f"# Written by `xivo-ha enable slave {MASTER}` from /etc/xivo/ha.conf: do not edit.\n"
    f"* * * * * root /usr/sbin/xivo-check-master-status {MASTER} >/dev/null\n"
)
HA_EXPIRY = {"minexpiry": "180", "maxexpiry": "300", "defaultexpiry": "240"}
BLANK_EXPIRY = {"minexpiry": None, "maxexpiry": None, "defaultexpiry": None}


@pytest.fixture
def node(tmp_path, asterisk_db):
    root = tmp_path / "node"
    root.mkdir()
    return make_node(root, asterisk_db)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def mode(path) -> int:
    return path.stat().st_mode & 0o7777


def test_enable_master_writes_every_side_effect(node):
    ok(node.run("enable", "master", SLAVE))

    ha_conf = node.path("/etc/xivo/ha.conf")
    assert json.loads(ha_conf.read_text()) == {"node_type": "master", "remote_address": SLAVE}
    assert mode(ha_conf) == 0o644
    cron = node.path("/etc/cron.d/xivo-ha-master")
    assert cron.read_text() == MASTER_CRON
    assert mode(cron) == 0o644 and cron.stat().st_uid == 0
    assert not node.path("/etc/cron.d/xivo-ha-slave").exists()
    assert node.path("/var/lib/xivo/is-primary").exists()
    assert not node.path("/var/lib/xivo/is-secondary").exists()
    assert node.expiry() == HA_EXPIRY
    registrar = node.provd("default")
    assert registrar["registrar_backup"] == SLAVE and registrar["proxy_backup"] == SLAVE
    assert registrar["registrar_main"] == "10.0.0.1"
    assert "registrar_backup" not in node.provd("autoprov")
    assert "asterisk postgres" not in node.path("/etc/postgresql/15/main/pg_hba.conf").read_text()
    assert not node.path("/postgresql-reloaded").exists()


def test_enable_slave_opens_postgresql_to_the_master_and_reloads(node):
    result = ok(node.run("enable", "slave", MASTER))

    hba = node.path("/etc/postgresql/15/main/pg_hba.conf")
    assert f"host asterisk postgres {MASTER}/32 trust" in hba.read_text().splitlines()
    assert mode(hba) == 0o640
    assert "listen_addresses = '*'" in node.path("/etc/postgresql/15/main/postgresql.conf").read_text().splitlines()
    assert node.path("/postgresql-reloaded").exists()
    assert node.path("/etc/cron.d/xivo-ha-slave").read_text() == SLAVE_CRON
    assert not node.path("/etc/cron.d/xivo-ha-master").exists()
    assert node.path("/var/lib/xivo/is-secondary").exists()
    assert not node.path("/var/lib/xivo/is-primary").exists()
    assert node.expiry() == HA_EXPIRY
    assert node.provd("default")["registrar_backup"] is None
    assert "xivo-service restart" in result.stdout


def test_postgresql_files_keep_their_owner(node):
    import pwd

    postgres = pwd.getpwnam("postgres")
    for name in ("pg_hba.conf", "postgresql.conf"):
        os.chown(node.path(f"/etc/postgresql/15/main/{name}"), postgres.pw_uid, postgres.pw_gid)
    ok(node.run("enable", "slave", MASTER))
    for name in ("pg_hba.conf", "postgresql.conf"):
        stat = node.path(f"/etc/postgresql/15/main/{name}").stat()
        assert (stat.st_uid, stat.st_gid) == (postgres.pw_uid, postgres.pw_gid)


def test_slave_access_keeps_the_admins_own_rules(node):
    hba = node.path("/etc/postgresql/15/main/pg_hba.conf")
    admin = "host asterisk postgres 10.9.9.9/32 trust"
    hba.write_text(hba.read_text() + admin + "\n")
    ok(node.run("enable", "slave", MASTER))
    rules = [line for line in hba.read_text().splitlines() if line.startswith("host asterisk postgres")]
    assert rules == [admin, f"host asterisk postgres {MASTER}/32 trust"]
    ok(node.run("disable"))
    assert admin in hba.read_text().splitlines()
    assert f"{MASTER}/32" not in hba.read_text()


def test_role_switches_master_slave_disabled(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("enable", "slave", MASTER))
    assert not node.path("/etc/cron.d/xivo-ha-master").exists()
    assert not node.path("/var/lib/xivo/is-primary").exists()
    # a slave leaves provisioning as the master left it
    assert node.provd("default")["registrar_backup"] == SLAVE

    ok(node.run("disable"))
    assert json.loads(node.path("/etc/xivo/ha.conf").read_text()) == {"node_type": "disabled", "remote_address": ""}
    assert not node.path("/etc/cron.d/xivo-ha-master").exists()
    assert not node.path("/etc/cron.d/xivo-ha-slave").exists()
    assert not node.path("/var/lib/xivo/is-primary").exists()
    assert not node.path("/var/lib/xivo/is-secondary").exists()
    assert "asterisk postgres" not in node.path("/etc/postgresql/15/main/pg_hba.conf").read_text()
    assert "listen_addresses = '*'" not in node.path("/etc/postgresql/15/main/postgresql.conf").read_text()
    assert node.expiry() == BLANK_EXPIRY
    # disabling a slave leaves provisioning untouched
    assert node.provd("default")["registrar_backup"] == SLAVE


def test_disable_on_a_master_clears_the_backup_registrar(node):
    ok(node.run("enable", "master", SLAVE))
    ok(node.run("disable"))
    registrar = node.provd("default")
    assert registrar["registrar_backup"] is None and registrar["proxy_backup"] is None
    assert node.expiry() == BLANK_EXPIRY


def expiry_rows(node) -> list[tuple]:
    return node.db.query("SELECT var_name, var_val, cat_metric, var_metric, commented FROM staticsip "
                         "WHERE filename = 'sip.conf' AND category = 'general' "
                         "AND var_name IN ('minexpiry', 'maxexpiry', 'defaultexpiry') ORDER BY var_name")


@pytest.mark.parametrize("rows_present", [True, False])
def test_enable_and_disable_keep_one_sip_expiry_row_each(node, rows_present):
    if not rows_present:
        node.db.execute("DELETE FROM staticsip WHERE var_name IN ('minexpiry', 'maxexpiry', 'defaultexpiry')")
    node.db.execute("INSERT INTO staticsip (filename, category, var_name, var_val) "
                    "VALUES ('sip.conf', 'general', 'register', 'acme:secret@sip.example.net~120'), "
                    "('iax.conf', 'general', 'maxexpiry', '1800')")
    others = node.db.query("SELECT * FROM staticsip WHERE var_name = 'register' OR filename <> 'sip.conf' ORDER BY id")
    ha = [("defaultexpiry", "240", 0, 0, 0), ("maxexpiry", "300", 0, 0, 0), ("minexpiry", "180", 0, 0, 0)]
    ok(node.run("enable", "master", SLAVE))
    assert expiry_rows(node) == ha
    ok(node.run("enable", "master", SLAVE))
    assert expiry_rows(node) == ha
    ok(node.run("disable"))
    assert expiry_rows(node) == [(name, None, 0, 0, 0) for name, *_ in ha]
    assert node.db.query("SELECT * FROM staticsip WHERE var_name = 'register' OR filename <> 'sip.conf' "
                         "ORDER BY id") == others


def test_postgresql_files_are_restored_exactly_after_slave_then_disable(node):
    before = {p: node.path(p).read_text() for p in ("/etc/postgresql/15/main/pg_hba.conf",
                                                    "/etc/postgresql/15/main/postgresql.conf")}
    ok(node.run("enable", "slave", MASTER))
    ok(node.run("disable"))
    assert {p: node.path(p).read_text() for p in before} == before


@pytest.mark.parametrize("args", [("enable", "master", SLAVE), ("enable", "slave", MASTER), ("disable",)])
def test_enable_twice_gives_the_same_files_and_changes_nothing_more(node, args):
    ok(node.run(*args))
    node.path("/postgresql-reloaded").unlink(missing_ok=True)
    first = node.tree()
    second_run = ok(node.run(*args))
    assert node.tree() == first
    assert not node.path("/postgresql-reloaded").exists()
    assert "wrote" not in second_run.stdout and "removed" not in second_run.stdout


def test_status_json_shows_what_enable_wrote(node):
    ok(node.run("enable", "master", SLAVE))
    report = json.loads(ok(node.run("status", "--json")).stdout)
    assert report["role"] == "master"
    assert report["remote_address"] == SLAVE
    assert report["cron_files"] == ["/etc/cron.d/xivo-ha-master"]
    assert report["sentinels"] == {"is-primary": True, "is-secondary": False}
    assert report["sip_expiry"] == HA_EXPIRY
    assert report["provisioning_backup"] == {"default": {"registrar_backup": SLAVE, "proxy_backup": SLAVE}}


def test_status_of_a_disabled_node_exits_3(node):
    result = node.run("status")
    assert result.returncode == 3
    assert "role: disabled" in result.stdout


def _own_address() -> str:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    pytest.skip("this host has no non-loopback IPv4 address")


BAD_INPUTS = [
    (("enable", "master", "10.0.0.300"), "invalid peer address"),
    (("enable", "master", "slave.example.com"), "host names are not accepted"),
    (("enable", "master", "10.0.0.2;rm -rf /"), "invalid peer address"),
    (("enable", "slave", "$(reboot)"), "invalid peer address"),
    (("enable", "master", "10.0.0.2 10.0.0.3"), "invalid peer address"),
    (("enable", "slave", "fe80::1"), "IPv6"),
    (("enable", "master", "127.0.0.1"), "loopback"),
    (("enable", "master", "010.000.000.002"), "invalid peer address"),
    (("enable", "primary", SLAVE), "unknown role"),
    (("enable", "master"), "missing address"),
    (("enable",), "missing role"),
    (("enable", "disabled", SLAVE), "xivo-ha disable"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(node, args, message):
    before_files, before_db = node.tree(), node.db.snapshot()
    result = node.run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert node.tree() == before_files
    assert node.db.snapshot() == before_db


def test_own_address_is_refused(node):
    own = _own_address()
    before = node.tree()
    result = node.run("enable", "master", own)
    assert result.returncode == 2
    assert "this node's own address" in result.stderr
    assert node.tree() == before


@pytest.mark.parametrize("content,where", [
    ('{"node_type": "master",\n "remote_address": }\n', "line 2"),
    ('{"node_type": "boss", "remote_address": ""}\n', "node_type"),
    ('{"node_type": "slave", "remote_address": "not-an-ip"}\n', "remote_address"),
])
def test_corrupt_ha_conf_is_named_and_nothing_changes(node, content, where):
    ha_conf = node.path("/etc/xivo/ha.conf")
    ha_conf.parent.mkdir(parents=True)
    ha_conf.write_text(content)
    before_files, before_db = node.tree(), node.db.snapshot()
    for args in (("enable", "master", SLAVE), ("disable",), ("status",)):
        result = node.run(*args)
        assert result.returncode == 2, result.stderr
        assert str(ha_conf) in result.stderr and where in result.stderr
    assert node.tree() == before_files
    assert node.db.snapshot() == before_db


def test_invalid_setting_exits_2_naming_the_key(node):
    settings = node.path("/etc/xivo-ha/xivo-ha.conf")
    settings.parent.mkdir(parents=True)
    settings.write_text("[probe]\nping_count = many\n")
    before = node.tree()
    result = node.run("enable", "master", SLAVE)
    assert result.returncode == 2
    assert "[probe] ping_count" in result.stderr
    assert node.tree() == before


def test_unreachable_database_changes_nothing(node, postgres_server):
    before = node.tree()
    dead = f"host=127.0.0.1 port={postgres_server.port} user=postgres dbname=no_such_db"
    result = node.run("enable", "master", SLAVE, env={"XIVO_HA_DATABASE_DSN": dead})
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr
    assert node.tree() == before


def test_failure_at_the_sip_expiry_step_rolls_back_the_earlier_steps(node):
    node.db.execute("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'staticsip is locked for maintenance'; END $$;
        CREATE TRIGGER refuse BEFORE UPDATE ON staticsip FOR EACH ROW EXECUTE FUNCTION refuse();
    """)
    before_files, before_db = node.tree(), node.db.snapshot()
    result = node.run("enable", "slave", MASTER)
    assert result.returncode == 1
    assert "f. SIP expiry failed" in result.stderr and "nothing was changed" in result.stderr
    assert "staticsip is locked for maintenance" in result.stderr
    after = node.tree()
    # PostgreSQL was reloaded again once its restored files were back in place
    assert after.pop("postgresql-reloaded")
    assert after == before_files
    assert node.db.snapshot() == before_db


def test_failing_postgresql_reload_rolls_back(node):
    before = node.tree()
    result = node.run("enable", "slave", MASTER, env={"XIVO_HA_POSTGRESQL_RELOAD_COMMAND": "false"})
    assert result.returncode == 1
    assert "c. slave PostgreSQL access failed" in result.stderr
    assert node.tree() == before


def test_restart_runs_the_configured_command(node):
    marker = node.path("/services-restarted")
    result = ok(node.run("enable", "master", SLAVE, "--restart",
                         env={"XIVO_HA_SERVICES_RESTART_COMMAND": f"touch,{marker}"}))
    assert marker.exists()
    assert "restarted services" in result.stdout


def test_cron_regenerate_follows_ha_conf(node):
    ok(node.run("enable", "master", SLAVE))
    cron = node.path("/etc/cron.d/xivo-ha-master")
    cron.write_text("0 * * * * root /usr/sbin/old-format\n")
    ok(node.run("cron", "regenerate"))
    assert cron.read_text() == MASTER_CRON
    node.path("/etc/xivo/ha.conf").write_text('{"node_type": "disabled", "remote_address": ""}\n')
    ok(node.run("cron", "regenerate"))
    assert not cron.exists()


def test_help_on_every_subcommand(node):
    for args in (("--help",), ("enable", "--help"), ("disable", "--help"), ("status", "--help"),
                 ("cron", "--help"), ("cron", "regenerate", "--help")):
        result = ok(node.run(*args))
        assert "Usage" in result.stdout
    assert ok(node.run("--version")).stdout.strip().startswith("xivo-ha ")


# --- pg_hba.conf: first match, bytes and line endings (issue 13, finding 9) -------------


def test_our_rule_goes_before_a_rule_that_would_shadow_it(node):
    hba = node.path("/etc/postgresql/15/main/pg_hba.conf")
    hba.write_text(hba.read_text() + "host    all    all    0.0.0.0/0    scram-sha-256\n")
    ok(node.run("enable", "slave", MASTER))
    lines = hba.read_text().splitlines()
    ours = lines.index(f"host asterisk postgres {MASTER}/32 trust")
    assert ours < lines.index("host    all    all    0.0.0.0/0    scram-sha-256")
    assert lines[ours - 1].startswith("# BEGIN xivo-ha") and lines[ours + 1] == "# END xivo-ha"
    assert "pg_hba" not in " ".join(doctor_problems(node))


def test_doctor_names_a_rule_that_shadows_ours(node):
    ok(node.run("enable", "slave", MASTER))
    hba = node.path("/etc/postgresql/15/main/pg_hba.conf")
    shadow = "host all all 10.20.30.0/24 reject"
    hba.write_text(shadow + "\n" + hba.read_text())
    assert any(shadow in problem for problem in doctor_problems(node))


def doctor_problems(node) -> list[str]:
    checks = json.loads(node.run("doctor", "--json", "--local-only").stdout)
    return [check["finding"] for check in checks if check["status"] != "ok"]


def test_pg_hba_bytes_and_crlf_are_kept(node):
    hba = node.path("/etc/postgresql/15/main/pg_hba.conf")
    original = "# réseau de l'équipe\r\n".encode("latin-1") + node_hba_crlf()
    hba.write_bytes(original)
    ok(node.run("enable", "slave", MASTER))
    data = hba.read_bytes()
    assert data.startswith("# réseau de l'équipe\r\n".encode("latin-1"))
    assert f"host asterisk postgres {MASTER}/32 trust\r\n".encode() in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    ok(node.run("disable"))
    assert hba.read_bytes() == original


def node_hba_crlf() -> bytes:
    from node import DEBIAN_HBA

    return DEBIAN_HBA.replace("\n", "\r\n").encode()


# --- signals and the journal (finding 3) ----------------------------------------------


def slow_reload(node):
    """A reload command that records its pid, then sleeps the first time it runs."""
    script = node.root / "slow-reload"
    script.write_text(f"#!/bin/sh\nif [ -e {node.root}/slept ]; then exit 0; fi\n"
                      f"echo $$ > {node.root}/slept\nexec sleep 30\n")
    script.chmod(0o755)
    return {"XIVO_HA_POSTGRESQL_RELOAD_COMMAND": str(script)}


def start(node, *argv, env):
    import sys

    from node import REPO

    return subprocess.Popen([sys.executable, str(REPO / "bin/xivo-ha"), *argv],
                            env={**os.environ, **node.env, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_sleep(node) -> int:
    import time

    marker = node.root / "slept"
    for _ in range(200):
        if marker.exists() and marker.read_text().strip():
            pid = int(marker.read_text())
            if os.path.exists(f"/proc/{pid}") and b"sleep" in open(f"/proc/{pid}/cmdline", "rb").read():
                return pid
        time.sleep(0.05)
    raise AssertionError("the reload command did not start")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_during_a_role_change_rolls_back_and_stops_the_child(node, signame):
    import signal

    env = slow_reload(node)
    before, before_db = node.tree(), node.db.snapshot()
    proc = start(node, "enable", "slave", MASTER, env=env)
    child = wait_for_sleep(node)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert f"interrupted by {signame}" in err and "nothing was changed" in err
    assert gone(child)
    after = node.tree()
    after.pop("slept")
    assert after == before
    assert node.db.snapshot() == before_db


def test_a_killed_role_change_is_reported_then_undone_by_the_next_one(node):
    import signal

    ok(node.run("enable", "master", SLAVE))
    master_tree = node.tree()
    env = slow_reload(node)
    proc = start(node, "enable", "slave", MASTER, env=env)
    child = wait_for_sleep(node)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    os.kill(child, signal.SIGKILL)
    assert json.loads(node.path("/etc/xivo/ha.conf").read_text())["node_type"] == "slave"

    report = json.loads(node.run("status", "--json").stdout)
    assert "was interrupted" in report["interrupted_change"]
    assert "was interrupted" in node.run("status").stdout
    assert any("was interrupted" in problem for problem in doctor_problems(node))

    result = ok(node.run("enable", "master", SLAVE))
    assert "undoing it first" in result.stdout
    after = node.tree()
    after.pop("slept"), after.pop("slow-reload")
    assert after == master_tree
    assert json.loads(node.run("status", "--json").stdout)["interrupted_change"] is None


def test_a_failed_undo_reports_only_what_is_still_applied(node, tmp_path):
    """Provisioning cannot be written (read-only): step f fails, and its undo fails too,
    yet nothing of f is applied, so the rollback is complete."""
    import shutil
    import sys

    from node import REPO

    configs = node.path("/var/lib/xivo-provd/jsondb/configs")
    before = node.tree()
    script = (f"mount --bind {configs} {configs} && mount -o remount,bind,ro {configs} && "
              f"exec {sys.executable} {REPO}/bin/xivo-ha enable master {SLAVE}")
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={**os.environ, **node.env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "g. provisioning backup registrar failed" in result.stderr
    assert "still applied" not in result.stderr and "nothing was changed" in result.stderr
    assert node.tree() == before


# --- locks (finding 12) -----------------------------------------------------------------


@contextlib.contextmanager
def held(path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.mark.parametrize("args", [("enable", "master", SLAVE), ("disable",), ("maintenance", "on")])
def test_a_busy_role_change_lock_is_exit_1(node, args):
    if args[0] == "maintenance":
        ok(node.run("enable", "master", SLAVE))
    before = node.tree()
    with held(node.path("/var/lib/xivo-ha/role-change.lock")):
        result = node.run(*args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"xivo-ha: another role change or maintenance switch is running "
        f"({node.path('/var/lib/xivo-ha/role-change.lock')} is locked)"]
    assert node.tree() == before


# --- bad input: one line, exit 2 (finding 8, 4, 14) -------------------------------------


@pytest.mark.parametrize("content", [
    b'{"node_type": ["master"], "remote_address": ""}\n',
    b'{"node_type": {"a": 1}, "remote_address": ""}\n',
    b'{"node_type": "ma\xe9ster"}\n',
    b"[" * 100000 + b"]" * 100000,
], ids=["list", "dict", "latin-1", "deep"])
def test_unusable_ha_conf_is_one_line_and_exit_2(node, content):
    ha_conf = node.path("/etc/xivo/ha.conf")
    ha_conf.parent.mkdir(parents=True)
    ha_conf.write_bytes(content)
    before = node.tree()
    for args in (("enable", "master", SLAVE), ("disable",), ("status",), ("cron", "regenerate")):
        result = node.run(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(ha_conf) in result.stderr
    assert node.tree() == before


@pytest.mark.parametrize("content,key", [
    (b"[failover]\ninterval = nan\n", "[failover] interval"),
    (b"[probe]\nping_timeout = nan\n", "[probe] ping_timeout"),
    (b"[doctor]\nconnect_timeout = -inf\n", "[doctor] connect_timeout"),
    (b"[postgresql]\nhba_file = pg_hba.conf\n", "[postgresql] hba_file"),
    (b"[postgresql]\nconf_file = etc/postgresql.conf\n", "[postgresql] conf_file"),
    (b"\x00\xff\xfe\x89PNG\r\n\x1a\n", "UTF-8"),
])
def test_unusable_settings_are_one_line_and_exit_2(node, content, key):
    settings = node.path("/etc/xivo-ha/xivo-ha.conf")
    settings.parent.mkdir(parents=True)
    settings.write_bytes(content)
    before = node.tree()
    for args in (("enable", "slave", MASTER), ("disable",), ("status",)):
        result = node.run(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], result.stderr
    assert node.tree() == before


def test_nan_from_the_environment_is_refused(node):
    result = node.run("enable", "slave", MASTER, env={"XIVO_HA_FAILOVER_INTERVAL": "nan"})
    assert result.returncode == 2
    assert "[failover] interval" in result.stderr


def test_a_database_without_xivo_tables_is_exit_1_in_one_line(node, postgres_server):
    empty = postgres_server.create_database(template="template0")
    try:
        before = node.tree()
        for args in (("enable", "master", SLAVE), ("status",)):
            result = node.run(*args, env={"XIVO_HA_DATABASE_DSN": empty.dsn})
            assert "Traceback" not in result.stderr
            assert "not a XiVO asterisk database" in result.stderr + result.stdout
        assert node.run("enable", "master", SLAVE, env={"XIVO_HA_DATABASE_DSN": empty.dsn}).returncode == 1
        assert node.tree() == before
    finally:
        postgres_server.drop_database(empty.name)


def test_an_invalid_dsn_is_never_echoed(node):
    secret = "s3cr3t-Pa55"
    before = node.tree()
    for args in (("enable", "master", SLAVE), ("status",)):
        result = node.run(*args, env={"XIVO_HA_DATABASE_DSN": f"host=localhost password={secret} dbname"})
        assert secret not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
    result = node.run("enable", "master", SLAVE, env={"XIVO_HA_DATABASE_DSN": f"password={secret} x"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "xivo-ha: [database] dsn is not a valid connection string (its value is not shown: it may hold a password)"]
    assert node.tree() == before


def test_a_lock_timeout_is_not_called_a_lost_connection(asterisk_db):
    import psycopg

    from xivo_ha import database, replication

    with asterisk_db.connect() as holder, asterisk_db.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE staticsip IN ACCESS EXCLUSIVE MODE")
        waiter.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as lock_error:
            waiter.execute("SELECT count(*) FROM staticsip")
        waiter.execute("SET lock_timeout = 0")
        waiter.execute("SET statement_timeout = '100ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as cancel_error:
            waiter.execute("SELECT count(*) FROM staticsip")
    for error, words in ((lock_error.value, "lock timeout"), (cancel_error.value, "statement timeout")):
        text = replication.describe_error(error)
        assert "connection lost" not in text and words in text
        assert words in database.error_text(error)
