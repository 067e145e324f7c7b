"""xivo-sync against a real sshd on 127.0.0.1 with real rsync and ssh.

The master's files are under ``node_root`` (``XIVO_HA_ROOT``); the slave's are under
``sshd.slave_root``, which ``[sync] remote_root`` points at.  The first test is
about the push's plan and values; the others run ``bin/xivo-sync``.  The pure merge
and rsync-output decisions are tested in tests/unit/test_sync_merge.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xivo_ha import role, settings, sync, system
from xivo_ha.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
COMMAND = REPO / "bin" / "xivo-sync"
VM = "var/spool/asterisk/voicemail/default/1001"


# ---------------------------------------------------------------------------
# Pure decisions
# ---------------------------------------------------------------------------

def test_push_plan_and_unsafe_values(node_root):
    plan = sync.plan_push(["/etc/a", "/etc/b/"], lambda d: d == "/etc/a")
    assert plan == sync.PushPlan(("/etc/a",), ("/etc/b",))
    with pytest.raises(UsageError):
        sync.plan_push(["etc/relative"], lambda d: True)
    with pytest.raises(UsageError):
        sync.plan_push(["/etc/../root"], lambda d: True)
    remote = sync.Remote("10.0.0.2", "root", 22, node_root / "root/.ssh/xivo_id_rsa", 10, "/", 60, 30)
    shell = remote.rsync_shell()
    assert shell.startswith("ssh -i ") and "BatchMode=yes" in shell and "PreferredAuthentications=publickey" in shell
    unsafe = sync.Remote("10.0.0.2", "root", 22, Path("/root/my key"), 10, "/", 60, 30)
    with pytest.raises(UsageError, match="cannot be passed to ssh safely"):
        unsafe.rsync_shell()
    assert remote.remote_path("/etc/x") == "/etc/x"
    assert sync.Remote("h", "root", 22, Path("/k"), 1, "/srv/slave", 1, 1).remote_path("/etc/x") == "/srv/slave/etc/x"


# ---------------------------------------------------------------------------
# Real ssh, real rsync
# ---------------------------------------------------------------------------

@pytest.fixture
def master(node_root, sshd, monkeypatch):
    monkeypatch.setenv("XIVO_HA_ALLOW_LOOPBACK_PEER", "1")
    monkeypatch.setenv("XIVO_HA_SYNC_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("XIVO_HA_SYNC_REMOTE_ROOT", str(sshd.slave_root))
    monkeypatch.setenv("XIVO_HA_SYNC_CONNECT_TIMEOUT", "5")
    monkeypatch.setenv("XIVO_HA_SYSLOG_SOCKET", str(node_root / "no-syslog"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("SSHPASS", raising=False)
    role.write(role.HaConfig(role.Role.MASTER, "127.0.0.1"))
    return node_root


def xivo_sync(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, str(COMMAND), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def make_key(master_root: Path) -> Path:
    key = master_root / "root/.ssh/xivo_id_rsa"
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "XiVO HA", "-f", str(key)], check=True)
    return key


@pytest.fixture
def keyed_master(master, sshd):
    """A master whose key the slave already accepts (xivo-sync -i was run earlier)."""
    key = make_key(master)
    sshd.authorize(key.with_name("xivo_id_rsa.pub").read_text())
    sshd.pin_host_key(master / "var/lib/xivo-ha/known_hosts")
    return master


def write(path: Path, text: str, mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def files_under(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): p.read_text() for p in sorted(base.rglob("*")) if p.is_file()}


def job(master_root: Path, name: str) -> dict:
    return json.loads((master_root / "var/lib/xivo-ha" / f"{name}.json").read_text())


def forced(sshd) -> str:
    """The option xivo-sync -i gives the key: the slave's forced command."""
    return f'command="{sshd.peer_command}"'


def needs_password(sshd):
    if sshd.password is None:
        pytest.skip("no private mount namespace here: the test sshd cannot offer a root password")


