"""`xivo-ha support-bundle` on test_doctor's real pair: what the manifest says is in the
archive, the archive is 0600, and the test's secrets appear nowhere in it."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import time
from datetime import datetime

import pytest

from test_doctor import LOOPBACK, ok
from xivo_ha.bundle import MONTHS

pytestmark = pytest.mark.integration

SECRET = "S3cretTest"
KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQ"


def extract(archive, into):
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert all(m.isfile() and m.mode == 0o600 for m in members)
        assert all(not m.name.startswith("/") and ".." not in m.name.split("/") for m in members)
        tops = {m.name.split("/", 1)[0] for m in members}
        assert len(tops) == 1
        tar.extractall(into)
    return into / tops.pop(), {m.name.split("/", 1)[1] for m in members}


def every_byte(directory) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def days_ago(days: float) -> float:
    return time.time() - days * 86400


def bsd(when: float) -> str:
    """rsyslog's traditional timestamp (local time, no year)."""
    tm = time.localtime(when)
    return f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {time.strftime('%H:%M:%S', tm)}"


def iso(when: float) -> str:
    """Bookworm rsyslog's RFC 3339 timestamp."""
    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="microseconds")


@pytest.fixture
def secret_master(pair):
    """The master's settings file holds a DSN with a password and a secret; a log has both too."""
    conf = pair.master.path("/etc/xivo-ha/xivo-ha.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f'[database]\ndsn = "{pair.master.db.dsn} password={SECRET}"\n'
                    f'# webhook_secret = {SECRET}\n# uri = postgresql://asterisk:{SECRET}@10.0.0.1/asterisk\n')
    pair.master.env.pop("XIVO_HA_DATABASE_DSN")
    syslog = pair.master.path("/var/log/syslog")
    syslog.parent.mkdir(parents=True, exist_ok=True)
    # A file written lately may still begin with lines older than the period (weekly
    # rotation, --days 7): each line is judged by its own timestamp, in either format.
    syslog.write_text(f"{bsd(days_ago(12))} xivo xivo-ha[39]: rotated late, too old as well\n"
                      f"{iso(days_ago(20))} xivo xivo-ha[38]: an RFC 3339 line too old as well\n"
                      f"{bsd(days_ago(1))} xivo xivo-ha[42]: connecting with password={SECRET}\n"
                      f"{bsd(days_ago(1))} xivo cron[7]: unrelated line\n"
                      f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----\n"
                      f"{iso(days_ago(0.1))} xivo xivo-ha[43]: an RFC 3339 line of today\n")
    rotated = pair.master.path("/var/log/syslog.2.gz")
    rotated.write_bytes(gzip.compress(f"{bsd(days_ago(4))} xivo xivo-ha[41]: last replication succeeded\n".encode()))
    old = pair.master.path("/var/log/syslog.9.gz")
    old.write_bytes(gzip.compress(f"{bsd(days_ago(40))} xivo xivo-ha[40]: too old to be included\n".encode()))
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    return pair


def test_bundle_holds_its_manifest_and_no_secret(secret_master, tmp_path):
    pair = secret_master
    archive = tmp_path / "bundle.tar.gz"
    result = ok(pair.master.run("support-bundle", "-o", str(archive)))
    assert result.stdout.startswith(f"wrote {archive}: ")
    assert archive.stat().st_mode & 0o777 == 0o600

    top, names = extract(archive, tmp_path / "out")
    manifest = json.loads((top / "manifest.json").read_text())
    collected = {item["name"] for item in manifest["collected"]}
    missing = {item["name"]: item["reason"] for item in manifest["not_collected"]}
    assert names == collected | {"manifest.json"}
    assert not collected & set(missing)
    assert all(reason for reason in missing.values())
    for name in ("doctor/local.json", "doctor/peer.json", "status.json", "etc/xivo/ha.conf",
                 "etc/xivo-ha/xivo-ha.conf", "etc/cron.d/xivo-ha-master", "var/lib/xivo-ha/replication.json",
                 "var/lib/xivo-ha/sync.json", "logs/syslog.txt", "packages.txt"):
        assert name in collected, (name, missing.get(name))
    assert missing["var/lib/xivo-ha/failover.json"] == "no such file"
    # The probes' last results and the event topics' last states are asked for too.
    for name in ("var/lib/xivo-ha/probes.json", "var/lib/xivo-ha/events.json"):
        assert name in collected or missing.get(name) == "no such file", name
    assert "logs/journal.txt" in missing

    local = json.loads((top / "doctor/local.json").read_text())
    assert local["facts"]["ha"] == {"role": "master", "remote_address": LOOPBACK}
    assert {c["status"] for c in local["checks"]} == {"OK"}
    assert json.loads((top / "doctor/peer.json").read_text())["ha"]["role"] == "slave"
    assert json.loads((top / "status.json").read_text())["role"] == "master"
    logs = (top / "logs/syslog.txt").read_text()
    assert "last replication succeeded" in logs and "connecting with password=REDACTED" in logs
    assert "unrelated line" not in logs and "too old" not in logs
    assert "an RFC 3339 line of today" in logs
    settings_text = (top / "etc/xivo-ha/xivo-ha.conf").read_text()
    assert "password=REDACTED" in settings_text and "webhook_secret = REDACTED" in settings_text
    assert "asterisk:REDACTED@10.0.0.1" in settings_text
    packages = (top / "packages.txt").read_text()
    assert "postgresql-15 15." in packages and "xivo-ha" in packages

    everything = every_byte(top)
    assert SECRET.encode() not in everything
    assert KEY_BODY.encode() not in everything
    assert b"xivo_id_rsa\n-----BEGIN" not in everything


def test_unreachable_peer_is_said_in_the_manifest(pair, tmp_path):
    pair.sshd.stop()
    archive = tmp_path / "bundle.tar.gz"
    ok(pair.master.run("support-bundle", "-o", str(archive), "--days", "1"))
    top, names = extract(archive, tmp_path / "out")
    manifest = json.loads((top / "manifest.json").read_text())
    missing = {item["name"]: item["reason"] for item in manifest["not_collected"]}
    assert "doctor/peer.json" in missing and "doctor/peer.json" not in names
    assert manifest["days"] == 1


def test_bad_input_exits_2_and_writes_nothing(pair, tmp_path):
    before = set(tmp_path.iterdir())
    for args in (["--days", "0"], ["--days", "many"], ["-o", str(tmp_path / "missing/dir/b.tgz")],
                 ["-o", str(tmp_path)]):
        result = pair.master.run("support-bundle", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert set(tmp_path.iterdir()) == before
