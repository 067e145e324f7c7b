"""The forced command of the HA key on the slave: ``/usr/lib/xivo-ha/peer-command``.

``xivo-sync -i`` installs the master's key as
``command="/usr/lib/xivo-ha/peer-command",from="<master>",restrict``; sshd then runs
this program whatever the master asked, with the request in
``$SSH_ORIGINAL_COMMAND``.  The request is split with :mod:`shlex` and allowed only
when it is one of the commands the master runs over this key (:func:`decide`):

* ``true`` (is the key accepted?);
* ``xivo-ha doctor --facts``, ``xivo-ha status --json``, ``xivo-ha --version``;
* rsync's receiving server for ``xivo-sync``'s push, into exactly one of this
  slave's ``[sync] directories``;
* rsync's sending server for ``xivo-sync --failback``, reading only this slave's
  ``[sync] failback_directories``.

rsync options are checked against explicit lists (:data:`RECEIVER`,
:data:`SENDER`); anything else is refused.  The directories come from the slave's
own ``/etc/xivo-ha/xivo-ha.conf``, never from the request.  A receive runs in the
destination directory opened component by component without following a link
(a link planted there is refused, not followed).  Refused: one line on stderr and
in syslog, exit 1.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Sequence

from . import log, paths, settings, system, sync
from .errors import OperationFailed, XivoHaError

REFUSED = sync.FORCED_REFUSAL
XIVO_HA = ("xivo-ha", "/usr/bin/xivo-ha")
XIVO_HA_REQUESTS = (("doctor", "--facts"), ("status", "--json"), ("--version",))
RSYNC = "rsync"


@dataclass(frozen=True)
class RsyncOptions:
    """What one rsync server role may be given: short letters and exact or patterned long options."""

    letters: frozenset[str]
    exact: frozenset[str]
    patterns: tuple[re.Pattern, ...]

    def refused(self, option: str) -> str | None:
        """None when ``option`` is allowed, else why not."""
        if option.startswith("--"):
            if option in self.exact or any(p.fullmatch(option) for p in self.patterns):
                return None
            return f"rsync option {option} is not allowed"
        letters, _, capabilities = option[1:].partition("e")
        # after "e" rsync's server options carry the protocol capabilities, not options
        if not letters or not re.fullmatch(r"[.A-Za-z]*", capabilities):
            return f"rsync option {option} is not allowed"
        extra = sorted(set(letters) - self.letters)
        if extra:
            return f"rsync option -{''.join(extra)} (in {option}) is not allowed"
        return None


TIMEOUT = re.compile(r"--timeout=[0-9]{1,6}")
# xivo-sync's push: rsync -a --delete-after --mkpath --timeout=N --out-format=... (no -R).
RECEIVER = RsyncOptions(frozenset("logDtpr"), frozenset({"--delete-after", "--mkpath", "--log-format=%i"}),
                        (TIMEOUT,))
# xivo-sync --failback: rsync -rltDR --no-implied-dirs --ignore-missing-args --timeout=N.
SENDER = RsyncOptions(frozenset("lDtrR"), frozenset({"--ignore-missing-args", "--no-implied-dirs"}), (TIMEOUT,))


@dataclass(frozen=True)
class Allowed:
    """This slave's own view: its root and the directories its settings name."""

    root: str  # "/" on a real slave
    directories: tuple[str, ...]  # [sync] directories: where the master's push may write
    failback: tuple[str, ...]  # [sync] failback_directories: what the master may read

    def on_node(self, node_path: str) -> str:
        return node_path if self.root == "/" else self.root.rstrip("/") + node_path


@dataclass(frozen=True)
class Decision:
    allowed: bool
    sentence: str
    kind: str = ""  # "true", "xivo-ha", "receive", "send"
    argv: tuple[str, ...] = ()  # what runs: xivo-ha's arguments, or the rsync server's argv
    directories: tuple[str, ...] = ()  # node paths the rsync server works in


def _refuse(sentence: str) -> Decision:
    return Decision(False, sentence)


def _normal(path: str) -> bool:
    """Absolute, without ``.``/``..`` components, doubled or trailing slashes (bar one)."""
    bare = path[:-1] if path.endswith("/") and path != "/" else path
    return path.startswith("/") and posixpath.normpath(bare) == bare and "/./" not in bare + "/"


