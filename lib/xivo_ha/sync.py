"""Files between the nodes, over ssh with the master's key: ``xivo-sync``.

* :func:`push` (``xivo-sync``): ``rsync -a --delete-after`` of each of the ``[sync]
  directories`` into the same directory on the slave.  A directory missing on the
  master is skipped with a warning; deletions happen only inside the synchronised
  directories.
* :func:`init_key` (``xivo-sync -i``): create ``/root/.ssh/xivo_id_rsa`` and append
  its public key to the slave's ``authorized_keys`` (``ssh-copy-id`` semantics),
  confined to the slave's forced command (:mod:`xivo_ha.peer_command`).
* :func:`failback` (``xivo-sync --failback``): bring back to the master what the
  slave recorded while it was in charge (voicemail, recordings), never deleting and
  never overwriting a newer master file.  See :func:`plan_merge` for voicemail.

Every command line is an argument list.  The one string handed to a shell is
rsync's ``-e`` (rsync splits it on spaces) and the remote command of ``-i``; both
are built only from values checked against :data:`SAFE` and from fixed text.
Node paths are resolved under ``$XIVO_HA_ROOT``; on the slave they are under
``[sync] remote_root`` ("/" on a real slave).
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import re
import shlex
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from . import paths, system
from .errors import OperationFailed, UsageError
from .log import Progress, quiet
from .settings import Settings

KEY_COMMENT = "XiVO HA"
SAFE = re.compile(r"^[A-Za-z0-9_./@%+=:,-]+$")
USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
RSYNC_PARTIAL_VANISHED = 24
VOICEMAIL_SPOOL = "/var/spool/asterisk/voicemail"
MESSAGE = re.compile(r"^msg(\d{4})\.([A-Za-z0-9]+)$")
SSH_CONFIG = "/root/.ssh/config"
# The slave's host key as accepted by ``xivo-sync -i``: ours alone, checked strictly.
KNOWN_HOSTS = paths.STATE_DIR + "/known_hosts"
FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
OUT_FORMAT = "%i %n%L"
# How the slave's forced command (peer_command.REFUSED) starts its answer to a request it refuses.
FORCED_REFUSAL = "xivo-ha peer-command: refused"
# Never synchronised, in either direction: a directory equal to, inside or above one
# of these would carry one node's role, key or state over the other's.
HA_STATE = (paths.HA_CONF, paths.ROOT_SSH, paths.STATE_DIR, paths.CRON_DIR, "/etc/xivo-ha")
# What failback gives to the files and directories it creates on the master,
# whatever they were on the slave: the asterisk user's, group-readable, no other bits.
FAILBACK_OWNER = "asterisk"
FAILBACK_FILE_MODE = 0o640
FAILBACK_DIR_MODE = 0o750


def _safe(value: str, what: str) -> str:
    if not SAFE.match(value):
        raise UsageError(
            f"{what} {value!r} contains characters that cannot be passed to ssh safely "
            f"(allowed: letters, digits and _ . / @ % + = : , -)"
        )
    return value


def _absolute(value: str, what: str) -> str:
    _safe(value, what)
    if not value.startswith("/") or "/../" in f"{value}/" or "/./" in f"{value}/":
        raise UsageError(f"{what} {value!r} must be an absolute path without '..' or '.'")
    return value


def _within(path: str, base: str) -> bool:
    path, base = path.rstrip("/") or "/", base.rstrip("/") or "/"
    return path == base or path.startswith(base.rstrip("/") + "/")


def check_directory(value: str, what: str) -> str:
    """A directory to copy between the nodes: absolute, and clear of our own state."""
    _absolute(value, what)
    for state in HA_STATE:
        if _within(value, state) or _within(state, value):
            raise UsageError(f"{what} {value!r} contains or overlaps {state}, which must stay each node's own")
    return value.rstrip("/") or "/"


# ---------------------------------------------------------------------------
# ssh
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """How to reach the other node: validated values only."""

    host: str
    user: str
    port: int
    key: Path
    connect_timeout: int
    remote_root: str
    timeout: int
    io_timeout: int

    @classmethod
    def from_settings(cls, config: Settings, host: str) -> "Remote":
        options = config.sync
        if not USER.match(options.ssh_user):
            raise UsageError(f"[sync] ssh_user {options.ssh_user!r} is not a valid user name")
        _absolute(options.key, "[sync] key")
        remote_root = _absolute(options.remote_root, "[sync] remote_root").rstrip("/") or "/"
        key = paths.node(options.key)
        _absolute(str(key), "the key path")
        _absolute(str(paths.node(KNOWN_HOSTS)), "the known_hosts path")
        return cls(host, options.ssh_user, int(options.ssh_port), key, int(options.connect_timeout),
                   remote_root, int(options.timeout), int(options.io_timeout))

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def public_key(self) -> Path:
        return self.key.with_name(self.key.name + ".pub")

    def remote_path(self, node_path: str) -> str:
        """A slave node path under ``remote_root``."""
        return (self.remote_root.rstrip("/") + "/" + node_path.lstrip("/")) if self.remote_root != "/" else node_path

    def anchored_remote(self, node_path: str) -> str:
        """``<remote_root>/./<path>``: with ``rsync -R`` only ``<path>`` is recreated."""
        return f"{self.remote_root.rstrip('/')}/./{node_path.lstrip('/')}"

    def common_options(self) -> list[str]:
        config = paths.node(SSH_CONFIG)
        return [
            "-F", _safe(str(config), "the ssh config path") if config.is_file() else "none",
            "-p", str(self.port),
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={paths.node(KNOWN_HOSTS)}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=15",
        ]

    def key_options(self) -> list[str]:
        """Only our key, never a password prompt."""
        return [
            "-i", str(self.key),
            *self.common_options(),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "PreferredAuthentications=publickey",
        ]

    def ssh(self, *command: str) -> list[str]:
        return ["ssh", *self.key_options(), self.login, *command]

    def rsync_shell(self) -> str:
        """rsync's ``-e`` value: rsync splits it on spaces, so every part is checked."""
        return " ".join(_safe(part, "ssh option") for part in ["ssh", *self.key_options()])