@pytest.mark.integration
def test_init_creates_the_key_and_authorizes_it_once(master, sshd):
    needs_password(sshd)
    result = xivo_sync("-i", "--password-from-env", "--host-key-fingerprint", sshd.host_key_fingerprint,
                       env_extra={"SSHPASS": sshd.password})
    assert result.returncode == 0, result.stderr
    assert "was created and authorized on root@127.0.0.1" in result.stdout
    key = master / "root/.ssh/xivo_id_rsa"
    public = master / "root/.ssh/xivo_id_rsa.pub"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(public.stat().st_mode & 0o777) == "0o644"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    line = public.read_text().strip()
    assert line.startswith("ssh-ed25519 ") and line.endswith(" XiVO HA")
    assert sshd.authorized_keys.read_text().splitlines() == [f'{forced(sshd)},from="127.0.0.1",restrict {line}']
    known = (master / "var/lib/xivo-ha/known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    private_before = key.read_bytes()

    again = xivo_sync("-i", "--password-from-env", "--host-key-fingerprint", sshd.host_key_fingerprint,
                       env_extra={"SSHPASS": sshd.password})
    assert again.returncode == 0, again.stderr
    assert f"already accepts it, confined to its forced command {sshd.peer_command}: nothing to do" in again.stdout
    assert sshd.authorized_keys.read_text().splitlines() == [f'{forced(sshd)},from="127.0.0.1",restrict {line}']
    assert key.read_bytes() == private_before
    # And the key is what the hourly sync uses.
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "[custom]\n")
    assert xivo_sync().returncode == 0
    assert (sshd.slave_root / "etc/asterisk/extensions_extra.d/custom.conf").read_text() == "[custom]\n"


@pytest.mark.integration
def test_init_appends_like_ssh_copy_id_and_reuses_an_existing_key(master, sshd):
    needs_password(sshd)
    key = make_key(master)
    public_line = key.with_name("xivo_id_rsa.pub").read_text().strip()
    write(sshd.authorized_keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtheradminkey admin@laptop")  # no newline
    result = xivo_sync("-i", "--password-from-env", "--host-key-fingerprint", sshd.host_key_fingerprint,
                       env_extra={"SSHPASS": sshd.password})
    assert result.returncode == 0, result.stderr
    assert "was authorized on" in result.stdout
    assert sshd.authorized_keys.read_text() == (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtheradminkey admin@laptop\n"
        f'{forced(sshd)},from="127.0.0.1",restrict {public_line}\n')
    assert key.with_name("xivo_id_rsa.pub").read_text().strip() == public_line


@pytest.mark.integration
def test_init_with_a_wrong_password_fails_cleanly(master, sshd):
    needs_password(sshd)
    result = xivo_sync("-i", "--password-from-env", "--host-key-fingerprint", sshd.host_key_fingerprint,
                       env_extra={"SSHPASS": "not-the-password"})
    assert result.returncode == 1
    assert "could not install the key on root@127.0.0.1" in result.stderr
    assert not sshd.authorized_keys.exists()
    assert (master / "root/.ssh/xivo_id_rsa").exists()  # kept for the next attempt


@pytest.mark.integration
def test_init_password_from_env_requires_the_variable(master):
    result = xivo_sync("-i", "--password-from-env")
    assert result.returncode == 2
    assert "SSHPASS" in result.stderr
    assert not (master / "root/.ssh/xivo_id_rsa").exists()


@pytest.mark.integration
def test_push_mirrors_directories_and_touches_nothing_else(keyed_master, sshd):
    master, slave = keyed_master, sshd.slave_root
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "[custom]\n", mtime=1_600_000_000)
    write(master / "etc/asterisk/extensions_extra.d/sub/deep.conf", "deep\n")
    write(master / "var/lib/asterisk/agi-bin/script.agi", "#!/bin/sh\n").chmod(0o750)
    write(master / "etc/asterisk/sip.conf", "master's, not synchronized\n")
    write(slave / "etc/asterisk/extensions_extra.d/stale.conf", "only on the slave\n")
    write(slave / "etc/asterisk/sip.conf", "the slave's own\n")
    write(slave / "var/lib/asterisk/sounds/x.wav", "outside the synchronized directories\n")

    result = xivo_sync()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Synchronized 2 directories to 127.0.0.1")
    assert "3 updated, 1 deleted, 5 missing skipped" in result.stdout
    for missing in ("/etc/xivo/asterisk", "/var/lib/asterisk/moh", "/var/lib/xivo/certificates",
                    "/var/lib/xivo/sounds/acd", "/var/lib/xivo/sounds/playback"):
        assert f"warning: {missing} does not exist on this node: skipped" in result.stderr
    assert files_under(slave / "etc/asterisk/extensions_extra.d") == {"custom.conf": "[custom]\n",
                                                                     "sub/deep.conf": "deep\n"}
    assert (slave / "etc/asterisk/extensions_extra.d/custom.conf").stat().st_mtime == 1_600_000_000
    assert oct((slave / "var/lib/asterisk/agi-bin/script.agi").stat().st_mode & 0o777) == "0o750"
    assert (slave / "etc/asterisk/sip.conf").read_text() == "the slave's own\n"
    assert (slave / "var/lib/asterisk/sounds/x.wav").exists()
    assert job(master, "sync")["result"] == "success"

    # A file deleted on the master disappears from the slave on the next run.
    (master / "etc/asterisk/extensions_extra.d/sub/deep.conf").unlink()
    result = xivo_sync("--verbose")
    assert result.returncode == 0, result.stderr
    assert "deleted on the slave etc/asterisk/extensions_extra.d/sub/deep.conf" in result.stderr
    assert not (slave / "etc/asterisk/extensions_extra.d/sub/deep.conf").exists()
    assert (slave / "etc/asterisk/extensions_extra.d/custom.conf").exists()
    assert (slave / "etc/asterisk/sip.conf").read_text() == "the slave's own\n"


