"""The one layer that runs processes and writes files.

Every process runs through plumbum with an argument list (never a shell string) and a
timeout.  Files are written atomically (temporary file in the same directory, fsync,
rename, fsync of the directory) with an explicit mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NoReturn, Sequence

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from .errors import OperationFailed

DEFAULT_TIMEOUT = 60.0


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
        """Both streams, trimmed, for error messages."""
        return " ".join(part.strip() for part in (self.stderr, self.stdout) if part.strip())


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = False,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Result:
    """Run ``argv`` in its own process group and wait at most ``timeout`` seconds.

    A missing program or a timeout raises :class:`OperationFailed`; a non-zero exit
    raises it only with ``check=True``.  On a timeout, or when this process is
    interrupted while waiting (KeyboardInterrupt, :class:`Interrupted`), the whole
    group is stopped: SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds.
    """
    if not argv:
        raise ValueError("empty command")
    argv = tuple(str(arg) for arg in argv)
    try:
        command = local[argv[0]][argv[1:]]
    except CommandNotFound:
        raise OperationFailed(f"cannot run {argv[0]}: command not found") from None
    if env:
        command = command.with_env(**env)
    kwargs = {"process_group": 0, "stdin": subprocess.PIPE if stdin is not None else subprocess.DEVNULL}
    if cwd is not None:
        kwargs["cwd"] = str(cwd)
    try:
        proc = command.popen(**kwargs)
    except OSError as exc:
        raise OperationFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(stdin.encode("utf-8") if stdin is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        raise OperationFailed(f"{' '.join(argv)} did not finish within {timeout:g} s") from None
    except BaseException:
        stop_group(proc)
        raise
    result = Result(argv, proc.returncode, _text(out), _text(err))
    if check and not result.ok:
        raise OperationFailed(f"{' '.join(argv)} failed (exit {result.returncode}): {result.output() or 'no output'}")
    return result


def replace_process(argv: Sequence[str], cwd_fd: int | None = None) -> NoReturn:
    """Become ``argv`` (exec), in the directory ``cwd_fd`` when given, with this process's streams.

    For a forced ssh command handing its connection to the program it allowed.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if cwd_fd is not None:
            os.fchdir(cwd_fd)
            os.close(cwd_fd)
        os.execvp(argv[0], list(argv))
    except OSError as exc:
        raise OperationFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


KILL_GRACE = 5.0


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if still there after the grace time."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            break
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived while a change was in progress."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def interruptible(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
                  as_failure: bool = False) -> Iterator[None]:
    """Turn ``signals`` into :class:`Interrupted` for the block, so that it can clean up.

    ``as_failure``: raise :class:`OperationFailed` instead ("interrupted by SIGTERM"), for
    jobs whose failures are recorded and reported like any other.
    """
    def handler(signum, _frame):
        if as_failure:
            raise OperationFailed(f"interrupted by {signal.Signals(signum).name}")
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> Iterator[list[int]]:
    """Hold ``signals`` for the block (e.g. a rollback); the list says which arrived."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def which(program: str) -> Path | None:
    found = shutil.which(program)
    return Path(found) if found else None


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def read_json_object(path: Path) -> dict:
    """A state file's JSON object; ``{}`` when it is missing, unreadable or not an object."""
    try:
        text = read_text(path)
        data = json.loads(text) if text else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` in one rename; parents are created (0755).

    A file that already exists keeps its owner and group (e.g. pg_hba.conf belongs to
    postgres, which must still be able to read it); a new file belongs to the caller.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            existing = os.stat(path.name, dir_fd=directory)
        except FileNotFoundError:
            existing = None
        owner = None if existing is None else (existing.st_uid, existing.st_gid)
        write_atomic_at(directory, path.name, lambda fd: _write_all(fd, data), mode, owner)
    finally:
        os.close(directory)


def write_atomic_at(directory: int, name: str, fill: Callable[[int], None], mode: int,
                    owner: tuple[int, int] | None = None, times_ns: tuple[int, int] | None = None) -> None:
    """Replace ``name`` in the open ``directory`` in one rename, durably.

    ``fill(fd)`` writes the content into a new file of a random name, created with
    ``O_EXCL|O_NOFOLLOW`` next to the target (a link there is replaced, never followed);
    then its owner, mode and times are set, its data fsynced, it is renamed over ``name``
    and the directory is fsynced, so that the rename survives a crash.  On any failure
    the new file is removed and ``name`` is left as it was.
    """
    temporary = f".{name}.{secrets.token_hex(8)}.xivo-ha"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=directory)
    try:
        try:
            fill(fd)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            if times_ns is not None:
                os.utime(fd, ns=times_ns)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=directory)
        raise
    os.fsync(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove(path: Path) -> bool:
    """Remove a file; True when it existed."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def touch(path: Path, mode: int = 0o644) -> None:
    if not path.exists():
        write_atomic(path, b"", mode)


class LockBusy(OperationFailed):
    """Another job holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold a non-blocking exclusive flock on ``path`` for the block.

    ``what`` names the job in the message of :class:`LockBusy`, raised at once when
    another process holds the lock.  The lock file (0600, created with its directory)
    records the holder's pid; the lock is released when the block ends or the process dies.
    """
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"another {what} is running ({path} is locked)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Address:
    address: str
    prefix: int
    interface: str


def parse_ipv4_addresses(text: str) -> list[Address]:
    """``ip -o -4 addr show`` output → one :class:`Address` per ``inet`` line."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "inet" in fields[:-1]:
            address, _, prefix = fields[fields.index("inet") + 1].partition("/")
            found.append(Address(address, int(prefix or 32), fields[1]))
    return found


def ipv4_addresses() -> list[Address]:
    """This host's IPv4 addresses (every interface), from ``ip -o -4 addr show``."""
    return parse_ipv4_addresses(run(["ip", "-o", "-4", "addr", "show"], timeout=10).stdout)


def local_ipv4_addresses() -> frozenset[str]:
    return frozenset(entry.address for entry in ipv4_addresses())
