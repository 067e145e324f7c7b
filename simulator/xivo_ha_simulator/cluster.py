"""The simulator's XiVO HA cluster: two docker containers built from our .deb.

:class:`Cluster` drives ``simulator/docker-compose.yml`` (a master and a slave on
one private bridge network, fixed addresses) with Debian's ``docker-compose``
and ``docker``, and configures HA **with the real toolkit only**, as the XiVO
documentation tells an administrator to:

1. ``xivo-ha enable slave <master>`` on the slave, ``xivo-ha enable master
   <slave>`` on the master;
2. ``xivo-sync -i --password-from-env --host-key-fingerprint <the slave's>`` on the master: the slave's root
   password goes to ssh through Debian's ``sshpass`` (the one prompt an
   administrator answers by hand);
3. a first ``xivo-master-slave-db-replication <slave>`` and ``xivo-sync``;
4. a check that the slave now has the master's users and files;
5. ``xivo-service restart`` on the master (here: its registrar), so that it
   grants the SIP expiry `xivo-ha enable` wrote;
6. one ``xivo-check-master-status`` on the slave, which stops the slave's
   registrar (it ran since boot, when the node had no role yet).

**Time scale K.**  The nodes keep XiVO's real values (cron lines, SIP expiry
rows 180/300/240); only timers are divided by K: the registrar grants expiry/K
(rendered at its start from the database), and the simulator runs the real
``xivo-check-master-status`` on the slave with ``docker exec`` every 60/K s
(:class:`Checker`) with its probe timers divided by K through
``XIVO_HA_<SECTION>_<KEY>`` variables.  With K = 1 the nodes' own cron runs the
checks and the simulator only watches the slave's state.  In fast mode each check
repeats itself within its minute (``--loop 55 --interval 5``, divided by K, with
one ping per round: ``[failover] loop``/``interval`` and ``[probe] ping_count`` on
the slave).

**Replication mode.**  ``[replication] mode`` (hourly or continuous) is written on
both nodes before ``xivo-ha enable``, which sets up what the mode needs.

All traffic stays on the compose network: the phones bind to the host's address
on it (the bridge gateway), and probes go between the two containers.  A third
container, the trunk carrier (:data:`CARRIER`), is no node: the serving node
registers its SIP trunk there (:meth:`Cluster.set_trunk` writes the trunk rows).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping, Sequence

from plumbum import local
from plumbum.commands.processes import CommandNotFound, ProcessTimedOut

from .constants import MASTER_UP, SERVING, STANDBY

PROJECT = "xivo-ha-sim"
MASTER = "master"
SLAVE = "slave"
NODES = (MASTER, SLAVE)
CARRIER = "carrier"  # the trunk carrier's service (not a node: no role, no faults)
TRUNK_USER = "xivo-ha-sim-trunk"  # the trunk's username at the carrier
TRUNK_SECRET_FILE = "/etc/xivo-ha-simulator/trunk.secret"  # in the carrier, made at its first start
NETWORK = "voip"  # the compose network's key; docker names it <project>_voip
SSH_PASSWORD = "xivo-ha-sim"  # root's password in the node image (private network only)
SHARE = "/usr/local/share/xivo-ha-sim"
READY_FILE = "/run/xivo-ha-sim/ready"
FAILOVER_STATE = "/var/lib/xivo-ha/failover.json"
PROVD_CONFIGS = "/var/lib/xivo-provd/jsondb/configs"
SEED_FILE = "/etc/asterisk/extensions_extra.d/xivo-ha-simulator.conf"
KAMAILIO_CFG = "/run/kamailio/kamailio.cfg"
CHECK_PERIOD = 60.0  # cron: every minute

# Real XiVO timers the checks use, divided by the time scale at run time
# ([probe] defaults of xivo-ha), with the configspec's lower bounds.
REAL_PROBE_TIMERS = {
    "PROBE_PING_INTERVAL": (10.0, 0.2),
    "PROBE_PING_TIMEOUT": (1.0, 0.1),
    "PROBE_SIP_TIMEOUT": (32.0, 0.5),
}

# Fast mode: what a slave's cron line runs within each minute, real seconds.
FAST_LOOP = 55.0
FAST_INTERVAL = 5.0
FAST_MIN_INTERVAL = 0.5  # the configspec's lower bound of [failover] interval
REPLICATION_MODES = ("hourly", "continuous")
# Prints the [replication] mode values the node's toolkit knows (none: it has no such setting).
_MODES_SCRIPT = (
    "import re\n"
    "from configobj import ConfigObj\n"
    "from xivo_ha import paths\n"
    "spec = ConfigObj(str(paths.configspec()), list_values=False, _inspec=True)\n"
    "line = spec.get('replication', {}).get('mode', '')\n"
    "print(' '.join(re.findall(r'\"(\\w+)\"', line.split('default=')[0])))\n"
)
_MODE_SCRIPT = (
    "from xivo_ha import settings\n"
    "print(settings.load().replication.mode)\n"
)

Log = Callable[[str], None]


class ClusterError(RuntimeError):
    """The cluster could not be built, configured or driven; the message says what to do."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def output(self) -> str:
        return " ".join(part.strip() for part in (self.stderr, self.stdout) if part.strip())


