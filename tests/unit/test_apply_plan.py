"""`apply.plan`: the steps of a role change, from an observed node to a target (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xivo_ha import apply, cron, database, paths, provisioning, settings
from xivo_ha.apply import FileState, Observed
from xivo_ha.role import DISABLED, HaConfig, Role

MASTER, SLAVE = "10.20.30.1", "10.20.30.2"
HBA = b"local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
CONF = b"#listen_addresses = 'localhost'\nport = 5432\n"
NO_PROVD = provisioning.Snapshot(None, {}, {}, [])


@pytest.fixture
def config(node_root):
    return settings.load(node_root / "absent.conf", environ={})


def fresh(config) -> Observed:
    """A XiVO node never put in HA: no HA files, stock PostgreSQL files, blank SIP expiry."""
    files = {path: FileState(path, None, 0o644) for path in apply.role_files().values()}
    for key, content in (("hba_file", HBA), ("conf_file", CONF)):
        path = paths.node(getattr(config.postgresql, key))
        files[path] = FileState(path, content, 0o640, (0, 0))
    return Observed(DISABLED, files, dict(database.BLANK_SIP_EXPIRY), NO_PROVD)


def after(observed: Observed, target: HaConfig, steps: list[apply.Step]) -> Observed:
    """The node once ``steps`` are applied (what the next observation reads)."""
    files = dict(observed.files)
    expiry = observed.sip_expiry
    for step in steps:
        for path, (content, mode) in step.writes.items():
            data = content.encode() if isinstance(content, str) else content
            files[path] = FileState(path, data, mode if data is not None else 0o644)
        if step.sip_expiry is not None:
            expiry = dict(step.sip_expiry)
    return Observed(target, files, expiry, observed.provd)


def shown(path: Path) -> str:
    return "/" + str(path.relative_to(paths.root()))


def summary(steps: list[apply.Step]) -> dict[str, object]:
    """Each step that does something: its letter → written (+) and removed (-) files, commands, SIP expiry."""
    out: dict[str, object] = {}
    for step in steps:
        if step.is_noop():
            continue
        files = sorted(("-" if content is None else "+") + shown(path) for path, (content, _) in step.writes.items())
        out[step.name[0]] = (files, [" ".join(c) for c in step.commands], step.sip_expiry)
    return out


RELOAD = "systemctl restart postgresql"


def test_plan_names_every_step_in_xivo_s_order(config):
    steps = apply.plan(HaConfig(Role.MASTER, SLAVE), config, fresh(config))
    assert [step.name for step in steps] == [
        "a. role in /etc/xivo/ha.conf", "b. replication stream", "c. slave PostgreSQL access", "d. cron",
        "e. sentinels", "f. SIP expiry", "g. provisioning backup registrar", "h. slave services at boot"]


def test_fresh_node_to_master(config):
    steps = apply.plan(HaConfig(Role.MASTER, SLAVE), config, fresh(config))
    assert summary(steps) == {
        "a": (["+/etc/xivo/ha.conf"], [], None),
        "d": (["+/etc/cron.d/xivo-ha-master"], [], None),
        "e": (["+/var/lib/xivo/is-primary"], [], None),
        "f": ([], [], database.HA_SIP_EXPIRY),
    }
    role_step = steps[0]
    assert role_step.writes[paths.node(paths.HA_CONF)] == (
        '{"node_type": "master", "remote_address": "10.20.30.2"}\n', 0o644)
    cron_path = paths.node(paths.CRON_MASTER)
    assert steps[3].writes[cron_path] == (cron.render(HaConfig(Role.MASTER, SLAVE), "hourly"), 0o644)


def test_fresh_node_to_slave_opens_postgresql_to_the_master_and_reloads(config):
    steps = apply.plan(HaConfig(Role.SLAVE, MASTER), config, fresh(config))
    assert summary(steps) == {
        "a": (["+/etc/xivo/ha.conf"], [], None),
        "c": (["+/etc/postgresql/15/main/pg_hba.conf", "+/etc/postgresql/15/main/postgresql.conf"], [RELOAD], None),
        "d": (["+/etc/cron.d/xivo-ha-slave"], [], None),
        "e": (["+/var/lib/xivo/is-secondary"], [], None),
        "f": ([], [], database.HA_SIP_EXPIRY),
    }
    hba, mode = steps[2].writes[paths.node(config.postgresql.hba_file)]
    assert f"host asterisk postgres {MASTER}/32 trust".encode() in hba.splitlines()
    assert mode == 0o640


@pytest.mark.parametrize("target", [HaConfig(Role.MASTER, SLAVE), HaConfig(Role.SLAVE, MASTER)])
def test_a_node_already_in_its_role_needs_nothing(config, target):
    observed = fresh(config)
    done = after(observed, target, apply.plan(target, config, observed))
    assert summary(apply.plan(target, config, done)) == {}


@pytest.mark.parametrize("start, commands", [
    (False, ["systemctl enable monit", "systemctl enable asterisk"]),
    (True, ["systemctl enable monit", "systemctl start monit", "systemctl enable asterisk",
            "systemctl start asterisk"]),
])
def test_slave_to_disabled_undoes_everything_and_gives_the_services_back(config, start, commands):
    observed = fresh(config)
    slave = HaConfig(Role.SLAVE, MASTER)
    as_slave = after(observed, slave, apply.plan(slave, config, observed))

    steps = apply.plan(DISABLED, config, as_slave, start=start)

    assert summary(steps) == {
        "a": (["+/etc/xivo/ha.conf"], [], None),
        "c": (["+/etc/postgresql/15/main/pg_hba.conf", "+/etc/postgresql/15/main/postgresql.conf"], [RELOAD], None),
        "d": (["-/etc/cron.d/xivo-ha-slave"], [], None),
        "e": (["-/var/lib/xivo/is-secondary"], [], None),
        "f": ([], [], database.BLANK_SIP_EXPIRY),
        "h": ([], commands, None),
    }
    assert steps[2].writes[paths.node(config.postgresql.hba_file)][0] == HBA
    assert steps[2].writes[paths.node(config.postgresql.conf_file)][0] == CONF
    undo = [" ".join(c) for c in steps[7].undo_commands]
    assert undo == ([f"systemctl {verb} {name}" for name in ("asterisk", "monit")
                     for verb in (("stop", "disable") if start else ("disable",))])


def test_master_to_slave_swaps_cron_and_sentinel(config):
    observed = fresh(config)
    master = HaConfig(Role.MASTER, SLAVE)
    as_master = after(observed, master, apply.plan(master, config, observed))

    steps = apply.plan(HaConfig(Role.SLAVE, MASTER), config, as_master)

    got = summary(steps)
    assert got["d"] == (["+/etc/cron.d/xivo-ha-slave", "-/etc/cron.d/xivo-ha-master"], [], None)
    assert got["e"] == (["+/var/lib/xivo/is-secondary", "-/var/lib/xivo/is-primary"], [], None)
    assert "f" not in got and "h" not in got