@pytest.mark.integration
def test_push_without_a_key_says_how_to_make_one(master, sshd):
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "x\n")
    result = xivo_sync()
    assert result.returncode == 1
    assert "no SSH key" in result.stderr and "xivo-sync -i" in result.stderr
    assert not (sshd.slave_root / "etc").exists()
    assert job(master, "sync")["result"] == "failed"


@pytest.mark.integration
def test_push_with_a_key_the_slave_refuses_fails(master, sshd):
    make_key(master)
    sshd.pin_host_key(master / "var/lib/xivo-ha/known_hosts")
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "x\n")
    result = xivo_sync()
    assert result.returncode == 1
    assert result.stderr.startswith("File synchronization failed: rsync to root@127.0.0.1 failed")
    assert "Permission denied" in result.stderr
    assert not (sshd.slave_root / "etc").exists()


@pytest.mark.integration
@pytest.mark.parametrize("args", [[], ["-i"], ["--failback"]])
def test_refused_unless_master(master, sshd, args):
    role.write(role.HaConfig(role.Role.SLAVE, "127.0.0.1"))
    result = xivo_sync(*args)
    assert result.returncode == 1
    assert "this node is not the master (its role is slave" in result.stderr
    assert not (master / "root/.ssh/xivo_id_rsa").exists()


