"""The .debs install, work and go away cleanly on a fresh Debian bookworm.

Each package is installed with apt-get from dist/ into a new container, its
dependencies coming from Debian's archive; then the commands run from their
Debian paths, and the maintainer scripts are exercised through reinstall,
remove and purge.

The xivo-ha container is shaped like a XiVO node: stand-in `xivo-config` and
`xivo-sync` packages, built here, own /usr/sbin/xivo-check-master-status,
/usr/sbin/xivo-manage-slave-services, /usr/sbin/xivo-master-slave-db-replication
and /usr/bin/xivo-sync before xivo-ha is installed; PostgreSQL keeps Debian's
stock authentication (no ident map, no password) and holds a reference
`asterisk` database, so that `xivo-ha enable` runs for real.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

NODE_DIR = Path(__file__).resolve().parents[2] / "simulator" / "node"
DEB_DIR = "/tmp/debs"
SLAVE_IP = "10.99.0.2"
CRON_MASTER = "/etc/cron.d/xivo-ha-master"
CRON_SLAVE = "/etc/cron.d/xivo-ha-slave"
HA_CONF = "/etc/xivo/ha.conf"
SETTINGS = "/etc/xivo-ha/xivo-ha.conf"
MASTER_CRON_JOBS = [
    f"0 * * * * root /usr/sbin/xivo-master-slave-db-replication {SLAVE_IP} >/dev/null",
    "0 * * * * root /usr/bin/xivo-sync >/dev/null",
]
COMMANDS = [
    "/usr/bin/xivo-ha",
    "/usr/bin/xivo-sync",
    "/usr/sbin/xivo-master-slave-db-replication",
    "/usr/sbin/xivo-check-master-status",
    "/usr/sbin/xivo-manage-slave-services",
]
# The Python modules xivo-ha imports, each to be found in a Debian package.
DEPENDENCY_MODULES = ["plumbum", "psycopg", "jinja2", "configobj", "validate"]
APT_INSTALL_TIMEOUT = 900
# What XiVO's packages own on a real node.
XIVO_OWNED = {
    "xivo-config": ["/usr/sbin/xivo-check-master-status", "/usr/sbin/xivo-manage-slave-services",
                    "/usr/sbin/xivo-master-slave-db-replication"],
    "xivo-sync": ["/usr/bin/xivo-sync"],
}
DIVERTED = [path for paths in XIVO_OWNED.values() for path in paths]


class Container:
    """A throw-away container that sleeps until removed; commands run with docker exec."""

    install_output = ""

    def __init__(self, image: str, purpose: str):
        self.name = f"xivo-ha-{purpose}-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["docker", "run", "-d", "--name", self.name, "--hostname", purpose,
             "--label", "org.xivo-ha.test=debian-install", image, "sleep", "infinity"],
            check=True, capture_output=True, text=True, timeout=120,
        )

    def run(self, *argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{shlex.join(argv)}` exited {result.returncode} in {self.name}\n"
                f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            )
        return result

    def copy_in(self, source: Path, target: str) -> None:
        subprocess.run(["docker", "cp", str(source), f"{self.name}:{target}"], check=True, timeout=120)

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def write(self, path: str, text: str) -> None:
        subprocess.run(
            ["docker", "exec", "-i", self.name, "tee", path], input=text, text=True,
            check=True, capture_output=True, timeout=60,
        )

    def apt_get(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("apt-get", "-y", "-o", "APT::Color=0", *args, check=check, timeout=APT_INSTALL_TIMEOUT)

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=120)


def no_service_starts(container: Container) -> None:
    """Packages must not start daemons in the test container (cron would run our jobs)."""
    container.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")
    container.run("chmod", "0755", "/usr/sbin/policy-rc.d")


def xivo_script(package: str, version: int, path: str) -> str:
    return f"#!/bin/sh\necho '{package} {version} {Path(path).name}'\n"


def install_xivo_package(container: Container, package: str, version: int) -> None:
    """Build and install a stand-in for one of XiVO's packages, owning its HA paths."""
    tree = f"/tmp/build/{package}-{version}"
    container.run("rm", "-rf", tree)
    container.run("mkdir", "-p", f"{tree}/DEBIAN", f"{tree}/usr/bin", f"{tree}/usr/sbin")
    container.write(f"{tree}/DEBIAN/control", (
        f"Package: {package}\nVersion: {version}.0\nArchitecture: all\n"
        "Maintainer: XiVO HA maintainers <maintainers@xivo-ha.example.org>\n"
        f"Description: stand-in for XiVO's {package}\n"))
    for path in XIVO_OWNED[package]:
        container.write(f"{tree}{path}", xivo_script(package, version, path))
        container.run("chmod", "0755", f"{tree}{path}")
    # Like every Debian package, it has files of its own besides the diverted ones.
    container.run("mkdir", "-p", f"{tree}/usr/share/doc/{package}")
    container.write(f"{tree}/usr/share/doc/{package}/copyright", f"{package}: a test stand-in\n")
    deb = f"{DEB_DIR}/{package}_{version}.0_all.deb"
    container.run("dpkg-deb", "--root-owner-group", "--build", tree, deb)
    container.apt_get("install", "--allow-downgrades", deb)


