"""`system.write_atomic`: exact content and mode, the old file kept on failure, the rename made durable."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xivo_ha import system

pytestmark = pytest.mark.integration

LIB = str(Path(__file__).resolve().parents[2] / "lib")


def child(code: str, *, strace_log: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the library on its path (under strace when asked)."""
    argv = [sys.executable, "-c", code]
    if strace_log is not None:
        argv = ["strace", "-f", "-y", "-o", str(strace_log), "-e", "trace=fsync,rename,renameat,renameat2", *argv]
    return subprocess.run(argv, env={**os.environ, "PYTHONPATH": LIB}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("content, mode", [("ha.conf text\n", 0o644), (b"\x00\xffbinary", 0o600), ("", 0o640)])
def test_the_file_holds_exactly_the_content_with_the_mode(tmp_path, content, mode):
    path = tmp_path / "new" / "dir" / "file"
    system.write_atomic(path, content, mode)
    assert path.read_bytes() == (content.encode() if isinstance(content, str) else content)
    assert path.stat().st_mode & 0o7777 == mode
    assert os.listdir(path.parent) == ["file"]


def test_an_existing_file_keeps_its_owner_and_gets_the_new_mode(tmp_path):
    daemon = pwd.getpwnam("daemon")
    path = tmp_path / "pg_hba.conf"
    path.write_text("old\n")
    os.chown(path, daemon.pw_uid, daemon.pw_gid)
    path.chmod(0o600)

    system.write_atomic(path, "new\n", 0o640)

    info = path.stat()
    assert (path.read_text(), info.st_mode & 0o7777) == ("new\n", 0o640)
    assert (info.st_uid, info.st_gid) == (daemon.pw_uid, daemon.pw_gid)


def test_a_failure_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "ha.conf"
    path.write_text("the old content\n")
    path.chmod(0o640)
    # The kernel refuses writes past RLIMIT_FSIZE (EFBIG): the copy fails after its first 4 KiB.
    result = child(
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from xivo_ha import system\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    system.write_atomic(Path({str(path)!r}), b'x' * 100000, 0o644)\n"
        "except OSError as exc:\n"
        "    sys.exit(f'failed: {exc.strerror}')\n"
    )
    assert result.returncode == 1 and "failed: File too large" in result.stderr, result.stderr
    assert path.read_text() == "the old content\n"
    assert path.stat().st_mode & 0o7777 == 0o640
    assert os.listdir(tmp_path) == ["ha.conf"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_directory_is_fsynced_after_the_rename(tmp_path):
    directory = tmp_path / "etc"
    directory.mkdir()
    log = tmp_path / "strace.log"
    result = child(f"from pathlib import Path\nfrom xivo_ha import system\n"
                   f"system.write_atomic(Path({str(directory / 'ha.conf')!r}), 'text', 0o644)\n", strace_log=log)
    assert result.returncode == 0, result.stderr
    calls = [line.split(maxsplit=1)[1] for line in log.read_text().splitlines() if "(" in line]
    renamed = next(i for i, call in enumerate(calls) if call.startswith("rename") and "ha.conf" in call)
    assert any(re.match(rf"fsync\(\d+<{re.escape(str(directory))}>\)\s+= 0", call) for call in calls[renamed + 1:]), calls
