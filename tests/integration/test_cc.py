"""`xivo-ha cc enable|disable`: XiVO CC DB Replic HA mode on a temp-root slave."""

from __future__ import annotations

import grp
import pwd

import pytest

from node import make_node, recorder

pytestmark = pytest.mark.integration

MASTER = "10.20.30.1"
SLAVE = "10.20.30.2"
ENV = "/etc/docker/xivo/custom.env"
LOG_DIR = "/var/log/xivo-db-replication"
SENTINEL = "/var/lib/xivo/xc_enabled"
EXISTING = """\
# XiVO CC settings: edited by the installer
XIVO_HOST=10.20.30.1

# reporting
#REPORTING_DB_HOST=192.0.2.99
REPORTING_DB_HOST=old-host
ELASTICSEARCH=old-es
CONFIGMGT_AUTH_SECRET=s3cret=with=equals
ELASTICSEARCH=older-es
"""


@pytest.fixture
def node(tmp_path, asterisk_db):
    root = tmp_path / "node"
    root.mkdir()
    log = tmp_path / "ran.log"
    made = make_node(root, asterisk_db, {
        "XIVO_HA_CC_INSTALL_COMMAND": f"{recorder(tmp_path / 'apt-get', log)},install,-y,xivocc-docker-components",
        "XIVO_HA_CC_START_COMMAND": f"{recorder(tmp_path / 'xivo-service', log)},start",
        "XIVO_HA_CC_MONITORING_COMMAND": str(recorder(tmp_path / "xivo-monitoring-update", log)),
    })
    made.ran = log
    return made


@pytest.fixture
def slave(node):
    ok(node.run("enable", "slave", MASTER))
    return node


def ok(result):
    assert result.returncode == 0, result.stderr + result.stdout
    return result


def enable(node, *extra, host="10.20.40.5", es="es.example.com:9200"):
    return node.run("cc", "enable", "--reporting-db-host", host, "--elasticsearch", es, *extra)


def ran(node) -> list[str]:
    return node.ran.read_text().splitlines() if node.ran.exists() else []


def test_enable_on_a_slave_creates_everything_and_prints_the_remaining_steps(slave):
    result = ok(enable(slave))

    env = slave.path(ENV)
    assert env.read_text() == "REPORTING_DB_HOST=10.20.40.5\nELASTICSEARCH=es.example.com:9200\nIS_HA_SLAVE=true\n"
    assert env.stat().st_mode & 0o7777 == 0o644
    log_dir = slave.path(LOG_DIR)
    assert log_dir.is_dir()
    assert log_dir.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    assert log_dir.stat().st_gid == grp.getgrnam("daemon").gr_gid
    assert slave.path(SENTINEL).is_file()
    lines = result.stdout.splitlines()
    steps = lines[lines.index("To finish, run on this node (or use --apply):") + 1:][:3]
    assert [step.split("/")[-1].strip() for step in steps] == [
        "apt-get install -y xivocc-docker-components", "xivo-service start", "xivo-monitoring-update"]
    assert ran(slave) == []


def test_enable_keeps_every_other_line_and_comment(slave):
    env = slave.path(ENV)
    env.parent.mkdir(parents=True)
    env.write_text(EXISTING)
    env.chmod(0o640)

    ok(enable(slave))

    assert env.read_text() == """\
# XiVO CC settings: edited by the installer
XIVO_HOST=10.20.30.1

# reporting
#REPORTING_DB_HOST=192.0.2.99
REPORTING_DB_HOST=10.20.40.5
ELASTICSEARCH=es.example.com:9200
CONFIGMGT_AUTH_SECRET=s3cret=with=equals
IS_HA_SLAVE=true
"""
    assert env.stat().st_mode & 0o7777 == 0o640


def test_enable_twice_is_idempotent(slave):
    ok(enable(slave))
    first = slave.tree()
    ok(enable(slave))
    assert slave.tree() == first


def test_apply_runs_the_remaining_steps_in_order(slave):
    result = ok(enable(slave, "--apply"))
    assert ran(slave) == ["apt-get install -y xivocc-docker-components", "xivo-service start",
                          "xivo-monitoring-update "]
    assert "To finish" not in result.stdout


def test_apply_skips_missing_programs_and_lists_them(slave, tmp_path):
    result = ok(slave.run("cc", "enable", "--reporting-db-host", "db", "--elasticsearch", "es", "--apply",
                          env={"XIVO_HA_CC_START_COMMAND": str(tmp_path / "no-such-xivo-service") + ",start"}))
    assert ran(slave) == ["apt-get install -y xivocc-docker-components", "xivo-monitoring-update "]
    assert "no-such-xivo-service start" in result.stdout.split("To finish")[1]