@pytest.mark.integration
def test_failback_brings_back_without_deleting_or_overwriting_newer(keyed_master, sshd):
    master, slave = keyed_master, sshd.slave_root
    # The master had two messages and a greeting before it went down.
    write(master / VM / "INBOX/msg0000.txt", "[message]\ncallerid=Alice\norigtime=100\n", mtime=1000)
    write(master / VM / "INBOX/msg0000.wav", "alice audio", mtime=1000)
    write(master / VM / "busy.wav", "master greeting, recorded after the failback", mtime=9000)
    write(master / VM / "unavail.wav", "old master greeting", mtime=1000)
    write(master / "var/lib/xivo/sounds/recordings/master-only.wav", "master only")
    # The slave took calls meanwhile: its own msg0000 is another message.
    write(slave / VM / "INBOX/msg0000.txt", "[message]\ncallerid=Bob\norigtime=5000\n", mtime=5000)
    write(slave / VM / "INBOX/msg0000.wav", "bob audio", mtime=5000)
    write(slave / VM / "INBOX/msg0001.txt", "[message]\ncallerid=Carol\norigtime=5100\n", mtime=5100)
    write(slave / VM / "INBOX/msg0001.gsm", "carol audio", mtime=5100)
    write(slave / VM / "busy.wav", "slave greeting", mtime=5000)
    write(slave / VM / "unavail.wav", "newer slave greeting", mtime=5000)
    write(slave / "var/spool/asterisk/voicemail/default/1002/INBOX/msg0000.txt", "[message]\ncallerid=Dan\n")
    write(slave / "var/spool/asterisk/monitor/call-1.wav", "recording")
    slave_before = files_under(slave)
    master_before = files_under(master)

    result = xivo_sync("--failback")
    assert result.returncode == 0, result.stderr
    assert "warning: /var/lib/xivo/sounds/recordings does not exist on the slave: skipped" in result.stderr
    after = files_under(master)
    # Nothing of the master's was lost or replaced by something older.
    for name, content in master_before.items():
        if name != f"{VM}/unavail.wav" and not name.startswith("var/lib/xivo-ha/"):
            assert after[name] == content, name
    assert after[f"{VM}/busy.wav"] == "master greeting, recorded after the failback"
    assert after[f"{VM}/unavail.wav"] == "newer slave greeting"
    # Bob's and Carol's messages are renumbered behind Alice's, whole.
    assert after[f"{VM}/INBOX/msg0001.txt"].startswith("[message]\ncallerid=Bob")
    assert after[f"{VM}/INBOX/msg0001.wav"] == "bob audio"
    assert after[f"{VM}/INBOX/msg0002.txt"].startswith("[message]\ncallerid=Carol")
    assert after[f"{VM}/INBOX/msg0002.gsm"] == "carol audio"
    assert after["var/spool/asterisk/voicemail/default/1002/INBOX/msg0000.txt"].endswith("callerid=Dan\n")
    assert after["var/spool/asterisk/monitor/call-1.wav"] == "recording"
    assert (master / VM / "INBOX/msg0001.wav").stat().st_mtime == 5000
    # Every copied file is listed.
    assert f"copied /{VM}/INBOX/msg0000.wav as /{VM}/INBOX/msg0001.wav" in result.stdout
    assert "copied /var/spool/asterisk/monitor/call-1.wav" in result.stdout
    assert f"updated /{VM}/unavail.wav" in result.stdout
    assert f"/{VM}/busy.wav" not in result.stdout
    assert "Brought back 7 files from 127.0.0.1" in result.stdout
    # The slave is left as it was, and no staging area remains.
    assert files_under(slave) == slave_before
    assert [p.name for p in (master / "var/lib/xivo-ha").iterdir() if p.name.startswith(".")] == []
    assert job(master, "failback")["result"] == "success"

    # Running it again brings nothing twice.
    again = xivo_sync("--failback")
    assert again.returncode == 0, again.stderr
    assert "Brought back 0 files" in again.stdout
    def without_state(files: dict) -> dict:
        return {k: v for k, v in files.items() if not k.startswith(("var/lib/xivo-ha/", "var/lib/prometheus/"))}

    assert without_state(files_under(master)) == without_state(after)


@pytest.mark.integration
def test_failback_when_the_slave_cannot_be_reached(keyed_master, sshd):
    sshd.stop()
    result = xivo_sync("--failback")
    assert result.returncode == 1
    assert result.stderr.startswith("Failback copy failed: rsync from root@127.0.0.1 failed")
    assert job(keyed_master, "failback")["result"] == "failed"


# ---------------------------------------------------------------------------
# Hardening: what the slave sends cannot choose where, how or as whom it lands
# ---------------------------------------------------------------------------

MONITOR = "var/spool/asterisk/monitor"


@pytest.mark.integration
def test_failback_never_follows_a_planted_link_and_takes_regular_files_only(keyed_master, sshd):
    master, slave = keyed_master, sshd.slave_root
    secret = write(master / "etc/shadow-like", "root only\n")
    os.chmod(secret, 0o600)
    # On the master, the asterisk user planted links where a copy could be written.
    (master / MONITOR).mkdir(parents=True)
    os.symlink(secret, master / MONITOR / ".call-1.wav.xivo-ha")
    os.symlink(secret, master / MONITOR / "call-2.wav")
    os.symlink(master / "etc", master / MONITOR / "sub")
    # On the slave: a regular file, a link, a fifo, and a file under a name that is a link on the master.
    write(slave / MONITOR / "call-1.wav", "recording 1")
    write(slave / MONITOR / "call-2.wav", "recording 2", mtime=int(time.time()) + 3600)  # newer than the link
    write(slave / MONITOR / "sub/shadow-like", "overwritten through a link", mtime=int(time.time()) + 3600)
    os.symlink("/etc/passwd", slave / MONITOR / "link.wav")
    os.mkfifo(slave / MONITOR / "fifo.wav")

    result = xivo_sync("--failback")
    assert secret.read_text() == "root only\n"
    assert oct(secret.stat().st_mode & 0o7777) == "0o600"
    assert (master / MONITOR / "call-1.wav").read_text() == "recording 1"
    # The link at the target name was replaced by the file, its target untouched.
    assert not (master / MONITOR / "call-2.wav").is_symlink()
    assert (master / MONITOR / "call-2.wav").read_text() == "recording 2"
    assert not (master / MONITOR / "link.wav").exists() and not (master / MONITOR / "link.wav").is_symlink()
    assert not (master / MONITOR / "fifo.wav").exists()
    assert f"warning: /{MONITOR}/link.wav on the slave is not a regular file: skipped" in result.stderr
    assert f"warning: /{MONITOR}/fifo.wav on the slave is not a regular file: skipped" in result.stderr
    # The planted directory link was refused, not followed; the rest went on.
    assert result.returncode == 0, result.stderr
    assert "'sub' is not a directory" in result.stderr and f"not followed: /{MONITOR}/sub/shadow-like skipped" \
        in result.stderr
    assert "Brought back 2 files" in result.stdout
    assert [p.name for p in (master / MONITOR).iterdir() if p.name.endswith(".xivo-ha")] == [".call-1.wav.xivo-ha"]