def run(argv: Sequence[str], *, timeout: float = 60.0, stdin: str | None = None,
        env: Mapping[str, str] | None = None, check: bool = True, what: str | None = None) -> Result:
    """Run a host command (an argument list) with a timeout."""
    argv = tuple(str(a) for a in argv)
    try:
        command = local[argv[0]][argv[1:]]
    except CommandNotFound:
        raise ClusterError(f"{argv[0]} is not installed (make deps installs it)") from None
    if env:
        command = command.with_env(**env)
    try:
        if stdin is not None:
            rc, out, err = command.run(retcode=None, timeout=timeout, stdin=_stdin_pipe(stdin))
        else:
            rc, out, err = command.run(retcode=None, timeout=timeout)
    except ProcessTimedOut:
        raise ClusterError(f"{what or ' '.join(argv)}: no answer within {timeout:g} s") from None
    result = Result(argv, rc, out, err)
    if check and not result.ok:
        raise ClusterError(f"{what or ' '.join(argv)} failed (exit {rc}): {result.output() or 'no output'}")
    return result


def _stdin_pipe(text: str):
    import tempfile

    handle = tempfile.TemporaryFile()
    handle.write(text.encode())
    handle.seek(0)
    return handle


def compose_file() -> Path:
    """The compose file: $XIVO_HA_SIM_COMPOSE_FILE, the source tree's, or the packaged one."""
    explicit = os.environ.get("XIVO_HA_SIM_COMPOSE_FILE")
    candidates = [Path(explicit)] if explicit else []
    candidates += [
        Path(__file__).resolve().parents[1] / "docker-compose.yml",
        Path("/usr/share/xivo-ha-simulator/docker-compose.yml"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ClusterError("docker-compose.yml of the simulator not found: set XIVO_HA_SIM_COMPOSE_FILE")


def scaled_probe_env(time_scale: float) -> dict[str, str]:
    """XIVO_HA_* variables dividing the probe timers of xivo-check-master-status by K."""
    env = {}
    for key, (real, lowest) in REAL_PROBE_TIMERS.items():
        env[f"XIVO_HA_{key}"] = f"{max(lowest, real / time_scale):g}"
    env["XIVO_HA_FAILOVER_LOOP"] = "0"  # one check per run: the simulator is the cron
    return env


def fast_check_switches(time_scale: float, fast: bool) -> list[str]:
    """The switches of xivo-check-master-status in fast mode, loop and interval divided by K."""
    if not fast:
        return []
    interval = max(FAST_MIN_INTERVAL, FAST_INTERVAL / time_scale)
    return ["--loop", f"{FAST_LOOP / time_scale:g}", "--interval", f"{interval:g}"]


def fast_settings(fast: bool) -> dict[tuple[str, str], str]:
    """The slave's settings of a fast-mode node (real values), or the packaged defaults."""
    if fast:
        return {("failover", "loop"): f"{FAST_LOOP:g}", ("failover", "interval"): f"{FAST_INTERVAL:g}",
                ("probe", "ping_count"): "1"}
    return {("failover", "loop"): "0", ("failover", "interval"): "10", ("probe", "ping_count"): "3"}


@dataclass(frozen=True)
class BringUp:
    """What the bring-up established and how long each step took."""

    master: str
    slave: str
    gateway: str
    primary: str  # registrar_main of the master's provisioning config
    backup: str  # registrar_backup that `xivo-ha enable master` wrote
    users: int  # users on the master, all found on the slave
    expiry: dict  # staticsip minexpiry/maxexpiry/defaultexpiry (real seconds)
    granted: dict  # what the master's registrar grants (scaled seconds)
    steps: list = field(default_factory=list)  # (step, seconds)


@dataclass(frozen=True)
class SlaveEvent:
    """A change of the slave's failover state, seen after one of its checks."""

    t: float  # monotonic
    wall: float
    mode: str  # standby | serving
    condition: str
    reason: str

    def to_dict(self) -> dict:
        return {"t": round(self.t, 6), "wall": round(self.wall, 6), "mode": self.mode,
                "condition": self.condition, "reason": self.reason}


class Cluster:
    """The two nodes of one compose project."""

    def __init__(self, project: str = PROJECT, time_scale: float = 10.0, net: str | None = None,
                 compose: Path | None = None, log: Log | None = None, fast: bool = False):
        if time_scale <= 0:
            raise ValueError("the time scale must be positive")
        self.project = project
        self.time_scale = float(time_scale)
        self.fast = fast
        self.net = net or os.environ.get("XIVO_HA_SIM_NET") or "172.28.5"
        self.compose_path = compose or compose_file()
        self.log = log or (lambda text: None)
        self._containers: dict[str, str] = {}
        self._addresses: dict[str, str] = {}

    # ------------------------------------------------------------------ docker plumbing

    @property
    def network(self) -> str:
        # docker-compose 1.x keeps only [-_a-z0-9] of the project name.
        return re.sub(r"[^-_a-z0-9]", "", self.project.lower()) + f"_{NETWORK}"

    def compose_env(self) -> dict[str, str]:
        return {"XIVO_HA_SIM_TIME_SCALE": f"{self.time_scale:g}", "XIVO_HA_SIM_NET": self.net,
                "XIVO_HA_SIM_TRUNK_USER": TRUNK_USER}

    def compose(self, *args: str, timeout: float = 300.0, check: bool = True) -> Result:
        return run(["docker-compose", "-f", str(self.compose_path), "-p", self.project, *args],
                   timeout=timeout, env=self.compose_env(), check=check,
                   what=f"docker-compose {' '.join(args)}")

    def container(self, node: str) -> str:
        if node not in self._containers:
            cid = self.compose("ps", "-q", node, timeout=60).stdout.strip()
            if not cid:
                raise ClusterError(f"the {node} container does not exist: run `xivo-ha-simulator run`")
            self._containers[node] = cid
        return self._containers[node]

    def address(self, node: str) -> str:
        if node not in self._addresses:
            suffix = {MASTER: "10", SLAVE: "11", CARRIER: "20"}[node]
            self._addresses[node] = f"{self.net}.{suffix}"
        return self._addresses[node]

    @property
    def gateway(self) -> str:
        """The host's address on the cluster network: the phones bind there."""
        return f"{self.net}.1"

    def exec(self, node: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             stdin: str | None = None, timeout: float = 60.0, check: bool = True,
             what: str | None = None) -> Result:
        """Run a command in a node (``docker exec``), as root."""
        cmd = ["docker", "exec"]
        if stdin is not None:
            cmd.append("-i")
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        what = what or f"{node}: {' '.join(argv)}"
        result = run([*cmd, self.container(node), *argv], timeout=timeout, stdin=stdin, check=False, what=what)
        if not result.ok and "No such container" in result.stderr:
            # Another run recreated the nodes since this object looked the container up.
            self._containers.pop(node, None)
            result = run([*cmd, self.container(node), *argv], timeout=timeout, stdin=stdin, check=False, what=what)
        if check and not result.ok:
            raise ClusterError(f"{what} failed (exit {result.returncode}): {result.output() or 'no output'}")
        return result

    def host_key_fingerprint(self, node: str) -> str:
        """``SHA256:...`` of the node's ed25519 ssh host key, read inside the node."""
        shown = self.exec(node, ["ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"])
        return shown.stdout.split()[1]

    def running(self, node: str) -> bool:
        result = run(["docker", "inspect", "-f", "{{.State.Running}}", self.container(node)],
                     check=False, timeout=30)
        return result.ok and result.stdout.strip() == "true"

    def connected(self, node: str) -> bool:
        result = run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", self.container(node)],
                     check=False, timeout=30)
        if not result.ok:
            return False
        try:
            return self.network in json.loads(result.stdout or "{}")
        except ValueError:
            return False

    # ------------------------------------------------------------------ life cycle

    def up(self, recreate: bool = True, timeout: float = 180.0) -> None:
        """Create (or re-create) both nodes and wait until they are ready."""
        if recreate:
            self.down()
        self.log(f"starting the cluster ({self.project}: master {self.address(MASTER)}, "
                 f"slave {self.address(SLAVE)}, time scale x{self.time_scale:g})")
        try:
            self.compose("up", "-d", "--no-build", timeout=timeout)
        except ClusterError as exc:
            if "overlaps" in str(exc):
                raise ClusterError(f"{exc.args[0].strip()}: another docker network uses {self.net}.0/24 (another "
                                   f"cluster? `xivo-ha-simulator down --project NAME` removes one), or choose "
                                   f"another /24 with XIVO_HA_SIM_NET=a.b.c") from None
            if "No such image" in str(exc) or "pull access denied" in str(exc):
                raise ClusterError(f"{exc.args[0].strip()}: build the node image first "
                                   f"(make images, or simulator/node/build-images node)") from None
            raise
        self._containers.clear()
        self.wait_ready(NODES + (CARRIER,), timeout)

    def down(self) -> None:
        self.compose("down", "--remove-orphans", "--timeout", "5", timeout=180)
        self._containers.clear()

    def exists(self) -> bool:
        result = self.compose("ps", "-q", timeout=60, check=False)
        return result.ok and bool(result.stdout.strip())

    def time_scale_of_nodes(self) -> float | None:
        """The time scale the nodes were started with, read on a running one (a run may have
        left the master powered off)."""
        node = next((n for n in NODES if self.running(n)), None)
        if node is None:
            return None
        result = self.exec(node, ["cat", "/etc/xivo-ha-simulator/node.conf"], check=False)
        for line in result.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "TIME_SCALE":
                try:
                    return float(value)
                except ValueError:
                    return None
        return None

    def wait_ready(self, nodes: Sequence[str] = NODES, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while True:
                if self.running(node) and self.exec(node, ["test", "-e", READY_FILE], check=False,
                                                    timeout=30).ok:
                    break
                if time.monotonic() > deadline:
                    logs = run(["docker", "logs", "--tail", "30", self.container(node)], check=False)
                    raise ClusterError(f"the {node} node is not ready after {timeout:g} s; its last lines:\n"
                                       f"{logs.output()}")
                time.sleep(0.5)

    # ------------------------------------------------------------------ bring-up with the toolkit

    def bring_up(self, users: int, trunk_expiry: int | None = None, replication: str = "hourly") -> BringUp:
        """Make the fresh nodes a master and a slave with the real toolkit; see the module doc."""
        master, slave = self.address(MASTER), self.address(SLAVE)
        steps: list[tuple[str, float]] = []

        def step(name: str, action: Callable[[], object]):
            started = time.monotonic()
            self.log(f"bring-up: {name}")
            value = action()
            steps.append((name, round(time.monotonic() - started, 2)))
            return value

        step(f"{users} demo users on the master", lambda: self.add_users(MASTER, users))
        step(f"[replication] mode = {replication} on both nodes", lambda: self.set_replication_mode(replication))
        if trunk_expiry is not None:
            step(f"the trunk to the carrier on the master (register expiry {trunk_expiry} s)",
                 lambda: self.set_trunk(MASTER, trunk_expiry))
        step(f"xivo-ha enable slave {master} (on the slave)",
             lambda: self.exec(SLAVE, ["xivo-ha", "enable", "slave", master], timeout=120))
        step(f"xivo-ha enable master {slave} (on the master)",
             lambda: self.exec(MASTER, ["xivo-ha", "enable", "master", slave], timeout=120))
        token = f"; xivo-ha simulator {time.time():.6f}\n"
        step("a configuration file on the master for xivo-sync", lambda: self.write_file(MASTER, SEED_FILE, token))
        step("xivo-sync -i (the slave's host key fingerprint, its root password through sshpass)",
             lambda: self.exec(MASTER, ["xivo-sync", "-i", "--password-from-env", "--host-key-fingerprint",
                                        self.host_key_fingerprint(SLAVE)], env={"SSHPASS": SSH_PASSWORD},
                               timeout=120))
        step(f"xivo-master-slave-db-replication {slave}",
             lambda: self.exec(MASTER, ["xivo-master-slave-db-replication", slave], timeout=300))
        step("xivo-sync", lambda: self.exec(MASTER, ["xivo-sync"], timeout=300))

        def verify():
            on_master, on_slave = self.users_digest(MASTER), self.users_digest(SLAVE)
            if on_master != on_slave:
                raise ClusterError(f"after replication the slave has users {on_slave[0]} ({on_slave[1]}) "
                                   f"but the master {on_master[0]} ({on_master[1]}): see the output of "
                                   f"xivo-master-slave-db-replication above")
            copied = self.exec(SLAVE, ["cat", SEED_FILE], check=False).stdout
            if copied != token:
                raise ClusterError(f"xivo-sync did not copy {SEED_FILE} to the slave")
            return on_master[0]

        count = step("the slave has the master's users and files", verify)
        step("restart the master's registrar (xivo-service restart)",
             lambda: self.exec(MASTER, ["service", "kamailio", "restart"], timeout=60))
        step("one xivo-check-master-status on the slave (stops its registrar)", lambda: self.check_once())
        status = self.exec(SLAVE, ["xivo-manage-slave-services", "status"], check=False)
        if status.returncode != 3:
            raise ClusterError(f"the slave's services still run after a check with the master up "
                               f"(xivo-manage-slave-services status exit {status.returncode}: {status.output()})")
        primary, backup = self.provisioned_registrars()
        if backup != slave:
            raise ClusterError(f"the master's provisioning names {backup!r} as backup registrar, not the "
                               f"slave {slave}: `xivo-ha enable master` did not update it")
        return BringUp(master=master, slave=slave, gateway=self.gateway, primary=primary, backup=backup,
                       users=count, expiry=self.sip_expiry(MASTER), granted=self.granted(MASTER), steps=steps)

    def add_users(self, node: str, count: int) -> None:
        if count <= 0:
            return
        self.exec(node, ["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-v", "ON_ERROR_STOP=1",
                         "-v", "first=1", "-v", f"count={int(count)}", "-d", "asterisk",
                         "-f", f"{SHARE}/demo-users.sql"], timeout=120)
        # one provd device + config per new line, as provisioning a phone creates them
        self.exec(node, ["xivo-ha-sim-provd", "devices", self.address(node)], timeout=120)

    def set_trunk(self, node: str, expiry: int) -> None:
        """The node's SIP trunk to the carrier (simulator/node/trunk.sql), with the carrier's secret."""
        secret = self.exec(CARRIER, ["cat", TRUNK_SECRET_FILE], what="the carrier's trunk secret").stdout.strip()
        if not secret.isalnum():
            raise ClusterError(f"the carrier's {TRUNK_SECRET_FILE} holds no usable secret: recreate the cluster")
        script = (f"\\set name '{TRUNK_USER}'\n\\set secret '{secret}'\n\\set host '{self.address(CARRIER)}'\n"
                  f"\\set port '5060'\n\\set expiry '{int(expiry)}'\n\\i {SHARE}/trunk.sql\n")
        self.exec(node, ["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-v", "ON_ERROR_STOP=1", "-d", "asterisk"],
                  stdin=script, timeout=60, what=f"{node}: the trunk rows (trunk.sql)")

    def trunk_expiry(self, node: str) -> int | None:
        """The ~expiry of the node's trunk register row, None without one."""
        value = self.sql(node, "SELECT var_val FROM staticsip WHERE var_name = 'register' AND commented = 0 "
                               "ORDER BY id LIMIT 1")
        _, tilde, expiry = value.rpartition("~")
        return int(expiry) if tilde and expiry.isdigit() else None

    def sql(self, node: str, query: str) -> str:
        return self.exec(node, ["runuser", "-u", "postgres", "--", "psql", "-XqAt", "-v", "ON_ERROR_STOP=1",
                                "-d", "asterisk", "-c", query], timeout=60).stdout.strip()

    def users_digest(self, node: str) -> tuple[int, str]:
        text = self.sql(node, "SELECT count(*) || ' ' || md5(coalesce(string_agg(name, ',' ORDER BY name), ''))"
                              " FROM usersip")
        count, _, digest = text.partition(" ")
        return int(count), digest

    def sip_expiry(self, node: str) -> dict:
        rows = self.sql(node, "SELECT var_name || '=' || coalesce(var_val, '') FROM staticsip "
                              "WHERE var_name IN ('minexpiry', 'maxexpiry', 'defaultexpiry') ORDER BY var_name")
        return dict(line.split("=", 1) for line in rows.splitlines() if "=" in line)

    def granted(self, node: str) -> dict:
        """min/max/default expiry the node's registrar was started with (scaled seconds)."""
        text = self.exec(node, ["cat", KAMAILIO_CFG], check=False).stdout
        values = {}
        for line in text.splitlines():
            if line.startswith('modparam("registrar", "'):
                name = line.split('"')[3]
                if name in ("min_expires", "max_expires", "default_expires"):
                    values[name] = int(line.rsplit(",", 1)[1].strip(" );"))
        return values

    def write_file(self, node: str, path: str, text: str) -> None:
        self.exec(node, ["mkdir", "-p", str(Path(path).parent)])
        self.exec(node, ["dd", f"of={path}", "status=none"], stdin=text)

    def provisioned_registrars(self) -> tuple[str, str]:
        """(registrar_main, registrar_backup) of the master's provd registrar config."""
        names = self.exec(MASTER, ["ls", PROVD_CONFIGS]).stdout.split()
        for name in sorted(names):
            text = self.exec(MASTER, ["cat", f"{PROVD_CONFIGS}/{name}"]).stdout
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("X_type") == "registrar":
                return str(data.get("registrar_main") or ""), str(data.get("registrar_backup") or "")
        raise ClusterError(f"no registrar config in the master's {PROVD_CONFIGS}")

    # ------------------------------------------------------------------ settings of a node

    def set_setting(self, node: str, section: str, key: str, value: str) -> None:
        """Edit /etc/xivo-ha/xivo-ha.conf on a node, as an administrator would."""
        script = (
            "import sys\n"
            "from configobj import ConfigObj\n"
            "conf = ConfigObj('/etc/xivo-ha/xivo-ha.conf', encoding='utf-8')\n"
            "section, key, value = sys.argv[1:4]\n"
            "conf.setdefault(section, {})[key] = value\n"
            "conf.write()\n"
        )
        self.exec(node, ["python3", "-c", script, section, key, value])

    def replication_modes(self, node: str) -> tuple[str, ...]:
        """The [replication] mode values the node's toolkit knows; () when it has no such setting."""
        return tuple(self.exec(node, ["python3", "-c", _MODES_SCRIPT]).stdout.split())

    def replication_mode(self, node: str) -> str:
        """The node's [replication] mode: hourly when its toolkit has no such setting."""
        if not self.replication_modes(node):
            return "hourly"
        return self.exec(node, ["python3", "-c", _MODE_SCRIPT]).stdout.strip()

    def set_replication_mode(self, mode: str) -> bool:
        """Set [replication] mode on both nodes; whether it changed on any.

        A toolkit without the setting replicates hourly: nothing to write then for
        hourly, and continuous is refused with what to do.
        """
        if mode not in REPLICATION_MODES:
            raise ValueError(f"replication mode {mode!r}: expected one of {', '.join(REPLICATION_MODES)}")
        changed = False
        for node in NODES:
            known = self.replication_modes(node)
            if mode not in known and (known or mode != "hourly"):
                raise ClusterError(f"the {node} node's xivo-ha has no [replication] mode = {mode} "
                                   f"(it knows: {', '.join(known) or 'hourly only'}): rebuild the .deb and the "
                                   f"node image (make deb, simulator/node/build-images node)")
            if known and self.replication_mode(node) != mode:
                self.set_setting(node, "replication", "mode", mode)
                changed = True
        return changed

    # ------------------------------------------------------------------ the slave's checks

    def check_env(self) -> dict[str, str]:
        return scaled_probe_env(self.time_scale)

    def check_once(self, timeout: float | None = None) -> Result:
        """One real xivo-check-master-status on the slave, probe timers divided by K."""
        budget = timeout or (120.0 + 3 * CHECK_PERIOD / self.time_scale)
        argv = ["xivo-check-master-status", *fast_check_switches(self.time_scale, self.fast), self.address(MASTER)]
        result = self.exec(SLAVE, argv, env=self.check_env(), timeout=budget, check=False)
        if result.returncode not in (0,):
            self.log(f"xivo-check-master-status exited {result.returncode}: {result.output()}")
        return result

    def slave_state(self) -> dict:
        result = self.exec(SLAVE, ["cat", FAILOVER_STATE], check=False, timeout=30)
        if not result.ok:
            return {}
        try:
            return json.loads(result.stdout)
        except ValueError:
            return {}

    def slave_services_running(self) -> bool:
        return self.exec(SLAVE, ["xivo-manage-slave-services", "status"], check=False).returncode == 0

    # ------------------------------------------------------------------ back to normal

    def restore_master(self) -> None:
        """Master running, on the network, no packet filter, link up, registrar running."""
        if not self.running(MASTER):
            run(["docker", "start", self.container(MASTER)], timeout=60)
        if not self.connected(MASTER):
            run(["docker", "network", "connect", "--ip", self.address(MASTER), self.network,
                 self.container(MASTER)], timeout=60)
        self.wait_ready([MASTER], timeout=120)
        self.exec(MASTER, ["nft", "delete", "table", "inet", "xivo_ha_sim"], check=False)
        device = self.device(MASTER)
        if device:
            self.exec(MASTER, ["ip", "link", "set", device, "up"], check=False)
        if self.exec(MASTER, ["service", "kamailio", "status"], check=False).returncode != 0:
            self.exec(MASTER, ["service", "kamailio", "start"], timeout=60)

    def device(self, node: str) -> str:
        """The node's interface that holds its cluster address."""
        out = self.exec(node, ["ip", "-o", "-4", "addr", "show", "to", f"{self.address(node)}/32"],
                        check=False).stdout.split()
        return out[1].split("@")[0] if len(out) > 1 else ""

    def reset(self, sip_probe: bool = False) -> None:
        """Back to the state right after bring-up: master serving, slave standing by."""
        self.restore_master()
        self.set_setting(SLAVE, "probe", "sip_probe", "on" if sip_probe else "off")
        self.check_once()
        if self.slave_services_running():
            self.exec(SLAVE, ["xivo-manage-slave-services", "stop"], timeout=60)
        state = self.slave_state()
        if state.get("mode") == SERVING:
            self.check_once()


def transition_time(state: Mapping, now: float, now_wall: float) -> tuple[float, float]:
    """(monotonic, wall) time the slave's state changed to its mode: the time it wrote
    (``last_failover`` or ``last_failback``, ISO 8601), else now.

    A check in fast mode runs many rounds; the change is seen at its end, up to a
    loop later than it happened.
    """
    stamp = state.get("last_failover" if state.get("mode") == SERVING else "last_failback")
    try:
        wall = datetime.fromisoformat(str(stamp)).timestamp() if stamp else None
    except ValueError:
        wall = None
    if wall is None or not 0 <= now_wall - wall <= 3600:
        return now, now_wall
    return now - (now_wall - wall), wall


class Checker:
    """Runs the slave's check every 60/K s (K > 1) or watches cron do it (K = 1).

    Every change of the slave's failover mode (standby/serving) is kept in
    :attr:`events`, with the sentence xivo-check-master-status gave for it.
    """

    def __init__(self, cluster: Cluster, log: Log | None = None):
        self.cluster = cluster
        self.log = log or cluster.log
        self.events: list[SlaveEvent] = []
        self.checks = 0
        self.history: list[tuple[float, str]] = []  # (monotonic, the slave's verdict on the master) per check
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mode: str | None = None

    @property
    def period(self) -> float:
        return CHECK_PERIOD / self.cluster.time_scale

    @property
    def drives_checks(self) -> bool:
        return self.cluster.time_scale != 1

    @property
    def mode(self) -> str | None:
        return self._mode

    def start(self) -> None:
        self._mode = self.cluster.slave_state().get("mode")
        self._thread = threading.Thread(target=self._loop, name="slave-checks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def checks_between(self, start: float, end: float | None = None) -> tuple[int, int]:
        """(checks, checks that found the master down) that ended between ``start`` and ``end``."""
        inside = [c for t, c in self.history if t >= start and (end is None or t <= end)]
        return len(inside), sum(1 for c in inside if c not in ("", MASTER_UP))

    def failovers(self) -> int:
        return sum(1 for e in self.events if e.mode == SERVING)

    def failbacks(self) -> int:
        return sum(1 for e in self.events if e.mode == STANDBY)

    def _loop(self) -> None:
        # Bounded: one iteration per period until stopped (the run's length bounds it).
        next_at = time.monotonic()
        poll = self.period if self.drives_checks else 5.0
        while not self._stop.is_set():
            try:
                if self.drives_checks:
                    self.cluster.check_once()
                    self.checks += 1
                self._observe()
            except ClusterError as exc:
                self.errors += 1
                self.log(f"slave check: {exc}")
            next_at += poll
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic():
                next_at = time.monotonic()

    def _observe(self) -> None:
        state = self.cluster.slave_state()
        if self.drives_checks:
            self.history.append((time.monotonic(), str(state.get("condition") or "")))
        mode = state.get("mode")
        if mode and mode != self._mode:
            t, wall = transition_time(state, time.monotonic(), time.time())
            event = SlaveEvent(t, wall, mode, str(state.get("condition", "")), str(state.get("reason", "")))
            self.events.append(event)
            self.log(f"slave: {mode}: {event.reason}")
            self._mode = mode