def test_apply_step_failure_exits_1_with_what_is_left(slave, tmp_path):
    failing = recorder(tmp_path / "apt-get-fails", slave.ran, exit_code=100)
    result = slave.run("cc", "enable", "--reporting-db-host", "db", "--elasticsearch", "es", "--apply",
                       env={"XIVO_HA_CC_INSTALL_COMMAND": f"{failing},install"})
    assert result.returncode == 1
    assert "exited with 100" in result.stderr and "Still to run" in result.stderr
    assert "xivo-service start" in result.stderr
    assert slave.path(SENTINEL).exists()
    assert ran(slave) == ["apt-get-fails install"]


@pytest.mark.parametrize("role_args", [("enable", "master", SLAVE), None])
def test_refused_on_a_master_or_a_disabled_node(node, role_args):
    if role_args:
        ok(node.run(*role_args))
    files = node.tree()
    result = enable(node, "--apply")
    assert result.returncode == 1
    assert "slave" in result.stderr and "Nothing was changed" in result.stderr
    assert node.tree() == files
    assert ran(node) == []


@pytest.mark.parametrize("host, es", [
    ("10.20.40.5;reboot", "es"),
    ("db host", "es"),
    ("$(id)", "es"),
    ("db", "es`id`"),
    ("10.20.40.256", "es"),
    ("db:5432", "es"),
    ("db", "es:0"),
    ("db", "es:99999"),
    ("db", "http://es:9200"),
    ("fe80::1", "es"),
    ("db", "[::1]:9200"),
    ("-db", "es"),
    ("", "es"),
    ("db", "0.0.0.0"),
    ("a" * 64 + ".example.com", "es"),
])
def test_bad_values_exit_2_and_change_nothing(slave, host, es):
    files = slave.tree()
    result = enable(slave, "--apply", host=host, es=es)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert slave.tree() == files
    assert ran(slave) == []


def test_missing_switch_exits_2(slave):
    result = slave.run("cc", "enable", "--reporting-db-host", "db")
    assert result.returncode == 2
    assert "--elasticsearch" in result.stdout + result.stderr


def test_a_failure_half_way_rolls_everything_back(slave):
    env = slave.path(ENV)
    env.parent.mkdir(parents=True)
    env.write_text(EXISTING)
    blocker = slave.path("/var/lib/xivo")
    for child in blocker.iterdir():
        child.unlink()
    blocker.rmdir()
    blocker.write_text("not a directory")
    files = slave.tree()

    result = enable(slave, "--apply")

    assert result.returncode == 1
    assert "Rolled back: nothing was changed" in result.stderr
    assert slave.tree() == files
    assert not slave.path(LOG_DIR).exists()
    assert ran(slave) == []


def test_disable_removes_the_keys_and_the_sentinel_and_keeps_the_rest(slave):
    env = slave.path(ENV)
    env.parent.mkdir(parents=True)
    env.write_text(EXISTING)
    ok(enable(slave))
    (slave.path(LOG_DIR) / "db-replic.log").write_text("kept\n")

    result = ok(slave.run("cc", "disable"))

    assert env.read_text() == """\
# XiVO CC settings: edited by the installer
XIVO_HOST=10.20.30.1

# reporting
#REPORTING_DB_HOST=192.0.2.99
CONFIGMGT_AUTH_SECRET=s3cret=with=equals
"""
    assert not slave.path(SENTINEL).exists()
    assert (slave.path(LOG_DIR) / "db-replic.log").read_text() == "kept\n"
    assert "xivo-monitoring-update" in result.stdout
    again = ok(slave.run("cc", "disable"))
    assert "nothing to undo" in again.stdout


def test_disable_is_allowed_after_the_slave_became_something_else(slave):
    ok(enable(slave))
    ok(slave.run("disable"))
    ok(slave.run("cc", "disable", "--apply"))
    assert not slave.path(SENTINEL).exists()
    assert "IS_HA_SLAVE" not in slave.path(ENV).read_text()
    assert ran(slave) == ["xivo-monitoring-update "]


def test_help_on_every_cc_command(node):
    for args in (("cc", "--help"), ("cc", "enable", "--help"), ("cc", "disable", "--help")):
        assert "Usage" in ok(node.run(*args)).stdout
    assert "--reporting-db-host" in node.run("cc", "enable", "--help").stdout
    assert node.run("cc").returncode == 2
    assert node.run("cc", "start").returncode == 2