def _known_hosts_dir() -> None:
    directory = paths.node(KNOWN_HOSTS).parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)


def key_works(remote: Remote) -> bool:
    """True when the slave accepts our key (BatchMode: never prompts)."""
    _known_hosts_dir()
    result = system.run(remote.ssh("true"), timeout=remote.connect_timeout + 15)
    return result.ok


# ---------------------------------------------------------------------------
# xivo-sync -i
# ---------------------------------------------------------------------------


PUBLIC_KEY = re.compile(r"^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=* [ -~]*$")


def _remote_install_script(authorized_keys: str, public_key: str, command: str) -> str:
    """Install ``public_key`` in ``authorized_keys`` as ``command="<command>",from="<master>",restrict <key>``.

    ``<master>`` is the address the slave sees this connection come from
    (``$SSH_CLIENT``); ``<command>`` is the slave's forced command
    (:mod:`xivo_ha.peer_command`).  Any other line holding the same key (an older,
    unrestricted one) is dropped; the other lines are kept as they are.  Fixed shell
    text; the three values are checked and quoted.
    """
    if not PUBLIC_KEY.match(public_key):
        raise OperationFailed(f"not an OpenSSH public key line: {public_key[:40]!r}...")
    _safe(command, "the forced command path")
    directory = authorized_keys.rsplit("/", 1)[0]
    blob = public_key.split()[1]
    return (
        "set -e; umask 077; "
        f"d={shlex.quote(directory)}; f={shlex.quote(authorized_keys)}; key={shlex.quote(public_key)}; "
        f"blob={shlex.quote(blob)}; cmd={shlex.quote(command)}; "
        'ip=${SSH_CLIENT%% *}; case "$ip" in ""|*[!0-9A-Fa-f.:]*) echo "no client address" >&2; exit 1;; esac; '
        'line="command=\\"$cmd\\",from=\\"$ip\\",restrict $key"; '
        'mkdir -p "$d"; touch "$f"; '
        'if grep -qxF -- "$line" "$f"; then echo present; else '
        '{ grep -vF -- "$blob" "$f" || true; printf \'%s\\n\' "$line"; } > "$f.xivo-ha-new"; '
        'mv "$f.xivo-ha-new" "$f"; echo added; fi'
    )