@pytest.mark.integration
def test_failback_sets_owner_and_modes_itself(keyed_master, sshd):
    master, slave = keyed_master, sshd.slave_root
    setuid = write(slave / MONITOR / "setuid.wav", "s")
    os.chmod(setuid, 0o4755)
    open_file = write(slave / VM / "INBOX/msg0000.txt", "[message]\n")
    os.chmod(open_file, 0o666)
    os.chmod(slave / VM / "INBOX", 0o3777)
    os.chown(open_file, 12345, 12345)

    result = xivo_sync("--failback")
    assert result.returncode == 0, result.stderr
    uid, gid = sync.failback_owner()
    for name in (f"{MONITOR}/setuid.wav", f"{VM}/INBOX/msg0000.txt"):
        info = (master / name).lstat()
        assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == ("0o640", uid, gid), name
    for name in (f"{VM}/INBOX", VM, "var/spool/asterisk/voicemail/default"):
        info = (master / name).lstat()
        assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == ("0o750", uid, gid), name


@pytest.mark.integration
def test_push_keeps_the_slave_s_own_implied_parents(keyed_master, sshd):
    master, slave = keyed_master, sshd.slave_root
    write(master / "etc/asterisk/extensions_extra.d/a.conf", "a")
    os.chmod(master / "etc", 0o700)
    os.chmod(master / "etc/asterisk", 0o700)
    (slave / "etc/asterisk").mkdir(parents=True)
    os.chmod(slave / "etc", 0o755)
    os.chown(slave / "etc/asterisk", 12345, 12345)
    os.chmod(slave / "etc/asterisk", 0o775)

    result = xivo_sync()
    assert result.returncode == 0, result.stderr
    assert (slave / "etc/asterisk/extensions_extra.d/a.conf").read_text() == "a"
    assert oct((slave / "etc").stat().st_mode & 0o7777) == "0o755"
    info = (slave / "etc/asterisk").stat()
    assert (oct(info.st_mode & 0o7777), info.st_uid) == ("0o775", 12345)


@pytest.mark.integration
@pytest.mark.parametrize("setting, value", [
    ("DIRECTORIES", "/"), ("DIRECTORIES", "/etc"), ("DIRECTORIES", "/etc/xivo"),
    ("DIRECTORIES", "/root"), ("DIRECTORIES", "/var/lib/xivo-ha/x"), ("DIRECTORIES", "/var/lib"),
    ("FAILBACK_DIRECTORIES", "/etc/cron.d"), ("FAILBACK_DIRECTORIES", "/"),
])
def test_directories_overlapping_ha_state_are_refused(keyed_master, sshd, setting, value):
    slave = sshd.slave_root
    before = files_under(slave)
    result = xivo_sync(*([] if setting == "DIRECTORIES" else ["--failback"]),
                       env_extra={f"XIVO_HA_SYNC_{setting}": value})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "contains or overlaps" in result.stderr
    assert files_under(slave) == before


@pytest.mark.integration
def test_a_second_run_is_refused_while_one_holds_the_lock(keyed_master, sshd):
    write(keyed_master / "etc/asterisk/extensions_extra.d/a.conf", "a")
    with system.exclusive_lock(keyed_master / "var/lib/xivo-ha/sync.lock", "test"):
        for args in ((), ("--failback",)):
            result = xivo_sync(*args)
            assert result.returncode == 1, result.stderr
            assert "another xivo-sync is running" in result.stderr
    assert not (sshd.slave_root / "etc/asterisk/extensions_extra.d/a.conf").exists()
    assert xivo_sync().returncode == 0


