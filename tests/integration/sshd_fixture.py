"""A real OpenSSH server on 127.0.0.1 whose "slave filesystem" is a temporary directory.

The server is Debian's /usr/sbin/sshd (``-D -e -f <config>``) with its own host key on
a free loopback port.  ``AuthorizedKeysFile`` points into the slave's temporary root
(``<slave_root>/root/.ssh/authorized_keys``), which is where ``xivo-sync -i`` appends
the key when ``[sync] remote_root`` is that directory; rsync writes there too.
Sessions get the slave's environment (``XIVO_HA_ROOT`` = the slave root, by
``SetEnv``), and the package's ``bin/peer-command`` is installed as the slave's
``/usr/lib/xivo-ha/peer-command``: the forced command of the key ``xivo-sync -i``
installs is the real program.

Password logins (the ``xivo-sync -i`` step) need a root password, and the machine's
own must not be touched: sshd runs in a private mount namespace (``unshare -m``) in
which a copy of /etc/shadow with a throw-away root password is bind-mounted over
the real one, and a tmpfs over /run provides sshd's privilege-separation directory.
Without ``unshare``/mount rights, the server still runs (keys only) and
``password`` is None.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pg import free_port  # noqa: E402


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


class SshServer:
    def __init__(self, base: Path):
        self.base = base
        self.dir = base / "sshd"
        self.slave_root = base / "slave"
        self.port = free_port()
        self.password: str | None = None
        self.process: subprocess.Popen | None = None

    @property
    def authorized_keys(self) -> Path:
        return self.slave_root / "root" / ".ssh" / "authorized_keys"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def peer_command(self) -> Path:
        """The HA key's forced command on this slave (/usr/lib/xivo-ha/peer-command)."""
        return self.slave_root / "usr/lib/xivo-ha/peer-command"

    @property
    def syslog_socket(self) -> Path:
        """Where the slave's programs send syslog lines (bind a datagram socket there to read them)."""
        return self.dir / "syslog.sock"

    def install_peer_command(self, env: dict[str, str] | None = None) -> None:
        """The package's bin/peer-command, installed on the slave with this interpreter
        (and ``env``, through ``env -S`` in its first line)."""
        assignments = "".join(f"{k}={v} " for k, v in (env or {}).items())
        body = (REPO / "bin" / "peer-command").read_text().split("\n", 1)[1]
        self.peer_command.parent.mkdir(parents=True, exist_ok=True)
        self.peer_command.write_text(f"#!/usr/bin/env -S {assignments}{sys.executable}\n{body}")
        self.peer_command.chmod(0o755)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _config(self, password: bool) -> str:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.dir / 'host_ed25519_key'}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if password else 'no'}",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "MaxStartups 50",
            # The slave's environment: its programs see the temporary root as "/".
            f"SetEnv XIVO_HA_ROOT={self.slave_root} XIVO_HA_ALLOW_LOOPBACK_PEER=1 "
            f"XIVO_HA_SYSLOG_SOCKET={self.syslog_socket}",
        ]
        return "\n".join(lines) + "\n"

    def _shadow_with_password(self, password: str) -> Path:
        hashed = _run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n").stdout.strip()
        lines = []
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields and fields[0] == "root":
                fields[1] = hashed
            lines.append(":".join(fields))
        shadow = self.dir / "shadow"
        shadow.write_text("\n".join(lines) + "\n")
        os.chmod(shadow, 0o640)
        return shadow

    def start(self) -> "SshServer":
        self.dir.mkdir(parents=True)
        (self.slave_root / "root").mkdir(parents=True)
        self.install_peer_command()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test slave", "-f",
              str(self.dir / "host_ed25519_key")])
        can_namespace = os.geteuid() == 0 and shutil.which("unshare") and _namespaces_work()
        password = secrets.token_urlsafe(12) if can_namespace else None
        config = self.dir / "sshd_config"
        config.write_text(self._config(password is not None))
        log = open(self.log_path, "w")
        if password is not None:
            shadow = self._shadow_with_password(password)
            script = (
                f"set -e; mount --bind {shlex.quote(str(shadow))} /etc/shadow; "
                "mount -t tmpfs -o mode=0755 xivo-ha-test-run /run; mkdir -m 0755 /run/sshd; "
                f"exec {SSHD} -D -e -f {shlex.quote(str(config))}"
            )
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]
        else:
            if not Path("/run/sshd").is_dir():
                pytest.skip("sshd needs /run/sshd, and no private mount namespace can provide one here")
            argv = [SSHD, "-D", "-e", "-f", str(config)]
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.process.returncode}): {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.settimeout(2)
                    if conn.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"sshd did not start on 127.0.0.1:{self.port}: {self.log()}")
        self.password = password
        return self

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...``, as ``ssh-keygen -lf`` prints it on the slave."""
        shown = _run(["ssh-keygen", "-lf", str(self.dir / "host_ed25519_key.pub")])
        return shown.stdout.split()[1]

    def pin_host_key(self, known_hosts: Path) -> None:
        """What ``xivo-sync -i`` leaves on the master: this sshd's host key, trusted."""
        kind, blob = (self.dir / "host_ed25519_key.pub").read_text().split()[:2]
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")

    def authorize(self, public_key: str) -> None:
        """What an administrator would have done by hand on the slave."""
        self.authorized_keys.parent.mkdir(parents=True, exist_ok=True)
        with open(self.authorized_keys, "a") as handle:
            handle.write(public_key.strip() + "\n")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


_NAMESPACES: bool | None = None


def _namespaces_work() -> bool:
    global _NAMESPACES
    if _NAMESPACES is None:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
             "mount -t tmpfs xivo-ha-probe /mnt && umount /mnt"],
            capture_output=True,
        )
        _NAMESPACES = probe.returncode == 0
    return _NAMESPACES


@pytest.fixture
def sshd(tmp_path):
    """A running sshd for one test; ``sshd.slave_root`` is the slave's filesystem."""
    server = SshServer(tmp_path / "ssh").start()
    yield server
    server.stop()