def authorized_options(text: str | None) -> list[str]:
    """The options of each ``authorized_keys`` line holding an HA key (comment ``XiVO HA``)."""
    found = []
    for line in (text or "").splitlines():
        fields = line.split()
        if line.rstrip().endswith(" " + KEY_COMMENT) and not line.lstrip().startswith("#"):
            kinds = [i for i, f in enumerate(fields) if PUBLIC_KEY.match(f"{f} AAAA {KEY_COMMENT}")]
            found.append(" ".join(fields[:kinds[0]]) if kinds else line)
    return found


def missing_restrictions(options: str, command: str) -> list[str]:
    """What an authorized_keys line's options lack of ``command="<command>"``, ``from="..."``, ``restrict``."""
    parts = options.split(",")
    missing = [] if f'command="{command}"' in parts else [f'command="{command}"']
    missing += [] if any(part.startswith('from="') for part in parts) else ['from="<master>"']
    return missing + ([] if "restrict" in parts else ["restrict"])


@dataclass(frozen=True)
class HostKey:
    line: str  # known_hosts line, as ssh-keyscan prints it
    fingerprint: str  # SHA256:...
    kind: str  # ED25519, RSA...


def scan_host_keys(remote: Remote) -> list[HostKey]:
    """The slave's host keys as its sshd offers them now (ssh-keyscan, then ssh-keygen -lf)."""
    result = system.run(["ssh-keyscan", "-T", str(remote.connect_timeout), "-p", str(remote.port),
                         "-t", "ed25519,ecdsa,rsa", remote.host], timeout=remote.connect_timeout + 15)
    keys = []
    for line in result.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        shown = system.run(["ssh-keygen", "-lf", "-"], stdin=line + "\n", timeout=30)
        fields = shown.stdout.split()
        if shown.ok and len(fields) >= 2 and FINGERPRINT.match(fields[1]):
            keys.append(HostKey(line, fields[1], fields[-1].strip("()")))
    if not keys:
        raise OperationFailed(f"could not read the host key of {remote.host} port {remote.port}: "
                              f"{result.output() or 'no answer'}")
    return keys


def choose_host_key(keys: Sequence[HostKey], expected: str | None) -> tuple[HostKey | None, str]:
    """The key to trust and a sentence: the one matching ``expected``, else the preferred one to show."""
    if expected is None:
        preferred = next((k for k in keys if k.kind == "ED25519"), keys[0])
        return None, f"the slave's {preferred.kind} host key fingerprint is {preferred.fingerprint}"
    for key in keys:
        if key.fingerprint == expected:
            return key, f"the slave's {key.kind} host key matches {expected}"
    offered = ", ".join(f"{k.kind} {k.fingerprint}" for k in keys)
    return None, f"the slave offers {offered}, not {expected}: refusing (another machine, or a new host key?)"


def trust_host_key(remote: Remote, expected: str | None, confirm: Callable[[str], bool] | None) -> str:
    """Pin the slave's host key in :data:`KNOWN_HOSTS`: the matching one, or one confirmed on a terminal."""
    keys = scan_host_keys(remote)
    chosen, sentence = choose_host_key(keys, expected)
    if chosen is None and expected is not None:
        raise OperationFailed(sentence)
    if chosen is None:
        chosen = next((k for k in keys if k.kind == "ED25519"), keys[0])
        if confirm is None or not confirm(sentence):
            raise OperationFailed(f"{sentence}; not confirmed: nothing changed")
    system.write_atomic(paths.node(KNOWN_HOSTS), chosen.line + "\n", 0o644)
    return sentence


def check_fingerprint(value: str | None, interactive: bool) -> None:
    """``--host-key-fingerprint`` or a terminal to confirm on: one of them is needed."""
    if value is not None and not FINGERPRINT.match(value):
        raise UsageError(f"--host-key-fingerprint {value!r} is not a SHA256:... fingerprint "
                         "(as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints on the slave)")
    if value is None and not interactive:
        raise UsageError("no terminal to confirm the slave's host key: pass --host-key-fingerprint SHA256:... "
                         "(run `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the slave)")