def owner_of(path: str) -> str:
    return next(name for name, paths in XIVO_OWNED.items() if path in paths)


def diversions(container: Container) -> list[str]:
    return sorted(line for line in container.run("dpkg-divert", "--list").stdout.splitlines()
                  if "xivo-ha" in line)


def downloads(apt_output: str) -> list[str]:
    """What apt fetched: the source of each `Get:` line."""
    return [line.split()[1] for line in apt_output.splitlines() if re.match(r"Get:\d+ ", line)]


def cron_jobs(text: str) -> list[str]:
    """The job lines of a cron file: not comments, blanks or variable settings."""
    jobs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue
        jobs.append(line)
    return jobs


@pytest.fixture(scope="module")
def node(pg_image, debs):
    """A XiVO-shaped bookworm container (stand-in xivo-config and xivo-sync, stock
    PostgreSQL with the `asterisk` database), and xivo-ha installed by apt."""
    container = Container(pg_image, "xivo-ha-install")
    try:
        no_service_starts(container)
        container.run("mkdir", "-p", DEB_DIR)
        container.copy_in(debs["xivo-ha"], f"{DEB_DIR}/")
        container.apt_get("update")
        for package in XIVO_OWNED:
            install_xivo_package(container, package, 1)
        container.install_output = container.apt_get("install", f"{DEB_DIR}/{debs['xivo-ha'].name}").stdout
        _create_asterisk_database(container)
        yield container
    finally:
        container.remove()


def _create_asterisk_database(container: Container) -> None:
    # Debian's stock authentication, as on a XiVO node: the postgres role is
    # reached on the local socket by the postgres OS user only.
    hba = container.read("/etc/postgresql/15/main/pg_hba.conf")
    assert re.search(r"(?m)^local\s+all\s+postgres\s+peer\s*$", hba), hba
    assert "map=" not in hba
    container.run("pg_ctlcluster", "15", "main", "start")
    container.run("runuser", "-u", "postgres", "--", "createdb", "-E", "UTF8", "-T", "template0", "asterisk")
    container.copy_in(NODE_DIR / "asterisk.sql", "/tmp/asterisk.sql")
    container.run("runuser", "-u", "postgres", "--", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-q",
                  "-d", "asterisk", "-f", "/tmp/asterisk.sql")


def as_postgres_psql(container: Container, sql: str) -> str:
    return container.run("runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "asterisk",
                         "-c", sql).stdout


def reinstall(node: Container, debs) -> subprocess.CompletedProcess:
    return node.apt_get("install", "--reinstall", f"{DEB_DIR}/{debs['xivo-ha'].name}")


def make_master(node: Container) -> None:
    node.run("xivo-ha", "enable", "master", SLAVE_IP, timeout=120)


def test_install_pulls_only_debian_packages(node, debs):
    fetched = downloads(node.install_output)
    assert fetched, node.install_output
    foreign = [source for source in fetched
               if not source.startswith(("http://deb.debian.org/debian", f"{DEB_DIR}/"))]
    assert foreign == []
    for module in DEPENDENCY_MODULES:
        location = node.run("python3", "-c", f"import {module}; print({module}.__file__)").stdout.strip()
        owner = node.run("dpkg", "-S", location, check=False)
        assert owner.returncode == 0 and owner.stdout.startswith("python3-"), (module, location, owner.stdout)
    assert node.run("python3", "-m", "pip", "--version", check=False).returncode != 0
    assert node.run("find", "/usr/local/lib", "-name", "*.py").stdout == ""