@pytest.mark.integration
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_during_failback_removes_the_staging_copy(keyed_master, sshd, signame):
    master, slave = keyed_master, sshd.slave_root
    big = slave / MONITOR / "big.wav"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as handle:
        handle.write(os.urandom(1 << 20) * 200)
    state_dir = master / "var/lib/xivo-ha"
    process = subprocess.Popen([sys.executable, str(COMMAND), "--failback"], env=dict(os.environ),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(state_dir.glob(".failback-*/var")):
        time.sleep(0.005)
    assert any(state_dir.glob(".failback-*")), "the staging copy never appeared"
    os.killpg(process.pid, getattr(signal, signame))
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert f"interrupted by {signame}" in err
    assert list(state_dir.glob(".failback-*")) == []
    assert not (master / MONITOR / "big.wav").exists()
    assert job(master, "failback")["result"] == "failed"


# ---------------------------------------------------------------------------
# Hardening: ssh trust
# ---------------------------------------------------------------------------

@pytest.mark.integration
def test_init_without_a_terminal_or_a_fingerprint_changes_nothing(master, sshd):
    result = xivo_sync("-i", "--password-from-env", env_extra={"SSHPASS": "secret"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--host-key-fingerprint SHA256:" in result.stderr and "ssh-keygen -lf" in result.stderr
    assert not (master / "root/.ssh/xivo_id_rsa").exists()
    assert not (master / "var/lib/xivo-ha/known_hosts").exists()
    bad = xivo_sync("-i", "--host-key-fingerprint", "MD5:aa:bb", "--password-from-env",
                    env_extra={"SSHPASS": "secret"})
    assert bad.returncode == 2 and "is not a SHA256:... fingerprint" in bad.stderr


@pytest.mark.integration
def test_init_with_another_fingerprint_sends_no_password(master, sshd):
    other = "SHA256:" + "A" * 43
    result = xivo_sync("-i", "--password-from-env", "--host-key-fingerprint", other,
                       env_extra={"SSHPASS": "secret"})
    assert result.returncode == 1
    assert f"the slave offers ED25519 {sshd.host_key_fingerprint}, not {other}: refusing" in result.stderr
    assert not (master / "var/lib/xivo-ha/known_hosts").exists()
    assert not sshd.authorized_keys.exists()
    assert "password" not in sshd.log().lower()


@pytest.mark.integration
def test_ssh_refuses_a_host_key_that_was_not_pinned(keyed_master, sshd):
    (keyed_master / "var/lib/xivo-ha/known_hosts").write_text("")
    write(keyed_master / "etc/asterisk/extensions_extra.d/custom.conf", "x\n")
    result = xivo_sync()
    assert result.returncode == 1
    assert "Host key verification failed" in result.stderr
    assert not (sshd.slave_root / "etc/asterisk/extensions_extra.d/custom.conf").exists()
    assert (keyed_master / "var/lib/xivo-ha/known_hosts").read_text() == ""


@pytest.mark.integration
def test_init_restricts_an_unrestricted_key_already_installed(keyed_master, sshd):
    public = (keyed_master / "root/.ssh/xivo_id_rsa.pub").read_text().strip()
    write(sshd.authorized_keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtheradminkey admin@laptop\n" + public + "\n")
    result = xivo_sync("-i", "--host-key-fingerprint", sshd.host_key_fingerprint)
    assert result.returncode == 0, result.stderr
    assert sshd.authorized_keys.read_text().splitlines() == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtheradminkey admin@laptop",
        f'{forced(sshd)},from="127.0.0.1",restrict {public}']
    again = xivo_sync("-i", "--host-key-fingerprint", sshd.host_key_fingerprint)
    assert again.returncode == 0, again.stderr
    assert "already accepts it, confined to its forced command" in again.stdout
    assert xivo_sync().returncode == 0


@pytest.mark.integration
@pytest.mark.parametrize("answer", ["n", "y"])
def test_init_on_a_terminal_shows_the_fingerprint_and_asks(master, sshd, answer):
    needs_password(sshd)
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen([sys.executable, str(COMMAND), "-i", "--password-from-env"],
                                   env=dict(os.environ, SSHPASS=sshd.password), stdin=terminal,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(controller, f"{answer}\n".encode())
        out, err = process.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    assert f"The slave's ED25519 host key fingerprint is {sshd.host_key_fingerprint}." in out
    assert "Is this the slave's key?" in out
    pinned = master / "var/lib/xivo-ha/known_hosts"
    if answer == "n":
        assert process.returncode == 1
        assert "not confirmed: nothing changed" in err
        assert not pinned.exists() and not sshd.authorized_keys.exists()
    else:
        assert process.returncode == 0, err
        assert pinned.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
        assert sshd.authorized_keys.read_text().startswith(f'{forced(sshd)},from="127.0.0.1",restrict ssh-ed25519 ')


# ---------------------------------------------------------------------------
# Hardening: the forced command confines the HA key to what the master runs
# ---------------------------------------------------------------------------

@pytest.fixture
def confined_master(keyed_master, sshd):
    """A master whose key `xivo-sync -i` installed on the slave, behind the forced command."""
    result = xivo_sync("-i", "--host-key-fingerprint", sshd.host_key_fingerprint)
    assert result.returncode == 0, result.stderr
    assert sshd.authorized_keys.read_text().startswith(f'{forced(sshd)},from="127.0.0.1",restrict ')
    return keyed_master


def with_key(master: Path, sshd, request: str) -> subprocess.CompletedProcess:
    """``request`` sent to the slave with the HA key, as anyone holding the key could."""
    argv = ["ssh", "-F", "none", "-p", str(sshd.port), "-i", str(master / "root/.ssh/xivo_id_rsa"),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={master / 'var/lib/xivo-ha/known_hosts'}", "root@127.0.0.1", request]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def slave_syslog(sshd):
    """The lines the slave's programs send to syslog."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sshd.syslog_socket))
    server.settimeout(10)

    def lines() -> list[str]:
        found = []
        server.settimeout(2)
        with contextlib.suppress(socket.timeout):
            while True:
                found.append(server.recv(4096).decode())
        return found

    yield lines
    server.close()


@pytest.mark.integration
def test_push_and_failback_work_through_the_forced_command(confined_master, sshd):
    master, slave = confined_master, sshd.slave_root
    write(master / "etc/asterisk/extensions_extra.d/custom.conf", "[custom]\n", mtime=1_600_000_000)
    write(master / "var/lib/asterisk/agi-bin/script.agi", "#!/bin/sh\n").chmod(0o750)
    write(slave / "etc/asterisk/extensions_extra.d/stale.conf", "only on the slave\n")
    result = xivo_sync()
    assert result.returncode == 0, result.stderr
    assert "2 updated, 1 deleted" in result.stdout
    assert files_under(slave / "etc/asterisk/extensions_extra.d") == {"custom.conf": "[custom]\n"}
    assert (slave / "etc/asterisk/extensions_extra.d/custom.conf").stat().st_mtime == 1_600_000_000
    assert oct((slave / "var/lib/asterisk/agi-bin/script.agi").stat().st_mode & 0o777) == "0o750"

    write(slave / VM / "INBOX/msg0000.txt", "[message]\ncallerid=Bob\n", mtime=5000)
    write(slave / MONITOR / "call-1.wav", "recording")
    before = files_under(slave)
    result = xivo_sync("--failback")
    assert result.returncode == 0, result.stderr
    assert "Brought back 2 files" in result.stdout
    assert (master / MONITOR / "call-1.wav").read_text() == "recording"
    assert files_under(slave) == before


@pytest.mark.integration
@pytest.mark.parametrize("request_text, why", [
    ("id", "`id` is not a command the master runs over the HA key"),
    ("cat /etc/shadow", "is not a command the master runs"),
    ("rsync --server -logDtpre.iLsfxCIvu --delete-after . {slave}/etc/", "not one of this slave's [sync] directories"),
    ("rsync --server -logDtpre.iLsfxCIvu . {slave}/etc/asterisk/extensions_extra.d/../../",
     "not a normalised absolute path"),
    ("rsync --server --sender -lDtrRe.iLsfxCIvu --remove-source-files . {slave}/./var/spool/asterisk/monitor",
     "--remove-source-files is not allowed"),
    ("rsync --server --sender -lDtrRe.iLsfxCIvu . {slave}/./var/spool/asterisk/monitor/../../../../etc",
     "not {slave}/./<directory>"),
])
def test_anything_else_over_the_key_is_refused_and_logged(confined_master, sshd, slave_syslog,
                                                          request_text, why):
    slave = sshd.slave_root
    write(slave / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(slave / MONITOR / "call-1.wav", "recording")
    before = files_under(slave)
    result = with_key(confined_master, sshd, request_text.format(slave=slave))
    assert result.returncode == 1
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.splitlines() == [line]
    assert line.startswith("xivo-ha peer-command: refused: ") and why.format(slave=slave) in line
    logged = slave_syslog()
    assert len(logged) == 1 and line in logged[0] and "xivo-ha[" in logged[0]
    assert files_under(slave) == before


@pytest.mark.integration
def test_a_real_rsync_into_the_slave_s_etc_is_refused(confined_master, sshd):
    master, slave = confined_master, sshd.slave_root
    write(slave / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(master / "evil/passwd", "root::0:0::/root:/bin/sh\n")
    remote = sync.Remote.from_settings(settings.load(), "127.0.0.1")
    result = subprocess.run(["rsync", "-a", "-e", remote.rsync_shell(), f"{master}/evil/",
                             f"root@127.0.0.1:{slave}/etc/"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "xivo-ha peer-command: refused" in result.stderr
    assert (slave / "etc/passwd").read_text() == "root:x:0:0::/root:/bin/sh\n"


@pytest.mark.integration
def test_a_symlinked_destination_directory_is_not_followed(confined_master, sshd):
    """rsync itself follows a destination directory that is a link (it chdirs into it):
    the forced command opens the directory without following links, and refuses."""
    master, slave = confined_master, sshd.slave_root
    elsewhere = write(slave / "etc/important.conf", "the slave's own\n").parent
    (slave / "var/lib/asterisk").mkdir(parents=True)
    os.symlink(elsewhere, slave / "var/lib/asterisk/agi-bin")
    write(master / "var/lib/asterisk/agi-bin/script.agi", "#!/bin/sh\n")
    before = files_under(slave)
    result = xivo_sync()
    assert result.returncode == 1
    assert "rsync to root@127.0.0.1 failed (/var/lib/asterisk/agi-bin)" in result.stderr
    assert "'agi-bin' is a link or not a directory: not followed" in result.stderr
    assert files_under(slave) == before
    assert (slave / "var/lib/asterisk/agi-bin").is_symlink()


@pytest.mark.integration
def test_the_forced_command_reads_the_slave_s_own_directories(confined_master, sshd):
    """The slave allows what its own settings name; the master's settings do not widen it."""
    master, slave = confined_master, sshd.slave_root
    write(slave / "etc/xivo-ha/xivo-ha.conf", "[sync]\ndirectories = /etc/asterisk/extensions_extra.d\n")
    write(master / "etc/asterisk/extensions_extra.d/a.conf", "a")
    write(master / "var/lib/asterisk/agi-bin/script.agi", "#!/bin/sh\n")
    result = xivo_sync()
    assert result.returncode == 1
    assert "not one of this slave's [sync] directories" in result.stderr
    assert (slave / "etc/asterisk/extensions_extra.d/a.conf").read_text() == "a"
    assert not (slave / "var/lib/asterisk/agi-bin").exists()


@pytest.mark.integration
def test_a_failback_directory_reached_through_a_link_is_not_read(confined_master, sshd):
    """The asterisk user owns /var/spool/asterisk: a link there would have rsync read root's files."""
    master, slave = confined_master, sshd.slave_root
    write(slave / "root/private/monitor/ssh_host_ed25519_key", "the slave's private host key\n")
    (slave / "var/spool").mkdir(parents=True)
    os.symlink(slave / "root/private", slave / "var/spool/asterisk")
    result = xivo_sync("--failback")
    assert result.returncode == 1
    assert "'asterisk' is a link or not a directory: not followed" in result.stderr
    assert not (master / "var/spool").exists()
    assert not list(master.rglob("ssh_host_ed25519_key"))


@pytest.mark.integration
def test_init_adds_the_forced_command_to_an_older_restricted_line(keyed_master, sshd):
    public = (keyed_master / "root/.ssh/xivo_id_rsa.pub").read_text().strip()
    write(sshd.authorized_keys, f'from="127.0.0.1",restrict {public}\n')
    result = xivo_sync("-i", "--host-key-fingerprint", sshd.host_key_fingerprint)
    assert result.returncode == 0, result.stderr
    assert sshd.authorized_keys.read_text().splitlines() == [f'{forced(sshd)},from="127.0.0.1",restrict {public}']
    assert with_key(keyed_master, sshd, "id").returncode == 1