def authorized_keys_path(remote: Remote) -> str:
    home = "/root" if remote.user == "root" else f"/home/{remote.user}"
    return remote.remote_path(f"{home}/.ssh/authorized_keys")


def ensure_key(remote: Remote, progress: Progress = quiet) -> bool:
    """Create the key pair when absent (True when created); fix the modes either way."""
    key, public = remote.key, remote.public_key
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = False
    if not key.exists():
        progress(f"creating the SSH key {key}")
        system.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", KEY_COMMENT, "-f", str(key)],
            timeout=120, check=True,
        )
        created = True
    elif not public.exists():
        progress(f"recreating {public} from {key}")
        result = system.run(["ssh-keygen", "-y", "-f", str(key)], timeout=30, check=True)
        system.write_atomic(public, f"{result.stdout.strip()} {KEY_COMMENT}\n", 0o644)
    os.chmod(key, 0o600)
    os.chmod(public, 0o644)
    return created


def init_key(remote: Remote, password_from_env: bool = False, progress: Progress = quiet,
             fingerprint: str | None = None, confirm: Callable[[str], bool] | None = None) -> str:
    """``xivo-sync -i``: a sentence saying what was done.

    The slave's host key is pinned first (``fingerprint``, or ``confirm`` asked),
    so the root password is only ever sent to the machine the administrator named.
    """
    if password_from_env and not os.environ.get("SSHPASS"):
        raise UsageError("--password-from-env needs the slave's password in the environment variable SSHPASS")
    check_fingerprint(fingerprint, confirm is not None)
    _known_hosts_dir()
    progress(trust_host_key(remote, fingerprint, confirm))
    created = ensure_key(remote, progress)
    works = not created and key_works(remote)
    public_key = remote.public_key.read_text(encoding="utf-8").strip()
    if not public_key or "\n" in public_key:
        raise OperationFailed(f"{remote.public_key} does not hold exactly one public key")
    authorized = authorized_keys_path(remote)
    _safe(authorized, "the remote authorized_keys path")
    argv = ["ssh", *remote.common_options()]
    if works:
        argv = ["ssh", *remote.key_options()]
    elif password_from_env:
        argv = ["sshpass", "-e", *argv, "-o", "PreferredAuthentications=password,keyboard-interactive",
                "-o", "PubkeyAuthentication=no"]
    command = remote.remote_path(paths.PEER_COMMAND)
    argv += [remote.login, _remote_install_script(authorized, public_key, command)]
    progress(f"installing {remote.public_key} into {remote.login}:{authorized}")
    _known_hosts_dir()
    # Interactive: ssh asks for the password on the terminal (not on stdin or stdout).
    result = system.run(argv, timeout=300)
    if works and result.returncode == 1 and FORCED_REFUSAL in result.stderr:
        return (f"the key {remote.key} already exists and {remote.login} already accepts it, confined to "
                f"its forced command {command}: nothing to do")
    if not result.ok:
        raise OperationFailed(
            f"could not install the key on {remote.login} (ssh exit {result.returncode}): "
            f"{result.output() or 'no output'}"
        )
    if not key_works(remote):
        raise OperationFailed(
            f"the key was added to {remote.login}:{authorized} but the slave still refuses it: check "
            f"that sshd on the slave permits root login with keys and the modes of /root/.ssh"
        )
    if works and result.stdout.strip().endswith("present"):
        return f"the key {remote.key} already exists and {remote.login} already accepts it: nothing to do"
    what = "created and authorized" if created else "authorized"
    return f"the key {remote.key} was {what} on {remote.login}"


# ---------------------------------------------------------------------------
# xivo-sync
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PushPlan:
    sources: tuple[str, ...]  # node paths that exist
    missing: tuple[str, ...]  # node paths skipped


def plan_push(directories: Iterable[str], is_dir: Callable[[str], bool]) -> PushPlan:
    sources, missing = [], []
    for directory in directories:
        directory = check_directory(directory, "[sync] directories entry")
        (sources if is_dir(directory) else missing).append(directory)
    return PushPlan(tuple(sources), tuple(missing))