def test_files_are_at_xivo_and_debian_paths(node):
    files = set(node.run("dpkg", "-L", "xivo-ha").stdout.split())
    expected = {
        *COMMANDS,
        "/usr/lib/python3/dist-packages/xivo_ha/__init__.py",
        "/usr/lib/python3/dist-packages/xivo_ha/cli/ha.py",
        "/usr/share/xivo-ha/xivo-ha.spec",
        "/usr/share/xivo-ha/templates/cron-master.j2",
        "/usr/share/xivo-ha/templates/cron-slave.j2",
        SETTINGS,
        "/etc/logrotate.d/xivo-ha",
        "/etc/cron.d/xivo-ha",
        "/usr/share/bash-completion/completions/xivo-ha",
        *(f"/usr/share/man/man8/{Path(command).name}.8.gz" for command in COMMANDS),
    }
    assert sorted(expected - files) == []
    python_files = [f for f in files if f.startswith("/usr/lib/python3") and f.endswith(".py")]
    assert python_files and all(f.startswith("/usr/lib/python3/dist-packages/xivo_ha/") for f in python_files)
    assert not any("simulator" in f for f in files)

    conffiles = node.run("dpkg-query", "-W", "-f=${Conffiles}", "xivo-ha").stdout.split()
    assert SETTINGS in conffiles and "/etc/logrotate.d/xivo-ha" in conffiles
    assert "/etc/cron.d/xivo-ha" in conffiles  # the hourly maintenance reminder

    for command in COMMANDS:
        assert node.read(command).startswith("#!/usr/bin/python3\n"), command
    assert node.run("stat", "-c", "%a %U", "/var/lib/xivo-ha").stdout.split() == ["750", "root"]
    assert node.exists("/var/log/xivo-ha.log")