def decide(argv: Sequence[str], allowed: Allowed) -> Decision:
    """Whether the master's request ``argv`` may run on this slave, and a sentence saying why."""
    argv = tuple(argv)
    shown = shlex.join(argv) if argv else "an interactive login"
    if argv == ("true",):
        return Decision(True, "the master checks that its key is accepted", "true", argv)
    if len(argv) > 1 and argv[0] in XIVO_HA and argv[1:] in XIVO_HA_REQUESTS:
        return Decision(True, f"the master asks `xivo-ha {' '.join(argv[1:])}`", "xivo-ha", ("xivo-ha", *argv[1:]))
    if argv[:2] != (RSYNC, "--server"):
        return _refuse(f"`{shown[:200]}` is not a command the master runs over the HA key")
    sender = argv[2:3] == ("--sender",)
    rules = SENDER if sender else RECEIVER
    rest = argv[3:] if sender else argv[2:]
    if "." not in rest:
        return _refuse(f"`{shown[:200]}`: not an rsync server request")
    dot = rest.index(".")
    options, targets = rest[:dot], rest[dot + 1:]
    for option in options:
        why = rules.refused(option) if option.startswith("-") else f"rsync argument {option!r} is not an option"
        if why:
            return _refuse(why)
    if not targets:
        return _refuse("rsync server request without a path")
    if sender:
        return _decide_send(argv, targets, allowed)
    return _decide_receive(argv[:2 + dot], targets, allowed)


def _decide_receive(head: tuple[str, ...], targets: tuple[str, ...], allowed: Allowed) -> Decision:
    if len(targets) != 1:
        return _refuse("an rsync receive into more than one path")
    target = targets[0]
    if not _normal(target):
        return _refuse(f"rsync receive into {target!r}: not a normalised absolute path")
    for directory in allowed.directories:
        if target.rstrip("/") == allowed.on_node(directory):
            return Decision(True, f"the master synchronises {directory}", "receive", (*head, ".", "."),
                            (directory,))
    return _refuse(f"rsync receive into {target}: not one of this slave's [sync] directories")


def _decide_send(argv: tuple[str, ...], targets: tuple[str, ...], allowed: Allowed) -> Decision:
    anchor = allowed.root.rstrip("/") + "/./"
    directories = []
    for target in targets:
        relative = target[len(anchor):] if target.startswith(anchor) else ""
        if not relative or not _normal("/" + relative) or relative.endswith("/"):
            return _refuse(f"rsync send of {target!r}: not {anchor}<directory>")
        if "/" + relative not in allowed.failback:
            return _refuse(f"rsync send of /{relative}: not one of this slave's [sync] failback_directories")
        directories.append("/" + relative)
    return Decision(True, f"the master brings back {', '.join(directories)}", "send", argv, tuple(directories))


# ---------------------------------------------------------------------------
# I/O: the program sshd runs
# ---------------------------------------------------------------------------


def allowed_here() -> Allowed:
    """This slave's root and directories, from its own settings file (not the environment)."""
    config = settings.load(environ={})
    return Allowed(
        str(paths.root()),
        tuple(sync.check_directory(d, "[sync] directories entry") for d in config.sync.directories),
        tuple(sync.check_directory(d, "[sync] failback_directories entry") for d in config.sync.failback_directories),
    )


def open_below_root(node_path: str, create: bool) -> int | None:
    """A descriptor of ``node_path`` under the root, reached without following any link.

    Missing components are created (0755) when ``create``, else None is returned.
    A link or a non-directory on the way raises :class:`OperationFailed`.
    """
    fd = os.open(paths.root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in node_path.strip("/").split("/"):
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OperationFailed(f"{node_path}: {part!r} is a link or not a directory: not followed") \
                        from None
                raise OperationFailed(f"cannot open {node_path}: {exc.strerror}") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refused(logger, sentence: str) -> int:
    logger.warning("%s: %s", REFUSED, sentence)
    return 1


def main(environ=None) -> int:
    environ = os.environ if environ is None else environ
    logger = log.setup()
    request = environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        argv = shlex.split(request)
    except ValueError:
        return _refused(logger, f"`{request[:200]}` cannot be split into words")
    try:
        decision = decide(argv, allowed_here())
    except XivoHaError as exc:
        return _refused(logger, f"{shlex.join(argv)[:200]}: {exc}")
    if not decision.allowed:
        return _refused(logger, decision.sentence)
    if decision.kind == "true":
        return 0
    if decision.kind == "xivo-ha":
        from .cli import ha

        return ha.main(list(decision.argv))
    try:
        if decision.kind == "receive":
            fd = open_below_root(decision.directories[0], create=True)
        else:
            for directory in decision.directories:
                found = open_below_root(directory, create=False)
                if found is not None:
                    os.close(found)
            fd = None
        system.replace_process(decision.argv, fd)
    except OperationFailed as exc:
        return _refused(logger, str(exc))