@dataclass(frozen=True)
class ItemizedChanges:
    """rsync's ``--out-format='%i %n%L'`` lines, sorted out.

    The first letter of ``%i`` says what happened to an item: ``<`` / ``>`` sent /
    received, ``c`` created, ``h`` hard link, ``.`` only attributes, ``*`` a message
    such as ``*deleting``.  The second is the item's type (``f`` file, ``d``
    directory, ``L`` link...).  Directories (created or with new times) are not counted.
    """

    changed: tuple[str, ...]
    deleted: tuple[str, ...]

    @staticmethod
    def parse(output: str) -> "ItemizedChanges":
        changed, deleted = [], []
        for line in output.splitlines():
            flags, _, name = line.partition(" ")
            if not name:
                continue
            if flags == "*deleting":
                deleted.append(name.strip())
            elif len(flags) == 11 and flags[0] in "<>ch" and flags[1] != "d":
                changed.append(name)
        return ItemizedChanges(tuple(changed), tuple(deleted))


@dataclass(frozen=True)
class SyncOutcome:
    sentence: str
    changed: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _rsync_failure(result: system.Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return f"rsync exit {result.returncode}: " + (" / ".join(lines[-3:]) if lines else "no output")


def _prefixed(source: str, output: str) -> list[str]:
    """rsync's ``%i %n`` lines of one directory's run, named from the root (``etc/asterisk/...``)."""
    prefix = source.strip("/") + "/"
    return [re.sub(r"^(\S+ +)", lambda m: m.group(1) + prefix, line, count=1)
            for line in output.splitlines() if " " in line]


def push(remote: Remote, directories: Sequence[str], progress: Progress = quiet) -> SyncOutcome:
    if not remote.key.exists():
        raise OperationFailed(
            f"no SSH key {remote.key}: create it and authorize it on the slave with `xivo-sync -i`"
        )
    plan = plan_push(directories, lambda d: paths.node(d).is_dir())
    warnings = [f"{d} does not exist on this node: skipped" for d in plan.missing]
    if not plan.sources:
        return SyncOutcome(f"nothing to synchronize to {remote.host}: none of the directories exists",
                           missing=plan.missing, warnings=tuple(warnings))
    _known_hosts_dir()
    started = time.monotonic()
    output = []
    for source in plan.sources:
        # One directory per run, into its own destination: the slave's forced command
        # accepts a receive into exactly one of its [sync] directories.
        destination = _safe(remote.remote_path(source).rstrip("/") + "/", "the remote destination")
        argv = [
            "rsync", "-a", "--delete-after", "--mkpath", f"--timeout={remote.io_timeout}",
            f"--out-format={OUT_FORMAT}", "-e", remote.rsync_shell(),
            str(paths.node(source)).rstrip("/") + "/", f"{remote.login}:{destination}",
        ]
        progress("running " + " ".join(shlex.quote(a) for a in argv))
        result = system.run(argv, timeout=remote.timeout)
        if result.returncode == RSYNC_PARTIAL_VANISHED:
            warnings.append("some files vanished while they were being copied: " + _rsync_failure(result))
        elif not result.ok:
            raise OperationFailed(f"rsync to {remote.login} failed ({source}): {_rsync_failure(result)}")
        output.extend(_prefixed(source, result.stdout))
    changes = ItemizedChanges.parse("\n".join(output))
    for line in changes.changed:
        progress(f"sent {line}")
    for line in changes.deleted:
        progress(f"deleted on the slave {line}")
    sentence = (
        f"synchronized {len(plan.sources)} directories to {remote.host} in {time.monotonic() - started:.1f} s: "
        f"{len(changes.changed)} updated, {len(changes.deleted)} deleted"
        + (f", {len(plan.missing)} missing skipped" if plan.missing else "")
    )
    return SyncOutcome(sentence, changes.changed, changes.deleted, plan.missing, tuple(warnings))


# ---------------------------------------------------------------------------
# xivo-sync --failback
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FileState:
    mtime: int
    size: int


@dataclass(frozen=True)
class Action:
    kind: str  # "copy" (new on the master), "update" (replaces an older master file), "keep"
    source: str  # path relative to the root, in the staging area
    target: str  # path relative to the root, on the master
    reason: str

    def describe(self) -> str:
        if self.kind == "keep":
            return f"kept /{self.target}: {self.reason}"
        if self.source != self.target:
            return f"copied /{self.source} as /{self.target} ({self.reason})"
        return f"{'copied' if self.kind == 'copy' else 'updated'} /{self.target}" + (
            f" ({self.reason})" if self.reason else ""
        )


def _message_key(relative: str) -> tuple[str, str, int, str] | None:
    """(mailbox dir, folder dir, number, extension) for a voicemail message file, else None."""
    spool = VOICEMAIL_SPOOL.lstrip("/") + "/"
    if not relative.startswith(spool):
        return None
    parts = relative[len(spool):].split("/")
    if len(parts) != 4:  # context / mailbox / folder / file
        return None
    match = MESSAGE.match(parts[3])
    if not match:
        return None
    mailbox = spool + "/".join(parts[:2])
    folder = spool + "/".join(parts[:3])
    return mailbox, folder, int(match.group(1)), match.group(2)


@dataclass(frozen=True)
class MergeInput:
    """What the merge decision needs, gathered from the staging area and the master."""

    staged: Mapping[str, FileState]  # relative path -> state, files pulled from the slave
    master: Mapping[str, FileState]  # relative path -> state, same paths on the master (when present)
    digests: Mapping[str, str]  # relative path -> content digest, for staged and master message .txt files
    master_numbers: Mapping[str, frozenset[int]] = field(default_factory=dict)  # folder -> used msg numbers
    master_messages: Mapping[str, frozenset[str]] = field(default_factory=dict)  # mailbox -> .txt digests


def plan_merge(data: MergeInput) -> list[Action]:
    """Decide, file by file, what the failback copy does.  Never a deletion.

    Voicemail messages (``msgNNNN.*`` in ``voicemail/<context>/<box>/<folder>``) are
    numbered per folder by Asterisk, so the slave's msg0000 left during the
    failover and the master's msg0000 are usually *different* messages.  Copying by
    name would lose one of them (``--update`` keeps the newest, ``--ignore-existing``
    the master's).  So a message is handled as a whole (all its files):

    * a message whose ``.txt`` (caller, time, duration, msg_id) is already in the
      master's mailbox, in any folder, is not copied again (reruns are harmless);
    * otherwise it is copied under its own number when that number is free in the
      master's folder, else under the lowest free number (Asterisk lists messages by
      number; gaps are fine).

    Any other file (greetings, recordings, ...) is copied when the master lacks it,
    replaces the master's copy only when the master's is older (``rsync --update``),
    and is kept as it is on the master when the master's is newer or as old.
    """
    actions: list[Action] = []
    groups: dict[tuple[str, str, int], dict[str, str]] = {}
    for relative in sorted(data.staged):
        key = _message_key(relative)
        if key is None:
            staged = data.staged[relative]
            mine = data.master.get(relative)
            if mine is None:
                actions.append(Action("copy", relative, relative, ""))
            elif mine.mtime >= staged.mtime:
                actions.append(Action("keep", relative, relative, "the master's copy is as new or newer"))
            else:
                actions.append(Action("update", relative, relative, "the slave's copy is newer"))
            continue
        mailbox, folder, number, extension = key
        groups.setdefault((mailbox, folder, number), {})[extension] = relative

    used: dict[str, set[int]] = {folder: set(numbers) for folder, numbers in data.master_numbers.items()}
    known: dict[str, set[str]] = {mailbox: set(d) for mailbox, d in data.master_messages.items()}
    for (mailbox, folder, number), files in sorted(groups.items()):
        identity = _group_identity(files, data.digests)
        if identity is not None and identity in known.get(mailbox, set()):
            for relative in sorted(files.values()):
                actions.append(Action("keep", relative, relative, "this message is already on the master"))
            continue
        taken = used.setdefault(folder, set())
        new_number = number
        if number in taken:
            new_number = next(n for n in range(10000) if n not in taken)
        taken.add(new_number)
        if identity is not None:
            known.setdefault(mailbox, set()).add(identity)
        for extension, relative in sorted(files.items()):
            target = f"{folder}/msg{new_number:04d}.{extension}"
            reason = "" if new_number == number else f"msg{number:04d} is another message on the master"
            actions.append(Action("copy", relative, target, reason))
    return actions


def _group_identity(files: Mapping[str, str], digests: Mapping[str, str]) -> str | None:
    for extension in ("txt", "TXT"):
        if extension in files and files[extension] in digests:
            return digests[files[extension]]
    return None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _walk_files(base: Path, skipped: list[str] | None = None) -> dict[str, Path]:
    """Regular files under ``base``, by path relative to ``base``.

    Anything else (symbolic link, fifo, socket, device) is left out and, when
    ``skipped`` is given, named there.
    """
    found = {}
    for directory, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            full = Path(directory) / name
            if name in dirs and not full.is_symlink():
                continue
            if full.is_symlink() or not full.is_file():
                if skipped is not None:
                    skipped.append(str(full.relative_to(base)))
                continue
            found[str(full.relative_to(base))] = full
    return found


def _state(path: Path) -> FileState | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return FileState(int(info.st_mtime), info.st_size)


def gather(staging: Path, root: Path, skipped: list[str] | None = None) -> MergeInput:
    staged_files = _walk_files(staging, skipped)
    staged = {rel: _state(path) for rel, path in staged_files.items()}
    master = {rel: st for rel in staged_files if (st := _state(root / rel)) is not None}
    digests: dict[str, str] = {}
    numbers: dict[str, set[int]] = {}
    messages: dict[str, set[str]] = {}
    mailboxes = set()
    for rel, path in staged_files.items():
        key = _message_key(rel)
        if key is not None:
            mailboxes.add(key[0])
            if key[3].lower() == "txt":
                digests[rel] = _digest(path)
    for mailbox in mailboxes:
        base = root / mailbox
        if not base.is_dir():
            continue
        for rel_in_box, path in _walk_files(base).items():
            rel = f"{mailbox}/{rel_in_box}"
            key = _message_key(rel)
            if key is None:
                continue
            numbers.setdefault(key[1], set()).add(key[2])
            if key[3].lower() == "txt":
                messages.setdefault(mailbox, set()).add(_digest(path))
    return MergeInput(
        staged, master, digests,
        {k: frozenset(v) for k, v in numbers.items()}, {k: frozenset(v) for k, v in messages.items()},
    )


def failback_owner() -> tuple[int, int]:
    """The asterisk user's uid and gid; root's where there is no such user."""
    try:
        entry = pwd.getpwnam(FAILBACK_OWNER)
    except KeyError:
        return 0, 0
    return entry.pw_uid, entry.pw_gid


def _open_directory(base: Path, parts: Sequence[str], owner: tuple[int, int]) -> int:
    """A descriptor of ``base/parts...``, creating the missing directories.

    ``base`` (a configured failback directory, root's choice) may be reached
    through links; below it every component is opened without following a link, so
    a link planted there by the asterisk user is refused, never followed.
    """
    if not base.is_dir():
        base.mkdir(FAILBACK_DIR_MODE, parents=True)
        os.chown(base, *owner)
        os.chmod(base, FAILBACK_DIR_MODE)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                os.mkdir(part, FAILBACK_DIR_MODE, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise OperationFailed(f"{base}/{'/'.join(parts)}: {part!r} is not a directory "
                                      f"({exc.strerror}): not followed") from None
            os.close(fd)
            fd = child
            if created:
                os.fchown(fd, *owner)
                os.fchmod(fd, FAILBACK_DIR_MODE)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _place(source: Path, base: Path, relative: str, owner: tuple[int, int]) -> None:
    """Write the content of the staged ``source`` as ``base/relative``: ours, 0640.

    :func:`system.write_atomic_at` creates the copy under a random name with
    ``O_EXCL|O_NOFOLLOW`` in the target's own directory, then renames it over the target
    (a link there is replaced, not followed).  Owner, group, mode are
    :func:`failback_owner` and :data:`FAILBACK_FILE_MODE`; only the content and the
    times come from the slave.
    """
    *parents, name = relative.split("/")
    directory = _open_directory(base, parents, owner)
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(src)
            if not stat.S_ISREG(info.st_mode):
                raise OperationFailed(f"{source} is not a regular file")

            def copy(out: int) -> None:
                while chunk := os.read(src, 1 << 20):
                    os.write(out, chunk)

            system.write_atomic_at(directory, name, copy, FAILBACK_FILE_MODE, owner,
                                   (info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(src)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise OperationFailed(f"{base}/{relative} exists and is not a file: left alone") from None
        raise OperationFailed(f"cannot write {base}/{relative}: {exc.strerror}") from None
    finally:
        os.close(directory)


def _failback_base(root: Path, directories: Sequence[str], target: str) -> tuple[Path, str]:
    """The configured directory holding ``target`` (resolved) and the rest of the path below it."""
    for directory in sorted(directories, key=len, reverse=True):
        prefix = directory.strip("/") + "/"
        if target.startswith(prefix):
            return root / directory.lstrip("/"), target[len(prefix):]
    raise OperationFailed(f"/{target} is outside the failback directories")


@dataclass(frozen=True)
class FailbackOutcome:
    sentence: str
    actions: tuple[Action, ...] = ()
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def failback(remote: Remote, directories: Sequence[str], progress: Progress = quiet) -> FailbackOutcome:
    if not remote.key.exists():
        raise OperationFailed(
            f"no SSH key {remote.key}: create it and authorize it on the slave with `xivo-sync -i`"
        )
    directories = [check_directory(d, "[sync] failback_directories entry") for d in directories]
    root = paths.root()
    state_dir = paths.node(paths.STATE_DIR)
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    started = time.monotonic()
    warnings: list[str] = []
    # 0700, on the master's file system next to our state, removed whatever happens.
    staging = Path(tempfile.mkdtemp(prefix=".failback-", dir=state_dir))
    try:
        os.chmod(staging, 0o700)
        sources = [f"{remote.login}:{_safe(remote.anchored_remote(d), 'a remote path')}" for d in directories]
        argv = [
            "rsync", "-rltDR", "--no-implied-dirs", "--ignore-missing-args", f"--timeout={remote.io_timeout}",
            f"--compare-dest={_safe(str(root).rstrip('/') + '/', 'the node root')}",
            "-e", remote.rsync_shell(), *sources, str(staging) + "/",
        ]
        progress("running " + " ".join(shlex.quote(a) for a in argv))
        _known_hosts_dir()
        result = system.run(argv, timeout=remote.timeout)
        if result.returncode == RSYNC_PARTIAL_VANISHED:
            warnings.append("some files vanished on the slave while they were copied: " + _rsync_failure(result))
        elif not result.ok:
            raise OperationFailed(f"rsync from {remote.login} failed: {_rsync_failure(result)}")
        missing = tuple(d for d in directories if not (staging / d.lstrip("/")).is_dir())
        warnings.extend(f"{d} does not exist on the slave: skipped" for d in missing)
        skipped: list[str] = []
        actions = plan_merge(gather(staging, root, skipped))
        warnings.extend(f"/{name} on the slave is not a regular file: skipped" for name in skipped)
        owner = failback_owner()
        refused: list[Action] = []
        for action in actions:
            if action.kind == "keep":
                continue
            base, below = _failback_base(root, directories, action.target)
            try:
                _place(staging / action.source, base, below, owner)
            except OperationFailed as exc:
                warnings.append(f"{exc}: /{action.target} skipped")
                refused.append(action)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    actions = [a for a in actions if a not in refused]
    copied = [a for a in actions if a.kind != "keep"]
    renamed = [a for a in copied if a.source != a.target]
    kept = [a for a in actions if a.kind == "keep"]
    sentence = (
        f"brought back {len(copied)} files from {remote.host} in {time.monotonic() - started:.1f} s"
        + (f" ({len(renamed)} voicemail files renumbered)" if renamed else "")
        + (f", {len(kept)} left out (already on the master, or the master's copy is as new)" if kept else "")
        + (f", {len(missing)} directories missing on the slave" if missing else "")
    )
    return FailbackOutcome(sentence, tuple(actions), missing, tuple(warnings))