def test_version(node):
    result = node.run("xivo-ha", "--version")
    assert "0.1.0" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_answers_help_from_its_debian_path(node, command):
    result = node.run(command, "--help", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(command).name in result.stdout


def test_enable_master_writes_the_xivo_cron_file(node):
    make_master(node)
    assert cron_jobs(node.read(CRON_MASTER)) == MASTER_CRON_JOBS
    assert not node.exists(CRON_SLAVE)
    assert json.loads(node.read(HA_CONF))


def test_root_reaches_the_database_with_stock_authentication(node):
    refused = node.run("psql", "-XAtq", "-U", "postgres", "-d", "asterisk", "-c", "SELECT 1", check=False)
    assert refused.returncode != 0 and "Peer authentication failed" in refused.stderr
    make_master(node)
    rows = as_postgres_psql(node, "SELECT var_name || '=' || var_val FROM staticsip WHERE var_name IN "
                                  "('minexpiry', 'maxexpiry', 'defaultexpiry') ORDER BY var_name")
    assert rows.split() == ["defaultexpiry=240", "maxexpiry=300", "minexpiry=180"]
    status = json.loads(node.run("xivo-ha", "status", "--json", check=False).stdout)
    assert status["role"] == "master"
    assert "cannot connect" not in json.dumps(status)


def test_xivo_scripts_are_diverted_and_ours_run(node):
    assert diversions(node) == sorted(
        f"diversion of {path} to {path}.distrib by xivo-ha" for path in DIVERTED)
    for path in DIVERTED:
        package = owner_of(path)
        assert node.read(path).startswith("#!/usr/bin/python3\n"), path
        assert node.read(f"{path}.distrib") == xivo_script(package, 1, path)
        result = node.run(path, "--help", check=False)
        assert result.returncode == 0 and Path(path).name in result.stdout, result.stdout + result.stderr


def test_upgrading_xivo_packages_keeps_our_commands(node):
    for package in XIVO_OWNED:
        install_xivo_package(node, package, 2)
    for path in DIVERTED:
        package = owner_of(path)
        assert node.read(path).startswith("#!/usr/bin/python3\n"), path
        assert node.read(f"{path}.distrib") == xivo_script(package, 2, path)
    assert len(diversions(node)) == len(DIVERTED)


def test_reinstall_keeps_cron_file_and_admin_settings(node, debs):
    make_master(node)
    cron_before = node.read(CRON_MASTER)
    shipped = node.read(SETTINGS)
    edited = shipped.replace("#ping_count = 3", "ping_count = 5")
    assert edited != shipped
    node.write(SETTINGS, edited)

    reinstall(node, debs)
    assert node.read(CRON_MASTER) == cron_before
    assert node.read(SETTINGS) == edited

    # The cron file is regenerated from ha.conf by the package, not kept by chance.
    node.run("rm", CRON_MASTER)
    reinstall(node, debs)
    assert cron_jobs(node.read(CRON_MASTER)) == MASTER_CRON_JOBS


def test_reinstall_with_corrupt_ha_conf_warns_and_succeeds(node, debs):
    make_master(node)
    good = node.read(HA_CONF)
    cron_before = node.read(CRON_MASTER)
    node.write(HA_CONF, "{ this is not json")
    try:
        result = reinstall(node, debs)
        assert "warning" in (result.stdout + result.stderr).lower()
        assert node.run("dpkg-query", "-W", "-f=${Status}", "xivo-ha").stdout == "install ok installed"
        assert node.read(CRON_MASTER) == cron_before
    finally:
        node.write(HA_CONF, good)


def test_remove_then_purge(node, debs):
    make_master(node)
    node.write("/var/lib/xivo-ha/probe-state", "x\n")
    ha_conf = node.read(HA_CONF)
    originals = {path: node.read(f"{path}.distrib") for path in DIVERTED}

    node.apt_get("remove", "xivo-ha")
    assert not node.exists(CRON_MASTER) and not node.exists(CRON_SLAVE)
    assert node.exists(SETTINGS), "remove keeps the settings"
    assert node.exists("/var/lib/xivo-ha")
    assert node.read(HA_CONF) == ha_conf
    assert_xivo_scripts_back(node, originals)

    node.apt_get("install", f"{DEB_DIR}/{debs['xivo-ha'].name}")
    assert len(diversions(node)) == len(DIVERTED)
    node.apt_get("purge", "xivo-ha")
    for gone in ("/var/lib/xivo-ha", "/etc/xivo-ha", "/var/log/xivo-ha.log", "/etc/cron.d/xivo-ha"):
        assert not node.exists(gone), gone
    assert node.read(HA_CONF) == ha_conf, "XiVO's ha.conf is never touched"
    assert_xivo_scripts_back(node, originals)

    # Back to installed, for whatever runs after this test.
    node.apt_get("install", f"{DEB_DIR}/{debs['xivo-ha'].name}")
    assert cron_jobs(node.read(CRON_MASTER)) == MASTER_CRON_JOBS


def assert_xivo_scripts_back(node: Container, originals: dict[str, str]) -> None:
    assert diversions(node) == []
    for path in DIVERTED:
        package = owner_of(path)
        assert node.read(path) == originals[path]
        assert not node.exists(f"{path}.distrib")
        assert node.run("dpkg", "-S", path).stdout.startswith(f"{package}: ")


def test_without_xivo_packages_nothing_is_diverted(node, debs):
    node.apt_get("purge", "xivo-ha", *XIVO_OWNED)
    node.apt_get("install", f"{DEB_DIR}/{debs['xivo-ha'].name}")
    assert diversions(node) == []
    for path in DIVERTED:
        assert node.read(path).startswith("#!/usr/bin/python3\n"), path
        assert not node.exists(f"{path}.distrib")


@pytest.fixture(scope="module")
def simulator_host(base_image, debs):
    """A bookworm container with xivo-ha-simulator installed by apt, without recommends."""
    container = Container(base_image, "xivo-ha-simulator-install")
    try:
        no_service_starts(container)
        container.run("mkdir", "-p", DEB_DIR)
        container.copy_in(debs["xivo-ha-simulator"], f"{DEB_DIR}/")
        container.apt_get("update")
        container.install_output = container.apt_get(
            "install", "--no-install-recommends", f"{DEB_DIR}/{debs['xivo-ha-simulator'].name}"
        ).stdout
        yield container
    finally:
        container.remove()


def test_simulator_installs_from_debian_and_answers_help(simulator_host):
    foreign = [source for source in downloads(simulator_host.install_output)
               if not source.startswith(("http://deb.debian.org/debian", f"{DEB_DIR}/"))]
    assert foreign == []
    files = set(simulator_host.run("dpkg", "-L", "xivo-ha-simulator").stdout.split())
    assert {"/usr/bin/xivo-ha-simulator",
            "/usr/lib/python3/dist-packages/xivo_ha_simulator/__init__.py",
            "/usr/share/xivo-ha-simulator/node/build-base",
            "/usr/share/man/man1/xivo-ha-simulator.1.gz"} <= files
    python_files = [f for f in files if f.endswith(".py")]
    assert all(f.startswith("/usr/lib/python3/dist-packages/xivo_ha_simulator/") for f in python_files)
    assert simulator_host.run("dpkg-query", "-W", "xivo-ha", check=False).returncode != 0

    result = simulator_host.run("xivo-ha-simulator", "--help", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "xivo-ha-simulator" in result.stdout
